--[[
  fetch: a worker's one call to a queue. It marks the reservations whose handler began as begun,
  ends a batch of runs of started tasks (STARTED ->
  SUCCESS, FAILURE, REVOKED or RETRY; see includes/finish-task.lua) and, in the same call, moves
  due delayed tasks to the wait list and starts up to `want` tasks (PENDING/RETRY -> STARTED
  with a lease and a run token), or claims them for the next call (see includes/start-tasks.lua:
  a task starts only in a call that declares its record, lock and rate window). So a busy
  worker spends one round trip per task. Either part may be empty: with no ends it is a plain
  fetch, with `want` 0 a plain finish.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active
  KEYS[4] dead-letter list  <prefix>:{<queue>}:dead
  KEYS[5] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[6] stats hash        <prefix>:{<queue>}:stats (runs ended per 10 s, see below)
  KEYS[7] claimed zset      <prefix>:{<queue>}:claimed (id -> when the claim lapses, ms)
  then, per begun reservation in ARGV order: its record <prefix>:{<queue>}:t:<id>;
  then, per finished run in ARGV order: its record <prefix>:{<queue>}:t:<id>, and its lock when
  the run has one, followed by the lock's pending pointer (<prefix>:{<queue>}:next:..., see
  enqueue-3.lua) when flagged '2'; then per candidate in ARGV order: its record, its lock when flagged 'l', its
  rate window when flagged 'r'.

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] lease in ms
  ARGV[4] want: how many tasks to start or claim at most, the caller's claims to start included
          (0: finish only; claims given are then released)
  ARGV[5] random whole number: the run token of the tasks this call starts
  ARGV[6] default result lifetime in ms
  ARGV[7] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[8] claim lifetime in ms
  ARGV[9] peek: how many ids at the tail of the wait list to return after the call (0: none)
  ARGV[10] handlers: how many tasks this call may start to begin at once (its claims kept count
          first); the others it starts are reservations (prefetch: field rs = '1', no st, no
          'started' event; marked 'p' in the reply), and a rate-limited task is not started
          as one (see includes/start-tasks.lua: `blocked`)
  ARGV[11] number of begun reservations B, then B triples: id, run token, ms since its handler
          began (reservations of this worker whose handler began since its last call: each
          still current (STARTED, this worker, this token, rs) loses rs, gets st = now - those
          ms and its 'started' event; before the ends, so a reservation that began and ended
          since carries both in one call)
  then the number of finished runs F (0 for a plain fetch), then F groups of 9:
          id, run token, state ('SUCCESS' | 'FAILURE' | 'RETRY'), field ('r' result, 'e' error,
          '' none), JSON value, result lifetime in ms, retry delay in ms, dead-letter reason
          ('' none), '1' when its lock follows its record in KEYS, '2' when its lock and the
          lock's pending pointer do, else ''
  then the number of candidates C, then C groups of 4: id, mode ('h' an id seen at the tail of
          the wait list, 'k' one further in to look ahead at, 'c' a claim of the caller to start,
          'r' a claim to release), the claim's
          stamp ('' for 'h'), flags ('l' its lock is declared, 'r' its rate window, both, or '')

  The runs ended are counted in the queue's stats hash (KEYS[6], fields
  's:<bucket>' succeeded and 'f:<bucket>' failed or retried, a bucket per 10 s of the Redis
  clock, 15 minutes kept) for the Inspector's tasks per second.

  Returns {started, limited, revoked, nextDelay, more, outcomes, problem, claims, peek, lapsed, looked, blocked,
  staleBegins}: as in start-tasks.lua (with want 0: nothing started, nextDelay given, more 0);
  outcomes is a flat list of two items per finished run, in the order given: the outcome and its
  detail (see finish-task.lua: SUCCESS, FAILURE, REVOKED, RETRY, STALE with the state Redis holds,
  ERROR with Redis's refusal); staleBegins a flat list of id, run token and the state Redis holds
  ('gone': no record) per begin whose run is no longer current (revoked, or recovered while its
  worker was cut off): the worker stops those handlers.

  A declared record that is not the record of its id is the caller's mistake: the call fails
  before it writes anything.
]]
-- @include "now"
-- @include "start-tasks"
-- @include "declared"
-- @include "finish-task"
-- @include "dead-letter"
-- @include "next-delay"
-- @include "refusal"
-- @include "events"
-- @include "keys"
-- @include "ms-text"

-- Counts the runs this call ended, per 10-second bucket (see the header). When a bucket opens,
-- those older than 15 minutes go.
local function countEnds(key, outcomes, now)
  local ok, failed = 0, 0
  for i = 1, #outcomes, 2 do
    local o = outcomes[i]
    if o == 'SUCCESS' then ok = ok + 1 elseif o == 'FAILURE' or o == 'RETRY' then failed = failed + 1 end
  end
  local bucket = math.floor(now / 10000)
  local opened = false
  if ok > 0 then opened = redis.pcall('HINCRBY', key, 's:' .. bucket, ok) == ok end
  if failed > 0 then opened = (redis.pcall('HINCRBY', key, 'f:' .. bucket, failed) == failed) or opened end
  if opened then
    local old = {}
    for _, field in ipairs(redis.call('HKEYS', key)) do
      local b = tonumber(string.sub(field, 3))
      if b and b < bucket - 90 then table.insert(old, field) end
    end
    if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  end
