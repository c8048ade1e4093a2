-- @include "keys"
-- Scripts declare in KEYS the lock and rate window a task's record names (fields lk, rk): the
-- caller reads them before the call (a plain HMGET) and passes '' for none. The record may have
-- changed in between (an id reused for a new task); a script that finds another key named than
-- the one declared touches neither and answers so (code KEYS_CHANGED), and the caller reads
-- again. True when the declared key `declared` ('' for none) is the one the record names.
local KEYS_CHANGED = 'KEYS_CHANGED'
local function declaredIs(declared, named)
  if named == false or named == nil then return declared == '' end
  return declared == named
end

-- Reads one task's declared keys from KEYS[k]: its record, which must be the record of `id` (else
-- the call fails, naming `script`: the caller's mistake, before anything is written), then its
-- lock when `withLock` is '1'. Returns the record, the lock ('' for none) and the index of the
-- KEYS after them.
local function nextDeclared(script, base, id, k, withLock)
  local key = KEYS[k]
  if key ~= taskKeyOf(base, id) then error({ err = script .. ': KEYS[' .. k .. '] is not the record of task ' .. id }) end
  if withLock == '1' then return key, KEYS[k + 1], k + 2 end
  return key, '', k + 1
end
