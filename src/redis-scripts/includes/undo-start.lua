-- Takes back a start the worker did not go on with: its admission under the worker's own
-- options sent it back to the delayed set, or the worker does not declare the task. The lease
-- goes, the attempt is not counted, the state is again what it was before the start (RETRY
-- when the task has retried, else PENDING), the run token is no longer current (a reservation mark `rs` goes
-- too), and a start
-- its rate window counted is taken out of it. The caller has already placed the id elsewhere
-- (the delayed set), so the id is never in no place. `key`: the task's record; `rateKey`: the
-- rate window its record names ('' or nil for none). Both as the calling script declares them:
-- nothing is built or read here.
local function undoStart(key, activeKey, id, attempt, retries, rateKey)
  local prior = 'PENDING'
  if (tonumber(retries) or 0) > 0 then prior = 'RETRY' end
  redis.call('HSET', key, 's', prior, 'at', attempt - 1)
  if attempt <= 1 then redis.call('HDEL', key, 'tk', 'st', 'w', 'rs') else redis.call('HDEL', key, 'tk', 'rs') end
  if rateKey and rateKey ~= '' then redis.call('ZREM', rateKey, id .. ':' .. attempt) end
  redis.call('ZREM', activeKey, id)
end
