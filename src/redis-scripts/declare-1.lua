#!lua flags=allow-oom
--[[
  declare: a worker says which task names it runs, on one queue. Each name's value is the time
  (ms, Redis clock) until which the declaration holds; the worker declares again before then,
  and a stopped worker's declarations lapse by themselves. decline-7.lua reads them: a task
  whose name some worker declares is handed back to wait for it, however long that takes.

  KEYS[1] declared names    <prefix>:{<queue>}:names (HASH task name -> valid until, ms)

  ARGV[1] how long the declaration holds, in ms from now
  ARGV[2..] task names

  Returns the number of names declared. The hash keeps one field per name ever declared on the
  queue (a renamed task leaves its old name behind, a few bytes).
  Runs even when Redis is full (allow-oom): it rewrites the same fields with new times, so it
  does not grow memory once the names are there, and a full Redis must not make workers of
  other builds give up on tasks this worker runs.
]]
-- @include "now"

local now = nowMs()
local untilMs = now + tonumber(ARGV[1])
local fields = {}
for i = 2, #ARGV do
  table.insert(fields, ARGV[i]); table.insert(fields, untilMs)
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
return #ARGV - 1
