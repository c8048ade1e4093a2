--[[
  forget: deletes the record of a task that has ended (SUCCESS, FAILURE or REVOKED) before it
  expires. A task still queued or running is left alone: deleting its record would strand its
  unique lock and its lease.

  KEYS[1] task hash         <prefix>:{<queue>}:t:<id>

  Returns
    1   deleted (or there was no record)
    0   not deleted: the task has not ended
]]
-- @include "ended"

local state = redis.call('HGET', KEYS[1], 's')
if state and not isEnded(state) then return 0 end
redis.call('DEL', KEYS[1])
return 1
