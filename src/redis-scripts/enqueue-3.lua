--[[
  enqueue: new tasks of one queue become PENDING, each in the wait list or (countdown/eta) the
  delayed set, taking its unique lock in the same step. One call carries a batch: the delay()
  calls a process makes in the same tick, or a slice of delayMany(). Each task is handled on
  its own: a duplicate or a bad key of one does not stop the others.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  then per task, in the order of ARGV:
          its hash          <prefix>:{<queue>}:t:<id>
          its unique lock   the lock key of ARGV, only when that is not ''
          with a conflict mode (field cm: replace, keepLast, debounce), after its lock:
          its pending pointer <prefix>:{<queue>}:next:<task>:<key> (the lock's suffix under next:),
          the holder's hash     <prefix>:{<queue>}:t:<ch>, only when field ch is not ''
          the pending one's     <prefix>:{<queue>}:t:<cp>, only when field cp is not ''
  Every key is checked against what the base, the ids and the lock keys of ARGV name, before
  anything is written: a key that differs, or a count of keys that does not match the tasks,
  fails the whole call with an error 'enqueue: ...; nothing was sent' (a mistake of the caller;
  writing under a key other than the one declared is what declaring prevents). A batch of N
  tasks of which U are unique passes 3 + N + U keys.
  The legacy form, exactly KEYS[1] and KEYS[2], is still served: the stream, the tasks' hashes
  and their locks are then named here from the base and ARGV, as before the declared form. It
  works on one node, and on a Cluster only because every key of a queue shares its hash tag; a
  proxy that checks declarations refuses it. Producers written against it keep working until
  the next major version (docs/protocol.md).

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] number of tasks N, then per task:
          id, countdown in ms from now on the Redis clock (0: none), eta as epoch ms (0: none;
          wins over countdown), unique lock key ('' when not unique), its lifetime in ms (a lock
          is taken when the key is not '' and the lifetime above 0), number of items F, then F
          items: field, value pairs stored in the task hash (n, a, tl, ex, mr, lk, lt, lw, rk,
          rn, rp, tp, ts, sn, cm, cw, cx; the script adds s, c, v, and cf for a debounce); long
          arguments (a) are stored in pieces, see includes/args.lua. Three fields go with a
          conflict mode and are not stored: ch and cp, the ids of the lock's holder and of the
          task pending behind it as the producer last saw them ('' for none; their hashes are
          declared), and ce, the result lifetime in ms of a task the call replaces.
  then, optionally, the cap of the queue's event stream in entries (0: no events; absent: 10000;
  see includes/events.lua). Last, so producers written before events keep working.

  Returns a flat list of three items per task:
    1, '', 0                enqueued (also when a task with this id, name and arguments has
                            not ended, or has ended and carries this call's send nonce `sn`:
                            this very call re-sent after a lost reply)
    2, holderId, pttlMs     a unique duplicate: another task holds the lock
    3, '', 0                the id belongs to another task that has not ended
    4, message, 0           its keys hold values of the wrong type: nothing was written
    5, message, 0           a command for it failed otherwise (refused by an ACL, by a full server,
                            by a Cluster slot on the move) after tasks before it in the batch were
                            written: nothing was written for it (what it wrote, lock included, is
                            taken back). While nothing of the batch is written, such an error
                            fails the whole call as it is.
  With a conflict mode (see "Unique tasks" in docs/architecture.md):
    6, replacedId, ''       enqueued with the lock: the task that held it (or the one pending
                            behind it) had not started and is now REVOKED ('replaced', or
                            'debounced' for a debounce)
    7, holderId, replacedId enqueued as the task pending behind the running holder (keepLast,
                            debounce), in the delayed set; replacedId: the pending task it replaced
                            ('' none). The holder's end hands it the lock.
    8, holderId, pendingId  the lock or the pending pointer names other tasks than ch and cp:
                            nothing was written; the producer sends it again declaring these
    (2 as above when the holder runs and the mode is replace, or the holder ended and keeps its
    lock with uniqueWaitForExpiry.)
]]
-- @include "now"
-- @include "ms-text"
-- @include "args"
-- @include "ended"
-- @include "wake"
-- @include "keys"
-- @include "record-lock"
-- @include "events"
-- @include "end-task"

