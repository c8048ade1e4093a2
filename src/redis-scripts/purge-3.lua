--[[
  purge: an operator empties a queue (heimdall purge, Inspector.purge), one bounded batch per
  call, so a long queue does not block Redis.
    Takes up to ARGV[2] entries from the head of the wait list (RPOP: the end workers take
    from). A PENDING or RETRY task among them ends REVOKED with reason 'purged' through endTask
    (expiry set, unique lock released as a revoke releases it, done:<id> published), and leaves
    the delayed set if it is there. An entry whose task is in the delayed set (a stale entry) is
    dropped and the task left as it is, unless delayed tasks are purged too (ARGV[4] = '1').
    Wake markers (''), and ids of tasks that are running, ended or have no readable record, are
    dropped, as a fetch drops them.
    Then takes up to ARGV[3] ids from the delayed set, earliest first, and ends the PENDING and
    RETRY ones REVOKED 'purged' the same way.
    A running task is never touched; its lease and lock stay.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] delayed zset      <prefix>:{<queue>}:delayed
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] most entries to take from the wait list in this call (0: none)
  ARGV[3] most ids to take from the delayed set in this call (0: none)
  ARGV[4] '1' when delayed tasks are purged too, '0' when they stay
  ARGV[5] result lifetime of the revoked tasks, in ms
  ARGV[6] events: the cap of the queue's event stream (0: no events; see includes/events.lua)

  Returns {purged, fromWait, fromDelayed}: the tasks this call ended REVOKED, and the entries it
  took from the wait list and the delayed set (markers and stale ids included), which the caller
  counts against the lengths it read before the first call.
]]
-- @include "now"
-- @include "keys"
-- @include "end-task"
-- @include "events"

local base, waitMax, delayedMax, withDelayed, expireMs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local now = nowMs()
useEvents(ARGV[6], nil, KEYS[3])
local purged = 0

local function purgeOne(id)
  local t = redis.pcall('HMGET', taskKeyOf(base, id), 's', 'lk', 'lw', 'n')
  if type(t) ~= 'table' or t.err or (t[1] ~= 'PENDING' and t[1] ~= 'RETRY') then return end
  redis.call('ZREM', KEYS[2], id)
  endTask(base, id, 'REVOKED', { 'rr', 'purged' }, now, expireMs, { t[2], t[3] }, { t[4] })
  purged = purged + 1
end

local fromWait = 0
if waitMax > 0 then
  local ids = redis.call('RPOP', KEYS[1], waitMax)
  if ids then
    fromWait = #ids
    for _, id in ipairs(ids) do
      if id ~= '' and (withDelayed or not redis.call('ZSCORE', KEYS[2], id)) then purgeOne(id) end
    end
  end
end

local fromDelayed = 0
if withDelayed and delayedMax > 0 then
  local ids = redis.call('ZRANGE', KEYS[2], 0, delayedMax - 1)
  fromDelayed = #ids
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[2], id)
    purgeOne(id)
  end
end

flushEvents()
return {purged, fromWait, fromDelayed}
