-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "end-task"
-- @include "dead-letter"
-- @include "events"
-- @include "history"
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
--   'ERROR', message: Redis refused a command; the run keeps its lease (renewed from now), the
--     worker tries again later.
-- `key` is the task's record and `lockDeclared` the lock the caller declared for it ('' or false: none),
-- both in the call's KEYS; `handOver` (nil: none) the lock's pending pointer with the queue's
-- keys, as endTask takes it.
-- Writes a run's end (finishTask, after the lease is gone): RETRY back to the delayed set, or a
-- final state through endTask. Run under pcall: a refusal is undone by the caller.
local function writeEnd(base, key, delayedKey, id, state, stored, extra, retries, revoke, now, expireMs, retryDelayMs,
                        deadReason, lockKey, lockWait, run, handOver)
  if stored == 'RETRY' then
    local due = now + retryDelayMs
    redis.call('ZADD', delayedKey, due, id)
    redis.call('HSET', key, 's', 'RETRY', 'd', due, 'ry', (tonumber(retries) or 0) + 1, unpack(extra))
    local errName, errMessage = errorSummary(extra)
    -- Best effort, as in a recovery: the retry above is stored and must stand whatever becomes of
    -- the history (a refused or failing write here would leave the task RETRY in no set).
    pcall(keepAttempt, key, { a = tonumber(run[4]), st = tonumber(run[3]), f = now, w = run[2], en = errName,
      em = errMessage, b = retryDelayMs })
    noteEvent('retried', id, 'n', run[1], 'w', run[2], 'a', run[4], 'dl', retryDelayMs, 'en', errName, 'em', errMessage)
    return
  end
  if deadReason ~= '' then deadLetter(base, id, deadReason, now) end
  if stored == 'REVOKED' then table.insert(extra, 'rr'); table.insert(extra, revoke) end
  -- A task that succeeds on a retry keeps no error of its earlier attempts (only retries store one).
  if state == 'SUCCESS' and retries then redis.call('HDEL', key, 'e') end
  endTask(base, id, stored, extra, now, expireMs, { lockKey, lockWait }, run, handOver)
end

local function finishTask(key, lockDeclared, base, activeKey, delayedKey, workerId, leaseMs, now, id, token, state, field, value,
                          expireMs, retryDelayMs, deadReason, handOver)
  local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'fk', 'rv', 'ry', 'lk', 'lw', 'n', 'st', 'at', 'cm', 'lu', 'rs')
  if t.err and isRefusal(t) then return 'ERROR', t.err end
  -- On a Cluster node importing a slot, the record may still be on the old master: the worker
  -- sends this end again, as after a refusal, and the run keeps its lease meanwhile.
  if t.err or not t[1] then
    -- No record, or not one of ours: nobody can run the task any more; its lease goes too.
    redis.call('ZREM', activeKey, id)
    return 'STALE', ''
  end
  local current, owner, runToken, finished, revoke, retries, lockWait = t[1], t[2], t[3], t[4], t[5], t[6], t[8]
  local lockKey = lockNamed(base, t[7], t[13], t[9])
  -- A lock the caller did not declare is not touched (it lapses with its lifetime): the worker
  -- declares the lock it started the run under, which is the one the record names.
  if lockKey and lockKey ~= lockDeclared then lockKey = false end
  -- Only a task whose mode can leave one pending behind it (keepLast, debounce) hands its lock over.
  if not lockKey or not (t[12] == 'keepLast' or t[12] == 'debounce') then handOver = nil end
  if not (current == 'STARTED' and owner == workerId and runToken == token) then
    if finished and string.sub(finished, 1, #token + 1) == token .. ' ' then return string.sub(finished, #token + 2), '' end
    return 'STALE', current
  end
  local stored = state
  if revoke and state ~= 'SUCCESS' then stored = 'REVOKED' end
  local extra = { 'fk', token .. ' ' .. stored }
  if field ~= '' then table.insert(extra, field); table.insert(extra, value) end
  -- The lease goes first. Besides ending the run, that lets the rest of the script through a
  -- full Redis (under noeviction Redis refuses a script's first write only, and ZREM frees
  -- memory). Should a later command be refused, the lease is put back and nothing else changed.
  redis.call('ZREM', activeKey, id)
  -- A reservation whose begin was not stored (it always is first, in the same call): no longer one.
  if t[14] then redis.pcall('HDEL', key, 'rs') end
  local ok, err = pcall(writeEnd, base, key, delayedKey, id, state, stored, extra, retries, revoke, now, expireMs,
    retryDelayMs, deadReason, lockKey, lockWait, { t[9], owner, t[10], t[11] }, handOver)
  if not ok then
    redis.pcall('ZADD', activeKey, now + leaseMs, id)
    if stored == 'RETRY' then redis.pcall('ZREM', delayedKey, id) end
    return 'ERROR', errorText(err)
  end
  return stored, ''
end
