--[[
  reclaim: after a lost connection, a worker hands back runs leased to it that it does not
  know it runs (STARTED -> PENDING at the front of the wait list, the start undone). They come
  from a fetch whose reply was lost: Redis started them, the worker never heard. Without this
  they would wait for their lease to lapse and use up a recovery.
  The caller finds them with plain reads (the leases of the active set, then the worker, run
  token and lock of each record) and names each run with its record and lock, so every key the
  script touches is declared. The script checks again that each is still that run: still leased
  with the expiry read, its record STARTED by this worker under the token read. A run that moved
  on meanwhile is left alone.

  KEYS[1] wait list         <prefix>:{<queue>}:wait
  KEYS[2] active zset       <prefix>:{<queue>}:active
  KEYS[3] event stream      <prefix>:{<queue>}:events (see includes/events.lua)
  KEYS[4..] per run of ARGV[5..], in order: its record <prefix>:{<queue>}:t:<id>, then its
            unique lock (the record's lk, or lu and n) when the run's flag is '1' (so a call passes 3 + runs
            + locks keys; the name counts the fixed ones)

  ARGV[1] key base          <prefix>:{<queue>}:
  ARGV[2] worker id
  ARGV[3] result lifetime in ms, for tasks whose revoke was requested meanwhile
  ARGV[4] events: the cap of the queue's event stream (0: no events; see includes/events.lua)
  ARGV[5..] per run to hand back, four items: task id, its lease's expiry as read (ms), its run
            token as read ('' when the record has none), and '1' when its lock follows its record
            in KEYS, '0' when the record names none

  Returns {count, problem}: the number of tasks handed back, and '' or the text of a command
  Redis refused (such a task keeps its lease). A task whose revoke was requested (rv) ends
  REVOKED instead.
  Or {'KEYS_CHANGED', id}: the record of task id, still that run, names another lock than the
  one declared; nothing was changed, the caller reads again and calls again.
]]
-- @include "now"
-- @include "refusal"
-- @include "keys"
-- @include "record-lock"
-- @include "declared"
-- @include "hand-back"
-- @include "events"

local base, workerId, expireMs = ARGV[1], ARGV[2], tonumber(ARGV[3])
useEvents(ARGV[4], workerId, KEYS[3])
local now = nowMs()

-- First every check, then the moves: a declared lock that is not the one the record names
-- changes nothing at all.
local runs = {}
local count, problem = 0, ''
local k = 4
for i = 5, #ARGV, 4 do
  local id, expiry, token = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  -- handBack names the record from the base and the id: it must be the declared key.
  local key, lock
  key, lock, k = nextDeclared('reclaim', base, id, k, ARGV[i + 3])
  local t = redis.pcall('HMGET', key, 'w', 's', 'tk', 'rv', 'lk', 'lw', 'at', 'lu', 'n', 'ry')
  -- The lock the record names, whole (fields lk, or lu and n: includes/record-lock.lua).
  if not t.err then t[5] = lockNamed(base, t[5], t[8], t[9]) end
  if t.err and isRefusal(t) then problem = 'task ' .. id .. ': ' .. t.err end
  -- Still the run read: leased with that expiry, STARTED by this worker under that token.
  if not t.err and t[1] == workerId and t[2] == 'STARTED' and (t[3] or '') == token and
      tonumber(redis.call('ZSCORE', KEYS[2], id)) == expiry then
    if not declaredIs(lock, t[5]) then return {KEYS_CHANGED, id} end
    runs[#runs + 1] = { id, t }
  end
end

for _, run in ipairs(runs) do
  local id, t = run[1], run[2]
  local ok, put = pcall(handBack, base, KEYS[1], KEYS[2], id, t[4], { t[5], t[6] }, true, t[7], now, expireMs, t[10])
  if ok then count = count + put else problem = 'task ' .. id .. ': ' .. errorText(put) end
end
flushEvents()
return {count, problem}
