-- Whole numbers (ms, an attempt) as the text a command is sent. Lua 5.1 turns a number passed
-- to redis.call into text with '%.14g', a floating-point conversion: writing and reading numbers
-- took 6.65% of Redis's samples in a profile of the drain at concurrency 50, 2.14% with this
-- (BENCHMARKS.md, "What a profile of Redis shows"). '%d' is an integer conversion. The values a
-- call sends for each of its tasks (now, the lease's end, the result lifetime) are written once
-- per call (msText: the texts are kept for the call; scripts keep no state between calls); a
-- value of one task only (a start time, a runtime) goes through wholeText. A value that is not a
-- finite number (only a damaged record gives one: an attempt field 'nan') goes as Lua writes it,
-- as before.
local function wholeText(n)
  if n ~= n or n == math.huge or n == -math.huge then return tostring(n) end
  return string.format('%d', n)
end

local msTexts = {}
local function msText(n)
  local s = msTexts[n]
  if not s then
    s = wholeText(n)
    -- NaN cannot be a table key; it is not kept.
    if n == n then msTexts[n] = s end
  end
  return s
end
