--[[
  extend-leases: a worker renews the leases of all its running tasks in one call, and learns
  which of them it should stop: revoked while running (a revoke message it may have missed),
  or no longer its own (the lease lapsed and the task was recovered, or revoke terminated it).
  Only tasks still in the active set are renewed (XX), so a lapsed lease is not brought back.

  KEYS[1] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] lease in ms
  ARGV[3..] ids of the tasks the worker is running

  Returns a flat list of id, reason for the tasks to stop: 'revoked' (revoke requested, still
  this worker's: fire its signal), 'terminated' (revoked with terminate: also free its slot),
  'lost' (no longer this worker's: free its slot).
]]
-- @include "now"

local base = ARGV[1]
local expires = nowMs() + tonumber(ARGV[2])
local stop = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', expires, id) == 0 and not redis.call('ZSCORE', KEYS[1], id) then
    local state = redis.pcall('HGET', base .. 't:' .. id, 's')
    table.insert(stop, id)
    if state == 'REVOKED' then table.insert(stop, 'terminated') else table.insert(stop, 'lost') end
  else
    local rv = redis.pcall('HGET', base .. 't:' .. id, 'rv')
    if type(rv) == 'string' then
      table.insert(stop, id)
      table.insert(stop, 'revoked')
    end
  end
end
return stop
