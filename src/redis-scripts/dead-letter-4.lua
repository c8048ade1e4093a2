--[[
  dead-letter: an operator acts on one dead letter (Inspector.retryDead / dropDead).
    drop:  the entry leaves the dead-letter list; the task's record is left as it is.
    retry: a task that ended FAILURE goes back to PENDING at the head of the wait list (its
           error, end time, progress and hand-back series cleared, its expiry lifted, its attempts kept),
           and the entry leaves the list. Anything else (no record, not FAILURE) is left alone.

  KEYS[1] dead list         <prefix>:{<queue>}:dead
  KEYS[2] wait list         <prefix>:{<queue>}:wait
  KEYS[3] task hash         <prefix>:{<queue>}:t:<id>
  KEYS[4] event stream      <prefix>:{<queue>}:events (see includes/events.lua)

  ARGV[1] 'retry' | 'drop'
  ARGV[2] the entry, exactly as stored (JSON)
  ARGV[3] the task id
  ARGV[4] key base          <prefix>:{<queue>}:
  ARGV[5] events: the cap of the queue's event stream (0: no events; see includes/events.lua)

  Returns {code, detail}: 1 done; 0 no such entry (already acted on); 2 not retried: the task's
  state is given ('' for no record), the entry stays.
]]
-- @include "events"

local op, entry, id = ARGV[1], ARGV[2], ARGV[3]
if op == 'retry' then
  local state = redis.call('HGET', KEYS[3], 's')
  if state ~= 'FAILURE' then return {2, state or ''} end
end
if redis.call('LREM', KEYS[1], 1, entry) == 0 then return {0, ''} end
if op == 'retry' then
  redis.call('HDEL', KEYS[3], 'e', 'f', 'rr', 'fk', 'ud', 'un', 'ua', 'rc', 'd', 'pg')
  redis.call('HSET', KEYS[3], 's', 'PENDING')
  redis.call('PERSIST', KEYS[3])
  -- RPUSH: the tail is the head of the queue (RPOP takes it first).
  redis.call('RPUSH', KEYS[2], id)
  useEvents(ARGV[5], nil, KEYS[4])
  noteEvent('queued', id, 'n', redis.call('HGET', KEYS[3], 'n'), 'o', 'dead-letter')
  flushEvents()
end
return {1, ''}
