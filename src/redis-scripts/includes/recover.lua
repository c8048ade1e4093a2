-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "end-task"
-- @include "dead-letter"
-- @include "move-to-wait"
-- @include "events"
-- @include "history"
-- Recovers one lapsed lease: a STARTED task whose worker stopped renewing it (it died or hung).
-- `expiry` is the lease's score, already lapsed on the Redis clock (now); `workerId` and
-- `leaseMs` are the calling worker's. Used by recover-4.lua, which is handed the ids with their
-- records and locks declared (the fetch returns the lapsed ids for it). Returns what
-- became of the lease: 'dead-lettered' (no record, or not a hash), 'dropped' (the task is no
-- longer STARTED: a lease left behind), 'kept' (the caller's own run, one more lease), 'revoked',
-- 'failed' (WorkerLostError after maxRecoveries), 'requeued' (a reservation, field rs, the first
-- time its lease lapses goes back uncounted: attempt taken back, no recovery, field rl set; a
-- later lapse of one counts as any recovery). Raises when Redis refuses a
-- command; the task is then as it was, leased, to be tried again.
local function recoverOne(base, waitKey, activeKey, id, expiry, now, expireMs, workerId, leaseMs)
  local key = taskKeyOf(base, id)
  local t = redis.pcall('HMGET', key, 's', 'rc', 'mr', 'w', 'rv', 'lk', 'lw', 'n', 'st', 'at', 'lu', 'rs', 'rl', 'ry')
  if t.err then
    if isRefusal(t) then error(t) end
    deadLetter(base, id, 'the active set names a task whose record is not a hash', now)
    redis.call('ZREM', activeKey, id)
    return 'dead-lettered'
  end
  local state, recovered, maxRecoveries, owner, revoke, lockWait = t[1], t[2], t[3], t[4], t[5], t[7]
  local lockKey = lockNamed(base, t[6], t[11], t[8])
  local run = { t[8], owner, t[9] }
  if not state then
    -- Gone, not on its way: the caller declares the record, so on a Cluster in the middle of a
    -- reshard Redis runs the call only on the master that holds it (see recover-4.lua).
    deadLetter(base, id, 'the active set names a task with no record', now)
    redis.call('ZREM', activeKey, id)
    return 'dead-lettered'
  elseif state ~= 'STARTED' then
    -- A lease left behind by a task that has moved on.
    redis.call('ZREM', activeKey, id)
    return 'dropped'
  elseif owner == workerId and expiry > now - leaseMs then
    -- The caller's own task, lapsed less than a lease ago. The caller is alive (it is calling),
    -- so its renewal was held up (a stalled connection, a busy event loop), not lost: it gets
    -- one more lease to renew or finish the task. Any other worker recovers it at once.
    return 'kept'
  elseif revoke then
    -- Its revoke was requested while it ran: it ends as the revoke asked and never runs again.
    endLeased(activeKey, id, expiry, function()
      endTask(base, id, 'REVOKED', { 'rr', revoke }, now, expireMs, { lockKey, lockWait }, run)
    end)
    return 'revoked'
  end
  if t[12] and (tonumber(t[13]) or 0) == 0 then
    -- A reservation (prefetch) Redis never heard begin: its worker died or hung holding it. Most
    -- likely its handler never began, so the first time this is not a recovery: back to the
    -- front of the wait list as it was before the reservation (RETRY when it has retried), the
    -- attempt taken back, no recovery counted, the mark gone (the lock stays). But a handler that
    -- kills its worker at once can die before its begin reaches Redis: field rl remembers this
    -- lapse, and any later lapse of a reservation of the task counts as a recovery (below), so
    -- such a task fails after maxRecoveries + 1 deaths instead of looping.
    local at = tonumber(t[10]) or 1
    local state = nil
    if (tonumber(t[14]) or 0) > 0 then state = 'RETRY' end
    requeueLeased(key, waitKey, activeKey, id, expiry, { 'at', at - 1, 'rl', 1 }, { 'at', at, 'rl', 0 }, state)
    redis.pcall('HDEL', key, 'rs')
    noteEvent('handed-back', id)
    return 'requeued'
  end
  -- A reservation's mark goes with its recovery (best effort: a start clears it too).
  if t[12] then redis.pcall('HDEL', key, 'rs') end
  local recoveries = (tonumber(recovered) or 0) + 1
  local max = tonumber(maxRecoveries) or 1
  if recoveries > max then
    local err = cjson.encode({
      name = 'WorkerLostError',
      message = 'worker ' .. tostring(owner) .. ' stopped renewing the lease of this task (it died or hung); ' ..
        'it was recovered ' .. (recoveries - 1) .. ' time(s) and maxRecoveries is ' .. max,
    })
    endLeased(activeKey, id, expiry, function()
      endTask(base, id, 'FAILURE', { 'e', err, 'rc', recoveries }, now, expireMs, { lockKey, lockWait }, run)
    end)
    return 'failed'
  end
  requeueLeased(key, waitKey, activeKey, id, expiry, { 'rc', recoveries }, { 'rc', tonumber(recovered) or 0 })
  -- Best effort: the task is back in the wait list whatever becomes of its history.
  pcall(keepAttempt, key, { a = tonumber(t[10]), st = tonumber(t[9]), w = owner, lost = true })
  noteEvent('recovered', id, 'n', t[8], 'w', owner)
  return 'requeued'
end
