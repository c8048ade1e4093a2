-- A whole number (ms, an attempt) as the text a command is sent. Lua 5.1 turns a number passed
-- to redis.call into text with '%.14g', a floating-point conversion: writing and reading numbers
-- took 6.65% of Redis's samples in a profile of the drain at concurrency 50, 2.14% with this
-- (BENCHMARKS.md, "What a profile of Redis shows"). '%d' is an integer conversion. The values a
-- call sends for each of its tasks (now, the lease's end, the result lifetime) are written once
-- per call: the texts are kept for the call (scripts keep no state between calls). A value that
-- is not a finite number (only a damaged record gives one: an attempt field 'nan') goes as Lua
-- writes it, as before.
local msTexts = {}
local function msText(n)
  if n ~= n or n == math.huge or n == -math.huge then return tostring(n) end
  local s = msTexts[n]
  if not s then
    s = string.format('%d', n)
    msTexts[n] = s
  end
  return s
end
