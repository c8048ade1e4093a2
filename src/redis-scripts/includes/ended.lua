-- Whether a task state is final: SUCCESS, FAILURE or REVOKED (false for nil: no record).
local function isEnded(s)
  return s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED'
end
