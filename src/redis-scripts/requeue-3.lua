--[[
  requeue: a closing worker hands back the runs it stopped before they ended (STARTED ->
  PENDING at the front of the wait list), keeping their ids and locks. Runs that are no longer
  the task's current run (recovered elsewhere, revoked) are left alone.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[4..] task hashes     <prefix>:{<queue>}:t:<id> of each run of ARGV[5..], in the same order
            (one key per run, so a call passes 3 + runs keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested while they ran
  ARGV[4] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[5..] pairs of id and run token

  Returns {count, problem}: the number of tasks put back, and '' or the text of a command Redis
  refused (such a task keeps its lease and is recovered when it lapses). A task whose revoke was
  requested while it ran (field rv) is not put back: it ends REVOKED and its lock is released.
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "hand-back"
-- @include "events"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = nowMs()
local count, problem = 0, ''
useEvents(ARGV[4], workerId, KEYS[3])
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = KEYS[(i + 3) / 2]
  -- handBack names the record from the base and the id: it must be the declared key.
  if key ~= taskKeyOf(base, id) then return redis.error_reply('requeue: KEYS[' .. (i + 3) / 2 .. '] is not the record of task ' .. id) end
  local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'rv', 'lk', 'lw', 'at')
  if t.err and isRefusal(t) then problem = 'task ' .. id .. ': ' .. t.err end
  if not t.err and t[1] == 'STARTED' and t[2] == workerId and t[3] == token then
    local ok, put = pcall(handBack, base, KEYS[1], KEYS[2], id, t[4], { t[5], t[6] }, false, t[7], now, expireMs)
    if ok then count = count + put else problem = 'task ' .. id .. ': ' .. errorText(put) end
  end
end
flushEvents()
return {count, problem}
