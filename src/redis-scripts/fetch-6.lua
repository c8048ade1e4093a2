--[[
  fetch: a worker's one call to a queue. It ends a batch of runs of started tasks (STARTED ->
  SUCCESS, FAILURE, REVOKED or RETRY; see includes/finish-task.lua) and, in the same call,
  recovers lapsed leases, moves due delayed tasks to the wait list and starts up to `want`
  tasks (PENDING/RETRY -> STARTED with a lease and a run token; see includes/start-tasks.lua).
  So a busy worker spends one round trip per task. Either part may be empty: with no ends it is
  a plain fetch, with `want` 0 a plain finish.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active
  KEYS[4] dead-letter list  <prefix>:{<queue>}:dead
  KEYS[5] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[6] stats hash        <prefix>:{<queue>}:stats (runs ended per 10 s, see below)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] lease in ms
  ARGV[4] want: how many tasks to start at most (0: finish only)
  ARGV[5] random seed for the rate-limit jitter and the run tokens
  ARGV[6] default result lifetime in ms
  ARGV[7] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[8] 1 when the caller is a Redis Cluster client, else 0 (see notHereYet in includes/refusal.lua)
  ARGV[9] number of finished runs F (0 for a plain fetch), then F groups of 8:
          id, run token, state ('SUCCESS' | 'FAILURE' | 'RETRY'), field ('r' result, 'e' error,
          '' none), JSON value, result lifetime in ms, retry delay in ms, dead-letter reason
          ('' none)

  The runs ended are counted in the queue's stats hash (KEYS[6], fields
  's:<bucket>' succeeded and 'f:<bucket>' failed or retried, a bucket per 10 s of the Redis
  clock, 15 minutes kept) for the Inspector's tasks per second.

  Returns {started, limited, revoked, nextDelay, more, outcomes, problem}: as in
  start-tasks.lua (with want 0: nothing started, nextDelay given, more 0); outcomes is a flat
  list of two items per finished run, in the order given: the outcome and its detail (see
  finish-task.lua: SUCCESS, FAILURE, REVOKED, RETRY, STALE with the state Redis holds, ERROR
  with Redis's refusal).
]]
-- @include "now"
-- @include "start-tasks"
-- @include "finish-task"
-- @include "dead-letter"
-- @include "next-delay"
-- @include "refusal"
-- @include "events"
-- @include "keys"

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
useCluster(ARGV[8] == '1')
local outcomes = {}
local count = tonumber(ARGV[9])
for i = 0, count - 1 do
  local o = 10 + i * 8
  local mark = eventMark()
  local ok, outcome, detail = pcall(finishTask, base, KEYS[3], KEYS[2], workerId, tonumber(ARGV[3]), now, ARGV[o], ARGV[o + 1], ARGV[o + 2],
    ARGV[o + 3], ARGV[o + 4], tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6]), ARGV[o + 7])
  -- A command refused half way (the first ones succeeded): the worker sends this finish again,
  -- and the token tells it apart from a finish already stored.
  if not ok then outcome, detail = 'ERROR', errorText(outcome) end
  if outcome == 'ERROR' then eventRewind(mark) end
  table.insert(outcomes, outcome)
  table.insert(outcomes, detail)
end

-- Counting is best effort: a refused command (a full Redis, an ACL) must not fail the call.
if count > 0 then pcall(countEnds, KEYS[6], outcomes, now) end

local want = tonumber(ARGV[4])
local reply
if want > 0 then
  reply = startTasks(base, KEYS[1], KEYS[2], KEYS[3], workerId, tonumber(ARGV[3]), want, now, tonumber(ARGV[6]),
    ARGV[5], outcomes)
else
  reply = {{}, {}, {}, nextDelayOf(KEYS[2], now), 0, outcomes, ''}
end
flushEvents()
return reply
