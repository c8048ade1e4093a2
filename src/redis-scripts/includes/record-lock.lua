-- @include "keys"
-- The unique lock a task's record names. A producer sends the whole lock key (field lk), which
-- for a task of ours is '<base>lock:<task name>:<key>': with the default prefix, a task name of
-- some 30 characters and a hashed key (40 hex digits), over 90 bytes. Redis keeps a hash as a
-- compact listpack only while every value is at most hash-max-listpack-value (64) bytes, so
-- that one value would turn the whole record into a hashtable of about twice the memory.
-- So the record keeps only what follows '<base>lock:<task name>:' (field lu, the user's key or
-- the hash), and the key is built back from it and the task name (field n) where it is read.
-- A key of another form (a producer's own, under the queue's base) is kept whole in lk, and so
-- are the keys of records written before lu (lk wins when a record has both).

-- The lock key a record names, from its fields lk, lu and n as read (false or nil: absent);
-- false for none.
local function lockNamed(base, lk, lu, name)
  if lk then return lk end
  if lu and name then return lockKeyOf(base, name .. ':' .. lu) end
  return false
end

-- The field, value pair that stores lock key `key` in the record of task `name` (nil: the
-- message has no name): 'lu' and the key's tail when the key is '<base>lock:<name>:<tail>',
-- else 'lk' and the whole key.
local function lockField(base, name, key)
  if name and name ~= '' then
    local head = lockKeyOf(base, name .. ':')
    if #key > #head and string.sub(key, 1, #head) == head then return 'lu', string.sub(key, #head + 1) end
  end
  return 'lk', key
end
