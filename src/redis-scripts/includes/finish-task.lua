-- Ends one run of a started task as its worker reports it, if that run is the task's current
-- one: the task is STARTED, by this worker, under this run token (`tk`).
--   SUCCESS / FAILURE: final (see endTask); a FAILURE of a task whose revoke was requested
--     while it ran ends REVOKED instead;
--   RETRY: back to the delayed set, due in `retryDelayMs`, keeping its lock; the error is kept
--     as the last one (a task revoked while it ran is not retried but REVOKED).
-- A non-empty `deadReason` also dead-letters the task. The stored state is recorded with the
-- token in `fk`, so the same finish sent again (ioredis re-sends a command whose reply a
-- dropped connection lost; a worker retries a call that failed) answers what it stored then.
-- Returns the outcome and a detail:
--   'SUCCESS' | 'FAILURE' | 'REVOKED' | 'RETRY', '': stored (now, or by this same finish before);
--   'STALE', state: not stored, the run is no longer the task's current run (its lease lapsed and
--     it was recovered, it was revoked with terminate, its record was replaced or is gone);
--     the detail is the state Redis holds ('' when there is no record);
--   'ERROR', message: Redis refused a command; nothing changed, the worker tries again later.
local function finishTask(base, activeKey, delayedKey, workerId, now, id, token, state, field, value, expireMs, retryDelayMs,
                          deadReason)
  local key = base .. 't:' .. id
  local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'fk', 'rv', 'ry', 'lk', 'lw')
  if t.err then
    if isRefusal(t) then return 'ERROR', t.err end
    return 'STALE', ''
  end
  local current, owner, runToken, finished, revoke, retries = t[1], t[2], t[3], t[4], t[5], t[6]
  if not (current == 'STARTED' and owner == workerId and runToken == token) then
    if finished and string.sub(finished, 1, #token + 1) == token .. ' ' then return string.sub(finished, #token + 2), '' end
    return 'STALE', current or ''
  end
  local stored = state
  if revoke and state ~= 'SUCCESS' then stored = 'REVOKED' end
  local extra = { 'fk', token .. ' ' .. stored }
  if field ~= '' then table.insert(extra, field); table.insert(extra, value) end
  if stored == 'RETRY' then
    -- The delayed set first: should Redis refuse it, nothing has changed.
    local due = now + retryDelayMs
    local placed = redis.pcall('ZADD', delayedKey, due, id)
    if type(placed) == 'table' and placed.err then return 'ERROR', placed.err end
    redis.call('HSET', key, 's', 'RETRY', 'd', due, 'ry', (tonumber(retries) or 0) + 1, unpack(extra))
    redis.call('ZREM', activeKey, id)
    return 'RETRY', ''
  end
  if deadReason ~= '' then deadLetter(base, id, deadReason, now) end
  if stored == 'REVOKED' then table.insert(extra, 'rr'); table.insert(extra, revoke) end
  -- A task that succeeds on a retry keeps no error of its earlier attempts (only retries store one).
  if state == 'SUCCESS' and retries then redis.call('HDEL', key, 'e') end
  endTask(base, id, stored, extra, now, expireMs, { t[7], t[8] })
  redis.call('ZREM', activeKey, id)
  return stored, ''
end
