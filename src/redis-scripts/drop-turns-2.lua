--[[
  drop-turns: a rate window forgets the turns of tasks that no longer wait for them. A turn is an
  entry of the window scored later than now (includes/rate-window.lua), reserved for a task that
  waits in the delayed set; a task revoked or purged while it waits leaves its turn behind, and
  every task new to the window would queue behind it until its time passes. This keeps the turns
  whose task is still in the delayed set and removes the others; starts (entries up to now) are
  never touched, so the limit holds as before. Bounded: at most ARGV[1] turns per call, from the
  latest (the caller calls again while the reply says more may remain).

  KEYS[1] rate window       <prefix>:{<queue>}:rate:<task>[:<key>]
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed

  ARGV[1] most turns to look at in this call
  ARGV[2] look at turns scored below this (ms; '+inf' for the first call): where the last call
          stopped

  Returns {dropped, next}: the turns removed, and the score to pass as ARGV[2] next ('' when
  every turn was looked at).
]]
-- @include "now"

local max, below = tonumber(ARGV[1]), ARGV[2]
local now = nowMs()
local upper = below == '+inf' and '+inf' or ('(' .. below)
local turns = redis.call('ZREVRANGEBYSCORE', KEYS[1], upper, '(' .. now, 'WITHSCORES', 'LIMIT', 0, max)
local dropped = 0
for i = 1, #turns, 2 do
  local member = turns[i]
  local id = string.match(member, '^(.*):%d+$')
  if not id or not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZREM', KEYS[1], member)
    dropped = dropped + 1
  end
end
local next = ''
if #turns == 2 * max then next = turns[#turns] end
return {dropped, next}
