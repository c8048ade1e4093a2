-- The attempts of a task before its current one (field ah of its record, a JSON array, oldest
-- first, at most 20): when an attempt ends in a retry or its worker is lost, what it was is kept
-- here, since the next start overwrites st, w and e. The current attempt is the record's own
-- fields; so a task that never retries pays nothing for its history.
-- `entry` holds: a attempt, st started (ms), f ended (ms), w worker, and either en/em (the
-- error's name and message) and b (the backoff before the next attempt, ms), or lost = true.
local function keepAttempt(key, entry)
  local stored = redis.call('HGET', key, 'ah')
  local list = {}
  if stored then
    local ok, decoded = pcall(cjson.decode, stored)
    if ok and type(decoded) == 'table' then list = decoded end
  end
  table.insert(list, entry)
  while #list > 20 do table.remove(list, 1) end
  redis.call('HSET', key, 'ah', cjson.encode(list))
end
