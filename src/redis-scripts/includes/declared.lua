-- @include "keys"
-- Scripts declare in KEYS the lock and rate window a task's record names (fields lk or lu, rk): the
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
-- lock when `withLock` is '1', or its lock and the lock's pending pointer when it is '2'. Returns
-- the record, the lock ('' for none), the index of the KEYS after them, and the pointer (nil
-- for none).
local function nextDeclared(script, base, id, k, withLock)
  local key = KEYS[k]
  if key ~= taskKeyOf(base, id) then error({ err = script .. ': KEYS[' .. k .. '] is not the record of task ' .. id }) end
  if withLock == '1' then return key, KEYS[k + 1], k + 2 end
  if withLock == '2' then
    local locks = lockKeyOf(base, '')
    local lock, pointer = KEYS[k + 1], KEYS[k + 2]
    if string.sub(lock, 1, #locks) ~= locks or pointer ~= nextKeyOf(base, string.sub(lock, #locks + 1)) then
      error({ err = script .. ': KEYS[' .. (k + 2) .. '] is not the pending pointer of the lock KEYS[' .. (k + 1) .. ']' })
    end
    return key, lock, k + 3, pointer
  end
  return key, '', k + 1
end
