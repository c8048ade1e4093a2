--[[
  enqueue: a new task becomes PENDING, in the wait list or (countdown/eta) the delayed set,
  taking its unique lock in the same step.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] task hash         <prefix>:{<queue>}:t:<id>
  KEYS[4] unique lock       <prefix>:{<queue>}:lock:<task>:<key> (any key when not unique)

  ARGV[1] task id
  ARGV[2] countdown in ms from now on the Redis clock, 0 for none
  ARGV[3] eta as epoch ms, 0 for none (wins over countdown)
  ARGV[4] unique lock lifetime in ms, 0 when the task is not unique
  ARGV[5..] field, value pairs stored in the task hash (n, a, lk, lt, lw, rk, rn, rp)

  Returns
    {1}                     enqueued
    {2, holderId, pttlMs}   a unique duplicate: another task holds the lock
    {1}                     also when a task with this id, name and arguments has not ended
    {3}                     the id belongs to another task that has not ended
]]
-- @include "now"

local id = ARGV[1]
local countdown = tonumber(ARGV[2])
local eta = tonumber(ARGV[3])
local lockTtl = tonumber(ARGV[4])

local previous = redis.call('HGET', KEYS[3], 's')
if previous and previous ~= 'SUCCESS' and previous ~= 'FAILURE' and previous ~= 'REVOKED' then
  -- The same task under the same id (this very call re-sent by ioredis after a lost reply, or
  -- an idempotent re-send by the caller) is already enqueued; anything else is a collision.
  local same = redis.call('HMGET', KEYS[3], 'n', 'a')
  local name, args
  for i = 5, #ARGV - 1, 2 do
    if ARGV[i] == 'n' then name = ARGV[i + 1] elseif ARGV[i] == 'a' then args = ARGV[i + 1] end
  end
  if same[1] == name and same[2] == args then return {1} end
  return {3}
end

if lockTtl > 0 and not redis.call('SET', KEYS[4], id, 'NX', 'PX', lockTtl) then
  return {2, redis.call('GET', KEYS[4]), redis.call('PTTL', KEYS[4])}
end
-- A reused id of an ended task starts afresh (only once the lock is ours).
if previous then redis.call('DEL', KEYS[3]) end

local now = nowMs()
local due = 0
if eta > 0 then due = eta elseif countdown > 0 then due = now + countdown end

redis.call('HSET', KEYS[3], 's', 'PENDING', 'c', now, unpack(ARGV, 5))
if due > now then
  redis.call('HSET', KEYS[3], 'd', due)
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  redis.call('ZADD', KEYS[2], due, id)
  -- An idle worker sleeps until the earliest due time it knew of; if this task is due
  -- earlier, wake it with a marker ('') that fetch skips.
  if (not first[2] or due < tonumber(first[2])) and redis.call('LINDEX', KEYS[1], 0) ~= '' then
    redis.call('LPUSH', KEYS[1], '')
  end
else
  redis.call('LPUSH', KEYS[1], id)
end
return {1}
