--[[
  release-lock: an operator releases a unique lock on purpose (heimdall locks release), only if
  it is still held by the task they saw holding it, so a lock taken by another task meanwhile is
  never released by mistake. The holder keeps running; its end leaves a lock that is no longer
  its own alone (endTask deletes a lock only when it names the ending task).

  KEYS[1] lock              <prefix>:{<queue>}:lock:<task>:<key>
  KEYS[2] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] the holder's task id, as the operator saw it
  ARGV[2] key base          <prefix>:{<queue>}:
  ARGV[3] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[4] '1': forced, released whoever holds it (ARGV[1] is then not checked); absent or '':
          only if ARGV[1] holds it

  Returns {code, holder}: 1 released (the holder it had given); 0 no such lock (it ended or
  lapsed); 2 held by another task now (its id given), left alone.
]]
-- @include "events"

local holder = redis.call('GET', KEYS[1])
if not holder then return {0, ''} end
if holder ~= ARGV[1] and ARGV[4] ~= '1' then return {2, holder} end
redis.call('DEL', KEYS[1])
-- Logged as an event of the holder: an operator let its lock go while it may still run.
useEvents(ARGV[3], nil, KEYS[2])
noteEvent('lock-released', holder, 'k', KEYS[1])
flushEvents()
return {1, holder}
