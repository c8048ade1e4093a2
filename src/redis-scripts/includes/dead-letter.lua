-- @include "keys"
-- @include "end-task"
-- @include "events"
-- The dead-letter list, <prefix>:{<queue>}:dead, as the calling script's KEYS name it: a script
-- that may dead-letter declares the list and calls useDeadLetters first (a key built here from
-- the base would be one Redis Cluster does not know the script touches).
local deadListKey = nil

local function useDeadLetters(key)
  deadListKey = key
end

-- Keeps a malformed or unrunnable message for inspection: newest first, at most 1000.
local function deadLetter(base, id, reason, now)
  if not deadListKey then error('dead-letter: the script did not name its dead-letter list (useDeadLetters)') end
  redis.call('LPUSH', deadListKey, cjson.encode({ id = id, reason = reason, at = now }))
  redis.call('LTRIM', deadListKey, 0, 999)
  noteEvent('dead-lettered', id, 'r', reason)
end

-- Ends a task whose message cannot be run as FAILURE with a MalformedTaskError, and
-- dead-letters it. The dead letter is written first: should Redis refuse it, the task is
-- unchanged and the caller can put it back. `lock`: as endTask takes it (a script that must not
-- touch an undeclared lock passes the one it declared, or { false }: none).
local function failMalformed(base, id, reason, now, expireMs, lock)
  deadLetter(base, id, reason, now)
  local err = cjson.encode({ name = 'MalformedTaskError', message = reason })
  endTask(base, id, 'FAILURE', { 'e', err }, now, expireMs, lock)
end
