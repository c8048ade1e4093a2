-- @include "keys"
-- @include "end-task"
-- @include "events"
-- Keeps a malformed or unrunnable message for inspection: newest first, at most 1000.
local function deadLetter(base, id, reason, now)
  redis.call('LPUSH', deadKeyOf(base), cjson.encode({ id = id, reason = reason, at = now }))
  redis.call('LTRIM', deadKeyOf(base), 0, 999)
  noteEvent('dead-lettered', id, 'r', reason)
end

-- Ends a task whose message cannot be run as FAILURE with a MalformedTaskError, and
-- dead-letters it. The dead letter is written first: should Redis refuse it, the task is
-- unchanged and the caller can put it back.
local function failMalformed(base, id, reason, now, expireMs)
  deadLetter(base, id, reason, now)
  local err = cjson.encode({ name = 'MalformedTaskError', message = reason })
  endTask(base, id, 'FAILURE', { 'e', err }, now, expireMs)
end
