--[[
  limit: a named limit (Limits.define), in the slot of its own hash tag `{limit:<name>}`, apart
  from every queue. The worker calls it before a run of a task that uses the limit, once per
  limit (the queue's fetch has started the run already), and again to move what a run holds when
  another of its limits makes it wait, or to correct a run's cost. A run is named by `run`,
  '<queue>|<task id>:<attempt>'; its entry carries its cost: member '<cost>|<run>'.

  Two algorithms:
  * window: an exact rolling window, as includes/rate-window.lua but weighted. KEYS[1] is a sorted
    set of one entry per run started (scored with its start) or waiting for its turn (scored with
    the turn, in the future); KEYS[2] the sum of their costs. A start counts the costs of the
    entries: all of them for a run new to the window (the turns of the runs ahead of it included:
    first come, first served), only those up to now for a run that comes back with its turn (the
    sum less the turns later than now); a run starts when they and its cost fit in `n`, so the
    costs started in any window of `period` never add up to more than `n`. Otherwise its turn is
    the time at which enough of the earliest entries have left the window, and it is reserved
    there. A take reads the entries that leave the window, the turns after now (for a run back
    with its own), and, when the window is full, the earliest entries until they make room.
  * gcra: the generic cell rate algorithm. KEYS[1] holds the theoretical arrival time (TAT, µs on
    the Redis clock); a unit costs period/n. A run of cost c is charged by moving the TAT to
    max(TAT, now) + c·period/n, and starts when the TAT then lies at most `period` ahead of now;
    otherwise the TAT is moved all the same (its units are paid for at its turn, first come,
    first served) and KEYS[2], a sorted set of reservations scored with the TAT each one left
    (µs), remembers it. A run that comes back with its reservation starts without a new charge if
    it is not more than period/n late for the units it paid (its paid units then lie no earlier
    than one unit before its start, which keeps the bound of docs/guarantees.md: at most n + 1 +
    L·n/period units in any span L, so at most 2n in any window of `period`); a later one is
    charged afresh (the units it paid stay unused: a start fewer, never one more).

  KEYS[1] <prefix>:{limit:<name>}:w   window: the entries (zset); gcra: the TAT (string)
  KEYS[2] <prefix>:{limit:<name>}:r   window: the sum of the entries' costs (string); gcra: the
                                      reservations (zset)

  ARGV[1] operation: 'take', 'defer' or 'cost'
  ARGV[2] algorithm: 'window' or 'gcra'
  ARGV[3] n, a whole number >= 1
  ARGV[4] period, whole ms >= 1
  ARGV[5] run: '<queue>|<task id>:<attempt>'
  ARGV[6] the run's cost, whole >= 1 (for 'cost': the cost it was charged)
  ARGV[7] 'defer': ms from now of the turn the run waits for; 'cost': the new cost, whole >= 0
  ARGV[8] 'defer', gcra: the TAT its take answered ('' none)

  take: charges the run now or reserves its turn. Returns {'start', 0, tat} or {'wait', delay ms,
    tat}, or {'bad', message} when the key holds a value of another type, or the cost is more
    than n (nothing written). `tat` (gcra) is the TAT the charge left, as text ('' when the run
    was charged before: its reservation), for a 'defer'; window: absent.
  defer: the run will not start now: another of its limits gave it a later turn, at ARGV[7] ms from
    now. window: its entry (a start just counted, or its turn) moves to that turn, a reservation
    there. gcra: what it was charged is taken back when nothing was charged after it (the TAT is
    still the one its charge left); else its units stay spent. Returns {'ok', 0}.
  cost: the run reports its actual cost: its entry (window) carries the new cost from now on, or
    the TAT moves by the difference (gcra; a refund never moves it before now). Returns
    {'ok', 1}, or {'ok', 0} when the run's entry has left the window (nothing to correct).
]]
local op, algorithm, n, period, run = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local cost = tonumber(ARGV[6])
if not (n and n >= 1 and period and period >= 1 and cost and cost >= 0) then return redis.error_reply('limit: bad n, period or cost') end
local key = KEYS[1]
local mine = ARGV[6] .. '|' .. run
local t = redis.call('TIME')

-- Whole numbers go to and from Redis as text: tostring() would write 1.7e+15 for a time in µs.
local function whole(x) return string.format('%.0f', x) end

if algorithm == 'window' then
  local sumKey = KEYS[2]
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- An entry's cost is the number before its '|' (1 for one written otherwise).
  local function costOf(member) return tonumber(string.match(member, '^(%d+)|')) or 1 end
  -- The entries that leave the window now, for their costs; then the sum of the costs of those
  -- that stay, kept in KEYS[2] so a take reads neither every entry nor its cost. A sum that is
  -- missing (deleted by hand, or lapsed apart from the window) is counted again from the entries.
  local gone = redis.pcall('ZRANGEBYSCORE', key, '-inf', now - period)
  if type(gone) == 'table' and gone.err then return {'bad', 'limit window ' .. key .. ': ' .. gone.err} end
  local sumText = redis.pcall('GET', sumKey)
  if type(sumText) == 'table' and sumText.err then return {'bad', 'limit window sum ' .. sumKey .. ': ' .. sumText.err} end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period) end
  local sum = tonumber(sumText)
  -- No entries, no sum (the two lapse together, give or take a ms: never trust a sum alone).
  if sum ~= nil and (sum < 0 or redis.call('ZCARD', key) == 0) then sum = nil end
  if sum == nil then
    sum = 0
    for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do sum = sum + costOf(m) end
  else
    for _, m in ipairs(gone) do sum = sum - costOf(m) end
  end
  -- The window lives until its last entry leaves it (a start never shortens the life a turn gave
  -- it), and its sum as long.
  local function keep(at)
    local life = at + period - now
    local ttl = redis.call('PTTL', key)
    if ttl == -2 then
      redis.call('DEL', sumKey)
      return
    end
    if ttl < life then redis.call('PEXPIRE', key, life) else life = ttl end
    redis.call('SET', sumKey, whole(sum), 'PX', life)
  end

  if op == 'take' then
    if cost > n then return {'bad', 'cost ' .. cost .. ' is more than the limit allows per period (' .. n .. ')'} end
    local busy = sum
    if redis.call('ZSCORE', key, mine) then
      -- Its turn came: the window up to now counts; later entries are the turns of runs behind it.
      redis.call('ZREM', key, mine)
      sum = sum - cost
      busy = sum
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')) do busy = busy - costOf(m) end
    end
    local at = now
    if busy + cost > n then
      -- Everything at or before now - period is trimmed: the turn comes when the earliest entries
      -- whose costs make room have left the window, the last of them `period` after its time.
      -- They are among the entries counted (over <= busy, since cost <= n), read from the
      -- earliest a few at a time.
      local over, freed, from = busy + cost - n, 0, 0
      at = nil
      while not at do
        local chunk = redis.call('ZRANGE', key, from, from + 63, 'WITHSCORES')
        if #chunk == 0 then at = now + period; break end -- the sum said more than the entries hold: the safe side
        for i = 1, #chunk, 2 do
          freed = freed + costOf(chunk[i])
          if freed >= over then at = tonumber(chunk[i + 1]) + period; break end
        end
        from = from + 64
      end
    end
    redis.call('ZADD', key, at, mine)
    sum = sum + cost
    keep(at)
    if at > now then return {'wait', at - now} end
    return {'start', 0}
  elseif op == 'defer' then
    local at = now + tonumber(ARGV[7])
    redis.call('ZADD', key, 'XX', at, mine)
    keep(at)
    return {'ok', 0}
  elseif op == 'cost' then
    local actual = tonumber(ARGV[7])
    local at = redis.call('ZSCORE', key, mine)
    if not at then
      keep(now)
      return {'ok', 0}
    end
    redis.call('ZREM', key, mine)
    redis.call('ZADD', key, at, whole(actual) .. '|' .. run)
    sum = sum + actual - cost
    keep(now)
    return {'ok', 1}
  end
  return redis.error_reply('limit: unknown operation ' .. tostring(op))
