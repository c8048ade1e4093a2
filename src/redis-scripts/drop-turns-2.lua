--[[
  drop-turns: a rate window forgets the turns of tasks that no longer wait for them. A turn is an
  entry of the window scored later than now (includes/rate-window.lua), reserved for a task that
  waits in the delayed set; a task revoked or purged while it waits leaves its turn behind, and
  every task new to the window would queue behind it until its time passes. This keeps the turns
  whose task is still in the delayed set and removes the others; starts (entries up to now) are
  never touched, so the limit holds as before. Bounded: at most ARGV[1] entries per call, from
  the latest (the caller calls again while the reply says more may remain).

  KEYS[1] rate window       <prefix>:{<queue>}:rate:<task>[:<key>]
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed

  ARGV[1] most entries to look at in this call
  ARGV[2] how many entries later than now the calls before kept: this call starts after them
          (0 for the first call; the entries removed have left the range, so the next call
          starts at the first it has not seen, whatever their scores)

  Returns {dropped, kept}: the turns removed, and the entries later than now kept so far (ARGV[2]
  and this call's), to pass as ARGV[2] next; kept is -1 when every entry was looked at.
]]
-- @include "now"

local max, skip = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = nowMs()
local entries = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. now, 'LIMIT', skip, max)
local dropped, kept = 0, skip
for _, member in ipairs(entries) do
  -- A turn: '~<id>:<attempt>' (includes/rate-window.lua); anything else later than now is kept.
  local id = string.match(member, '^~(.*):%d+$')
  if id and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZREM', KEYS[1], member)
    dropped = dropped + 1
  else
    kept = kept + 1
  end
end
if #entries < max then kept = -1 end
return {dropped, kept}
