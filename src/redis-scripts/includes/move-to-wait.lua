-- Moves ids from a sorted set to the tail of the wait list: they leave the set first (which
-- also lets the rest of a script through a full Redis: under noeviction Redis refuses only a
-- script's first write, and ZREM frees memory), then the RPUSH places them; should Redis refuse
-- that, they go back into the set with their scores. `members` is a flat list of id, score
-- (ZRANGEBYSCORE ... WITHSCORES), oldest first; the oldest ends nearest the tail. Returns nil,
-- or the refusal's text (the ids are then where they were).
local function moveToWait(waitKey, setKey, members)
  local ids, scored = {}, {}
  for i = #members - 1, 1, -2 do
    table.insert(ids, members[i])
    table.insert(scored, members[i + 1]); table.insert(scored, members[i])
  end
  redis.call('ZREM', setKey, unpack(ids))
  local pushed = redis.pcall('RPUSH', waitKey, unpack(ids))
  if type(pushed) == 'table' and pushed.err then
    redis.pcall('ZADD', setKey, unpack(scored))
    return pushed.err
  end
  return nil
end

-- Puts a leased task back at the tail of the wait list as PENDING, or `state` when given (a
-- recovery, a hand-back), in
-- steps that undo each other: the lease leaves the active set (a write a full Redis allows,
-- letting the rest through), the record says PENDING (with `fields`), the id joins the wait
-- list. Should Redis refuse a step, the ones before it are undone (`restore`: the old values of
-- `fields`), so the task is either leased and STARTED or queued and PENDING, never in no place.
-- Raises on a refusal.
local function requeueLeased(key, waitKey, activeKey, id, expiry, fields, restore, state)
  redis.call('ZREM', activeKey, id)
  local written = redis.pcall('HSET', key, 's', state or 'PENDING', unpack(fields))
  if type(written) == 'table' and written.err then
    redis.pcall('ZADD', activeKey, expiry, id)
    error(written)
  end
  local pushed = redis.pcall('RPUSH', waitKey, id)
  if type(pushed) == 'table' and pushed.err then
    redis.pcall('HSET', key, 's', 'STARTED', unpack(restore))
    redis.pcall('ZADD', activeKey, expiry, id)
    error(pushed)
  end
end

-- Ends a leased task (`finish`: a function that writes its end): the lease leaves the active set
-- first (letting the rest through a full Redis), and comes back if `finish` raises.
local function endLeased(activeKey, id, expiry, finish)
  redis.call('ZREM', activeKey, id)
  local ok, err = pcall(finish)
  if not ok then
    redis.pcall('ZADD', activeKey, expiry, id)
    error(err)
  end
end
