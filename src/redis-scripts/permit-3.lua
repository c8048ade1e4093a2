--[[
  permit: per-key concurrency (`concurrency` of @Task, or a limit made by
  Limits.define(name, { concurrency: n })): at most n runs hold a permit of one scope at once,
  across every worker. A scope's keys live in a slot of their own (its hash tag
  `{permit:...}` or `{task-permit:...}`), apart from every queue, as a named limit's do. The
  worker calls it after the fetch started a run (before the run's named rate limits: a run
  sent back for a rate turn renews its permits past the turn), at the run's end, and on its
  lease tick.

  A permit is a lease, never a counter: the holders' set holds each run scored with the time its
  permit lapses (Redis clock, ms), renewed on the worker's lease tick. A run whose worker died
  stops being renewed; its entry lapses and is dropped by the next call on the scope, whatever
  that call is. So a killed worker never keeps a permit longer than one lease.

  Waiting is first come, first served. A run that finds no free permit joins the waiters' set
  (scored with the time it first asked, kept while it comes back) and is told when to ask again:
  one of the first n waiters when the earliest holder's permit lapses unless renewed (at most a
  lease); a waiter behind them after three leases (a lapsed permit found by any call on the
  scope goes to the first waiters, so they are the ones to look). A permit that a run
  gives back, or that lapses, is handed over at once to the earliest waiter: it becomes the
  waiter's, for a lease, and the call answers the waiter's name so the caller wakes its task
  (permit-wake-2.lua, in the waiter's queue). A newcomer never takes a permit while anyone waits
  for one. A waiter that does not come back by its deadline (its task was revoked, or deleted)
  leaves the waiters' set; one that was handed a permit and never comes back holds it until it
  lapses, at most a lease.

  A run is named '<attempt>|<length of the queue name>|<queue>|<task id>': unambiguous whatever
  the names hold, so the worker can read back the queue and id of a waiter to wake.

  KEYS[1] holders    <prefix>:{permit:<scope>}:h   zset run -> when its permit lapses (ms)
  KEYS[2] waiters    <prefix>:{permit:<scope>}:q   zset run -> when it first asked (ms)
  KEYS[3] deadlines  <prefix>:{permit:<scope>}:d   zset run -> when a waiter is given up (ms)

  ARGV[1] operation: 'acquire', 'release' or 'renew'
  ARGV[2] n, the permits of the scope, a whole number >= 1
  ARGV[3] the lease, whole ms >= 1
  ARGV[4..] runs: one for 'acquire'; any number for 'release' and 'renew'

  acquire: {'start', 0, woken...} (the run holds a permit for a lease) or {'wait', ms until it
    should ask again, woken...}. `woken`: the waiters handed a permit by this call.
  release: the runs give back their permits (and stop waiting): {'ok', 0, woken...}.
  renew: each run's permit lapses a lease from now: {'ok', k, the k runs that hold none...,
    woken...} (a permit that lapsed meanwhile is not taken again: it may be someone else's now).
]]
local op, n, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if not (n and n >= 1 and lease and lease >= 1) then return redis.error_reply('permit: bad n or lease') end
local holders, waiters, deadlines = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Lapsed permits and waiters given up, dropped by Redis time.
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now)
if #gone > 0 then
  redis.call('ZREM', waiters, unpack(gone))
  redis.call('ZREM', deadlines, unpack(gone))
end

-- The free permits go to the earliest waiters; returns their names.
local function handOver()
  local free = n - redis.call('ZCARD', holders)
  if free <= 0 then return {} end
  local first = redis.call('ZRANGE', waiters, 0, free - 1)
  for _, w in ipairs(first) do
    redis.call('ZADD', holders, now + lease, w)
    redis.call('ZREM', waiters, w)
    redis.call('ZREM', deadlines, w)
  end
  return first
end

-- Every entry lives at most four leases past this call (a waiter's deadline is its next ask, at
-- most three leases away, plus a lease); the keys outlive them by a lease. Only ever raised:
-- workers with other leases may share a scope, and a short one must not cut a long one's life.
local function keep()
  for _, k in ipairs(KEYS) do
    local ttl = redis.call('PTTL', k)
    if ttl ~= -2 and ttl < 5 * lease then redis.call('PEXPIRE', k, 5 * lease) end
  end
end

local function reply(verdict, detail, woken)
  keep()
  local out = {verdict, detail}
  for _, w in ipairs(woken) do table.insert(out, w) end
  return out
end

if op == 'acquire' then
  local run = ARGV[4]
  if not run then return redis.error_reply('permit: acquire names no run') end
  local woken = {}
  if not redis.call('ZSCORE', holders, run) then
    -- Those who waited first come first: a waiter handed a permit here is woken.
    woken = handOver()
    for i, w in ipairs(woken) do
      if w == run then table.remove(woken, i); break end
    end
    if not redis.call('ZSCORE', holders, run) then
      if redis.call('ZCARD', holders) >= n then
        redis.call('ZADD', waiters, 'NX', now, run)
        -- When to ask again. Only a permit that lapsed needs a waiter to ask (one given back is
        -- handed over and its waiter woken), and one call on the scope hands every lapsed permit
        -- to the first waiters: so the first n waiters ask when the earliest permit could lapse,
        -- and those behind them only every few leases, to keep their places.
        local again = 3 * lease
        if redis.call('ZRANK', waiters, run) < n then
          local earliest = redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')
          again = lease
          if earliest[2] then again = math.max(1, math.min(lease, tonumber(earliest[2]) - now + 1)) end
        end
        redis.call('ZADD', deadlines, now + again + lease, run)
        return reply('wait', again, woken)
      end
    end
  end
  -- Holds one (asked before, or handed one while it waited), or one was free with nobody waiting.
  redis.call('ZADD', holders, now + lease, run)
  redis.call('ZREM', waiters, run)
  redis.call('ZREM', deadlines, run)
  return reply('start', 0, woken)
elseif op == 'release' then
  for i = 4, #ARGV do
    redis.call('ZREM', holders, ARGV[i])
    redis.call('ZREM', waiters, ARGV[i])
    redis.call('ZREM', deadlines, ARGV[i])
  end
  return reply('ok', 0, handOver())
elseif op == 'renew' then
  local lost = {}
  for i = 4, #ARGV do
    if redis.call('ZSCORE', holders, ARGV[i]) then
      redis.call('ZADD', holders, now + lease, ARGV[i])
    else
      table.insert(lost, ARGV[i])
    end
  end
  -- Permits that lapsed above go to the waiters.
  local rest = {}
  for _, r in ipairs(lost) do table.insert(rest, r) end
  for _, w in ipairs(handOver()) do table.insert(rest, w) end
  return reply('ok', #lost, rest)
end
return redis.error_reply('permit: unknown operation ' .. tostring(op))
