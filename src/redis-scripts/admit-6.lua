--[[
  admit: the worker is the authority on a task's options. A message sent by a process that
  did not know the task (by name, from a scheduler, another service or another language) lacks
  the unique lock or the rate limit the task's definition in the worker has, or its
  maxRecoveries; the fetch started it without them. Before running it, the worker computes what is missing (its key function,
  its rate limit for these arguments) and admits the run here, with the same checks a message
  carrying them gets at start:
    * unique: the lock is taken (or re-taken); held by another task, this one ends REVOKED
      'duplicate' and does not run;
    * rate limit: counted in the window (includes/rate-window.lua); over the limit, the start is
      taken back and the task waits for its reserved turn in the delayed set (PENDING, no
      attempt counted);
  * maxRecoveries: written into the record, so a recovery of this run counts against the
    worker's value rather than the default of 1;
  and the fields are written into the record, so later starts (retries, recoveries) check them
  in the fetch as for any message. Only the current run is admitted (STARTED, this worker, this
  run token).

  KEYS[1] wait list         <prefix>:{<queue>}:wait (for the wake-up marker)
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active
  KEYS[4] task hash         <prefix>:{<queue>}:t:<id> (the id of ARGV[3])
  KEYS[5] dead-letter list  <prefix>:{<queue>}:dead
  KEYS[6] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[7..] the run's unique lock, then its rate window, each only when ARGV[5] or ARGV[8] names
            one (so a call passes 6 to 8 keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] task id
  ARGV[4] run token
  ARGV[5] whose unique lock the run has: 'worker' (the worker's, for a message without one: taken
          here and written into the record), 'record' (the one the record names, field lk or lu, read
          by the caller before the call), '' (none)
  ARGV[6] the worker's lock's lifetime in ms
  ARGV[7] '1' with uniqueWaitForExpiry, else ''
  ARGV[8] whose rate window the run counts in: 'worker' (the worker's, for a message without a
          rate limit: checked here and written into the record), 'record' (the one the record
          names, field rk, read by the caller before the call), '' (none)
  ARGV[9] the worker's limit n
  ARGV[10] the worker's period in ms
  ARGV[11] unused (was the seed of a jitter before turns were reserved)
  ARGV[12] result lifetime in ms, for a task that ends here
  ARGV[13] maxRecoveries ('' when the message has one or the worker leaves the default)
  ARGV[14] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[15] '' or ms: the run's named limits (limit-2.lua, each in its own slot) gave it a turn that
           far ahead: the start is taken back and the task waits for it in the delayed set, as
           over a rate limit (LIMITED), its lock and the windows the record names as they are
           declared ('record' or ''); nothing else is checked
  ARGV[16] 'p' when the deferral of ARGV[15] is a wait for a concurrency permit (permit-3.lua):
           if a permit was handed to this run while it was being started or sent back
           (permit-wake-2.lua marked the record: field pw = its attempt), it is due at once
           instead, and the mark goes; else ''

  Returns {verdict, detail}: 'RUN', '' (run it); 'REVOKED', 'duplicate' (or the revoke reason:
  a revoke was requested since the fetch started it); 'LIMITED', delay ms;
  'FAILURE', message (its lock or rate window key holds a value of the wrong type: malformed,
  dead-lettered); 'STALE', state (the run is no longer current); 'KEYS_CHANGED', '' (the record
  names another lock or rate window than the one declared: nothing changed, the caller reads them
  again and calls again; includes/declared.lua).
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
-- @include "rate-window"
-- @include "declared"

local base, workerId, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lockOf, lockTtl, waitForExpiry = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local rateOf, limit, period = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local WHOSE = { [''] = true, worker = true, record = true }
if not (WHOSE[lockOf] and WHOSE[rateOf]) then return redis.error_reply("admit: ARGV[5] and ARGV[8] are 'worker', 'record' or ''") end
-- The declared lock and rate window, in the order of the header ('' for none).
local declaredLock, declaredRate = '', ''
if lockOf ~= '' then declaredLock = KEYS[7] end
if rateOf ~= '' then declaredRate = KEYS[#KEYS] end
if #KEYS ~= 6 + (lockOf ~= '' and 1 or 0) + (rateOf ~= '' and 1 or 0) then
  return redis.error_reply('admit: ' .. #KEYS .. ' keys, not the 6 and the lock and rate window ARGV[5] and ARGV[8] name')
end
-- The worker's own lock and window, to check and write into the record ('' for none).
local lockKey, rateKey = '', ''
if lockOf == 'worker' then lockKey = declaredLock end
if rateOf == 'worker' then rateKey = declaredRate end
local expireMs = tonumber(ARGV[12])
local maxRecoveries = ARGV[13]
useEvents(ARGV[14], workerId, KEYS[6])
useDeadLetters(KEYS[5])
local key = KEYS[4]
-- endTask names the record from the base and the id: it must be this key.
if key ~= taskKeyOf(base, id) then return redis.error_reply('admit: KEYS[4] is not the record of task ' .. id) end
local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'at', 'ry', 'rk', 'rv', 'lk', 'lw', 'n', 'pw', 'lu')
-- A record replaced by a value of another type since the fetch is not this run's any more.
if t.err and not isRefusal(t) then return {'STALE', ''} elseif t.err then error(t) end
if not (t[1] == 'STARTED' and t[2] == workerId and t[3] == token) then return {'STALE', t[1] or ''} end
-- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
t[8] = lockNamed(base, t[8], t[12], t[10])
-- Every lock and window touched below is the declared one or the one the record names (released
-- when the task ends here, or the window of its start taken out): they must be the same. A
-- record without one takes the worker's.
local function sameAsDeclared(whose, declared, named)
  return (whose == 'worker' and not named) or declaredIs(declared, named)
end
if not (sameAsDeclared(lockOf, declaredLock, t[8]) and sameAsDeclared(rateOf, declaredRate, t[6])) then return {KEYS_CHANGED, ''} end
local attempt, retries, carriedRate = tonumber(t[4]) or 1, t[5], t[6]
local now = nowMs()

-- What the worker fills in goes into the record, as a producer that knew the task would have
-- written it.
local fields = {}
if maxRecoveries ~= '' then table.insert(fields, 'mr'); table.insert(fields, maxRecoveries) end
if lockKey ~= '' then
  -- Kept short when it is a lock of this task's (field lu), as enqueue keeps a message's.
  local lockAs, lockValue = lockField(base, t[10], lockKey)
  table.insert(fields, lockAs); table.insert(fields, lockValue); table.insert(fields, 'lt'); table.insert(fields, lockTtl)
  if waitForExpiry == '1' then table.insert(fields, 'lw'); table.insert(fields, '1') end
end
if rateKey ~= '' then
  table.insert(fields, 'rk'); table.insert(fields, rateKey); table.insert(fields, 'rn'); table.insert(fields, limit)
  table.insert(fields, 'rp'); table.insert(fields, period)
end

-- Ends the run without running it: the lease goes, the attempt is not counted, and neither is
-- the start its message's rate window counted.
local function endHere(state, extra, lock)
  table.insert(extra, 'at'); table.insert(extra, attempt - 1)
  endTask(base, id, state, extra, now, expireMs, lock, { t[10] })
  flushEvents()
  if carriedRate then redis.call('ZREM', carriedRate, id .. ':' .. attempt) end
  redis.call('ZREM', KEYS[3], id)
end

-- A lock or window key that could not be read: a refusal is raised as it is (the worker sends
-- the admission again); a value of the wrong type makes the task malformed (dead-lettered).
local function malformed(err, reason)
  if isRefusal(err) then error(err) end
  deadLetter(base, id, reason, now)
  endHere('FAILURE', { 'e', cjson.encode({ name = 'MalformedTaskError', message = reason }) })
  return {'FAILURE', reason}
end

-- Revoked since the fetch started it: it ends as the revoke asked, and never runs.
if t[7] then
  endHere('REVOKED', { 'rr', t[7] }, { t[8], t[9] })
  return {'REVOKED', t[7]}
end

if lockKey ~= '' then
  local holder = redis.pcall('GET', lockKey)
  if type(holder) == 'table' then
    return malformed(holder, 'its unique lock key holds a value of the wrong type')
  elseif holder and holder ~= id then
    redis.call('HSET', key, unpack(fields))
    endHere('REVOKED', { 'rr', 'duplicate' }, { lockKey, waitForExpiry })
    return {'REVOKED', 'duplicate'}
  elseif not holder then
    redis.call('SET', lockKey, id, 'PX', lockTtl)
  end
end

-- Waits `detail` ms for its turn in the delayed set, the start taken back.
local function limited(detail)
  local due = now + detail
  -- The delayed set first, so the id is never in no place; then the start is taken back (the
  -- start the message's own window counted, if any: not the reservation just made, in the
  -- worker's window).
  wakeIfEarliest(KEYS[1], KEYS[2], due)
  redis.call('ZADD', KEYS[2], due, id)
  table.insert(fields, 'd'); table.insert(fields, due)
  redis.call('HSET', key, unpack(fields))
  -- The window the record names, if any: checked above to be the declared one.
  undoStart(key, KEYS[3], id, attempt, retries, carriedRate or '')
  noteEvent('rate-limited', id, 'n', t[10], 'dl', detail)
  flushEvents()
  return {'LIMITED', detail}
end

local deferMs = tonumber(ARGV[15])
if deferMs then
  -- A permit handed over while this run was on its way back: its wake-up found it STARTED and
  -- left this mark; it is due now rather than at its re-check.
  if ARGV[16] == 'p' and t[11] and tonumber(t[11]) == attempt then
    redis.call('HDEL', key, 'pw')
    deferMs = 0
  end
  return limited(math.max(0, math.floor(deferMs)))
end

if rateKey ~= '' then
  local verdict, detail = admitRate(rateKey, id .. ':' .. attempt, limit, period, now)
  if verdict == 'bad' then
    return malformed(detail, 'its rate window key holds a value of the wrong type')
  elseif verdict == 'wait' then
    return limited(detail)
  end
end

if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
return {'RUN', ''}