-- A wait list or delayed set of the wrong type fails the whole call before anything is written:
-- a script is not rolled back, so an error half way would leave records and locks of tasks that
-- are in no list and never run. Later in the batch, a failing command fails only its own task
-- (code 4 or 5), as the tasks before it are written and will run.
local wrote = false
-- What a redis.pcall reply means: nil fine, 4 a key of the wrong type, 5 any other error (a
-- command refused by an ACL, ...), which is raised as it is while nothing has been written.
local function failure(reply)
  if type(reply) ~= 'table' or not reply.err then return nil end
  if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then return 4 end
  if not wrote then error(reply) end
  return 5
end

-- The value of `field` among a task's field, value pairs ARGV[first..last].
local function fieldIn(first, last, field)
  for j = first, last - 1, 2 do
    if ARGV[j] == field then return ARGV[j + 1] end
  end
  return nil
end

-- The task name among a task's field, value pairs ARGV[first..last].
local function nameIn(first, last)
  return fieldIn(first, last, 'n')
end

-- What is wrong with the keys of a call in the declared form (nil: each is the one the base and
-- ARGV name, and there are as many as they name). Read before anything is written, so that a
-- mistake of the caller fails the whole call and leaves nothing half sent.
local function declarationProblem(base, count)
  local fixed = { waitKeyOf(base), delayedKeyOf(base), eventsKeyOf(base) }
  for k = 1, 3 do
    if KEYS[k] ~= fixed[k] then return 'KEYS[' .. k .. '] is not ' .. fixed[k] end
  end
  local k, o = 4, 3
  for _ = 1, count do
    local id, lockKey = ARGV[o], ARGV[o + 3]
    if KEYS[k] ~= taskKeyOf(base, id) then return 'KEYS[' .. k .. '] is not the hash of task ' .. id end
    k = k + 1
    if lockKey ~= '' then
      if KEYS[k] ~= lockKey then return 'KEYS[' .. k .. '] is not the unique lock ARGV names for task ' .. id end
      k = k + 1
      local first, last = o + 6, o + 5 + tonumber(ARGV[o + 5])
      if fieldIn(first, last, 'cm') then
        local locks = lockKeyOf(base, '')
        if string.sub(lockKey, 1, #locks) ~= locks then return 'the unique lock of task ' .. id .. ' is not a lock of this queue' end
        if KEYS[k] ~= nextKeyOf(base, string.sub(lockKey, #locks + 1)) then
          return 'KEYS[' .. k .. '] is not the pending pointer of the unique lock of task ' .. id
        end
        k = k + 1
        for _, field in ipairs({ 'ch', 'cp' }) do
          local other = fieldIn(first, last, field) or ''
          if other ~= '' then
            if KEYS[k] ~= taskKeyOf(base, other) then return 'KEYS[' .. k .. '] is not the hash of task ' .. other .. ' (' .. field .. ')' end
            k = k + 1
          end
        end
      end
    end
    o = o + 6 + tonumber(ARGV[o + 5])
  end
  if #KEYS ~= k - 1 then return #KEYS .. ' keys passed, ' .. (k - 1) .. ' named by the base and the tasks' end
  return nil
end

local base = ARGV[1]
local count = tonumber(ARGV[2])
-- Exactly two keys: the legacy form, whose other keys are named here (see the header).
local declared = #KEYS ~= 2
local eventsKey
if declared then
  local problem = declarationProblem(base, count)
  if problem then return redis.error_reply('enqueue: ' .. problem .. '; nothing was sent') end
  eventsKey = KEYS[3]
else
  eventsKey = eventsKeyOf(base)
end

if failure(redis.pcall('LLEN', KEYS[1])) or failure(redis.pcall('ZCARD', KEYS[2])) then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value: the wait list or ' ..
    'delayed set of this queue; nothing was sent')
end

local now = nowMs()
-- The cap comes after the tasks; until it is read, events are noted under the default.
useEvents(10000, nil, eventsKey)

-- Waiting, not started: a holder or pending task in this state is replaced.
local function notStarted(state)
  return state == 'PENDING' or state == 'RETRY'
end

-- A conflict mode (field cm) meets the lock: decides what becomes of the new task `id` (see the
-- header, codes 1, 2, 6, 7, 8), and which tasks it replaces. `c`: { mode, lockKey, nextKey,
-- holderKey, pendingKey (nil when not declared), holder, pending (the ids declared, '' none),
-- wait, maxWait (debounce, ms), expires (result lifetime of a replaced task, ms), name }. Returns
-- code, detail, third item, and, when the new task is to be enqueued (codes 1, 6, 7), a plan:
-- { takeLock, due (0: as the call said), first (debounce series start), replaces (the tasks to
-- end, each { id, owns the lock }), reason, dropPointer }. Writes nothing: the caller ends the
-- replaced tasks (replaceAll) only once the new task is placed, so a command Redis refuses half
-- way never leaves the old task ended and the new one not sent.
local function conflict(id, c)
  local holder = redis.pcall('GET', c.lockKey)
  local f = failure(holder)
  if f == 4 then return 4, 'the unique lock key ' .. c.lockKey .. ' holds a value that is not a string', 0 end
  if f then return 5, holder.err, 0 end
  local pointer = redis.pcall('GET', c.nextKey)
  f = failure(pointer)
  if f == 4 then return 4, 'the pending pointer ' .. c.nextKey .. ' holds a value that is not a string', 0 end
  if f then return 5, pointer.err, 0 end
  local pending = pointer and string.match(pointer, '^%d+ %d+ (.+)$')
  -- A pointer to the holder itself is stale: it was handed the lock, or took it at its start.
  if pending == holder then pending = nil end
  if (holder or '') ~= c.holder or (pending or '') ~= c.pending then return 8, holder or '', pending or '' end

  local held = holder and redis.call('HMGET', c.holderKey, 's', 'cf') or {}
  local running = held[1] == 'STARTED'
  -- A holder that runs (replace), or that ended and keeps the lock (uniqueWaitForExpiry), or whose
  -- record is gone: a duplicate, as without a mode. Nothing changes.
  if holder and not notStarted(held[1]) and not (running and c.mode ~= 'replace') then
    if eventsOn() then noteEvent('deduplicated', holder, 'n', c.name, 'by', id) end
    return 2, holder, redis.call('PTTL', c.lockKey)
  end

  local reason = 'replaced'
  if c.mode == 'debounce' then reason = 'debounced' end
  local first = nil
  local replaced = ''
  local replaces = {}
  local function replace(other, ownsLock)
    replaces[#replaces + 1] = { other, ownsLock }
    replaced = other
  end
  if holder and not running then
    first = held[2]
    replace(holder, true)
    holder = nil
  end
  if pointer then
    if pending then
      local p = redis.call('HMGET', c.pendingKey, 's', 'cf', 'lk', 'lu', 'n')
      if notStarted(p[1]) and lockNamed(base, p[3], p[4], p[5]) == c.lockKey then
        first = first or p[2]
        replace(pending, false)
      end
    end
  end
  first = tonumber(first) or now
  local due = 0
  if c.mode == 'debounce' then
    due = now + c.wait
    if c.maxWait > 0 and first + c.maxWait < due then due = math.max(now, first + c.maxWait) end
  end
  local plan = { due = due, first = first, replaces = replaces, reason = reason, name = c.name, expires = c.expires,
    dropPointer = pointer and c.nextKey }
  if holder then
    -- It runs: the new task waits behind it, pending, for its end to hand it the lock (its
    -- 'waiting' event is noted once it is placed, after those of the tasks it replaces).
    plan.takeLock = false
    plan.holder = holder
    return 7, holder, replaced, plan
  end
  plan.takeLock = true
  if replaced == '' then return 1, '', 0, plan end
  return 6, replaced, '', plan
end

-- Ends the tasks a placed task replaces (REVOKED 'replaced' or 'debounced', out of the delayed
-- set; the holder's lock released as its end releases it) and drops the old pending pointer. Each
-- step under pcall: the new task is placed already, and should Redis refuse a step, the old task
-- stays as it was (it then meets the lock as a duplicate, or waits behind it): never one lost.
local function replaceAll(id, plan)
  for _, r in ipairs(plan.replaces) do
    local lock = { false }
    if r[2] then lock = nil end
    if pcall(endTask, base, r[1], 'REVOKED', { 'rr', plan.reason }, now, plan.expires, lock) then
      redis.pcall('ZREM', KEYS[2], r[1])
      noteEvent('replaced', r[1], 'n', plan.name, 'by', id, 'r', plan.reason)
    end
  end
  if plan.dropPointer then redis.pcall('DEL', plan.dropPointer) end
end

local replies = {}
local woken = false
local o, k = 3, 4
for i = 1, count do
  local id, countdown, eta = ARGV[o], tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local lockKey, lockTtl = ARGV[o + 3], tonumber(ARGV[o + 4])
  local taskKey
  if declared then
    -- The same strings as the base and ARGV name (checked above), taken from KEYS.
    taskKey = KEYS[k]
    k = k + 1
    if lockKey ~= '' then
      lockKey = KEYS[k]
      k = k + 1
    end
  else
    taskKey = taskKeyOf(base, id)
  end
  local unique = lockKey ~= '' and lockTtl > 0
  local first, last = o + 6, o + 5 + tonumber(ARGV[o + 5])
  o = last + 1

  local code, detail, ttl = 1, '', 0
  local previous = redis.pcall('HGET', taskKey, 's')
  local failed = failure(previous)
  if failed == 4 then
    code, detail = 4, 'the key ' .. taskKey .. ' of this task id holds a value that is not a hash'
  elseif failed then
    code, detail = 5, previous.err
  elseif previous and not isEnded(previous) then
    -- The same task under the same id (re-sent by ioredis after a lost reply, or an idempotent
    -- re-send by the caller) is already enqueued; anything else is a collision.
    local same = redis.call('HMGET', taskKey, 'n', 'a', 'ac')
    local name, args
    for j = first, last - 1, 2 do
      if ARGV[j] == 'n' then name = ARGV[j + 1] elseif ARGV[j] == 'a' then args = ARGV[j + 1] end
    end
    if not (same[1] == name and joinArgs(taskKey, same[2], same[3]) == args) then code = 3 end
  elseif previous and fieldIn(first, last, 'sn') and redis.call('HGET', taskKey, 'sn') == fieldIn(first, last, 'sn') then
    -- This very call, sent again after its reply was lost, and the task has run and ended since:
    -- enqueued, not started afresh (a new dispatch under the same id carries another nonce).
    code = 1
  else
    local proceed = true
    local mode = unique and fieldIn(first, last, 'cm')
    local plan, pointerKey = nil, nil
    if mode then
      local c = { mode = mode, lockKey = lockKey, holder = fieldIn(first, last, 'ch') or '', pending = fieldIn(first, last, 'cp') or '',
        wait = tonumber(fieldIn(first, last, 'cw')) or 0, maxWait = tonumber(fieldIn(first, last, 'cx')) or 0,
        expires = tonumber(fieldIn(first, last, 'ce')) or 86400000, name = nameIn(first, last) }
      if declared then
        -- In the order declarationProblem checked them.
        c.nextKey = KEYS[k]
        k = k + 1
        if c.holder ~= '' then c.holderKey = KEYS[k]; k = k + 1 end
        if c.pending ~= '' then c.pendingKey = KEYS[k]; k = k + 1 end
      else
        local locks = lockKeyOf(base, '')
        c.nextKey = nextKeyOf(base, string.sub(lockKey, #locks + 1))
        if c.holder ~= '' then c.holderKey = taskKeyOf(base, c.holder) end
        if c.pending ~= '' then c.pendingKey = taskKeyOf(base, c.pending) end
      end
      pointerKey = c.nextKey
      local mark = eventMark()
      local ok, a, b, third, p = pcall(conflict, id, c)
      if not ok then
        eventRewind(mark)
        if not wrote then error(a) end
        proceed, code, detail = false, 5, type(a) == 'table' and tostring(a.err) or tostring(a)
      elseif p then
        plan, code, detail, ttl = p, a, b, third
      else
        proceed, code, detail, ttl = false, a, b, third
      end
    elseif unique then
      local set = redis.pcall('SET', lockKey, id, 'NX', 'PX', lockTtl)
      if failure(set) then
        proceed, code, detail = false, 5, set.err
      elseif not set then
        proceed = false
        local holder = redis.pcall('GET', lockKey)
        local f = failure(holder)
        if f == 4 then
          code, detail = 4, 'the unique lock key ' .. lockKey .. ' holds a value that is not a string'
        elseif f then
          code, detail = 5, holder.err
        else
          code, detail, ttl = 2, holder, redis.call('PTTL', lockKey)
          if eventsOn() then noteEvent('deduplicated', holder, 'n', nameIn(first, last)) end
        end
      end
    end
    if proceed then
      local due = 0
      if eta > 0 then due = eta elseif countdown > 0 then due = now + countdown end
      if plan and plan.due > due then due = plan.due end
      -- Where it goes: the wait list when due now, else the delayed set, due then. A task pending
      -- behind a running holder always waits in the delayed set: until its due time, and no longer
      -- than the holder's lock lasts or 10 s, after which a fetch looks again (the holder's end
      -- normally makes it due first, handing it the lock).
      local placeAt = due
      if plan and not plan.takeLock and placeAt <= now then
        local left = redis.call('PTTL', lockKey)
        local recheck = 10000
        if left > 0 and left < recheck then recheck = left end
        placeAt = now + recheck
      end
      -- v: the version of this message layout, the one start-tasks.lua reads.
      local fields = { 's', 'PENDING', 'c', msText(now), 'v', '1' }
      local taskName = nameIn(first, last)
      -- The fields as stored, but the arguments: the lock key kept short when it is a lock of
      -- this task's (field lu, includes/record-lock.lua), so that it does not make the record a
      -- hashtable; the fields for this call only left out.
      local stored, args = {}, nil
      for j = first, last - 1, 2 do
        if ARGV[j] == 'a' then args = ARGV[j + 1]
        elseif ARGV[j] == 'ch' or ARGV[j] == 'cp' or ARGV[j] == 'ce' then -- for this call only, not stored
        elseif ARGV[j] == 'lk' then
          local field, value = lockField(base, taskName, ARGV[j + 1])
          table.insert(stored, field); table.insert(stored, value)
        else
          table.insert(stored, ARGV[j]); table.insert(stored, ARGV[j + 1])
        end
      end
      local whole = false
      for j = 2, #stored, 2 do
        if #stored[j] > ARGS_CHUNK then whole = true end
      end
      if args then argsFields(fields, args, whole) end
      for j = 1, #stored do table.insert(fields, stored[j]) end
      if placeAt > now then table.insert(fields, 'd'); table.insert(fields, msText(placeAt)) end
      if plan and mode == 'debounce' then table.insert(fields, 'cf'); table.insert(fields, plan.first) end
      if plan and not plan.takeLock then table.insert(fields, 'cb'); table.insert(fields, detail) end
      -- The record, then its place in a list. Should Redis refuse either (an ACL, a full server,
      -- a Cluster slot on the move), what this task wrote is taken back, its lock included, so
      -- no record or lock is left of a task that is in no list.
      -- A reused id of an ended task starts afresh (only once the lock is ours).
      local written = previous and redis.pcall('DEL', taskKey)
      if not (type(written) == 'table' and written.err) then written = redis.pcall('HSET', taskKey, unpack(fields)) end
      local placed = written
      if not (type(written) == 'table' and written.err) then
        if placeAt > now then
          -- An idle worker sleeps until the earliest due time it knew of; if this task is due
          -- earlier, wake it with a marker ('') that fetch skips. Once woken, it reads the
          -- delayed set afresh, so the rest of the batch need not look.
          if not woken then woken = wakeIfEarliest(KEYS[1], KEYS[2], placeAt) end
          placed = redis.pcall('ZADD', KEYS[2], placeAt, id)
        else
          placed = redis.pcall('LPUSH', KEYS[1], id)
        end
        if type(placed) == 'table' and placed.err then redis.pcall('DEL', taskKey) end
      end
      if type(placed) == 'table' and placed.err then
        if unique and redis.pcall('GET', lockKey) == id then redis.pcall('DEL', lockKey) end
        code, detail = failure(placed), placed.err
      else
        wrote = true
        noteEvent('queued', id, 'n', taskName, 'd', placeAt > now and placeAt or nil)
        if plan then
          replaceAll(id, plan)
          if plan.holder then noteEvent('waiting', id, 'n', plan.name, 'h', plan.holder) end
        end
        if plan and plan.takeLock then
          redis.pcall('SET', lockKey, id, 'PX', lockTtl)
        elseif plan then
          -- The pointer the holder's end reads (includes/end-task.lua): when it is due, the lock's
          -- lifetime, the id. It lives as long as the holder's lock and then its own.
          local left = math.max(redis.call('PTTL', lockKey), 0)
          redis.pcall('SET', pointerKey, math.max(due, now) .. ' ' .. lockTtl .. ' ' .. id, 'PX', left + lockTtl)
        end
      end
    end
  end
  table.insert(replies, code)
  table.insert(replies, detail)
  table.insert(replies, ttl)
end
if ARGV[o] then useEvents(ARGV[o], nil, eventsKey) end
flushEvents()
return replies
