-- @include "ended"
-- @include "keys"
-- @include "events"
-- @include "wake"
-- @include "record-lock"
-- @include "ms-text"

-- Puts a task in a final state (SUCCESS, FAILURE or REVOKED) with the given extra hash
-- fields, sets its record to expire, releases its unique lock (compare-and-delete, unless
-- uniqueWaitForExpiry), and announces the end on the task's done channel. SPUBLISH, not
-- PUBLISH: on a Cluster the message stays on the shard of the queue (whose hash tag the channel
-- carries) instead of going to every node over the cluster bus (docs/decisions.md).
-- `extra` is a flat list of field, value pairs (may be empty). `lock`: the task's lock key (as
-- lockNamed gives it) and field lw when the caller has read them already (nil: read here). `run`: the task's fields n, w, st
-- when the caller has read them (nil: read here, only when events are on), for the event.
-- `handOver`: { next = the lock's pending pointer, delayed = , wait = the queue's keys }, as the
-- caller declares them, when the task may have one waiting behind it (onConflict keepLast or
-- debounce); nil otherwise. The lock released, the task pending behind it (the pointer's
-- `'<due> <lifetime> <id>'`) is handed the lock and made due (now, or at its debounce time), if
-- it still waits in the delayed set. Any other state (revoked, or already moved to the wait list)
-- is left alone: a task moved to the wait list takes the free lock when it starts, and a pointer
-- to a task that no longer waits is dropped by the next dispatch that reads it, or lapses.
local function handLockOver(lockKey, id, h, now)
  local pointer = redis.call('GET', h.next)
  if not pointer then return end
  local due, life, nextId = string.match(pointer, '^(%d+) (%d+) (.+)$')
  -- A pointer to the ending task itself: it was the pending one, and took the free lock when it
  -- started (it was in the wait list when its holder ended). Nothing waits any more.
  if not nextId or nextId == id then
    redis.call('DEL', h.next)
    return
  end
  if not redis.call('ZSCORE', h.delayed, nextId) then return end
  redis.call('SET', lockKey, nextId, 'PX', life)
  redis.call('DEL', h.next)
  local at = math.max(now, tonumber(due))
  wakeIfEarliest(h.wait, h.delayed, at)
  redis.call('ZADD', h.delayed, at, nextId)
end

local function endTask(base, id, state, extra, now, expireMs, lock, run, handOver)
  local key = taskKeyOf(base, id)
  redis.call('HSET', key, 's', state, 'f', msText(now), unpack(extra))
  redis.call('PEXPIRE', key, msText(expireMs))
  if not lock then
    local named = redis.call('HMGET', key, 'lk', 'lw', 'lu', 'n')
    lock = { lockNamed(base, named[1], named[3], named[4]), named[2] }
  end
  if lock[1] and lock[2] ~= '1' then
    local holder = redis.pcall('GET', lock[1])
    if holder == id then
      redis.call('DEL', lock[1])
      if handOver then handLockOver(lock[1], id, handOver, now) end
    end
  end
  redis.call('SPUBLISH', doneChannelOf(base, id), state)
  if eventsOn() then
    run = run or redis.call('HMGET', key, 'n', 'w', 'st')
    if state == 'REVOKED' then
      local reason
      for i = 1, #extra, 2 do if extra[i] == 'rr' then reason = extra[i + 1] end end
      noteEvent('revoked', id, 'n', run[1], 'r', reason)
    else
      local runtime
      if run[3] and tonumber(run[3]) then runtime = wholeText(now - tonumber(run[3])) end
      if state == 'SUCCESS' then
        noteEvent('succeeded', id, 'w', run[2], 'rt', runtime)
      else
        local errName, errMessage = errorSummary(extra)
        noteEvent('failed', id, 'n', run[1], 'w', run[2], 'rt', runtime, 'en', errName, 'em', errMessage)
      end
    end
  end
end
