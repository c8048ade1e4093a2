#!lua flags=allow-oom
--[[
  extend-leases: a worker renews the leases of its running tasks in one call, and learns which
  of them it should stop. A lease is renewed only for a run that is still the task's current
  one: STARTED, by this worker, under the run token the worker holds. For any other run the
  worker learns why: revoked while running (a revoke message it may have missed), revoked with
  terminate, or no longer current (its lease lapsed and the task was recovered, or restarted).

  KEYS[1] active zset       <prefix>:{<queue>}:active
  KEYS[2..] task hashes     <prefix>:{<queue>}:t:<id> of each run of ARGV[4..], in the same order
            (one key per run, so a call passes 1 + runs keys; the name counts the fixed one)

  ARGV[1] key base          <prefix>:{<queue>}: (unused now that the records come in KEYS)
  ARGV[2] lease in ms
  ARGV[3] worker id
  ARGV[4..] pairs of id and run token of the runs the worker is running, and of runs whose ends
            wait to be stored (refused, or Redis unreachable)

  Returns a flat list of four items per run to stop: id, run token, reason, detail. Reasons: 'revoked'
  (revoke requested, still the current run: fire its signal), 'terminated' (revoked with
  terminate: also free its slot), 'lost' (no longer the current run: free its slot; the detail
  is the state Redis holds, '' when the record is gone or not a hash). A run whose record Redis
  refuses to read is left alone until the next renewal. A record read as missing is gone, even
  on a Redis Cluster in the middle of a reshard: the records are declared, and Redis runs a call
  of several keys in a slot being moved only on a master that holds all of them (TRYAGAIN or
  ASK otherwise), so the script never runs where a record has yet to arrive.

  The first line lets it run while Redis is full (allow-oom): it only moves the scores of
  members already in the set, so it grows nothing, and a live worker must not lose its running
  tasks because Redis refuses new writes.
]]
-- @include "now"
-- @include "refusal"

local workerId = ARGV[3]
local expires = nowMs() + tonumber(ARGV[2])
local stop = {}
local function report(id, token, reason, detail)
  table.insert(stop, id); table.insert(stop, token); table.insert(stop, reason); table.insert(stop, detail)
end
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local t = redis.pcall('HMGET', KEYS[i / 2], 's', 'w', 'tk', 'rv')
  if t.err then
    if not isRefusal(t) then report(id, token, 'lost', '') end
  elseif t[1] == 'STARTED' and t[2] == workerId and t[3] == token then
    redis.call('ZADD', KEYS[1], 'XX', expires, id)
    if t[4] then report(id, token, 'revoked', '') end
  elseif t[3] == token and t[1] == 'REVOKED' then
    report(id, token, 'terminated', '')
  else
    report(id, token, 'lost', t[1] or '')
  end
end
return stop
