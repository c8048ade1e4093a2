#!lua flags=allow-oom
--[[
  extend-leases: a worker renews the leases of all its running tasks in one call, and learns
  which of them it should stop: revoked while running (a revoke message it may have missed),
  or no longer its own (the lease lapsed and the task was recovered, or revoke terminated it).
  Only tasks still in the active set are renewed (XX), so a lapsed lease is not brought back.

  KEYS[1] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] lease in ms
  ARGV[3] worker id
  ARGV[4..] ids of the tasks the worker is running

  Returns a flat list of id, reason for the tasks to stop: 'revoked' (revoke requested, still
  this worker's: fire its signal), 'terminated' (revoked with terminate: also free its slot),
  'lost' (no longer this worker's: free its slot).
]]
-- @include "now"

local base, workerId = ARGV[1], ARGV[3]
local expires = nowMs() + tonumber(ARGV[2])
local stop = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local t = redis.pcall('HMGET', base .. 't:' .. id, 's', 'w', 'rv')
  -- Renew only a lease this worker still holds: a task recovered and restarted elsewhere
  -- is leased to that worker now, and this one must learn it lost it.
  local held = not t.err and t[1] == 'STARTED' and t[2] == workerId and redis.call('ZSCORE', KEYS[1], id)
  if not held then
    table.insert(stop, id)
    if not t.err and t[1] == 'REVOKED' then table.insert(stop, 'terminated') else table.insert(stop, 'lost') end
  else
    redis.call('ZADD', KEYS[1], 'XX', expires, id)
    if t[3] then
      table.insert(stop, id)
      table.insert(stop, 'revoked')
    end
  end
end
return stop
