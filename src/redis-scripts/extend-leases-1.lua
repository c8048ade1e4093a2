--[[
  extend-leases: a worker renews the leases of all its running tasks in one call.
  Only tasks still in the active set are touched (XX), so a lease that already lapsed and was
  recovered is not brought back.

  KEYS[1] active zset       <prefix>:{<queue>}:active

  ARGV[1] lease in ms
  ARGV[2..] ids of the tasks the worker is running

  Returns the number of leases renewed.
]]
-- @include "now"

local expires = nowMs() + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expires, ARGV[i])
end
return renewed
