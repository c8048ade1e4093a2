-- Milliseconds until the earliest delayed task is due (0 if already due), -1 if none.
local function nextDelayOf(delayedKey, now)
  local first = redis.call('ZRANGE', delayedKey, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(0, tonumber(first[2]) - now) end
  return -1
end
