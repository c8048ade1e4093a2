-- Milliseconds on the Redis server's clock: the only clock heimdall trusts for due times,
-- leases and rate windows, so workers with skewed clocks agree.
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
