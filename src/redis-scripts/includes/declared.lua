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
