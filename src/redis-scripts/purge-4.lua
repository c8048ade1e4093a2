--[[
  purge: an operator empties a queue (heimdall purge, Inspector.purge), one bounded batch per
  call, so a long queue does not block Redis.
    The caller reads first, with plain commands, the entries at the tail of the wait list (the
    end workers take from) and, when delayed tasks are purged too, the earliest ids of the
    delayed set, then the lock each of those records names (field lk, or lu and n), and names every record and
    lock in KEYS. The script touches no other record or lock: it checks again what it relies on.
    Takes entries from the tail of the wait list, up to ARGV[2], as long as each is one the
    caller named (a wake marker '' or an id given below): an entry it was not given (pushed to
    the tail since the read, or read only now that workers took the ones before it) stops it
    there. A PENDING or RETRY task among them ends REVOKED with reason 'purged' through endTask
    (expiry set, unique lock released as a revoke releases it, done:<id> published), and leaves
    the delayed set if it is there. An entry whose task is in the delayed set (a stale entry) is
    dropped and the task left as it is, unless delayed tasks are purged too (ARGV[4] = '1').
    Wake markers (''), and ids of tasks that are running, ended or have no readable record, are
    dropped, as a fetch drops them.
    Then takes the delayed ids given (the first ARGV[3] ids), those still in the delayed set,
    and ends the PENDING and RETRY ones REVOKED 'purged' the same way. Then the claimed ids given
    (the next ARGV[7] ids: waiting tasks a worker's fetch took off the wait list for its next
    call), those still claimed: a PENDING or RETRY one ends REVOKED 'purged' and leaves the
    claimed set (the worker's start of it then finds nothing to start).
    A task whose record names another lock than the one given is left where it is (and stops
    the wait list there); the reply says so, and the caller reads again.
    A running task is never touched; its lease and lock stay. Every check comes before the first
    write, and the first write is the RPOP of the wait list (or the ZREM from the delayed set),
    which a full Redis allows.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[4] claimed zset      <prefix>:{<queue>}:claimed
  KEYS[5..] per id of ARGV[8..], in order: its record <prefix>:{<queue>}:t:<id>, then its unique
            lock (the record's lk, or lu and n) when the id's flag is '1' (so a call passes 4 + ids + locks
            keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] most entries to take from the tail of the wait list in this call (0: none): as many as
          the caller read there
  ARGV[3] how many of the ids of ARGV[7..] are delayed ids to take (the first ones, earliest first)
  ARGV[4] '1' when delayed tasks are purged too, '0' when they stay
  ARGV[5] result lifetime of the revoked tasks, in ms
  ARGV[6] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[7] how many of the ids of ARGV[8..], after the delayed ones, are claimed ids to take
  ARGV[8..] pairs of task id and '1' when its lock follows its record in KEYS, '0' when its
            record names none (as the caller read it): the delayed ids to take, the claimed ids
            to take, then every other id the caller read at the tail of the wait list, each id
            once

  Returns {purged, fromWait, fromDelayed, changed, fromClaimed}: the tasks this call ended
  REVOKED, the entries it took from the wait list (markers and stale ids included), the delayed
  ids given that have left the delayed set (taken by this call, or gone before it), which the
  caller counts against the lengths it read before the first call; changed is 'KEYS_CHANGED'
  when the call stopped at an entry it was not given or left a task whose lock changed, ''
  otherwise; fromClaimed, the claimed ids given that are done with (purged, gone, or no longer
  waiting).
]]
-- @include "now"
-- @include "keys"
-- @include "record-lock"
-- @include "declared"
-- @include "end-task"
-- @include "events"

local base, waitMax, delayedCount = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local withDelayed, expireMs, claimedCount = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[7])
local now = nowMs()
useEvents(ARGV[6], nil, KEYS[3])

-- The ids given, each with its declared lock ('' for none); the delayed ones in order.
local given, delayedIds, claimedIds = {}, {}, {}
local k = 5
local n = 0
for i = 8, #ARGV, 2 do
  local id = ARGV[i]
  -- endTask names the record from the base and the id: it must be the declared key.
  local _, lock
  _, lock, k = nextDeclared('purge', base, id, k, ARGV[i + 1])
  given[id] = lock
  n = n + 1
  if n <= delayedCount then
    delayedIds[#delayedIds + 1] = id
  elseif n <= delayedCount + claimedCount then
    claimedIds[#claimedIds + 1] = id
  end
end

local changed = ''
-- The tasks to end, each once: {id, record fields s lk lw n}.
local toPurge, planned = {}, {}
-- 'purge' (with the fields read), 'drop' (not waiting: nothing to do), or 'changed' (its record
-- names another lock than the one given).
local function verdictOf(id)
  local t = redis.pcall('HMGET', taskKeyOf(base, id), 's', 'lk', 'lw', 'n', 'lu')
  if type(t) ~= 'table' or t.err or (t[1] ~= 'PENDING' and t[1] ~= 'RETRY') then return 'drop' end
  -- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
  t[2] = lockNamed(base, t[2], t[5], t[4])
  if not declaredIs(given[id], t[2]) then return 'changed' end
  return 'purge', t
end

-- The wait list: the entries to take, from the tail inward.
local fromWait = 0
if waitMax > 0 then
  local tail = redis.call('LRANGE', KEYS[1], -waitMax, -1)
  for i = #tail, 1, -1 do
    local id = tail[i]
    if id ~= '' then
      if given[id] == nil then
        changed = KEYS_CHANGED
        break
      end
      if not planned[id] and (withDelayed or not redis.call('ZSCORE', KEYS[2], id)) then
        local verdict, t = verdictOf(id)
        if verdict == 'changed' then
          changed = KEYS_CHANGED
          break
        end
        if verdict == 'purge' then
          planned[id] = true
          toPurge[#toPurge + 1] = { id, t }
        end
      end
    end
    fromWait = fromWait + 1
  end
end

-- The delayed ids given: those still in the set are taken.
local fromDelayed, unset = 0, {}
if withDelayed then
  for _, id in ipairs(delayedIds) do
    if not redis.call('ZSCORE', KEYS[2], id) then
      fromDelayed = fromDelayed + 1
    elseif planned[id] then
      -- Purged from the wait list above, which takes it out of the delayed set too.
      fromDelayed = fromDelayed + 1
    else
      local verdict, t = verdictOf(id)
      if verdict == 'changed' then
        changed = KEYS_CHANGED
      else
        fromDelayed = fromDelayed + 1
        unset[#unset + 1] = id
        if verdict == 'purge' then
          planned[id] = true
          toPurge[#toPurge + 1] = { id, t }
        end
      end
    end
  end
end

-- The claimed ids given: those still claimed and waiting are taken.
local fromClaimed, unclaim = 0, {}
for _, id in ipairs(claimedIds) do
  if not redis.call('ZSCORE', KEYS[4], id) then
    fromClaimed = fromClaimed + 1
  elseif planned[id] then
    fromClaimed = fromClaimed + 1
    unclaim[#unclaim + 1] = id
  else
    local verdict, t = verdictOf(id)
    if verdict == 'changed' then
      changed = KEYS_CHANGED
    else
      -- 'drop': not waiting (its record says otherwise): the claim is its worker's to drop.
      fromClaimed = fromClaimed + 1
      if verdict == 'purge' then
        planned[id] = true
        unclaim[#unclaim + 1] = id
        toPurge[#toPurge + 1] = { id, t }
      end
    end
  end
end

if fromWait > 0 then redis.call('RPOP', KEYS[1], fromWait) end
if #unclaim > 0 then redis.call('ZREM', KEYS[4], unpack(unclaim)) end
if #unset > 0 then redis.call('ZREM', KEYS[2], unpack(unset)) end
for _, p in ipairs(toPurge) do
  local id, t = p[1], p[2]
  redis.call('ZREM', KEYS[2], id)
  endTask(base, id, 'REVOKED', { 'rr', 'purged' }, now, expireMs, { t[2], t[3] }, { t[4] })
end

flushEvents()
return {#toPurge, fromWait, fromDelayed, changed, fromClaimed}
