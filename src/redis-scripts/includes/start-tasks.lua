-- Recovers lapsed leases, moves due delayed tasks to the wait list, then starts up to `want`
-- tasks from it. Recovery: a STARTED task whose lease lapsed (its worker died or hung) goes
-- back to the front of the wait list keeping its id and lock, or, after `mr` recoveries
-- (default 1), ends FAILURE with a WorkerLostError. For each candidate, in this order:
--   * no record: dead-lettered; a state other than PENDING/RETRY (revoked): dropped;
--   * a message this version cannot read (fields missing or of the wrong kind): FAILURE with
--     MalformedTaskError, dead-lettered;
--   * past its `expires` time: REVOKED with reason 'expired';
--   * unique: if its lock lapsed and nobody took it, it takes it again; if another task
--     holds it now, it ends REVOKED with reason 'duplicate' and does not run;
--   * rate limit: the rolling window is trimmed on the Redis clock; if full, the task goes
--     back to the delayed set, due when a slot frees plus jitter, and stays PENDING;
--   * otherwise it starts: state STARTED, attempts + 1, a lease in the active set.
-- Returns {started, limited, revoked, nextDelay, more}:
--   started: flat list of id, name, args, attempt, time limit ms (0: none), retries so far
--   limited: flat list of id, name, args, delay ms
--   revoked: flat list of id, name, args, reason
--   nextDelay: ms until the earliest delayed task is due, -1 if none, -2 not looked up (all
--     `want` tasks started: the worker calls again before it could go idle)
--   more: 0 when the wait list ran dry, 1 when it may hold more

