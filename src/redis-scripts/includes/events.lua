-- The queue's event stream (STREAM <base>events): what a call did, for dispatcher.events() and
-- the CLI. Events are noted as the call goes (noteEvent) and written at its end (flushEvents)
-- as ONE stream entry per call, however many tasks it moved: a fetch that ends 50 runs and
-- starts 50 adds one entry, not 100. An entry is a list of field, value pairs: a pair whose
-- field is an event type ('queued', 'started', ...) opens an event and names its task id; the
-- pairs after it, up to the next type, are its details (n name, w worker, a attempt, ...; see
-- src/core/events/queue-events.ts, which reads them). The stream is capped when written (MAXLEN ~)
-- and by age by the workers' heartbeat (XTRIM MINID ~). The cap counts entries, that is script
-- calls: an entry holds one event for a single send, up to about twice a worker's concurrency
-- for a busy fetch. (A cap in events cannot be kept with MAXLEN, which counts the entries of
-- the whole stream: dividing it by the events of the entry being written let one big entry trim
-- away the history of many small ones.)
-- The three events every task has, started, progress and succeeded, go without the task's name
-- (n), which the others carry: the reader takes it from the task's queued event or its record.
-- Details before the first event of an entry apply to all its events: a worker's calls put their
-- worker id there once ('w'), and leave it out of each event that names that worker.
-- A cap of 0 turns events off. Writing them is best effort: a refused XADD (a full Redis) is
-- ignored, never failing the transitions the call made.
-- The stream's key comes from the calling script, which declares it in its KEYS (a key built
-- here from the base would be one Redis Cluster does not know the script touches).
local eventPairs = {}
local eventCap = 0
local eventWorker = nil
local eventStreamKey = nil

-- `worker`: the id of the worker making the call (nil for a producer or an operator); `key`: the
-- stream, <prefix>:{<queue>}:events, as the script's KEYS name it.
local function useEvents(cap, worker, key)
  eventCap = tonumber(cap) or 0
  eventWorker = worker
  eventStreamKey = key
end

local function eventsOn()
  return eventCap > 0
end

-- noteEvent(type, id, field1, value1, ...): nil values are skipped with their field, and so is a
-- worker ('w') that is the calling worker (the entry names it once).
local function noteEvent(kind, id, ...)
  if eventCap <= 0 then return end
  local n = #eventPairs
  eventPairs[n + 1] = kind
  eventPairs[n + 2] = id
  n = n + 2
  local count = select('#', ...)
  for i = 1, count, 2 do
    local field, value = select(i, ...)
    if value ~= nil and value ~= false and not (field == 'w' and value == eventWorker) then
      eventPairs[n + 1] = field
      eventPairs[n + 2] = value
      n = n + 2
    end
  end
end

-- A mark to rewind to, should what was noted after it be undone.
local function eventMark()
  return #eventPairs
end

local function eventRewind(mark)
  for i = #eventPairs, mark + 1, -1 do eventPairs[i] = nil end
end

-- Writes the noted events: one entry, or one per 4000 items (unpack is bounded by Lua's stack),
-- never splitting an event (an entry always starts with a type).
local function flushEvents()
  local total = #eventPairs
  if total == 0 or eventCap <= 0 then
    eventPairs = {}
    return
  end
  local key = eventStreamKey
  local header = {}
  if eventWorker then header = { 'w', eventWorker } end
  local from = 1
  while from <= total do
    local to = math.min(total, from + 3999)
    -- Extend to the end of the event the slice cut (the next type opens at an odd index whose
    -- field is not a detail: details are one or two letters, types are longer).
    while to < total and #eventPairs[to + 1] <= 2 do to = to + 2 end
    if #header > 0 then
      redis.pcall('XADD', key, 'MAXLEN', '~', eventCap, '*', header[1], header[2], unpack(eventPairs, from, to))
    else
      redis.pcall('XADD', key, 'MAXLEN', '~', eventCap, '*', unpack(eventPairs, from, to))
    end
    from = to + 1
  end
  eventPairs = {}
end

-- The name and message (at most 300 characters) of the error JSON among `fields` (a flat list of
-- field, value pairs; the error is field 'e'), for a failed or retried event.
local function errorSummary(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then
      local ok, decoded = pcall(cjson.decode, fields[i + 1])
      if ok and type(decoded) == 'table' then
        local message = decoded.message
        if type(message) == 'string' and #message > 300 then message = string.sub(message, 1, 300) .. '...' end
        if type(message) ~= 'string' then message = nil end
        if type(decoded.name) ~= 'string' then return nil, message end
        return decoded.name, message
      end
    end
  end
  return nil, nil
end
