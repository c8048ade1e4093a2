-- @include "ended"
-- @include "keys"

-- Puts a task in a final state (SUCCESS, FAILURE or REVOKED) with the given extra hash
-- fields, sets its record to expire, releases its unique lock (compare-and-delete, unless
-- uniqueWaitForExpiry), and announces the end on the task's done channel.
-- `extra` is a flat list of field, value pairs (may be empty). `lock`: the task's fields lk, lw
-- when the caller has read them already (nil: read here).
local function endTask(base, id, state, extra, now, expireMs, lock)
  local key = taskKeyOf(base, id)
  redis.call('HSET', key, 's', state, 'f', now, unpack(extra))
  redis.call('PEXPIRE', key, expireMs)
  lock = lock or redis.call('HMGET', key, 'lk', 'lw')
  if lock[1] and lock[2] ~= '1' then
    local holder = redis.pcall('GET', lock[1])
    if holder == id then redis.call('DEL', lock[1]) end
  end
  redis.call('PUBLISH', doneChannelOf(base, id), state)
end
