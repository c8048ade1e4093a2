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
-- Milliseconds on the Redis server's clock: the only clock heimdall trusts for due times,
-- leases and rate windows, so workers with skewed clocks agree.
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Whole numbers (ms, an attempt) as the text a command is sent. Lua 5.1 turns a number passed
-- to redis.call into text with '%.14g', a floating-point conversion: writing and reading numbers
-- took 6.65% of Redis's samples in a profile of the drain at concurrency 50, 2.14% with this
-- (BENCHMARKS.md, "What a profile of Redis shows"). '%d' is an integer conversion. The values a
-- call sends for each of its tasks (now, the lease's end, the result lifetime) are written once
-- per call (msText: the texts are kept for the call; scripts keep no state between calls); a
-- value of one task only (a start time, a runtime) goes through wholeText. A value that is not a
-- finite number (only a damaged record gives one: an attempt field 'nan') goes as Lua writes it,
-- as before.
local function wholeText(n)
  if n ~= n or n == math.huge or n == -math.huge then return tostring(n) end
  return string.format('%d', n)
end

local msTexts = {}
local function msText(n)
  local s = msTexts[n]
  if not s then
    s = wholeText(n)
    -- NaN cannot be a table key; it is not kept.
    if n == n then msTexts[n] = s end
  end
  return s
end
-- Arguments longer than 64 bytes (Redis's default hash-max-listpack-value) would turn the task
-- hash from a compact listpack into a hashtable, more than doubling its memory. So arguments
-- of up to ARGS_CHUNKED_MAX bytes are kept in pieces of at most ARGS_CHUNK bytes: the first in field a,
-- the others in a1, a2, ..., and their count in ac. Longer ones (the hash would be too big to
-- stay a listpack anyway) and short ones are kept whole in a, with no ac.
local ARGS_CHUNK = 64
local ARGS_CHUNKED_MAX = 48 * 64

-- The hash fields, value pairs that hold `args`, appended to `out`. `whole`: keep them in one
-- piece anyway (another field of the hash is too long for a listpack, so pieces save nothing).
local function argsFields(out, args, whole)
  local n = #args
  if whole or n <= ARGS_CHUNK or n > ARGS_CHUNKED_MAX then
    table.insert(out, 'a'); table.insert(out, args)
    return
  end
  -- Pieces end on whole UTF-8 characters, so a client that decodes each field alone (HGETALL
  -- in TaskResult.info()) reads them right.
  local count, start = 0, 1
  while start <= n do
    local stop = math.min(n, start + ARGS_CHUNK - 1)
    while stop < n and stop > start do
      local b = string.byte(args, stop + 1)
      if b < 128 or b >= 192 then break end
      stop = stop - 1
    end
    if count == 0 then table.insert(out, 'a') else table.insert(out, 'a' .. count) end
    table.insert(out, string.sub(args, start, stop))
    count = count + 1
    start = stop + 1
  end
  table.insert(out, 'ac'); table.insert(out, count)
end

-- The whole arguments of a task whose fields a and ac were read as `first` and `count`, and
-- a1, a2, a3 as `p1`, `p2`, `p3` when the caller read them along (nil: read here); nil when a
-- piece is missing.
local function joinArgs(key, first, count, p1, p2, p3)
  if not first or not count then return first end
  -- argsFields writes about ARGS_CHUNKED_MAX / 61 pieces at most; a count that is not a whole
  -- number up to 256 is not a record of ours (and an unbounded one would stall Redis): malformed.
  local n = tonumber(count)
  if not n or n ~= math.floor(n) or n > 256 then return nil end
  if n < 2 then return first end
  local pieces
  if n <= 4 and p1 then
    pieces = { p1, p2, p3 }
  else
    local names = {}
    for i = 1, n - 1 do names[i] = 'a' .. i end
    pieces = redis.call('HMGET', key, unpack(names))
  end
  local parts = { first }
  for i = 1, n - 1 do
    if not pieces[i] then return nil end
    parts[i + 1] = pieces[i]
  end
  return table.concat(parts)
end
-- Whether a task state is final: SUCCESS, FAILURE or REVOKED (false for nil: no record).
local function isEnded(s)
  return s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED'
end
-- An idle worker sleeps until the earliest due time it knew of (or blocks on the wait list). When
-- a task is put in the delayed set due earlier than every task there, a marker ('') pushed to
-- the wait list wakes the blocked workers; the fetch that follows skips it and reads the
-- delayed set afresh. At most one marker waits at the head of the list. Returns true when a
-- marker was pushed. Called before the ZADD of the task.
local function wakeIfEarliest(waitKey, delayedKey, due)
  local head = redis.call('ZRANGE', delayedKey, 0, 0, 'WITHSCORES')
  if (not head[2] or due < tonumber(head[2])) and redis.call('LINDEX', waitKey, 0) ~= '' then
    local pushed = redis.pcall('LPUSH', waitKey, '')
    return not (type(pushed) == 'table' and pushed.err)
  end
  return false
end
-- Generated by scripts/gen-lua.mjs from KEY_NAMES and CHANNEL_NAMES in
-- src/core/protocol/queue-keys.ts. Do not edit. The keys and channels a script builds from its
-- queue's base '<prefix>:{<queue>}:', named as QueueKeys names them; `id` is a task id, `tail`
-- what follows the name ('<task name>:<key>'). The names end in Of, so that no local holding a
-- key (waitKey, lockKey, ...) hides one: the generator refuses a local of these names.
local function waitKeyOf(base) return base .. 'wait' end
local function delayedKeyOf(base) return base .. 'delayed' end
local function activeKeyOf(base) return base .. 'active' end
local function claimedKeyOf(base) return base .. 'claimed' end
local function deadKeyOf(base) return base .. 'dead' end
local function namesKeyOf(base) return base .. 'names' end
local function taskKeyOf(base, id) return base .. 't:' .. id end
local function lockKeyOf(base, tail) return base .. 'lock:' .. tail end
local function rateKeyOf(base, tail) return base .. 'rate:' .. tail end
local function afterKeyOf(base, tail) return base .. 'after:' .. tail end
local function nextKeyOf(base, tail) return base .. 'next:' .. tail end
local function workersKeyOf(base) return base .. 'workers' end
local function workerInfoKeyOf(base) return base .. 'worker-info' end
local function eventsKeyOf(base) return base .. 'events' end
local function statsKeyOf(base) return base .. 'stats' end
local function revokeChannelOf(base) return base .. 'revoke' end
local function doneChannelOf(base, id) return base .. 'done:' .. id end
local function controlChannelOf(base) return base .. 'control' end
local function replyChannelOf(base, tail) return base .. 'reply:' .. tail end

-- The unique lock a task's record names. A producer sends the whole lock key (field lk), which
-- for a task of ours is '<base>lock:<task name>:<key>': with the default prefix, a task name of
-- some 30 characters and a hashed key (40 hex digits), over 90 bytes. Redis keeps a hash as a
-- compact listpack only while every value is at most hash-max-listpack-value (64) bytes, so
-- that one value would turn the whole record into a hashtable of about twice the memory.
-- So the record keeps only what follows '<base>lock:<task name>:' (field lu, the user's key or
-- the hash), and the key is built back from it and the task name (field n) where it is read.
-- A key of another form (a producer's own, under the queue's base) is kept whole in lk, and so
-- are the keys of records written before lu (lk wins when a record has both).

-- The lock key a record names, from its fields lk, lu and n as read (false or nil: absent);
-- false for none.
local function lockNamed(base, lk, lu, name)
  if lk then return lk end
  if lu and name then return lockKeyOf(base, name .. ':' .. lu) end
  return false
end

-- The field, value pair that stores lock key `key` in the record of task `name` (nil: the
-- message has no name): 'lu' and the key's tail when the key is '<base>lock:<name>:<tail>',
-- else 'lk' and the whole key.
local function lockField(base, name, key)
  if name and name ~= '' then
    local head = lockKeyOf(base, name .. ':')
    if #key > #head and string.sub(key, 1, #head) == head then return 'lu', string.sub(key, #head + 1) end
  end
  return 'lk', key
end
-- The queue's event stream (STREAM <base>events): what a call did, for dispatcher.events() and
-- the CLI. Events are noted as the call goes (noteEvent) and written at its end (flushEvents)
-- as ONE stream entry per call, however many tasks it moved: a fetch that ends 50 runs and
-- starts 50 adds one entry, not 100. An entry is a list of field, value pairs: a pair whose
-- field is an event type ('queued', 'started', ...) opens an event and names its task id; the
-- pairs after it, up to the next type, are its details (n name, w worker, a attempt, ...; see
-- src/core/events/queue-events.ts, which reads them). The stream is capped when written (MAXLEN ~)
-- and by age by the workers' heartbeat (XTRIM MINID ~). The cap counts entries, that is script
-- calls: an entry holds one event for a single send, up to about twice a worker's concurrency
-- for a busy fetch. (A cap in events cannot be kept with MAXLEN, which counts the entries of
-- the whole stream: dividing it by the events of the entry being written let one big entry trim
-- away the history of many small ones.)
-- The three events every task has, started, progress and succeeded, go without the task's name
-- (n), which the others carry: the reader takes it from the task's queued event or its record.
-- Details before the first event of an entry apply to all its events: a worker's calls put their
-- worker id there once ('w'), and leave it out of each event that names that worker.
-- A cap of 0 turns events off. Writing them is best effort: a refused XADD (a full Redis) is
-- ignored, never failing the transitions the call made.
-- The stream's key comes from the calling script, which declares it in its KEYS (a key built
-- here from the base would be one Redis Cluster does not know the script touches).
local eventPairs = {}
local eventCap = 0
local eventWorker = nil
local eventStreamKey = nil

-- `worker`: the id of the worker making the call (nil for a producer or an operator); `key`: the
-- stream, <prefix>:{<queue>}:events, as the script's KEYS name it.
local function useEvents(cap, worker, key)
  eventCap = tonumber(cap) or 0
  eventWorker = worker
  eventStreamKey = key
end

local function eventsOn()
  return eventCap > 0
end

-- noteEvent(type, id, field1, value1, ...): nil values are skipped with their field, and so is a
-- worker ('w') that is the calling worker (the entry names it once).
local function noteEvent(kind, id, ...)
  if eventCap <= 0 then return end
  local n = #eventPairs
  eventPairs[n + 1] = kind
  eventPairs[n + 2] = id
  n = n + 2
  local count = select('#', ...)
  for i = 1, count, 2 do
    local field, value = select(i, ...)
    if value ~= nil and value ~= false and not (field == 'w' and value == eventWorker) then
      eventPairs[n + 1] = field
      eventPairs[n + 2] = value
      n = n + 2
    end
  end
end

-- A mark to rewind to, should what was noted after it be undone.
local function eventMark()
  return #eventPairs
end

local function eventRewind(mark)
  for i = #eventPairs, mark + 1, -1 do eventPairs[i] = nil end
end

-- Writes the noted events: one entry, or one per 4000 items (unpack is bounded by Lua's stack),
-- never splitting an event (an entry always starts with a type).
local function flushEvents()
  local total = #eventPairs
  if total == 0 or eventCap <= 0 then
    eventPairs = {}
    return
  end
  local key = eventStreamKey
  local header = {}
  if eventWorker then header = { 'w', eventWorker } end
  local from = 1
  while from <= total do
    local to = math.min(total, from + 3999)
    -- Extend to the end of the event the slice cut (the next type opens at an odd index whose
    -- field is not a detail: details are one or two letters, types are longer).
    while to < total and #eventPairs[to + 1] <= 2 do to = to + 2 end
    if #header > 0 then
      redis.pcall('XADD', key, 'MAXLEN', '~', eventCap, '*', header[1], header[2], unpack(eventPairs, from, to))
    else
      redis.pcall('XADD', key, 'MAXLEN', '~', eventCap, '*', unpack(eventPairs, from, to))
    end
    from = to + 1
  end
  eventPairs = {}
end

-- The name and message (at most 300 characters) of the error JSON among `fields` (a flat list of
-- field, value pairs; the error is field 'e'), for a failed or retried event.
local function errorSummary(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then
      local ok, decoded = pcall(cjson.decode, fields[i + 1])
      if ok and type(decoded) == 'table' then
        local message = decoded.message
        if type(message) == 'string' and #message > 300 then message = string.sub(message, 1, 300) .. '...' end
        if type(message) ~= 'string' then message = nil end
        if type(decoded.name) ~= 'string' then return nil, message end
        return decoded.name, message
      end
    end
  end
  return nil, nil
end

-- Puts a task in a final state (SUCCESS, FAILURE or REVOKED) with the given extra hash
-- fields, sets its record to expire, releases its unique lock (compare-and-delete, unless
-- uniqueWaitForExpiry), and announces the end on the task's done channel. SPUBLISH, not
-- PUBLISH: on a Cluster the message stays on the shard of the queue (whose hash tag the channel
-- carries) instead of going to every node over the cluster bus (docs/decisions.md).
-- `extra` is a flat list of field, value pairs (may be empty). `lock`: the task's lock key (as
-- lockNamed gives it) and field lw when the caller has read them already (nil: read here). `run`: the task's fields n, w, st
-- when the caller has read them (nil: read here, only when events are on), for the event.
-- `handOver`: { next = the lock's pending pointer, delayed = , wait = the queue's keys }, as the
-- caller declares them, when the task may have one waiting behind it (onConflict keepLast or
-- debounce); nil otherwise. The lock released, the task pending behind it (the pointer's
-- `'<due> <lifetime> <id>'`) is handed the lock and made due (now, or at its debounce time), if
-- it still waits in the delayed set. Any other state (revoked, or already moved to the wait list)
-- is left alone: a task moved to the wait list takes the free lock when it starts, and a pointer
-- to a task that no longer waits is dropped by the next dispatch that reads it, or lapses.
local function handLockOver(lockKey, id, h, now)
  local pointer = redis.call('GET', h.next)
  if not pointer then return end
  local due, life, nextId = string.match(pointer, '^(%d+) (%d+) (.+)$')
  -- A pointer to the ending task itself: it was the pending one, and took the free lock when it
  -- started (it was in the wait list when its holder ended). Nothing waits any more.
  if not nextId or nextId == id then
    redis.call('DEL', h.next)
    return
  end
  if not redis.call('ZSCORE', h.delayed, nextId) then return end
  redis.call('SET', lockKey, nextId, 'PX', life)
  redis.call('DEL', h.next)
  local at = math.max(now, tonumber(due))
  wakeIfEarliest(h.wait, h.delayed, at)
  redis.call('ZADD', h.delayed, at, nextId)
end

local function endTask(base, id, state, extra, now, expireMs, lock, run, handOver)
  local key = taskKeyOf(base, id)
  redis.call('HSET', key, 's', state, 'f', msText(now), unpack(extra))
  redis.call('PEXPIRE', key, msText(expireMs))
  if not lock then
    local named = redis.call('HMGET', key, 'lk', 'lw', 'lu', 'n')
    lock = { lockNamed(base, named[1], named[3], named[4]), named[2] }
  end
  if lock[1] and lock[2] ~= '1' then
    local holder = redis.pcall('GET', lock[1])
    if holder == id then
      redis.call('DEL', lock[1])
      if handOver then handLockOver(lock[1], id, handOver, now) end
    end
  end
  redis.call('SPUBLISH', doneChannelOf(base, id), state)
  if eventsOn() then
    run = run or redis.call('HMGET', key, 'n', 'w', 'st')
    if state == 'REVOKED' then
      local reason
      for i = 1, #extra, 2 do if extra[i] == 'rr' then reason = extra[i + 1] end end
      noteEvent('revoked', id, 'n', run[1], 'r', reason)
    else
      local runtime
      if run[3] and tonumber(run[3]) then runtime = wholeText(now - tonumber(run[3])) end
      if state == 'SUCCESS' then
        noteEvent('succeeded', id, 'w', run[2], 'rt', runtime)
      else
        local errName, errMessage = errorSummary(extra)
        noteEvent('failed', id, 'n', run[1], 'w', run[2], 'rt', runtime, 'en', errName, 'em', errMessage)
      end
    end
  end
end

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
