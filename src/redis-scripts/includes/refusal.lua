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

-- Whether a key this script reads as missing may only not have arrived yet: this node is a
-- Cluster master importing a slot (CLUSTER SETSLOT <slot> IMPORTING, a reshard under way). A
-- client sent here by an ASK redirection runs the script with ASKING, and Redis then answers a
-- read of a key of the slot that is still on the old master as if the key did not exist: a task
-- record not yet MIGRATEd reads as no record. The caller treats that as a refusal, to be tried
-- again once the move is over, instead of dropping the task. Any importing slot counts (telling
-- which slot a key is in would cost a CLUSTER KEYSLOT per key; a missing record is rare, and a
-- reshard short). Asked only when the caller says it is a Cluster client (useCluster): a single
-- node is never asked, so an ACL user without CLUSTER NODES sees no denial there. False when the
-- user may not run CLUSTER NODES on a Cluster (docs/acl.md). Looked up once per call.
local onCluster = false
local importingHere
local function useCluster(flag)
  onCluster = flag
end
local function notHereYet()
  if not onCluster then return false end
  if importingHere == nil then
    local nodes = redis.pcall('CLUSTER', 'NODES')
    importingHere = false
    if type(nodes) == 'string' then
      -- This node's own line lists the slots it imports as [<slot>-<-<node id>].
      local mine = string.match('\n' .. nodes, '\n([^\n]*myself[^\n]*)')
      importingHere = mine ~= nil and string.find(mine, '-<-', 1, true) ~= nil
    end
  end
  return importingHere
end
