-- Moves due delayed tasks to the wait list, then starts up to `want` tasks from it.
-- For each candidate, in this order:
--   * a missing record or a state other than PENDING/RETRY (revoked, forgotten): dropped;
--   * unique: if its lock lapsed and nobody took it, it takes it again; if another task
--     holds it now, it ends REVOKED with reason 'duplicate' and does not run;
--   * rate limit: the rolling window is trimmed on the Redis clock; if full, the task goes
--     back to the delayed set, due when a slot frees plus jitter, and stays PENDING;
--   * otherwise it starts: state STARTED, attempts + 1, a lease in the active set.
-- Returns {started, limited, revoked, nextDelay, more}:
--   started: flat list of id, name, args, attempt
--   limited: flat list of id, name, args, delay ms
--   revoked: flat list of id, name, args, reason
--   nextDelay: ms until the earliest delayed task is due, -1 if none
--   more: 1 if the wait list still holds entries
local function startTasks(base, waitKey, delayedKey, activeKey, workerId, leaseMs, want, now, expireMs)
  local due = redis.call('ZRANGEBYSCORE', delayedKey, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    -- Oldest due goes nearest the tail, which RPOP takes first.
    for i = #due, 1, -1 do redis.call('RPUSH', waitKey, due[i]) end
    redis.call('ZREM', delayedKey, unpack(due))
  end

  local started, limited, revoked = {}, {}, {}
  local examined = 0
  -- started holds 4 entries per task; examining is bounded so one call stays short.
  while #started / 4 < want and examined < want + 64 do
    local id = redis.call('RPOP', waitKey)
    if not id then break end
    examined = examined + 1
    if id ~= '' then -- '' is the wake-up marker pushed by enqueue
      local key = base .. 't:' .. id
      local t = redis.call('HMGET', key, 's', 'n', 'a', 'lk', 'lt', 'rk', 'rn', 'rp', 'at')
      local state = t[1]
      if state == 'PENDING' or state == 'RETRY' then
        local ok = true
        if t[4] then
          local holder = redis.call('GET', t[4])
          if not holder then
            redis.call('SET', t[4], id, 'PX', t[5])
          elseif holder ~= id then
            ok = false
            redis.call('HSET', key, 's', 'REVOKED', 'rr', 'duplicate', 'f', now)
            redis.call('PEXPIRE', key, expireMs)
            redis.call('PUBLISH', base .. 'done:' .. id, 'REVOKED')
            table.insert(revoked, id); table.insert(revoked, t[2]); table.insert(revoked, t[3])
            table.insert(revoked, 'duplicate')
          end
        end
        local attempt = (tonumber(t[9]) or 0) + 1
        if ok and t[6] then
          local limit, period = tonumber(t[7]), tonumber(t[8])
          redis.call('ZREMRANGEBYSCORE', t[6], '-inf', now - period)
          local count = redis.call('ZCARD', t[6])
          if count >= limit then
            ok = false
            -- A slot frees when the start `limit` places back leaves the window.
            local freeing = redis.call('ZRANGE', t[6], count - limit, count - limit, 'WITHSCORES')
            local jitterMax = math.max(1, math.floor(math.min(1000, period / 10)))
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
        if ok then
          redis.call('HSET', key, 's', 'STARTED', 'st', now, 'w', workerId, 'at', attempt)
          redis.call('ZADD', activeKey, now + leaseMs, id)
          table.insert(started, id); table.insert(started, t[2]); table.insert(started, t[3])
          table.insert(started, attempt)
        end
      end
    end
  end

  local nextDelay = -1
  local first = redis.call('ZRANGE', delayedKey, 0, 0, 'WITHSCORES')
  if first[2] then nextDelay = math.max(0, tonumber(first[2]) - now) end
  local more = 0
  if redis.call('LLEN', waitKey) > 0 then more = 1 end
  return {started, limited, revoked, nextDelay, more}
end
