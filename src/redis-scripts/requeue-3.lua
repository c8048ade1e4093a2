--[[
  requeue: a closing worker hands back the runs it stopped before they ended (STARTED ->
  PENDING at the front of the wait list), keeping their ids and locks; and its reservations
  whose handler never began (prefetch, field rs: the attempt is taken back and rs goes). Runs that are no longer
  the task's current run (recovered elsewhere, revoked) are left alone.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[4..] per run of ARGV[5..], in the same order: its task hash <prefix>:{<queue>}:t:<id>,
            then its unique lock as its record names it (field lk, or lu and n; read by the caller before the
            call) when its third ARGV item is 1 (so a call passes 3 + runs + locks keys; the
            name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested while they ran
  ARGV[4] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[5..] triples of id, run token, and the number of keys declared after its record: 1 when
            the record names a lock, else 0

  Returns {count, problem}: the number of tasks put back, and '' or the text of a command Redis
  refused (such a task keeps its lease and is recovered when it lapses). A task whose revoke was
  requested while it ran (field rv) is not put back: it ends REVOKED and its lock is released.
  Returns {'KEYS_CHANGED', id} when the record of a current run names another lock than the one
  declared for it: nothing changed, the caller reads the locks again and calls again
  (includes/declared.lua).
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "hand-back"
-- @include "events"
-- @include "declared"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = nowMs()
local count, problem = 0, ''
useEvents(ARGV[4], workerId, KEYS[3])
-- The current runs are found and their declared locks checked before anything changes, so a
-- call answered KEYS_CHANGED has done nothing.
local current = {}
local k = 4
for i = 5, #ARGV, 3 do
  local id, token, locks = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0
  local key, lockKey = KEYS[k], ''
  if locks > 0 then lockKey = KEYS[k + 1] end
  -- handBack names the record from the base and the id: it must be the declared key.
  if key ~= taskKeyOf(base, id) then return redis.error_reply('requeue: KEYS[' .. k .. '] is not the record of task ' .. id) end
  if not lockKey then return redis.error_reply('requeue: no KEYS[' .. (k + 1) .. '] for the lock of task ' .. id) end
  k = k + 1 + locks
  local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'rv', 'lk', 'lw', 'at', 'lu', 'n', 'rs', 'ry')
  -- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
  if not t.err then t[5] = lockNamed(base, t[5], t[8], t[9]) end
  if t.err and isRefusal(t) then problem = 'task ' .. id .. ': ' .. t.err end
  if not t.err and t[1] == 'STARTED' and t[2] == workerId and t[3] == token then
    if not declaredIs(lockKey, t[5]) then return {KEYS_CHANGED, id} end
    table.insert(current, { id, t })
  end
end
for _, run in ipairs(current) do
  local id, t = run[1], run[2]
  local ok, put = pcall(handBack, base, KEYS[1], KEYS[2], id, t[4], { t[5], t[6] }, t[10] and true or false, t[7], now, expireMs, t[11])
  if ok then count = count + put else problem = 'task ' .. id .. ': ' .. errorText(put) end
end
flushEvents()
return {count, problem}
