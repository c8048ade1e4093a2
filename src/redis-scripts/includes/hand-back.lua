-- A worker gives back a started task it holds (the run the caller checked is current): the
-- task goes to the front of the wait list as PENDING, same id and lock, and `undoStart` takes
-- back the attempt that never ran. A task whose revoke was requested while it ran (rv) ends
-- REVOKED instead. `rv`, `lock`: its fields rv and {lk, lw} as the caller read them.
-- The id moves from the active set to the wait list with moveToWait: should Redis refuse the
-- push, the task keeps its lease and is recovered when it lapses, so it is never in no place.
-- Returns 1 when the task was put back, 0 when it ended; raises on a refusal.
local function handBack(base, waitKey, activeKey, id, rv, lock, undoStart, now, expireMs)
  local key = base .. 't:' .. id
  if rv then
    endTask(base, id, 'REVOKED', { 'rr', rv }, now, expireMs, lock)
    redis.call('ZREM', activeKey, id)
    return 0
  end
  local expiry = redis.call('ZSCORE', activeKey, id)
  if not expiry then return 0 end
  local refused = moveToWait(waitKey, activeKey, { id, expiry })
  if refused then error({ err = refused }) end
  redis.call('HSET', key, 's', 'PENDING')
  if undoStart then redis.call('HINCRBY', key, 'at', -1) end
  return 1
end
