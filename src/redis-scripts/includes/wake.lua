-- An idle worker sleeps until the earliest due time it knew of (or blocks on the wait list). When
-- a task is put in the delayed set due earlier than every task there, a marker ('') pushed to
-- the wait list wakes the blocked workers; the fetch that follows skips it and reads the
-- delayed set afresh. At most one marker waits at the head of the list. Returns true when a
-- marker was pushed. Called before the ZADD of the task.
local function wakeIfEarliest(waitKey, delayedKey, due)
  local head = redis.call('ZRANGE', delayedKey, 0, 0, 'WITHSCORES')
  if (not head[2] or due < tonumber(head[2])) and redis.call('LINDEX', waitKey, 0) ~= '' then
    local pushed = redis.pcall('LPUSH', waitKey, '')
    return not (type(pushed) == 'table' and pushed.err)
  end
  return false
end
