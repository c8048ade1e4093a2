--[[
  limit: a named limit (Limits.define), in the slot of its own hash tag `{limit:<name>}`, apart
  from every queue. The worker calls it before a run of a task that uses the limit, once per
  limit (the queue's fetch has started the run already), and again to move what a run holds when
  another of its limits makes it wait, or to correct a run's cost. A run is named by `run`,
  '<queue>|<task id>:<attempt>'; its entry carries its cost: member '<cost>|<run>'.

  Two algorithms:
  * window: an exact rolling window, as includes/rate-window.lua but weighted. KEYS[1] is a sorted
    set of one entry per run started (scored with its start) or waiting for its turn (scored with
    the turn, in the future). A start counts the costs of the entries: all of them for a run new to
    the window (the turns of the runs ahead of it included: first come, first served), only those
    up to now for a run that comes back with its turn; a run starts when they and its cost fit in
    `n`, so the costs started in any window of `period` never add up to more than `n`. Otherwise
    its turn is the time at which enough of the earliest entries have left the window, and it is
    reserved there.
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
  KEYS[2] <prefix>:{limit:<name>}:r   gcra: the reservations (zset); window: not touched

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
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local trimmed = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', now - period)
  if type(trimmed) == 'table' and trimmed.err then return {'bad', 'limit window ' .. key .. ': ' .. trimmed.err} end
  -- An entry's cost is the number before its '|' (1 for one written otherwise).
  local function costOf(member) return tonumber(string.match(member, '^(%d+)|')) or 1 end
  local function keepUntil(at)
    local life = at + period - now
    if redis.call('PTTL', key) < life then redis.call('PEXPIRE', key, life) end
  end

  if op == 'take' then
    if cost > n then return {'bad', 'cost ' .. cost .. ' is more than the limit allows per period (' .. n .. ')'} end
    local entries
    if redis.call('ZSCORE', key, mine) then
      -- Its turn came: the window up to now counts; later entries are the turns of runs behind it.
      redis.call('ZREM', key, mine)
      entries = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES')
    else
      entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    end
    local busy = 0
    for i = 1, #entries, 2 do busy = busy + costOf(entries[i]) end
    local at = now
    if busy + cost > n then
      -- Everything at or before now - period is trimmed: the turn comes when the earliest entries
      -- whose costs make room have left the window, the last of them `period` after its time.
      local over, freed = busy + cost - n, 0
      for i = 1, #entries, 2 do
        freed = freed + costOf(entries[i])
        if freed >= over then at = tonumber(entries[i + 1]) + period; break end
      end
    end
    redis.call('ZADD', key, at, mine)
    keepUntil(at)
    if at > now then return {'wait', at - now} end
    return {'start', 0}
  elseif op == 'defer' then
    local at = now + tonumber(ARGV[7])
    redis.call('ZADD', key, 'XX', at, mine)
    keepUntil(at)
    return {'ok', 0}
  elseif op == 'cost' then
    local actual = tonumber(ARGV[7])
    local at = redis.call('ZSCORE', key, mine)
    if not at then return {'ok', 0} end
    redis.call('ZREM', key, mine)
    redis.call('ZADD', key, at, whole(actual) .. '|' .. run)
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
