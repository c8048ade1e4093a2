-- @include "ended"
-- @include "keys"
-- @include "events"

-- Puts a task in a final state (SUCCESS, FAILURE or REVOKED) with the given extra hash
-- fields, sets its record to expire, releases its unique lock (compare-and-delete, unless
-- uniqueWaitForExpiry), and announces the end on the task's done channel. SPUBLISH, not
-- PUBLISH: on a Cluster the message stays on the shard of the queue (whose hash tag the channel
-- carries) instead of going to every node over the cluster bus (docs/decisions.md).
-- `extra` is a flat list of field, value pairs (may be empty). `lock`: the task's fields lk, lw
-- when the caller has read them already (nil: read here). `run`: the task's fields n, w, st
-- when the caller has read them (nil: read here, only when events are on), for the event.
local function endTask(base, id, state, extra, now, expireMs, lock, run)
  local key = taskKeyOf(base, id)
  redis.call('HSET', key, 's', state, 'f', now, unpack(extra))
  redis.call('PEXPIRE', key, expireMs)
  lock = lock or redis.call('HMGET', key, 'lk', 'lw')
  if lock[1] and lock[2] ~= '1' then
    local holder = redis.pcall('GET', lock[1])
    if holder == id then redis.call('DEL', lock[1]) end
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
      if run[3] and tonumber(run[3]) then runtime = now - tonumber(run[3]) end
      if state == 'SUCCESS' then
        noteEvent('succeeded', id, 'w', run[2], 'rt', runtime)
      else
        local errName, errMessage = errorSummary(extra)
        noteEvent('failed', id, 'n', run[1], 'w', run[2], 'rt', runtime, 'en', errName, 'em', errMessage)
      end
    end
  end
end
