-- A rate window: at most `limit` starts in any rolling window of `period` ms, on the Redis clock.
-- The window is a sorted set holding two kinds of entry:
--   * starts: member `<task id>:<attempt>`, scored with the time of the start;
--   * turns: member `~<task id>:<attempt>`, reserved for a task that found the window full,
--     scored with the time at which the slot it waits for frees.
-- Turns are how tasks wait their turn: a task new to the window counts every entry, the turns of
-- the tasks ahead of it included, so it is given the slot after theirs (first come, first served
-- per window) and waits in the delayed set, due exactly then: no jitter, no polling.
-- A task that comes back with its turn counts the starts up to now and the turns ranked before
-- its own (tasks ahead of it that have not started yet), never the turns of tasks behind it. If
-- those fill the window (a start ahead of it came late, and starts are counted when they happen),
-- it waits again for the next slot that frees, keeping its turn, so no task behind it overtakes
-- it. So a start is exact however the schedule turned out (every start in `(now - period, now]`
-- is counted), and the order is the order in which tasks got their turns.
-- A turn whose task never starts (revoked, purged while delayed) stays in the window until its
-- time passes, a slot left unused: never an extra start (drop-turns-2.lua removes such turns).
-- Every read comes before the first write but the trim, so a command Redis refuses (an ACL, a
-- full Redis) leaves the window as it was, but for entries that had aged out anyway.
-- Returns:
--   'bad', err              the window key could not be read (a reply of redis.pcall: a refusal,
--                           or a key of the wrong type); nothing was written
--   'start', nil, turn      the start is counted now; `turn` is the score of the turn it had
--                           (nil for none), for the caller to put back should the start be undone
--   'wait', delayMs, kept   the task waits `delayMs` for its slot, in the delayed set; `kept` is
--                           true when it kept the turn it had (nothing was written), false when a
--                           turn was reserved now (the caller removes it should it undo this)
local function admitRate(rateKey, member, limit, period, now)
  local trimmed = redis.pcall('ZREMRANGEBYSCORE', rateKey, '-inf', now - period)
  if type(trimmed) == 'table' then return 'bad', trimmed end
  local turnMember = '~' .. member
  local turn = redis.call('ZSCORE', rateKey, turnMember)
  local busy, freeingAt
  if turn then
    turn = tonumber(turn)
    -- Counted: every entry ranked before its turn (starts, and the turns of tasks ahead of it),
    -- and the starts ranked after it up to now (tasks that started late, or after it was
    -- examined last); not the turns ranked after it, which are tasks behind it.
    local rank = redis.call('ZRANK', rateKey, turnMember)
    local later = {}
    if turn <= now then
      local after = redis.call('ZRANGEBYSCORE', rateKey, turn, now, 'WITHSCORES')
      for i = 1, #after, 2 do
        local m, s = after[i], tonumber(after[i + 1])
        -- Entries of the same score sort by member: those before its own are in `rank`.
        if string.sub(m, 1, 1) ~= '~' and (s > turn or m > turnMember) then later[#later + 1] = s end
      end
    end
    busy = rank + #later
    if busy >= limit then
      -- The counted entries, oldest first, are the `rank` first by rank, then `later`: the slot
      -- frees when the one at `busy - limit` leaves the window.
      local at = busy - limit
      if at < rank then
        freeingAt = tonumber(redis.call('ZRANGE', rateKey, at, at, 'WITHSCORES')[2])
      else
        freeingAt = later[at - rank + 1]
      end
      -- It keeps its turn: nothing to write.
      return 'wait', freeingAt + period - now, true
    end
  else
    busy = redis.call('ZCARD', rateKey)
    if busy >= limit then
      -- Everything at or before `now - period` is trimmed: the slot frees when the entry
      -- `limit` places from the last leaves the window.
      freeingAt = tonumber(redis.call('ZRANGE', rateKey, busy - limit, busy - limit, 'WITHSCORES')[2])
    end
  end
  local at = now
  if freeingAt then at = freeingAt + period end
  -- The window lives until its last entry leaves it; a start never shortens the life a turn gave it.
  local life = at + period - now
  local ttl = redis.call('PTTL', rateKey)
  if turn then redis.call('ZREM', rateKey, turnMember) end
  if freeingAt then
    redis.call('ZADD', rateKey, at, turnMember)
  else
    redis.call('ZADD', rateKey, now, member)
  end
  if ttl < life then redis.call('PEXPIRE', rateKey, life) end
  if freeingAt then return 'wait', at - now, false end
  return 'start', nil, turn
end
