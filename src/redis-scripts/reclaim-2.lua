--[[
  reclaim: after a lost connection, a worker hands back tasks leased to it that it does not
  know it runs (STARTED -> PENDING at the front of the wait list, the start undone). They come
  from a fetch whose reply was lost: Redis started them, the worker never heard. Without this
  they would wait for their lease to lapse and use up a recovery.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested meanwhile
  ARGV[4..] ids the worker knows it runs (or has finished and not yet reported)

  Returns the number of tasks handed back. A task whose revoke was requested (rv) ends
  REVOKED instead.
]]
-- @include "now"
-- @include "end-task"
-- @include "hand-back"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
local known = {}
for i = 4, #ARGV do known[ARGV[i]] = true end
local now = nowMs()
local count = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not known[id] then
    local t = redis.pcall('HMGET', base .. 't:' .. id, 'w', 's', 'rv', 'lk', 'lw')
    if not t.err and t[1] == workerId and t[2] == 'STARTED' then
      redis.call('ZREM', KEYS[2], id)
      count = count + handBack(base, KEYS[1], id, t[3], { t[4], t[5] }, true, now, expireMs)
    end
  end
end
return count
