--[[
  requeue: a closing worker hands back the tasks it stopped before they ended
  (STARTED -> PENDING at the front of the wait list), keeping their ids and locks. Tasks it
  no longer holds (recovered elsewhere, revoked) are left alone.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3..] ids

  Returns the number of tasks put back.
]]
local base, workerId = ARGV[1], ARGV[2]
local count = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = base .. 't:' .. id
  if redis.pcall('HGET', key, 'w') == workerId and redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HSET', key, 's', 'PENDING')
    redis.call('RPUSH', KEYS[1], id)
    count = count + 1
  end
end
return count
