-- A whole number (ms, an attempt) as the text a command is sent. Lua 5.1 turns a number passed
-- to redis.call into text with '%.14g', a floating-point conversion that a profile of the drain
-- at concurrency 50 showed at about 5% of Redis's CPU; '%d' is an integer one. The values a call
-- sends for each of its tasks (now, the lease's end, the result lifetime) are written once per
-- call: the texts are kept for the call (scripts keep no state between calls).
local msTexts = {}
local function msText(n)
  local s = msTexts[n]
  if not s then
    s = string.format('%d', n)
    msTexts[n] = s
  end
  return s
end