end

local base, workerId = ARGV[1], ARGV[2]
local now = nowMs()
useEvents(ARGV[7], workerId, KEYS[5])
useDeadLetters(KEYS[4])

-- The declared keys, checked before anything is written (nextDeclared: a record that is not its
-- id's fails the call).
local nextKey = 8
local handlers = tonumber(ARGV[10])
local beginCount = tonumber(ARGV[11])
local begins = {}
for i = 0, beginCount - 1 do
  local o = 12 + i * 3
  local key, _
  key, _, nextKey = nextDeclared('fetch', base, ARGV[o], nextKey, '')
  begins[i + 1] = { key, ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 2]) or 0 }
end
local first = 12 + beginCount * 3
local count = tonumber(ARGV[first])
local ends = {}
for i = 0, count - 1 do
  local o = first + 1 + i * 9
  local key, lock, pointer
  key, lock, nextKey, pointer = nextDeclared('fetch', base, ARGV[o], nextKey, ARGV[o + 8])
  ends[i + 1] = { key, lock, o, pointer }
end
local at = first + 1 + count * 9
local candCount = tonumber(ARGV[at])
local cands, order = {}, {}
for i = 0, candCount - 1 do
  local o = at + 1 + i * 4
  local id, flags = ARGV[o], ARGV[o + 3]
  local withLock = ''
  if string.find(flags, 'l', 1, true) then withLock = '1' end
  local key, lock
  key, lock, nextKey = nextDeclared('fetch', base, id, nextKey, withLock)
  local c = { key = key, mode = ARGV[o + 1], stamp = ARGV[o + 2] }
  if lock ~= '' then c.lock = lock end
  if string.find(flags, 'r', 1, true) then
    c.rate = KEYS[nextKey]
    nextKey = nextKey + 1
  end
  if not cands[id] then order[#order + 1] = id end
  cands[id] = c
end

-- A reservation whose handler began: STARTED from now on for every reader. Best effort: a refused
-- command leaves it reading PENDING until it ends.
-- Returns the state Redis holds when the run is no longer current (revoked, recovered by another
-- worker: its begun handler must stop), else nil.
local function beginRun(key, id, token, ago)
  local t = redis.call('HMGET', key, 's', 'w', 'tk', 'rs', 'at')
  if not (t[1] == 'STARTED' and t[2] == workerId and t[3] == token) then return t[1] or 'gone' end
  -- Current, its begin already stored (a begin sent again after a call that failed).
  if not t[4] then return nil end
  redis.call('HSET', key, 'st', wholeText(now - math.max(0, math.floor(ago))))
  redis.call('HDEL', key, 'rs')
  local attempt = tonumber(t[5]) or 1
  noteEvent('started', id, 'w', workerId, 'a', attempt > 1 and attempt or nil)
end
-- Begins of runs no longer current: id, token, the state Redis holds, for the reply.
local staleBegins = {}
for i = 1, beginCount do
  local mark = eventMark()
  local ok, stale = pcall(beginRun, begins[i][1], begins[i][2], begins[i][3], begins[i][4])
  if not ok then
    eventRewind(mark)
  elseif stale then
    table.insert(staleBegins, begins[i][2]); table.insert(staleBegins, begins[i][3]); table.insert(staleBegins, stale)
  end
end

local outcomes = {}
for i = 1, count do
  local key, lock, o = ends[i][1], ends[i][2], ends[i][3]
  local handOver = nil
  if ends[i][4] then handOver = { next = ends[i][4], delayed = KEYS[2], wait = KEYS[1] } end
  local mark = eventMark()
  local ok, outcome, detail = pcall(finishTask, key, lock, base, KEYS[3], KEYS[2], workerId, tonumber(ARGV[3]), now, ARGV[o],
    ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6]), ARGV[o + 7], handOver)
  -- A command refused half way (the first ones succeeded): the worker sends this finish again,
  -- and the token tells it apart from a finish already stored.
  if not ok then outcome, detail = 'ERROR', errorText(outcome) end
  if outcome == 'ERROR' then eventRewind(mark) end
  outcomes[2 * i - 1], outcomes[2 * i] = outcome, detail
end

-- Counting is best effort: a refused command (a full Redis, an ACL) must not fail the call.
if count > 0 then pcall(countEnds, KEYS[6], outcomes, now) end

local want = tonumber(ARGV[4])
local reply
if want > 0 or candCount > 0 then
  reply = startTasks(base, { wait = KEYS[1], delayed = KEYS[2], active = KEYS[3], claimed = KEYS[7] }, workerId,
    tonumber(ARGV[3]), want, now, tonumber(ARGV[6]), ARGV[5], outcomes, cands, order, tonumber(ARGV[8]), tonumber(ARGV[9]), handlers)
else
  reply = {{}, {}, {}, nextDelayOf(KEYS[2], now), 0, outcomes, '', {}, {}, {}, {}, 0}
end
reply[13] = staleBegins
flushEvents()
return reply
