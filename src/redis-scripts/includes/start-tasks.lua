-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "end-task"
-- @include "dead-letter"
-- @include "next-delay"
-- @include "args"
-- @include "move-to-wait"
-- @include "events"
-- @include "declared"
-- @include "rate-window"
-- @include "ms-text"
-- Starts up to `want` tasks, touching only keys the call declares. A task's record, lock and
-- rate window can be declared only by a caller that knows its id and its record's `lk` and `rk`
-- before the call, so a task reaches STARTED in one of two ways:
--   * a hint: an id the caller names because it saw it at the tail of the wait list (the last
--     call's peek, or the id its blocking BLMOVE saw), with its record declared: when the id is
--     still at the tail, it is examined and started in this call;
--   * a claim: an id read from the tail that the caller did not declare is moved from the wait
--     list to the claimed set (score: when the claim lapses, which also tells this claim apart
--     from any later one of the same id) and returned; the caller's next call declares its record
--     and starts it. A hinted or claimed task whose record names a lock or rate window the call
--     did not declare is claimed (or stays claimed) and returned with those keys, for the next
--     call to declare.
-- A claim the caller does not start in time (it died, or lost the reply) lapses: any call that
-- starts tasks moves lapsed claims back to the front of the wait list. A closing worker releases
-- its claims the same way (mode 'r'). Due delayed tasks join the wait list first. Lapsed leases
-- of started tasks are not recovered here (that needs their records declared): their ids are
-- returned, for the caller to recover with recover-*.lua.
-- For each task examined, in this order:
--   * no record: dead-lettered; a state other than PENDING/RETRY (revoked): dropped;
--   * its record names a lock or rate window the call did not declare: claimed, keys returned;
--   * a message this version cannot read (fields missing or of the wrong kind): FAILURE with
--     MalformedTaskError, dead-lettered;
--   * past its `expires` time: REVOKED with reason 'expired';
--   * unique: if its lock lapsed and nobody took it, it takes it again; if another task
--     holds it now, it ends REVOKED with reason 'duplicate' and does not run, unless it is the
--     task enqueued pending behind a running holder (onConflict keepLast or debounce: field cb),
--     which goes back to the delayed set to wait for the holder's end;
--   * rate limit or expiry, when it would be a reservation (past `handlers`): not started; it
--     stays at the front (a claim of it is released there), and the call stops there (`blocked`);
--   * rate limit: counted in its rolling window on the Redis clock (includes/rate-window.lua);
--     if full, it waits for its turn in the delayed set, due then, still PENDING;
--   * otherwise it starts: state STARTED, attempts + 1, a new run token, a lease in the active set.
--     While fewer than `handlers` tasks were started or claimed by the call, a task begins at
--     once (`st`, a 'started' event); after that, it is one of the worker's reservations (prefetch): field `rs` = '1', no `st`, no event, until
--     a later call of the worker says their handler began (fetch-7.lua's begins).
-- Ids are read from the tail of the wait list (LRANGE), not popped: while the call works, every
-- id it looks at is still in the list, so a call that fails half way (a command Redis refuses
-- outside a pcall, an error in the script) leaves no id in no place. At the end the ids examined
-- or claimed are taken off the tail in one LTRIM, except those to try again, which stay at the
-- tail in their order (see settleTail). A command Redis refuses (isRefusal: out of memory, an
-- ACL, a Cluster slot on the move) never fails or drops a task: its start is undone, it stays
-- where it was (the list, or the claimed set), and the refusal is reported in `problem`. Should
-- the final trim itself be refused, the ids examined stay in the list too: the ones started,
-- ended or claimed are stale entries there, dropped when read again (their state is no longer
-- PENDING or RETRY, or they wait in the delayed set, or a claim of them is started first).
-- `cands` maps an id to what the call declared for it: { key = its record, lock, rate (nil when
-- not declared), mode = 'h' hint, 'k' an id further in to look ahead at (started like a hint if
-- the call reaches it at the tail, else only its `lk` and `rk` are read and returned), 'c' a
-- claim to start, 'r' a claim to release, stamp = the claim's score as returned }. Looking
-- ahead lets a worker declare the lock and rate window of a task before the call that starts it,
-- so a unique or rate-limited task starts in one call too.
-- Returns {started, limited, revoked, nextDelay, more, outcomes, problem, claims, peek, lapsed, looked}:
--   started: flat list of id, name, args, attempt, time limit ms (0: none), retries so far,
--     run token, and which options the message carried ('u' unique lock, 'r' rate limit,
--     't' time limit, 'm' maxRecoveries; the worker applies its own for the others), with 'p'
--     added for a reservation (prefetch)
--   limited: flat list of id, name, args, delay ms
--   revoked: flat list of id, name, args, reason
--   nextDelay: ms until the earliest delayed task is due, -1 if none (or Redis refused the
--     lookup), -2 not looked up (all `want` tasks started or claimed: the worker calls again
--     before it could go idle)
--   more: 0 when the wait list ran dry, 1 when it may hold more
--   outcomes: as the caller passes it (finish's stored states; empty for fetch)
--   problem: '' or the text of the commands Redis refused (the caller reports it and backs off)
--   claims: flat list of id, stamp, lock key, rate key ('' none or not known yet) of each claim
--     the caller holds after the call, new or kept
--   peek: up to `peekCount` ids at the tail of the wait list after the call, tail first
--   lapsed: up to 20 ids of the active set whose leases lapsed
--   looked: flat list of id, lock key, rate key ('' none) of each id looked ahead at (mode 'k')
--     and not reached at the tail
--   blocked: 1 when a rate-limited or expiring task would have been a reservation (prefetch): it stays at the
--     front (a claim of it is released there) and nothing behind it is reserved; the caller asks
--     for no reservation until it has a handler slot to ask for, else 0

-- Takes the ids examined off the tail of the wait list, keeping those to try again there.
-- `examined[i]` is the id i places from the tail (examined[1] is the last element, the one RPOP
-- would take), as the call read them; `stays[i]` says it is to be tried again. Nothing else
-- changed the list since it was read. The ids that stay are written (LSET) over the innermost
-- examined places, in their order, then the rest of the examined tail goes in one LTRIM; so the
-- list is never emptied while an id still has to go back into it (in a slot being migrated, a
-- list key emptied and deleted could not be written again by the script: "non local key"), and
-- each step leaves every id that stays in the list: an id that stays moves only inward, onto a
-- place whose id is done or already copied. Returns nil, or the text of the refusal that stopped
-- it (the ids still to take off are then stale entries in the list).
local function settleTail(waitKey, examined, stays)
  local k = #examined
  local kept = {}
  for i = 1, k do if stays[i] then kept[#kept + 1] = examined[i] end end
  local r = #kept
  if k == r then return nil end
  -- The j-th id that stays ends k - r + j places from the tail; filled from the innermost, so
  -- no id that stays is overwritten before it is copied.
  for j = r, 1, -1 do
    local at = k - r + j
    if examined[at] ~= kept[j] then
      local set = redis.pcall('LSET', waitKey, -at, kept[j])
      if type(set) == 'table' and set.err then return set.err end
    end
  end
  local trimmed = redis.pcall('LTRIM', waitKey, 0, -(k - r) - 1)
  if type(trimmed) == 'table' and trimmed.err then return trimmed.err end
  return nil
end

-- `K`: { wait = , delayed = , active = , claimed = } keys of the queue. `seed` (a random whole
-- number, as text) is the run token of every task this call starts: a task is started at most once per call, and tokens are compared per
-- task. `order` lists the ids of `cands` in the order the caller gave them. `outcomes` goes into
-- the reply as it is.
local function startTasks(base, K, workerId, leaseMs, want, now, expireMs, seed, outcomes, cands, order, claimMs, peekCount, handlers)
  handlers = handlers or want
  -- The lease's end of every task this call starts, as text (includes/ms-text.lua).
  local leaseEnd = msText(now + leaseMs)
  local waitKey, delayedKey, activeKey, claimedKey = K.wait, K.delayed, K.active, K.claimed
  local problems = {}
  local started, limited, revoked, claims, lapsed, peek = {}, {}, {}, {}, {}, {}
  local count = 0
  -- What examining the current id has done so far, so a failure half way can be undone:
  -- its lease, its start counted in a rate window, its place in the delayed set.
  local leased, counted, placed
  -- Ids whose claims this call keeps for the caller: never swept as lapsed by the same call.
  local kept = {}
  local function keep(id, stamp, lock, rate)
    kept[id] = true
    table.insert(claims, id); table.insert(claims, stamp); table.insert(claims, lock or ''); table.insert(claims, rate or '')
  end
  -- Ends a candidate REVOKED without starting it (expired, duplicate) and reports it.
  local function revokeOne(id, name, args, reason, lock)
    endTask(base, id, 'REVOKED', { 'rr', reason }, now, expireMs, lock, { name })
    table.insert(revoked, id); table.insert(revoked, name); table.insert(revoked, args)
    table.insert(revoked, reason)
  end
  -- Examines one declared task; run under pcall. Returns 'keys', lock, rate when its record names
  -- a lock or rate window the call did not declare (nothing is written then).
  local function examine(id, c)
    leased, counted, placed = false, nil, false
    local key = c.key
    local t = redis.pcall('HMGET', key, 's', 'n', 'a', 'lk', 'lt', 'rk', 'rn', 'rp', 'at', 'v', 'ex', 'tl', 'ry', 'ac', 'd',
      'a1', 'a2', 'a3', 'mr', 'lw', 'cb', 'lu', 'rs', 'cm')
    if t.err then
      if isRefusal(t) then error(t) end
      deadLetter(base, id, 'its record is not a hash', now)
      return
    end
    local state, name, args, lockLife, rateKey, rateLimit, ratePeriod = t[1], t[2], t[3], t[5], t[6], t[7], t[8]
    local lockKey = lockNamed(base, t[4], t[22], name)
    local attempts, version, expires, timeLimit, retries, pieces, dueAt = t[9], t[10], t[11], t[12], t[13], t[14], t[15]
    local piece1, piece2, piece3, maxRecoveries, lockWait, behind = t[16], t[17], t[18], t[19], t[20], t[21]
    if not state then
      deadLetter(base, id, 'the wait list names a task with no record', now)
      return
    end
    if state ~= 'PENDING' and state ~= 'RETRY' then return end -- revoked while queued, or a stale entry
    -- A stale entry (an id reused for a new task, or a retry) whose task waits in the delayed
    -- set, not yet due: dropped here, it starts when due. (Only a task with a due time, d, has
    -- ever been in the delayed set.)
    if dueAt and redis.call('ZSCORE', delayedKey, id) then return end
    -- A lock or window outside the queue (written by hand, or by a foreign producer) could not be
    -- declared beside the queue's keys on a Cluster (another slot): the message is malformed.
    if (lockKey and string.sub(lockKey, 1, #base) ~= base) or (rateKey and string.sub(rateKey, 1, #base) ~= base) then
      failMalformed(base, id, 'its unique lock or rate window key is not a key of its queue (' .. base .. ')', now, expireMs, { false })
      return
    end
    -- A rate-limited task is never reserved (prefetch): its window counts when its handler can
    -- begin at once, so that the begins in any window stay within its limit. Nor is a task with
    -- an expiry, which is checked when its handler can begin, nor a unique task with onConflict
    -- 'replace' (cm), which a later call replaces only while it has not started: a reservation's
    -- handler begins before Redis hears of it, so replacing one could run two of the key at
    -- once. It stays at the front of the queue for a call with a handler slot, and the call
    -- reserves nothing behind it (so none overtakes it).
    if (rateKey or expires or t[24] == 'replace') and count >= handlers then return 'later' end
    if (lockKey and lockKey ~= c.lock) or (rateKey and rateKey ~= c.rate) then return 'keys', lockKey, rateKey end
    if pieces then args = joinArgs(key, args, pieces, piece1, piece2, piece3) end
    local lock = { lockKey, lockWait }

    local lockTtl, limit, period = tonumber(lockLife), tonumber(rateLimit), tonumber(ratePeriod)
    local problemOfRecord = nil
    if not version then
      problemOfRecord = 'the record has no message version (field v); this worker reads version 1'
    elseif version ~= '1' then
      problemOfRecord = 'message version ' .. version .. ' is not one this worker reads (1)'
    elseif not name or name == '' or not args then
      problemOfRecord = 'the record lacks a task name or arguments'
    elseif lockKey and not (lockTtl and lockTtl > 0 and lockTtl == math.floor(lockTtl)) then
      problemOfRecord = 'the unique lock lifetime is not a positive whole number'
    elseif rateKey and not (limit and limit >= 1 and limit == math.floor(limit) and period and period > 0 and
        period == math.floor(period)) then
      problemOfRecord = 'the rate limit is not [whole n >= 1, whole period > 0]'
    elseif expires and not tonumber(expires) then
      problemOfRecord = 'the expiry (field ex) is not a number'
    elseif timeLimit and not (tonumber(timeLimit) and tonumber(timeLimit) >= 0) then
      problemOfRecord = 'the time limit (field tl) is not a number >= 0'
    end
    if problemOfRecord then
      failMalformed(base, id, problemOfRecord, now, expireMs, lock)
      return
    end
    if expires and now > tonumber(expires) then
      revokeOne(id, name, args, 'expired', lock)
      return
    end
    if lockKey then
      local holder = redis.pcall('GET', lockKey)
      if type(holder) == 'table' then
        if isRefusal(holder) then error(holder) end
        failMalformed(base, id, 'its unique lock key holds a value of the wrong type', now, expireMs, { false })
        return
      elseif not holder then
        redis.call('SET', lockKey, id, 'PX', lockTtl)
      elseif holder ~= id and behind then
        -- The task pending behind a running holder (enqueue put it there, field cb): it waits for the
        -- holder's end, which hands it the lock and makes it due (includes/end-task.lua). Should
        -- that end not come through a finish (a terminate, a lost worker), it looks again when
        -- the lock lapses, or in 10 s.
        local left = redis.call('PTTL', lockKey)
        local recheck = 10000
        if left > 0 and left < recheck then recheck = left end
        redis.call('ZADD', delayedKey, now + recheck, id)
        placed = true
        redis.call('HSET', key, 'd', now + recheck)
        return
      elseif holder ~= id then
        revokeOne(id, name, args, 'duplicate', lock)
        return
      end
    end
    local attempt = (tonumber(attempts) or 0) + 1
    if rateKey then
      local member = id .. ':' .. attempt
      local verdict, detail, turn = admitRate(rateKey, member, limit, period, now)
      if verdict == 'bad' then
        if isRefusal(detail) then error(detail) end
        failMalformed(base, id, 'its rate window key holds a value of the wrong type', now, expireMs, lock)
        return
      end
      -- What to undo in the window should a later command fail: the start counted (and the turn
      -- it had, put back), or the turn reserved now; nothing when it kept its turn.
      if verdict == 'start' then
        counted = { rateKey, member, turn }
      elseif not turn then
        counted = { rateKey, '~' .. member }
      end
      if verdict == 'wait' then
        -- Its slot in the window is reserved; it waits for it in the delayed set, due then.
        redis.call('ZADD', delayedKey, now + detail, id)
        placed = true
        redis.call('HSET', key, 'd', now + detail)
        table.insert(limited, id); table.insert(limited, name); table.insert(limited, args)
        table.insert(limited, detail)
        noteEvent('rate-limited', id, 'n', name, 'dl', detail)
        return
      end
    end
    -- The lease first: should the record not be written, the id is still in a place.
    redis.call('ZADD', activeKey, leaseEnd, id)
    leased = true
    -- The run token (the call's random seed): the lease renewals, the finish and revoke signals
    -- of this run carry it, so they can tell it from the task's other runs.
    local token = seed
    -- The first `handlers` tasks started begin at once; the rest are reservations (prefetch):
    -- started in every respect (lease, token, lock, rate window, attempt) but marked `rs`, with
    -- no start time and no 'started' event until the worker's next call says their handler began.
    -- `count`: the tasks started and claims kept so far; a claim kept takes a handler slot first.
    local reserved = count >= handlers
    if reserved then
      redis.call('HSET', key, 's', 'STARTED', 'w', workerId, 'at', msText(attempt), 'tk', token, 'rs', '1')
      -- The start time of an attempt before it goes: a reservation has none until its begin.
      if attempt > 1 then redis.call('HDEL', key, 'st') end
    else
      redis.call('HSET', key, 's', 'STARTED', 'st', msText(now), 'w', workerId, 'at', msText(attempt), 'tk', token)
      -- A reservation mark a hand-back could not take off (a refused HDEL) must not hide this run.
      if t[23] then redis.call('HDEL', key, 'rs') end
    end
    local carried = ''
    if lockKey then carried = 'u' end
    if rateKey then carried = carried .. 'r' end
    if timeLimit then carried = carried .. 't' end
    if maxRecoveries then carried = carried .. 'm' end
    if reserved then carried = carried .. 'p' end
    local n = #started
    started[n + 1], started[n + 2], started[n + 3], started[n + 4] = id, name, args, attempt
    started[n + 5], started[n + 6], started[n + 7], started[n + 8] = tonumber(timeLimit) or 0, tonumber(retries) or 0, token, carried
    -- The first attempt goes without saying (a reader takes 1).
    if not reserved then noteEvent('started', id, 'w', workerId, 'a', attempt > 1 and attempt or nil) end
    count = count + 1
  end
  -- Examines a declared task under pcall. Returns 'done' (started, ended or dropped), 'keys',
  -- lock, rate (it needs them declared), or 'stays' (Redis refused a command, or ending it as
  -- malformed failed: it is as it was).
  local function tryExamine(id, c)
    local mark = eventMark()
    local ok, res, lock, rate = pcall(examine, id, c)
    if ok then
      if res == 'keys' then return 'keys', lock, rate end
      if res == 'later' then return 'later' end
      return 'done'
    end
    eventRewind(mark)
    -- Undo what the examination did before it failed, then: a refusal keeps the task as it was;
    -- any other error means its record cannot be run (malformed), unless ending it so fails too,
    -- which keeps it as it was too.
    local err = res
    if leased then redis.pcall('ZREM', activeKey, id) end
    if counted then
      redis.pcall('ZREM', counted[1], counted[2])
      if counted[3] then redis.pcall('ZADD', counted[1], counted[3], '~' .. counted[2]) end
    end
    if placed then redis.pcall('ZREM', delayedKey, id) end
    if not isRefusal(err) then
      local fine, failed = pcall(failMalformed, base, id, 'a command on its keys failed: ' .. errorText(err), now, expireMs,
        { c.lock or false })
      if fine then return 'done' end
      err = failed
    end
    table.insert(problems, 'task ' .. id .. ': ' .. errorText(err))
    return 'stays'
  end

  -- The caller's claims: started, or (mode 'r', or beyond `want`) sent back to the front of the
  -- queue. A claim whose score is not the stamp the caller holds lapsed (and went back, or is
  -- someone else's now): nothing to do.
  -- A write that changes nothing (LTRIM of the whole list), so a full Redis lets the starts
  -- through: under noeviction Redis refuses only a script's first write, and LTRIM is one it
  -- allows. (The first write would otherwise be a lease's ZADD or a claim's, refused.)
  redis.pcall('LTRIM', waitKey, 0, -1)
  local released = {}
  -- Set when a task that is never reserved (rate limit, expiry) would have been: it stays at the
  -- front (a claim of it is released there, in order), and it and what follows wait for a call
  -- with a handler slot (returned as `blocked`, so the worker asks for no reservation until then).
  local blocked = false
  for _, id in ipairs(order) do
    local c = cands[id]
    if (c.mode == 'c' or c.mode == 'r') and tonumber(redis.call('ZSCORE', claimedKey, id)) == tonumber(c.stamp) then
      if c.mode == 'r' or count >= want or blocked then
        table.insert(released, id); table.insert(released, c.stamp)
      else
        local res, lock, rate = tryExamine(id, c)
        if res == 'done' then
          redis.call('ZREM', claimedKey, id)
        elseif res == 'later' then
          blocked = true
          table.insert(released, id); table.insert(released, c.stamp)
        else
          keep(id, c.stamp, lock or c.lock, rate or c.rate)
          count = count + 1
        end
      end
    end
  end

  if #released > 0 then
    -- In one push, so they keep their order at the front of the queue (the first at the tail).
    local refused = moveToWait(waitKey, claimedKey, released)
    if refused then table.insert(problems, 'releasing claims: ' .. refused) end
  end

  if want > 0 then
    -- Lapsed claims go back to the front of the queue; lapsed leases are reported.
    local stale = redis.pcall('ZRANGEBYSCORE', claimedKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 100)
    if stale.err then
      if not isRefusal(stale) then error(stale) end
      table.insert(problems, 'looking for lapsed claims: ' .. stale.err)
    else
      local lapsedClaims = {}
      for i = 1, #stale, 2 do
        if not kept[stale[i]] then table.insert(lapsedClaims, stale[i]); table.insert(lapsedClaims, stale[i + 1]) end
      end
      stale = lapsedClaims
    end
    if not stale.err and #stale > 0 then
      local refused = moveToWait(waitKey, claimedKey, stale)
      if refused then table.insert(problems, 'sending lapsed claims back: ' .. refused) end
    end
    local gone = redis.pcall('ZRANGEBYSCORE', activeKey, '-inf', now, 'LIMIT', 0, 20)
    if gone.err then
      if not isRefusal(gone) then error(gone) end
      table.insert(problems, 'looking for lapsed leases: ' .. gone.err)
    else
      lapsed = gone
    end
    -- Due delayed tasks join the wait list, oldest nearest the tail, which is read first.
    local due = redis.pcall('ZRANGEBYSCORE', delayedKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
    if due.err then
      if not isRefusal(due) then error(due) end
      table.insert(problems, 'looking for due tasks: ' .. due.err)
    elseif #due > 0 then
      local refused = moveToWait(waitKey, delayedKey, due)
      if refused then table.insert(problems, 'moving due tasks to the wait list: ' .. refused) end
    end
  end

  -- The ids examined, from the tail inward, and which of them stay in the list (settleTail).
  local examined, stays = {}, {}
  local claimedNow = {}
  -- Examining is bounded so one call stays short.
  local drained = false
  -- Ids are read from the tail as many at a time as tasks are still wanted (LRANGE: one command,
  -- not one per task); every id read is examined or claimed, unless the bound stops the loop
  -- first (the ones not reached are simply left in the list).
  -- Claims the id just read (the last of `examined`) for the caller's next call, with the keys its
  -- record names when known; a refused ZADD keeps it in the list.
  local function claim(id, lock, rate)
    local stamp = now + claimMs
    local added = redis.pcall('ZADD', claimedKey, stamp, id)
    if type(added) == 'table' and added.err then
      stays[#examined] = true
      table.insert(problems, 'claiming task ' .. id .. ': ' .. added.err)
    else
      claimedNow[id] = true
      keep(id, stamp, lock, rate)
      count = count + 1
    end
  end
  local batch, next = {}, 1
  while count < want and #examined < want + 64 and not blocked do
    if next > #batch then
      if drained then break end
      local asked = want - count
      local read = redis.call('LRANGE', waitKey, -(#examined + asked), -(#examined + 1))
      if #read < asked then drained = true end
      if #read == 0 then break end
      -- LRANGE answers head to tail; the tail comes first.
      batch, next = {}, 1
      for i = #read, 1, -1 do batch[#batch + 1] = read[i] end
    end
    local id = batch[next]
    next = next + 1
    examined[#examined + 1] = id
    local c = cands[id]
    if id == '' or claimedNow[id] then
      -- the wake-up marker pushed by enqueue, or a second entry of an id claimed above: dropped
    elseif c and (c.mode == 'h' or c.mode == 'k') and not c.used then
      c.used = true
      local res, lock, rate = tryExamine(id, c)
      if res == 'stays' then
        stays[#examined] = true
      elseif res == 'later' then
        blocked = true
        stays[#examined] = true
      elseif res == 'keys' then
        claim(id, lock, rate)
      end
    else
      claim(id, nil, nil)
    end
  end
  if next <= #batch then drained = false end
  local refused = settleTail(waitKey, examined, stays)
  if refused then table.insert(problems, 'taking examined ids off the wait list: ' .. refused) end

  -- Ids the caller asked to look ahead at (mode 'k') and did not start: the lock and rate window
  -- their records name, for the caller's next call to declare when it starts them.
  local looked = {}
  for _, id in ipairs(order) do
    local c = cands[id]
    if c.mode == 'k' and not c.used then
      local named = redis.pcall('HMGET', c.key, 'lk', 'rk', 'lu', 'n')
      if not named.err then
        table.insert(looked, id); table.insert(looked, lockNamed(base, named[1], named[3], named[4]) or '')
        table.insert(looked, named[2] or '')
      end
    end
  end

  if peekCount > 0 then
    local tail = redis.call('LRANGE', waitKey, -peekCount, -1)
    for i = #tail, 1, -1 do
      if tail[i] ~= '' then peek[#peek + 1] = tail[i] end
    end
  end

  -- A worker that got all it asked for calls again soon: it needs neither of these.
  local nextDelay, more = -2, 1
  if count < want then
    -- Under pcall: this call may have emptied the delayed set, and in a slot being migrated a
    -- key emptied (deleted) is "non local" to the script; a refusal must not fail the call.
    local ok, delay = pcall(nextDelayOf, delayedKey, now)
    if ok then
      nextDelay = delay
    else
      nextDelay = -1
      table.insert(problems, 'looking up the next due task: ' .. errorText(delay))
    end
    if drained then more = 0 end
  end
  return {started, limited, revoked, nextDelay, more, outcomes, table.concat(problems, '; '), claims, peek, lapsed, looked, blocked and 1 or 0}
end
