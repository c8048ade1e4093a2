-- @include "keys"
-- @include "end-task"
-- @include "move-to-wait"
-- @include "events"
-- A worker gives back a started task it holds (the run the caller checked is current): the
-- task goes to the front of the wait list as PENDING, same id and lock, and `undoStart` takes
-- back the attempt that never ran (`attempt`: the record's at), as for a reservation (field
-- `rs`) whose handler never began: it goes back RETRY when it has retried (`retries`: the
-- record's ry), as before it was reserved. The reservation mark goes. A task whose revoke was
-- requested while it ran (rv) ends REVOKED instead. `rv`, `lock`: its fields rv and {lk, lw} as
-- the caller read them. The moves undo themselves when Redis refuses a step (requeueLeased,
-- endLeased), so the task keeps its lease, to be recovered when it lapses, never in no place.
-- Returns 1 when the task was put back, 0 when it ended; raises on a refusal.
local function handBack(base, waitKey, activeKey, id, rv, lock, undoStart, attempt, now, expireMs, retries)
  local expiry = redis.call('ZSCORE', activeKey, id)
  if not expiry then return 0 end
  if rv then
    endLeased(activeKey, id, expiry, function() endTask(base, id, 'REVOKED', { 'rr', rv }, now, expireMs, lock) end)
    return 0
  end
  local at = tonumber(attempt) or 0
  local fields, restore = {}, {}
  local state = nil
  if undoStart then
    fields, restore = { 'at', at - 1 }, { 'at', at }
    if (tonumber(retries) or 0) > 0 then state = 'RETRY' end
  end
  local key = taskKeyOf(base, id)
  requeueLeased(key, waitKey, activeKey, id, expiry, fields, restore, state)
  -- A reservation (prefetch) handed back is no longer one; best effort: a start clears it too.
  redis.pcall('HDEL', key, 'rs')
  noteEvent('handed-back', id)
  return 1
end
