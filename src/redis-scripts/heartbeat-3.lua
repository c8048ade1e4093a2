#!lua flags=allow-oom
--[[
  heartbeat: a worker's registration on one queue, renewed every tick (or removed when it
  closes). Each worker says what it is and does (its WorkerInfo, JSON); a worker that stops
  heartbeating (killed, frozen) lapses by itself, and lapsed ones are trimmed here by any worker.
  Each renewal also trims the queue's event stream by age (its length is capped as it is written).

  KEYS[1] workers           <prefix>:{<queue>}:workers (ZSET worker id -> valid until, ms)
  KEYS[2] worker info       <prefix>:{<queue>}:worker-info (HASH worker id -> JSON)
  KEYS[3] event stream      <prefix>:{<queue>}:events

  ARGV[1] worker id
  ARGV[2] how long the registration holds, in ms from now; 0 removes it (the worker closes)
  ARGV[3] the worker's info, JSON ('' when removing)
  ARGV[4] the age past which events are trimmed, in ms (0: not trimmed by age)

  Returns the number of workers registered on the queue afterwards.
  Runs even when Redis is full (allow-oom): it rewrites one field per worker, and a full Redis
  must not make live workers vanish from the registry (trimming events only frees memory).
]]
-- @include "now"

local now = nowMs()
local id, validMs = ARGV[1], tonumber(ARGV[2])
if validMs > 0 then
  redis.call('ZADD', KEYS[1], now + validMs, id)
  redis.call('HSET', KEYS[2], id, ARGV[3])
else
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #lapsed > 0 then
  redis.call('HDEL', KEYS[2], unpack(lapsed))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local maxAge = tonumber(ARGV[4])
if maxAge > 0 and now > maxAge then
  -- Approximate (~): whole nodes of the stream go, as cheap as MAXLEN ~ when it is written.
  redis.pcall('XTRIM', KEYS[3], 'MINID', '~', now - maxAge)
end
return redis.call('ZCARD', KEYS[1])
