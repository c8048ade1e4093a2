--[[
  decline: a worker started a task whose name it does not declare (a worker of an older build,
  or of another app on the same prefix, during a rolling deploy). It hands the run back without
  counting an attempt: the task waits in the delayed set, with a delay that doubles at each
  hand-back (250 ms, 500 ms, ... at most 10 s, or 2 s while some worker declares the name), so
  a worker that declares the name takes it when it is due and one that does not never spins on
  it. Only when no worker has declared the
  name (see declare-1.lua) for the grace period (since the first hand-back, or the last one that
  found the name declared) does the task end
  FAILURE with UnknownTaskError, dead-lettered. Only the current run is declined (STARTED,
  this worker, this run token).

  KEYS[1] wait list         <prefix>:{<queue>}:wait (for the wake-up marker)
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active
  KEYS[4] declared names    <prefix>:{<queue>}:names
  KEYS[5] task hash         <prefix>:{<queue>}:t:<id> (the id of ARGV[3])
  KEYS[6] dead-letter list  <prefix>:{<queue>}:dead
  KEYS[7] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[8..] the run's unique lock, then its rate window, as the record names them (fields lk or lu,
            rk, read by the caller before the call), each only when ARGV[10] or ARGV[11] is '1'
            (so a call passes 7 to 9 keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] task id
  ARGV[4] run token
  ARGV[5] grace period in ms (0: fail at once)
  ARGV[6] result lifetime in ms, for a task that ends here
  ARGV[7] the error message of that end
  ARGV[8] random seed for the jitter
  ARGV[9] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[10] '1' when KEYS declare the record's lock, else ''
  ARGV[11] '1' when KEYS declare the record's rate window, else ''

  Returns {verdict, detail}: 'DEFERRED', delay ms; 'FAILURE', message; 'REVOKED', reason (a
  revoke was requested since the fetch started it: it ends REVOKED, never runs); 'STALE', state;
  'KEYS_CHANGED', '' (the record names another lock or rate window than the one declared: nothing
  changed, the caller reads them again and calls again; includes/declared.lua).
  Record fields: ud (ms of the last hand-back of the current series that found the name declared,
  or of its first: the grace counts from it), un (hand-backs in the series), ua
  (the attempts the task had then: a run since, by a worker that runs it, starts a new series).
  A hand-back pushes the wake-up marker when the task becomes the earliest of the delayed set,
  so blocked workers that run it see it when it is due.
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "end-task"
-- @include "dead-letter"
-- @include "undo-start"
-- @include "wake"
-- @include "events"
-- @include "declared"

-- While some worker declares the name, the delay stays short: every worker whose timer fires when
-- the task is due may take it, and a worker that runs it should win one of the next few tries.
local BASE_DELAY_MS, MAX_DELAY_MS, DECLARED_MAX_DELAY_MS = 250, 10000, 2000
local base, workerId, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local grace, expireMs, message = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local key = KEYS[5]
-- The declared lock and rate window, in the order of the header ('' for none).
local declaredLock, declaredRate = '', ''
if ARGV[10] == '1' then declaredLock = KEYS[8] end
if ARGV[11] == '1' then declaredRate = KEYS[#KEYS] end
if #KEYS ~= 7 + (ARGV[10] == '1' and 1 or 0) + (ARGV[11] == '1' and 1 or 0) then
  return redis.error_reply('decline: ' .. #KEYS .. ' keys, not the 7 and the lock and rate window ARGV[10] and ARGV[11] name')
end
-- endTask names the record from the base and the id: it must be this key.
if key ~= taskKeyOf(base, id) then return redis.error_reply('decline: KEYS[5] is not the record of task ' .. id) end
useEvents(ARGV[9], workerId, KEYS[7])
useDeadLetters(KEYS[6])
local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'n', 'at', 'ry', 'rk', 'ud', 'un', 'ua', 'rv', 'lk', 'lw', 'lu')
-- A record replaced by a value of another type since the fetch is not this run's any more.
if t.err and not isRefusal(t) then return {'STALE', ''} elseif t.err then error(t) end
if not (t[1] == 'STARTED' and t[2] == workerId and t[3] == token) then return {'STALE', t[1] or ''} end
-- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
t[12] = lockNamed(base, t[12], t[14], t[4])
-- Every branch below may touch the lock or the rate window the record names (released when the
-- task ends here, the start taken out of the window): they must be the declared ones.
if not (declaredIs(declaredLock, t[12]) and declaredIs(declaredRate, t[7])) then return {KEYS_CHANGED, ''} end
local attempt, retries = tonumber(t[5]) or 1, t[6]
local lock = { t[12], t[13] }
local now = nowMs()
-- A series of hand-backs belongs to the attempts the task had when it began: a run since (by a
-- worker that runs the task) ends it, and a later hand-back starts a new one with a new grace.
local first, previous = tonumber(t[8]), tonumber(t[9]) or 0
if not first or tonumber(t[10]) ~= attempt - 1 then first, previous = now, 0 end
-- A names hash of the wrong type declares nothing (pcall: it must not wedge the worker).
local declaredUntil = tonumber(redis.pcall('HGET', KEYS[4], t[4]))
local declared = declaredUntil ~= nil and declaredUntil > now
-- The grace counts from the last hand-back that found the name declared (or the first one).
if declared then first = now end

-- The lease goes first: the run ends here either way, and a removal lets the rest of the script
-- through a full Redis (which refuses only a script's first write). Should a later command be
-- refused, the lease is put back and the worker sends the hand-back again.
local expiry = redis.call('ZSCORE', KEYS[3], id)
redis.call('ZREM', KEYS[3], id)
local ok, result = pcall(function()
  if t[11] then
    -- Revoked since the fetch started it: it ends as the revoke asked, and never runs.
    endTask(base, id, 'REVOKED', { 'rr', t[11], 'at', attempt - 1 }, now, expireMs, lock, { t[4] })
    if declaredRate ~= '' then redis.call('ZREM', declaredRate, id .. ':' .. attempt) end
    return {'REVOKED', t[11]}
  end
  if not declared and now - first >= grace then
    deadLetter(base, id, message, now)
    local err = cjson.encode({ name = 'UnknownTaskError', message = message })
    endTask(base, id, 'FAILURE', { 'e', err, 'at', attempt - 1 }, now, expireMs, lock, { t[4] })
    if declaredRate ~= '' then redis.call('ZREM', declaredRate, id .. ':' .. attempt) end
    return {'FAILURE', message}
  end
  local count = previous + 1
  local delay = math.min(declared and DECLARED_MAX_DELAY_MS or MAX_DELAY_MS, BASE_DELAY_MS * 2 ^ (count - 1))
  math.randomseed(tonumber(ARGV[8]))
  delay = math.floor(delay + math.random(0, math.floor(delay / 10)))
  -- Nobody declares the name yet: come back no later than the end of the grace period.
  if not declared then delay = math.max(1, math.min(delay, first + grace - now)) end
  wakeIfEarliest(KEYS[1], KEYS[2], now + delay)
  redis.call('ZADD', KEYS[2], now + delay, id)
  redis.call('HSET', key, 'd', now + delay, 'ud', first, 'un', count, 'ua', attempt - 1)
  undoStart(key, KEYS[3], id, attempt, retries, declaredRate)
  noteEvent('handed-back', id, 'n', t[4], 'w', workerId, 'dl', delay)
  return {'DEFERRED', delay}
end)
if not ok then
  if expiry then redis.pcall('ZADD', KEYS[3], expiry, id) end
  error(result)
end
flushEvents()
return result
