--[[
  progress: a running task reports how far it has got (currentTask().progress()). Stored only
  for the run that sent it, while it runs: a report of a run that has ended, been recovered or
  revoked meanwhile is dropped.

  KEYS[1] task hash         <prefix>:{<queue>}:t:<id>

  ARGV[1] run token         (the record's tk)
  ARGV[2] progress, JSON    { "v": fraction 0..1, "m": message or absent, "at": ms, worker clock,
                            "t": the run token, so a later run of the task does not show it }

  Returns 1 stored, 0 dropped (not this run, or not STARTED).
]]

local t = redis.call('HMGET', KEYS[1], 's', 'tk')
if t[1] ~= 'STARTED' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pg', ARGV[2])
return 1
