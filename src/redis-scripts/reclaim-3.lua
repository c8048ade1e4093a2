--[[
  reclaim: after a lost connection, a worker hands back runs leased to it that it does not
  know it runs (STARTED -> PENDING at the front of the wait list, the start undone). They come
  from a fetch whose reply was lost: Redis started them, the worker never heard. Without this
  they would wait for their lease to lapse and use up a recovery.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested meanwhile
  ARGV[4] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[5..] pairs of id and run token of the runs the worker knows it runs (or has finished and
            not yet reported)

  Returns {count, problem}: the number of tasks handed back, and '' or the text of a command
  Redis refused (such a task keeps its lease). A task whose revoke was requested (rv) ends
  REVOKED instead.
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "hand-back"
-- @include "events"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
local known = {}
-- Keyed by id and token: tokens are unique among the runs of one task, not across tasks.
useEvents(ARGV[4], workerId, KEYS[3])
for i = 5, #ARGV, 2 do known[ARGV[i] .. ' ' .. ARGV[i + 1]] = true end
local now = nowMs()
local count, problem = 0, ''
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local t = redis.pcall('HMGET', taskKeyOf(base, id), 'w', 's', 'tk', 'rv', 'lk', 'lw', 'at')
  if t.err and isRefusal(t) then problem = 'task ' .. id .. ': ' .. t.err end
  if not t.err and t[1] == workerId and t[2] == 'STARTED' and not (t[3] and known[id .. ' ' .. t[3]]) then
    local ok, put = pcall(handBack, base, KEYS[1], KEYS[2], id, t[4], { t[5], t[6] }, true, t[7], now, expireMs)
    if ok then count = count + put else problem = 'task ' .. id .. ': ' .. errorText(put) end
  end
end
flushEvents()
return {count, problem}
