-- Ends one started task: SUCCESS or FAILURE with its result or error, the lease dropped, the
-- record set to expire, the unique lock released (compare-and-delete, unless
-- uniqueWaitForExpiry), and the end announced on the task's done channel.
-- Returns false, changing nothing, when this worker no longer holds the task (its lease
-- lapsed and the task was recovered elsewhere); also false when the record is gone, after
-- dropping the task's lease.
local function finishTask(base, activeKey, workerId, now, id, state, field, value, expireMs)
  local key = base .. 't:' .. id
  local owner = redis.call('HGET', key, 'w')
  if not owner then
    -- The record vanished (deleted by hand, evicted): drop the lease so nothing recovers it.
    redis.call('ZREM', activeKey, id)
    return false
  end
  if owner ~= workerId or not redis.call('ZSCORE', activeKey, id) then
    return false
  end
  redis.call('ZREM', activeKey, id)
  if field ~= '' then
    redis.call('HSET', key, 's', state, 'f', now, field, value)
  else
    redis.call('HSET', key, 's', state, 'f', now)
  end
  redis.call('PEXPIRE', key, expireMs)
  local lock = redis.call('HMGET', key, 'lk', 'lw')
  if lock[1] and lock[2] ~= '1' and redis.call('GET', lock[1]) == id then
    redis.call('DEL', lock[1])
  end
  redis.call('PUBLISH', base .. 'done:' .. id, state)
  return true
end
