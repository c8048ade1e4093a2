--[[
  requeue: a closing worker hands back the tasks it stopped before they ended
  (STARTED -> PENDING at the front of the wait list), keeping their ids and locks. Tasks it
  no longer holds (recovered elsewhere, revoked) are left alone.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested while they ran
  ARGV[4..] ids

  Returns the number of tasks put back. A task whose revoke was requested while it ran (field
  rv) is not put back: it ends REVOKED and its lock is released.
]]
-- @include "now"
-- @include "end-task"
-- @include "hand-back"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = nowMs()
local count = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local t = redis.pcall('HMGET', base .. 't:' .. id, 'w', 'rv', 'lk', 'lw')
  if not t.err and t[1] == workerId and redis.call('ZREM', KEYS[2], id) == 1 then
    count = count + handBack(base, KEYS[1], id, t[2], { t[3], t[4] }, false, now, expireMs)
  end
end
return count
