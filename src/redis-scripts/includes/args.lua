-- Arguments longer than 64 bytes (Redis's default hash-max-listpack-value) would turn the task
-- hash from a compact listpack into a hashtable, more than doubling its memory. So arguments
-- of up to ARGS_CHUNKED_MAX bytes are kept in pieces of at most ARGS_CHUNK bytes: the first in field a,
-- the others in a1, a2, ..., and their count in ac. Longer ones (the hash would be too big to
-- stay a listpack anyway) and short ones are kept whole in a, with no ac.
local ARGS_CHUNK = 64
local ARGS_CHUNKED_MAX = 48 * 64

-- The hash fields, value pairs that hold `args`, appended to `out`. `whole`: keep them in one
-- piece anyway (another field of the hash is too long for a listpack, so pieces save nothing).
local function argsFields(out, args, whole)
  local n = #args
  if whole or n <= ARGS_CHUNK or n > ARGS_CHUNKED_MAX then
    table.insert(out, 'a'); table.insert(out, args)
    return
  end
  -- Pieces end on whole UTF-8 characters, so a client that decodes each field alone (HGETALL
  -- in TaskResult.info()) reads them right.
  local count, start = 0, 1
  while start <= n do
    local stop = math.min(n, start + ARGS_CHUNK - 1)
    while stop < n and stop > start do
      local b = string.byte(args, stop + 1)
      if b < 128 or b >= 192 then break end
      stop = stop - 1
    end
    if count == 0 then table.insert(out, 'a') else table.insert(out, 'a' .. count) end
    table.insert(out, string.sub(args, start, stop))
    count = count + 1
    start = stop + 1
  end
  table.insert(out, 'ac'); table.insert(out, count)
end

-- The whole arguments of a task whose fields a and ac were read as `first` and `count`, and
-- a1, a2, a3 as `p1`, `p2`, `p3` when the caller read them along (nil: read here); nil when a
-- piece is missing.
local function joinArgs(key, first, count, p1, p2, p3)
  if not first or not count then return first end
  -- argsFields writes about ARGS_CHUNKED_MAX / 61 pieces at most; a count that is not a whole
  -- number up to 256 is not a record of ours (and an unbounded one would stall Redis): malformed.
  local n = tonumber(count)
  if not n or n ~= math.floor(n) or n > 256 then return nil end
  if n < 2 then return first end
  local pieces
  if n <= 4 and p1 then
    pieces = { p1, p2, p3 }
  else
    local names = {}
    for i = 1, n - 1 do names[i] = 'a' .. i end
    pieces = redis.call('HMGET', key, unpack(names))
  end
  local parts = { first }
  for i = 1, n - 1 do
    if not pieces[i] then return nil end
    parts[i + 1] = pieces[i]
  end
  return table.concat(parts)
end
