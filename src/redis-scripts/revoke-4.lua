--[[
  revoke: from any process.
    PENDING / RETRY (queued or delayed) -> REVOKED at once: it never starts (an id left in the
      wait list is dropped by the next fetch), its lock is released.
    STARTED, terminate -> REVOKED at once, lease dropped, lock released; the running worker is
      told on the revoke channel, aborts the task's signal and frees its slot.
    STARTED and reserved (prefetch, field rs: its handler has not begun as far as Redis knows)
      -> REVOKED at once as a queued task (code 2), lease dropped, lock released; its worker is
      told as for a terminate ('<id> <token> 1'), drops the reservation, and aborts the handler
      should it have begun in the meantime.
    STARTED, no terminate -> marked (field rv); the worker is told and aborts the signal; the
      task ends REVOKED unless it still returns a value.
    The message on the revoke channel is '<id> <run token> <0|1>': a worker acts on it only for
    the run it names, never for an older run of the same task it may still be running. It goes
    out with SPUBLISH (sharded Pub/Sub): workers listen with SSUBSCRIBE on the queue's shard.
    Ended or unknown tasks are left alone.

  KEYS[1] task hash         <prefix>:{<queue>}:t:<id>
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[4] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[5] lock key          the task's unique lock as its record names it (field lk, or lu and n), read by the
                            caller before the call; left out when the record names none (so a call
                            passes 4 or 5 keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] task id
  ARGV[3] '1' to terminate a running task
  ARGV[4] result lifetime in ms
  ARGV[5] reason stored in rr (e.g. 'revoked')
  ARGV[6] events: the cap of the queue's event stream (0: no events; see includes/events.lua)

  Returns {code, state}: 0 unknown id, 1 already ended (state given), 2 revoked while queued,
  3 revoked and terminated while running, 4 revoke requested while running; {'KEYS_CHANGED', ''}
  when the task would end but its record names another lock than KEYS[5] (the id was reused
  since the caller read it): nothing changed, the caller reads the lock again and calls again
  (includes/declared.lua).
]]
-- @include "now"
-- @include "keys"
-- @include "record-lock"
-- @include "end-task"
-- @include "ended"
-- @include "events"
-- @include "declared"

local base, id, terminate, expireMs, reason = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
useEvents(ARGV[6], nil, KEYS[4])
local t = redis.call('HMGET', KEYS[1], 's', 'lk', 'lw', 'tk', 'lu', 'n', 'rs', 'at')
-- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
local state, lock, token = t[1], { lockNamed(base, t[2], t[5], t[6]), t[3] }, t[4] or ''
if not state then return {0, ''} end
if isEnded(state) then return {1, state} end
-- Ending the task releases the lock its record names, which must be the one declared; a revoke
-- only requested leaves the lock to the run.
-- A reservation (prefetch: STARTED with rs, its handler not begun as far as Redis knows) is
-- revoked as a queued task is, at once (its attempt taken back: it never ran), and its worker
-- told as for a terminate.
local reserved = state == 'STARTED' and t[7] == '1'
if reserved then terminate = true end
if (state ~= 'STARTED' or terminate) and not declaredIs(KEYS[5] or '', lock[1]) then return {KEYS_CHANGED, ''} end
local now = nowMs()
if state ~= 'STARTED' then
  redis.call('ZREM', KEYS[3], id)
  endTask(base, id, 'REVOKED', { 'rr', reason }, now, expireMs, lock)
  flushEvents()
  return {2, 'REVOKED'}
end
if terminate then
  redis.call('ZREM', KEYS[2], id)
  local extra = { 'rr', reason }
  if reserved then extra = { 'rr', reason, 'at', math.max(0, (tonumber(t[8]) or 1) - 1) } end
  endTask(base, id, 'REVOKED', extra, now, expireMs, lock)
  redis.call('SPUBLISH', revokeChannelOf(base), id .. ' ' .. token .. ' 1')
  flushEvents()
  if reserved then return {2, 'REVOKED'} end
  return {3, 'REVOKED'}
end
redis.call('HSET', KEYS[1], 'rv', reason)
redis.call('SPUBLISH', revokeChannelOf(base), id .. ' ' .. token .. ' 0')
return {4, 'STARTED'}
