#!lua flags=allow-oom
--[[
  extend-leases: a worker renews the leases of its running tasks in one call, and learns which
  of them it should stop. A lease is renewed only for a run that is still the task's current
  one: STARTED, by this worker, under the run token the worker holds. For any other run the
  worker learns why: revoked while running (a revoke message it may have missed), revoked with
  terminate, or no longer current (its lease lapsed and the task was recovered, or restarted).

  KEYS[1] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] lease in ms
  ARGV[3] worker id
  ARGV[4..] pairs of id and run token of the runs the worker is running

  Returns a flat list of three items per run to stop: id, reason, detail. Reasons: 'revoked'
  (revoke requested, still the current run: fire its signal), 'terminated' (revoked with
  terminate: also free its slot), 'lost' (no longer the current run: free its slot; the detail
  is the state Redis holds). A run whose record Redis refuses to read is left alone until the
  next renewal.

  The first line lets it run while Redis is full (allow-oom): it only moves the scores of
  members already in the set, so it grows nothing, and a live worker must not lose its running
  tasks because Redis refuses new writes.
]]
-- @include "now"
-- @include "refusal"

local base, workerId = ARGV[1], ARGV[3]
local expires = nowMs() + tonumber(ARGV[2])
local stop = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local t = redis.pcall('HMGET', base .. 't:' .. id, 's', 'w', 'tk', 'rv')
  if t.err then
    if not isRefusal(t) then
      table.insert(stop, id); table.insert(stop, 'lost'); table.insert(stop, 'its record is not a hash')
    end
  elseif t[1] == 'STARTED' and t[2] == workerId and t[3] == token then
    redis.call('ZADD', KEYS[1], 'XX', expires, id)
    if t[4] then
      table.insert(stop, id); table.insert(stop, 'revoked'); table.insert(stop, '')
    end
  elseif t[3] == token and t[1] == 'REVOKED' then
    table.insert(stop, id); table.insert(stop, 'terminated'); table.insert(stop, '')
  else
    table.insert(stop, id); table.insert(stop, 'lost'); table.insert(stop, t[1] or '')
  end
end
return stop
