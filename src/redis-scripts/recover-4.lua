--[[
  recover: a worker recovers runs whose lease lapsed (their worker died or hung), named by the
  caller, each as the fetch does it (includes/recover.lua): back to the front of the wait list as
  PENDING with one more recovery (rc), or after maxRecoveries (mr, default 1) FAILURE with a
  WorkerLostError, or REVOKED when a revoke was requested (rv); a lease left by a task that moved
  on is dropped, one whose record is missing or not a hash dead-lettered; the caller's own run,
  lapsed less than one of its leases ago, keeps its lease. Each id's lease must still have lapsed
  on the Redis clock, else it is left alone. Every key it touches is declared: the caller reads
  the lock each record names (field lk, or lu and n) before the call. So a record read as missing is gone,
  even in the middle of a reshard: Redis runs a call of several keys in a slot being moved only
  on a master that holds all of them, and answers TRYAGAIN (or ASK) without running it otherwise.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] dead-letter list  <prefix>:{<queue>}:dead
  KEYS[4] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[5..] per id of ARGV[6..], in order: its record <prefix>:{<queue>}:t:<id>, then its unique
            lock (the record's lk, or lu and n) when the id's flag is '1' (so a call passes 4 + ids + locks
            keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id (the caller)
  ARGV[3] the caller's lease duration in ms (its own lapsed runs get one more lease)
  ARGV[4] result lifetime in ms, for tasks that end here
  ARGV[5] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[6..] pairs of task id and '1' when its lock follows its record in KEYS, '0' when its
            record names none (as the caller read it)

  Returns {outcomes, problem}: outcomes a flat list of id and what became of it, for every id
  given, in order: 'requeued', 'failed', 'revoked', 'dead-lettered', 'dropped', 'kept' (see
  includes/recover.lua), 'not-lapsed' (no lease, or one that has not lapsed: left alone), or
  'refused' (Redis refused a command: the task is as it was, leased; the refusal is in problem,
  '' when none).
  Or {'KEYS_CHANGED', id}: the record of task id names another lock than the one declared (the
  id was reused for a new task since the caller read it); nothing was changed, the caller reads
  the locks again and calls again.
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "declared"
-- @include "dead-letter"
-- @include "events"
-- @include "recover"

local base, workerId, leaseMs, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
useEvents(ARGV[5], workerId, KEYS[4])
useDeadLetters(KEYS[3])
local now = nowMs()

-- The ids with their declared lock ('' for none), and the lease of each that has lapsed.
local ids, locks, lapsed = {}, {}, {}
local k = 5
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  -- recoverOne names the record from the base and the id: it must be the declared key.
  local _, lock
  _, lock, k = nextDeclared('recover', base, id, k, ARGV[i + 1])
  ids[#ids + 1] = id
  locks[id] = lock
end

-- First every check, then the moves: a record that names another lock than the declared one
-- changes nothing at all.
for _, id in ipairs(ids) do
  local expiry = tonumber(redis.call('ZSCORE', KEYS[2], id))
  if expiry and expiry <= now then
    lapsed[id] = expiry
    -- A record that is not a hash, or a read Redis refuses, is recoverOne's to handle.
    local fields = redis.pcall('HMGET', taskKeyOf(base, id), 'lk', 'lu', 'n')
    if not (type(fields) == 'table' and fields.err) and not declaredIs(locks[id], lockNamed(base, fields[1], fields[2], fields[3])) then
      return {KEYS_CHANGED, id}
    end
  end
end

local outcomes, problems = {}, {}
for _, id in ipairs(ids) do
  local outcome = 'not-lapsed'
  if lapsed[id] then
    local expiry = lapsed[id]
    -- An id given twice is recovered once.
    lapsed[id] = nil
    local mark = eventMark()
    local ok, result = pcall(recoverOne, base, KEYS[1], KEYS[2], id, expiry, now, expireMs, workerId, leaseMs)
    if ok then
      outcome = result
    else
      eventRewind(mark)
      outcome = 'refused'
      table.insert(problems, 'recovering task ' .. id .. ': ' .. errorText(result))
    end
  end
  table.insert(outcomes, id)
  table.insert(outcomes, outcome)
end
flushEvents()
return {outcomes, table.concat(problems, '; ')}
