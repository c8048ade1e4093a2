--[[
  fetch: starts up to `want` tasks for a worker (PENDING/RETRY -> STARTED with a lease and a
  run token), after recovering lapsed leases and moving due delayed tasks to the wait list.
  Checks the unique lock, the expiry and the rate window of each candidate in the same step;
  see includes/start-tasks.lua for the rules.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] active zset       <prefix>:{<queue>}:active

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] lease in ms
  ARGV[4] want: how many tasks to start at most
  ARGV[5] random seed for the rate-limit jitter and the run tokens
  ARGV[6] result lifetime in ms, for tasks that end here (revoked, expired, malformed, lost)

  Returns {started, limited, revoked, nextDelay, more, outcomes, unplaced, problem} as described
  in start-tasks.lua (outcomes always empty).
]]
-- @include "now"
-- @include "refusal"
-- @include "end-task"
-- @include "dead-letter"
-- @include "next-delay"
-- @include "args"
-- @include "move-to-wait"
-- @include "start-tasks"

return startTasks(ARGV[1], KEYS[1], KEYS[2], KEYS[3], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
  nowMs(), tonumber(ARGV[6]), ARGV[5], {})
