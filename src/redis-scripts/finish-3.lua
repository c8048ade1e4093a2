--[[
  finish: ends a batch of started tasks (STARTED -> SUCCESS or FAILURE, lock released) and,
  in the same call, starts up to `want` new ones, so a busy worker spends one round trip per
  task. Either part may be empty.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] lease in ms
  ARGV[4] want: how many tasks to start at most (0: finish only)
  ARGV[5] random seed for the rate-limit jitter
  ARGV[6] default result lifetime in ms
  ARGV[7] number of finished tasks F, then F groups of 5:
          id, state ('SUCCESS' | 'FAILURE'), field ('r' result, 'e' error, '' none),
          JSON value, result lifetime in ms

  Returns {started, limited, revoked, nextDelay, more, stale}: the first five as in
  start-tasks.lua; stale lists the finished ids this worker no longer held (ignored).
]]
-- @include "now"
-- @include "start-tasks"
-- @include "finish-task"

local base, workerId = ARGV[1], ARGV[2]
local now = nowMs()
local stale = {}
local count = tonumber(ARGV[7])
for i = 0, count - 1 do
  local o = 8 + i * 5
  if not finishTask(base, KEYS[3], workerId, now, ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], tonumber(ARGV[o + 4])) then
    table.insert(stale, ARGV[o])
  end
end

local result = {{}, {}, {}, -1, 0}
local want = tonumber(ARGV[4])
if want > 0 then
  math.randomseed(tonumber(ARGV[5]))
  result = startTasks(base, KEYS[1], KEYS[2], KEYS[3], workerId, tonumber(ARGV[3]), want, now, tonumber(ARGV[6]))
end
table.insert(result, stale)
return result
