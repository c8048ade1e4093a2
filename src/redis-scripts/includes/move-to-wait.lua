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
