--[[
  permit-wake: a waiter of a concurrency permit (permit-3.lua) was handed one; its task waits in
  its queue's delayed set until it asks again. This makes it due now, so it runs without waiting
  out its re-check. Called by the worker that freed the permit, in the waiter's queue (any queue:
  a scope is shared by tasks of every queue).

  KEYS[1] wait list     <prefix>:{<queue>}:wait (for the wake-up marker)
  KEYS[2] delayed zset  <prefix>:{<queue>}:delayed
  KEYS[3..] the records of the tasks, one per pair of ARGV from ARGV[2], in order

  ARGV[1] key base      <prefix>:{<queue>}:
  ARGV[2], ARGV[3], ... pairs: task id, the attempt the waiting run will start as

  A task STARTED as that attempt is being started, or sent back by its worker (admit-6.lua, after
  an acquire that answered 'wait' before this hand-over): its record is marked (field pw = the
  attempt), and that deferral makes it due at once instead of at its re-check.

  Returns one number per task: 1 made due now; 0 not waiting in the delayed set (already due,
  fetched or being started: it asks for its permit soon, or is sent back due now); -1 gone (no
  record, ended, or started since as a later attempt: the permit it was handed should go to the
  next waiter).
]]
-- @include "keys"
-- @include "now"
-- @include "wake"

local base = ARGV[1]
local now = nowMs()
local out = {}
for i = 2, #ARGV, 2 do
  local id, attempt = ARGV[i], tonumber(ARGV[i + 1])
  local key = KEYS[3 + (i - 2) / 2]
  if key ~= taskKeyOf(base, id) then return redis.error_reply('permit-wake: KEYS[' .. (3 + (i - 2) / 2) .. '] is not the record of task ' .. id) end
  local r = redis.pcall('HMGET', key, 's', 'at')
  local state, at = nil, nil
  if not r.err then state, at = r[1], tonumber(r[2]) or 0 end
  if not state or state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' or at >= attempt then
    -- A record of the wrong type counts as gone too: that run will never ask again.
    if state == 'STARTED' and at == attempt then
      redis.call('HSET', key, 'pw', attempt)
      table.insert(out, 0)
    else
      table.insert(out, -1)
    end
  else
    local due = tonumber(redis.call('ZSCORE', KEYS[2], id))
    if due and due > now then
      wakeIfEarliest(KEYS[1], KEYS[2], now)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('HSET', key, 'd', now)
      table.insert(out, 1)
    else
      table.insert(out, 0)
    end
  end
end
return out
