--[[
  declare: a worker says which task names it runs, on one queue. Each name's value is the time
  (ms, Redis clock) until which the declaration holds; the worker declares again before then,
  and a stopped worker's declarations lapse by themselves. decline-3.lua reads them: a task
  whose name some worker declares is handed back to wait for it, however long that takes.

  KEYS[1] declared names    <prefix>:{<queue>}:names (HASH task name -> valid until, ms)

  ARGV[1] how long the declaration holds, in ms from now
  ARGV[2..] task names

  Returns the number of names declared. Names nobody has declared for a day are removed.
]]
-- @include "now"

local now = nowMs()
local untilMs = now + tonumber(ARGV[1])
local fields = {}
for i = 2, #ARGV do
  table.insert(fields, ARGV[i]); table.insert(fields, untilMs)
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
-- Declarations of names no worker runs any more are dropped after a day, so the hash stays as
-- small as the set of names in use.
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local valid = tonumber(all[i + 1])
  if not valid or valid < now - 86400000 then redis.call('HDEL', KEYS[1], all[i]) end
end
return #ARGV - 1