-- RPUSHes list[#list] down to list[from], so list[from] ends nearest the tail (RPOP takes it
-- first): one command per 1000 ids, not one per id (unpack is bounded by Lua's stack).
local function pushToTail(waitKey, list, from)
  local k = #list
  while k >= from do
    local chunk = {}
    while k >= from and #chunk < 1000 do chunk[#chunk + 1] = list[k]; k = k - 1 end
    redis.call('RPUSH', waitKey, unpack(chunk))
  end
end

local function recoverLapsed(base, waitKey, activeKey, now, expireMs)
  local lapsed = redis.call('ZRANGEBYSCORE', activeKey, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(lapsed) do
    redis.call('ZREM', activeKey, id)
    local key = base .. 't:' .. id
    local t = redis.pcall('HMGET', key, 's', 'rc', 'mr', 'w', 'rv')
    if t.err then
      deadLetter(base, id, 'the active set names a task whose record is not a hash', now)
    elseif not t[1] then
      deadLetter(base, id, 'the active set names a task with no record', now)
    elseif t[1] == 'STARTED' and t[5] then
      -- Its revoke was requested while it ran: it ends as the revoke asked and never runs again.
      endTask(base, id, 'REVOKED', { 'rr', t[5] }, now, expireMs)
    elseif t[1] == 'STARTED' then
      local recoveries = (tonumber(t[2]) or 0) + 1
      local max = tonumber(t[3]) or 1
      if recoveries > max then
        local err = cjson.encode({
          name = 'WorkerLostError',
          message = 'worker ' .. tostring(t[4]) .. ' stopped renewing the lease of this task (it died or hung); ' ..
            'it was recovered ' .. (recoveries - 1) .. ' time(s) and maxRecoveries is ' .. max,
        })
        endTask(base, id, 'FAILURE', { 'e', err, 'rc', recoveries }, now, expireMs)
      else
        redis.call('HSET', key, 's', 'PENDING', 'rc', recoveries)
        redis.call('RPUSH', waitKey, id)
      end
    end
  end
end

-- `seed` seeds the jitter of rate-limited tasks; seeding costs more than the rest of a typical
-- call, so it is done only when a task is rate-limited.
local function startTasks(base, waitKey, delayedKey, activeKey, workerId, leaseMs, want, now, expireMs, seed)
  local seeded = false
  recoverLapsed(base, waitKey, activeKey, now, expireMs)

  local due = redis.call('ZRANGEBYSCORE', delayedKey, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    -- Oldest due goes nearest the tail, which RPOP takes first.
    pushToTail(waitKey, due, 1)
    redis.call('ZREM', delayedKey, unpack(due))
  end

  local started, limited, revoked = {}, {}, {}
  local count = 0
  local examined = 0
  -- Ends a candidate REVOKED without starting it (expired, duplicate) and reports it.
  local function revokeOne(id, name, args, reason)
    endTask(base, id, 'REVOKED', { 'rr', reason }, now, expireMs)
    table.insert(revoked, id); table.insert(revoked, name); table.insert(revoked, args)
    table.insert(revoked, reason)
  end
  -- Examines one popped id; run under pcall (see the loop).
  local function examine(id)
    if id ~= '' then -- '' is the wake-up marker pushed by enqueue
      local key = base .. 't:' .. id
      local t = redis.pcall('HMGET', key, 's', 'n', 'a', 'lk', 'lt', 'rk', 'rn', 'rp', 'at', 'v', 'ex', 'tl', 'ry', 'ac', 'd',
        'a1', 'a2', 'a3')
      local state = t[1]
      if not t.err and t[14] then t[3] = joinArgs(key, t[3], t[14], t[16], t[17], t[18]) end
      if t.err then
        deadLetter(base, id, 'its record is not a hash', now)
      elseif not state then
        deadLetter(base, id, 'the wait list names a task with no record', now)
      elseif (state == 'PENDING' or state == 'RETRY') and t[15] and redis.call('ZSCORE', delayedKey, id) then
        -- A stale entry (an id reused for a new task, or a retry) whose task waits in the delayed
        -- set, not yet due: dropped here, it starts when due. (Only a task with a due time, d,
        -- has ever been in the delayed set.)
      elseif state == 'PENDING' or state == 'RETRY' then
        local lockTtl, limit, period = tonumber(t[5]), tonumber(t[7]), tonumber(t[8])
        local problem = nil
        if not t[10] then
          problem = 'the record has no message version (field v); this worker reads version 1'
        elseif t[10] ~= '1' then
          problem = 'message version ' .. t[10] .. ' is not one this worker reads (1)'
        elseif not t[2] or t[2] == '' or not t[3] then
          problem = 'the record lacks a task name or arguments'
        elseif t[4] and not (lockTtl and lockTtl > 0 and lockTtl == math.floor(lockTtl)) then
          problem = 'the unique lock lifetime is not a positive whole number'
        elseif t[6] and not (limit and limit >= 1 and limit == math.floor(limit) and period and period > 0 and
            period == math.floor(period)) then
          problem = 'the rate limit is not [whole n >= 1, whole period > 0]'
        elseif t[11] and not tonumber(t[11]) then
          problem = 'the expiry (field ex) is not a number'
        elseif t[12] and not (tonumber(t[12]) and tonumber(t[12]) >= 0) then
          problem = 'the time limit (field tl) is not a number >= 0'
        end
        local ok = problem == nil
        if not ok then
          failMalformed(base, id, problem, now, expireMs)
        elseif t[11] and now > tonumber(t[11]) then
          ok = false
          revokeOne(id, t[2], t[3], 'expired')
        end
        if ok and t[4] then
          local holder = redis.pcall('GET', t[4])
          if type(holder) == 'table' then
            ok = false
            failMalformed(base, id, 'its unique lock key holds a value of the wrong type', now, expireMs)
          elseif not holder then
            redis.call('SET', t[4], id, 'PX', lockTtl)
          elseif holder ~= id then
            ok = false
            revokeOne(id, t[2], t[3], 'duplicate')
          end
        end
        local attempt = (tonumber(t[9]) or 0) + 1
        if ok and t[6] then
          local trimmed = redis.pcall('ZREMRANGEBYSCORE', t[6], '-inf', now - period)
          if type(trimmed) == 'table' then
            ok = false
            failMalformed(base, id, 'its rate window key holds a value of the wrong type', now, expireMs)
          else
            local inWindow = redis.call('ZCARD', t[6])
            if inWindow >= limit then
              ok = false
              -- A slot frees when the start `limit` places back leaves the window.
              local freeing = redis.call('ZRANGE', t[6], inWindow - limit, inWindow - limit, 'WITHSCORES')
              local jitterMax = math.max(1, math.floor(math.min(1000, period / 10)))
              if not seeded then
                math.randomseed(seed)
                seeded = true
              end
              local delay = tonumber(freeing[2]) + period - now + math.random(0, jitterMax)
              redis.call('ZADD', delayedKey, now + delay, id)
              redis.call('HSET', key, 'd', now + delay)
              table.insert(limited, id); table.insert(limited, t[2]); table.insert(limited, t[3])
              table.insert(limited, delay)
            else
              redis.call('ZADD', t[6], now, id .. ':' .. attempt)
              redis.call('PEXPIRE', t[6], period)
            end
          end
        end
        if ok then
          redis.call('HSET', key, 's', 'STARTED', 'st', now, 'w', workerId, 'at', attempt)
          redis.call('ZADD', activeKey, now + leaseMs, id)
          table.insert(started, id); table.insert(started, t[2]); table.insert(started, t[3])
          table.insert(started, attempt); table.insert(started, tonumber(t[12]) or 0)
          table.insert(started, tonumber(t[13]) or 0)
          count = count + 1
        end
      end
    end
  end

  -- Examining is bounded so one call stays short.
  local drained = false
  -- Ids are popped as many at a time as tasks are still wanted (RPOP with a count: one command,
  -- not one per task); every popped id is examined, unless the bound stops the loop first.
  local popped, next, fatal = {}, 1, nil
  while count < want and examined < want + 64 do
    if next > #popped then
      if drained then break end
      local asked = want - count
      popped = redis.call('RPOP', waitKey, asked)
      next = 1
      if not popped then
        popped, drained = {}, true
        break
      end
      if #popped < asked then drained = true end
    end
    local id = popped[next]
    next = next + 1
    examined = examined + 1
    local ok, err = pcall(examine, id)
    if not ok then
      -- A command on this task's keys failed: the task fails as malformed and the call goes on.
      -- Should even that fail, the ids popped after it go back before the error is passed on.
      local reason = 'a command on its keys failed: ' .. tostring(type(err) == 'table' and err.err or err)
      if not pcall(failMalformed, base, id, reason, now, expireMs) then
        fatal = err
        break
      end
    end
  end

  -- Ids popped but not examined (the bound stopped the loop, or an error did) go back where
  -- they were, before the error is passed on.
  if next <= #popped then drained = false end
  pushToTail(waitKey, popped, next)
  if fatal then error(fatal) end

  -- A worker that got all it asked for calls again soon: it needs neither of these.
  if count == want then return {started, limited, revoked, -2, 1} end
  local more = 1
  if drained then more = 0 end
  return {started, limited, revoked, nextDelayOf(delayedKey, now), more}
end