end

if algorithm ~= 'gcra' then return redis.error_reply('limit: unknown algorithm ' .. tostring(algorithm)) end
local reserved = KEYS[2]
local nowUs = tonumber(t[1]) * 1000000 + tonumber(t[2])
local periodUs = period * 1000
-- A unit's share of the period, µs: rounded up when charged (never less than paid for), down for
-- the lateness a reservation is allowed and for a refund.
local function charge(units) return math.ceil(units * periodUs / n) end
local unitUs = math.floor(periodUs / n)
local tatText = redis.pcall('GET', key)
if type(tatText) == 'table' and tatText.err then return {'bad', 'limit ' .. key .. ': ' .. tatText.err} end
local tat = tonumber(tatText) or 0
local function setTat(value)
  tat = value
  if value > nowUs then
    redis.call('SET', key, whole(value), 'PX', math.ceil((value - nowUs) / 1000) + 1)
  else
    redis.call('DEL', key)
  end
end

if op == 'take' then
  if cost > n then return {'bad', 'cost ' .. cost .. ' is more than the limit allows per period (' .. n .. ')'} end
  local gone = redis.pcall('ZREMRANGEBYSCORE', reserved, '-inf', '(' .. whole(nowUs))
  if type(gone) == 'table' and gone.err then return {'bad', 'limit reservations ' .. reserved .. ': ' .. gone.err} end
  local paid = tonumber(redis.call('ZSCORE', reserved, mine))
  if paid then
    local turn = paid - periodUs
    -- Back before its turn (the queue's node keeps another clock): it waits the rest.
    if nowUs < turn then return {'wait', math.ceil((turn - nowUs) / 1000), whole(paid)} end
    redis.call('ZREM', reserved, mine)
    if nowUs <= paid - charge(cost) + unitUs then return {'start', 0, ''} end
    -- Too late to use what it paid: taken back if nothing was charged after it, else left unused.
    if tat == paid then setTat(paid - charge(cost)) end
  end
  local after = math.max(tat, nowUs) + charge(cost)
  setTat(after)
  if after - periodUs <= nowUs then return {'start', 0, whole(after)} end
  redis.call('ZADD', reserved, whole(after), mine)
  local life = math.ceil((after - nowUs) / 1000) + 1
  if redis.call('PTTL', reserved) < life then redis.call('PEXPIRE', reserved, life) end
  return {'wait', math.ceil((after - periodUs - nowUs) / 1000), whole(after)}
elseif op == 'defer' then
  -- The TAT its charge left: its reservation's score, or for a start charged now the TAT the take
  -- answered (ARGV[8]); taken back only if it is still the TAT (nothing was charged since).
  local paid = tonumber(redis.call('ZSCORE', reserved, mine))
  if paid then redis.call('ZREM', reserved, mine) else paid = tonumber(ARGV[8]) end
  if paid and tat == paid then setTat(math.max(nowUs, tat - charge(cost))) end
  return {'ok', 0}
elseif op == 'cost' then
  local actual = tonumber(ARGV[7])
  if actual > cost then
    setTat(math.max(tat, nowUs) + charge(actual - cost))
  elseif actual < cost then
    setTat(math.max(nowUs, tat - math.floor((cost - actual) * periodUs / n)))
  end
  return {'ok', 1}
end
return redis.error_reply('limit: unknown operation ' .. tostring(op))
