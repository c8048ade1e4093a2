--[[
  extend-lock: a unique lock is given a new lifetime from now, only if the task expected to hold
  it still does (a running task's currentTask().extendLock(), or an operator's
  Inspector.extendLock()), so a lock another task took meanwhile is never stretched by mistake.
  The lifetime is set, not added to: `ttlMs` from now on the Redis clock, shorter or longer than
  what was left.

  KEYS[1] lock              <prefix>:{<queue>}:lock:<task>:<key>
  KEYS[2] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] the holder's task id, as the caller expects it
  ARGV[2] the new lifetime in ms (a whole number >= 1)
  ARGV[3] key base          <prefix>:{<queue>}:
  ARGV[4] events: the cap of the queue's event stream (0: no events; see includes/events.lua)

  Returns {code, holder}: 1 extended; 0 no such lock (it ended or lapsed); 2 held by another task
  now (its id given), left alone.
]]
-- @include "events"

local holder = redis.call('GET', KEYS[1])
if not holder then return {0, ''} end
if holder ~= ARGV[1] then return {2, holder} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
useEvents(ARGV[4], nil, KEYS[2])
noteEvent('lock-extended', holder, 'k', KEYS[1], 'lt', ARGV[2])
flushEvents()
return {1, holder}
