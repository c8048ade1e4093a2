-- A rate window: at most `limit` starts in any rolling window of `period` ms, on the Redis clock.
-- The window is a sorted set of one entry per start, member `<task id>:<attempt>`, scored with
-- the time of the start; and, for tasks that found it full, one entry per *reservation*: the
-- same member scored with the time at which its slot frees, in the future. Reservations are how
-- tasks wait their turn: a task new to the window counts every entry, the reservations of the
-- tasks ahead of it included, so it is given the slot after theirs (first come, first served per
-- window) and waits in the delayed set, due exactly then: no jitter, no polling, and a task is
-- examined a few times however long the backlog (to reserve, to start, and once more when the
-- start ahead of it came late).
-- A start is exact however the schedule turned out: a task that comes back with its reservation
-- counts only the entries up to now (the starts, and the reservations of tasks due before it
-- that have not started yet); if those fill the window (a task ahead of it started late), it
-- takes the next slot that frees, keeping its entry. So no window of `period` ever holds more
-- than `limit` starts, whatever the lateness of workers; the order is first come, first served
-- up to that lateness (a few ms).
-- A reservation whose task never starts (revoked, purged while delayed) stays in the window until
-- its time passes, a slot left unused: never an extra start (drop-turns-2.lua removes such turns).
-- Returns:
--   'bad', err         the window key could not be read (a reply of redis.pcall: a refusal, or a
--                      key of the wrong type); nothing was written
--   'start'            the start is counted now
--   'wait', delayMs    the slot is reserved `delayMs` from now; the caller puts the task in the
--                      delayed set, due then
local function admitRate(rateKey, member, limit, period, now)
  local trimmed = redis.pcall('ZREMRANGEBYSCORE', rateKey, '-inf', now - period)
  if type(trimmed) == 'table' then return 'bad', trimmed end
  local busy
  if redis.call('ZSCORE', rateKey, member) then
    -- Its turn came (or it is here again after a late start ahead of it): what counts is the
    -- window up to now; entries later than now are the turns of tasks behind it.
    redis.call('ZREM', rateKey, member)
    busy = redis.call('ZCOUNT', rateKey, '-inf', now)
  else
    busy = redis.call('ZCARD', rateKey)
  end
  local at, delay = now, nil
  if busy >= limit then
    -- Everything at or before `now - period` is trimmed, so the entries counted are the first
    -- `busy` by rank: the slot frees when the one `limit` places from the last of them leaves.
    local freeing = redis.call('ZRANGE', rateKey, busy - limit, busy - limit, 'WITHSCORES')
    at = tonumber(freeing[2]) + period
    delay = at - now
  end
  redis.call('ZADD', rateKey, at, member)
  -- The window lives until its last entry leaves it; a start never shortens the life a
  -- reservation gave it.
  local life = at + period - now
  if redis.call('PTTL', rateKey) < life then redis.call('PEXPIRE', rateKey, life) end
  if delay then return 'wait', delay end
  return 'start'
end
