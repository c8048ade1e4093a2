-- Whether a command error is Redis refusing the command for a reason outside the task's own
-- data: memory (OOM), permissions (an ACL), the cluster (a slot being migrated, the cluster
-- down), a read-only replica, a persistence error. The task is fine: it must stay where it is,
-- or go back to the caller, and never be failed or dropped for it. Any other error (WRONGTYPE,
-- a value Redis rejects) belongs to the task's data: the task is malformed.
local REFUSAL_CODES = {
  OOM = true, NOPERM = true, ASK = true, MOVED = true, TRYAGAIN = true, CLUSTERDOWN = true, CROSSSLOT = true,
  READONLY = true, MASTERDOWN = true, LOADING = true, MISCONF = true, NOREPLICAS = true, BUSY = true,
}
local function isRefusal(err)
  local message = err
  if type(err) == 'table' then message = err.err end
  if type(message) ~= 'string' then return false end
  if REFUSAL_CODES[string.match(message, '^(%u+)') or ''] then return true end
  -- Redis 7.0 words ACL and cluster refusals inside scripts as plain ERR messages.
  return string.find(message, 'user executing the script', 1, true) ~= nil
    or string.find(message, 'non local key', 1, true) ~= nil
    or string.find(message, 'cluster is down', 1, true) ~= nil
end

-- The text of an error raised by redis.call or error(), for a reply.
local function errorText(err)
  if type(err) == 'table' then return tostring(err.err) end
  return tostring(err)
end
