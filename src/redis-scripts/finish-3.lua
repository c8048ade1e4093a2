--[[
  finish: ends a batch of started tasks (STARTED -> SUCCESS, FAILURE, REVOKED or RETRY; see
  includes/finish-task.lua) and, in the same call, starts up to `want` new ones, so a busy
  worker spends one round trip per task. Either part may be empty.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] lease in ms
  ARGV[4] want: how many tasks to start at most (0: finish only)
  ARGV[5] random seed for the rate-limit jitter
  ARGV[6] default result lifetime in ms
  ARGV[7] number of finished tasks F, then F groups of 7:
          id, state ('SUCCESS' | 'FAILURE' | 'RETRY'), field ('r' result, 'e' error, '' none),
          JSON value, result lifetime in ms, retry delay in ms, dead-letter reason ('' none)

  Returns {started, limited, revoked, nextDelay, more, outcomes}: the first five as in
  start-tasks.lua (nextDelay is given even when want is 0); outcomes is a flat list of
  id, stored state ('SUCCESS', 'FAILURE', 'REVOKED', 'RETRY', or 'STALE' when this worker no
  longer held the task).
]]
-- @include "now"
-- @include "end-task"
-- @include "dead-letter"
-- @include "next-delay"
-- @include "args"
-- @include "start-tasks"
-- @include "finish-task"

local base, workerId = ARGV[1], ARGV[2]
local now = nowMs()
local outcomes = {}
local count = tonumber(ARGV[7])
for i = 0, count - 1 do
  local o = 8 + i * 7
  local id = ARGV[o]
  local stored = finishTask(base, KEYS[3], KEYS[2], workerId, now, id, ARGV[o + 1], ARGV[o + 2], ARGV[o + 3],
    tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5]), ARGV[o + 6])
  table.insert(outcomes, id)
  table.insert(outcomes, stored)
end

local result
local want = tonumber(ARGV[4])
if want > 0 then
  result = startTasks(base, KEYS[1], KEYS[2], KEYS[3], workerId, tonumber(ARGV[3]), want, now, tonumber(ARGV[6]), tonumber(ARGV[5]))
else
  result = {{}, {}, {}, nextDelayOf(KEYS[2], now), 0}
end
table.insert(result, outcomes)
return result
