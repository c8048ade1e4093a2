-- Ends one started task as its worker reports it:
--   SUCCESS / FAILURE: final (see endTask); a FAILURE of a task whose revoke was requested
--     while it ran ends REVOKED instead;
--   RETRY: back to the delayed set, due in `retryDelayMs`, keeping its lock; the error is kept
--     as the last one (a task revoked while it ran is not retried but REVOKED).
-- A non-empty `deadReason` also dead-letters the task.
-- Returns the state stored, or 'STALE' (changing nothing but dropping a lease whose record
-- vanished) when this worker no longer holds the task: its lease lapsed and it was recovered.
-- A finish repeated after a lost reply returns the state the first one stored.
local function finishTask(base, activeKey, delayedKey, workerId, now, id, state, field, value, expireMs, retryDelayMs, deadReason)
  local key = base .. 't:' .. id
  local t = redis.pcall('HMGET', key, 'w', 'rv', 's', 'ry', 'lk', 'lw')
  if t.err or not t[1] then
    redis.call('ZREM', activeKey, id)
    return 'STALE'
  end
  if t[1] ~= workerId then return 'STALE' end
  if redis.call('ZREM', activeKey, id) == 0 then
    -- Still this worker's but no longer leased: either this very finish ran before and its
    -- reply was lost (ioredis re-sent it, or the worker retried it), which must answer as it
    -- did then, or the lease lapsed and the task waits to run again (PENDING): stale.
    local s = t[3]
    if isEnded(s) or s == 'RETRY' then return s end
    return 'STALE'
  end
  local lock = { t[5], t[6] }
  if deadReason ~= '' then deadLetter(base, id, deadReason, now) end
  local extra = {}
  if field ~= '' then extra = { field, value } end
  if t[2] and state ~= 'SUCCESS' then
    table.insert(extra, 'rr'); table.insert(extra, t[2])
    endTask(base, id, 'REVOKED', extra, now, expireMs, lock)
    return 'REVOKED'
  end
  if state == 'RETRY' then
    local due = now + retryDelayMs
    redis.call('HSET', key, 's', 'RETRY', 'd', due, 'ry', (tonumber(t[4]) or 0) + 1, unpack(extra))
    redis.call('ZADD', delayedKey, due, id)
    return 'RETRY'
  end
  -- A task that succeeds on a retry keeps no error of its earlier attempts (only retries store one).
  if state == 'SUCCESS' and t[4] then redis.call('HDEL', key, 'e') end
  endTask(base, id, state, extra, now, expireMs, lock)
  return state
end
