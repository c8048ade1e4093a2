--[[
  progress: a running task reports how far it has got (currentTask().progress()). Stored only
  for the run that sent it, while it runs: a report of a run that has ended, been recovered or
  revoked meanwhile is dropped.

  KEYS[1] task hash         <prefix>:{<queue>}:t:<id>
  KEYS[2] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] run token         (the record's tk)
  ARGV[2] progress, JSON    { "v": fraction 0..1, "m": message or absent, "at": ms, worker clock,
                            "t": the run token, so a later run of the task does not show it }
  ARGV[3] key base          <prefix>:{<queue>}:
  ARGV[4] task id
  ARGV[5] events: the cap of the queue's event stream (0: no events; see includes/events.lua)

  Returns 1 stored, 0 dropped (not this run, or not STARTED).
]]
-- @include "events"

local t = redis.call('HMGET', KEYS[1], 's', 'tk')
if t[1] ~= 'STARTED' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pg', ARGV[2])
useEvents(ARGV[5], nil, KEYS[2])
noteEvent('progress', ARGV[4], 'p', ARGV[2])
flushEvents()
return 1
