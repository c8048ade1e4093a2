// The events of a queue, as the scripts write them to its stream (includes/events.lua) and
// dispatcher.events() hands them out: their types, their options, and the decoding of an entry.
import { ConfigError } from '../errors.js';
import { describe, toMillisOrZero, type Duration } from '../task/durations.js';

/** Options of the queues' event streams, on a Dispatcher (what it writes) or a Worker (what it writes, and the age trim). */
export interface EventsOptions {
  /**
   * How many entries each queue's stream keeps. An entry is one script call: one event for a
   * single dispatch (up to 50 for dispatches batched in one tick or a `delayMany` slice), up to
   * about a worker's concurrency, or twice it, for a busy worker's fetch (an event is about 50
   * to 60 bytes in Redis): at the default, roughly 0.5 MB per unit of the workers' concurrency
   * per queue under load (25 MB at concurrency 50). Approximate: Redis trims whole nodes of the
   * stream, so up to a node more (100 entries or 4 KB) may stay. Default: 10,000.
   */
  maxLength?: number;
  /**
   * Events older than this are trimmed by the workers' heartbeat (every third of the lease):
   * seconds or an `ms` string; 0 keeps them until the length cap. Worker only. Default: '1h'.
   */
  maxAge?: Duration;
}

/** Events options after validation: the stream's cap in entries (0: no events) and its age limit in ms (0: none). */
export interface EventsSettings {
  cap: number;
  maxAgeMs: number;
}

export const DEFAULT_EVENTS_MAX_LENGTH = 10_000;
export const DEFAULT_EVENTS_MAX_AGE_MS = 60 * 60_000;

/** Checks `events` of a Dispatcher, Worker or Inspector: `false` turns events off. */
export function eventsSettings(option: EventsOptions | false | undefined): EventsSettings {
  if (option === false) return { cap: 0, maxAgeMs: 0 };
  if (option === undefined) return { cap: DEFAULT_EVENTS_MAX_LENGTH, maxAgeMs: DEFAULT_EVENTS_MAX_AGE_MS };
  if (typeof option !== 'object' || option === null) throw new ConfigError(`events must be false or { maxLength?, maxAge? }, got ${describe(option)}`);
  const cap = option.maxLength ?? DEFAULT_EVENTS_MAX_LENGTH;
  if (!Number.isInteger(cap) || cap < 1) throw new ConfigError(`events.maxLength must be a whole number of entries >= 1, got ${describe(option.maxLength)}`);
  const maxAgeMs = option.maxAge === undefined ? DEFAULT_EVENTS_MAX_AGE_MS : toMillisOrZero(option.maxAge, 'events.maxAge');
  return { cap, maxAgeMs };
}

/** What every event carries. */
interface EventBase {
  /** The queue it happened on. */
  queue: string;
  /** The task's id. */
  id: string;
  /**
   * The task's name. Absent when neither the event, nor an earlier event of the task this
   * iterator read, nor the task's record names it (a dead letter of a task with no record; a
   * started, progress or succeeded event of a task forgotten since).
   */
  name?: string;
  /** When it happened: ms since the epoch, on the Redis clock. */
  at: number;
  /** Where it is in the stream: pass it as `since` to resume after it. */
  cursor: string;
}

/**
 * One event of a queue. `type` tells them apart:
 * - `queued`: sent (or sent again from the dead letters, `origin: 'dead-letter'`); `dueAt` when delayed;
 * - `deduplicated`: a unique task was sent while `id` held its lock; no new task was made (`by`:
 *   the id the refused dispatch would have had);
 * - `replaced`: `id`, which had not started, gave way to the task `by` (`onConflict` 'replace',
 *   'keepLast' or debounce; `reason` 'replaced' or 'debounced'); a `revoked` event follows;
 * - `waiting`: `id` was sent while `holder` ran and waits behind it, to start after it ends
 *   (`onConflict` 'keepLast' or debounce);
 * - `started`: a worker began a run (`attempt` counts from 1). A task whose options the message
 *   did not carry is checked by the worker after this (it may then be `rate-limited` or `revoked`);
 * - `progress`: the running task reported `value` (0..1) and `message`;
 * - `succeeded`, `failed`: the task ended; `runtimeMs` of the last run when it ran;
 * - `retried`: the run failed and the task runs again after `delayMs`;
 * - `revoked`: ended REVOKED (`reason`: revoked, duplicate, expired, ...);
 * - `rate-limited`: its rate window was full; it waits `delayMs`;
 * - `recovered`: its worker (`worker`) stopped renewing the lease; it went back to the queue;
 * - `handed-back`: a worker gave it back without running it (closing, or not running the task);
 * - `dead-lettered`: kept in the dead-letter list for `reason`;
 * - `lock-released`: an operator released the unique lock `lockKey` it held;
 * - `lock-extended`: the unique lock `lockKey` it holds was given `ttlMs` from now (by the task, or an operator).
 */
export type QueueEvent =
  | (EventBase & { type: 'queued'; dueAt?: number; origin?: 'dead-letter' })
  | (EventBase & { type: 'deduplicated'; by?: string })
  | (EventBase & { type: 'replaced'; by: string; reason: 'replaced' | 'debounced' })
  | (EventBase & { type: 'waiting'; holder: string })
  | (EventBase & { type: 'started'; worker: string; attempt: number })
  | (EventBase & { type: 'progress'; value: number; message?: string })
  | (EventBase & { type: 'succeeded'; worker?: string; runtimeMs?: number })
  | (EventBase & { type: 'failed'; worker?: string; runtimeMs?: number; error: { name: string; message: string } })
  | (EventBase & { type: 'retried'; worker?: string; attempt?: number; delayMs: number; error: { name: string; message: string } })
  | (EventBase & { type: 'revoked'; reason: string })
  | (EventBase & { type: 'rate-limited'; delayMs: number })
  | (EventBase & { type: 'recovered'; worker?: string })
  | (EventBase & { type: 'handed-back'; worker?: string; delayMs?: number })
  | (EventBase & { type: 'dead-lettered'; reason: string })
  | (EventBase & { type: 'lock-released'; lockKey: string })
  | (EventBase & { type: 'lock-extended'; lockKey: string; ttlMs: number });

/** The type of an event. */
export type QueueEventType = QueueEvent['type'];

/** Every event type, as the scripts write them. */
export const EVENT_TYPES: readonly QueueEventType[] = [
  'queued',
  'deduplicated',
  'replaced',
  'waiting',
  'started',
  'progress',
  'succeeded',
  'failed',
  'retried',
  'revoked',
  'rate-limited',
  'recovered',
  'handed-back',
  'dead-lettered',
  'lock-released',
  'lock-extended',
];
const TYPES = new Set<string>(EVENT_TYPES);

/** The ms part of a stream entry id ('<ms>-<seq>'). */
export function entryTime(entryId: string): number {
  return Number(entryId.slice(0, entryId.indexOf('-')));
}

/**
 * The events of one stream entry (a flat list of field, value pairs; see includes/events.lua),
 * from index `from` on (a cursor resumes inside an entry). Details before the first event apply
 * to every event (a worker's calls name their worker once, `w`). A pair of a type this version
 * does not know opens an event that is skipped with its details, so newer writers do not break it.
 */
export function decodeEntry(queue: string, entryId: string, pairs: readonly string[], from = 0): QueueEvent[] {
  const at = entryTime(entryId);
  const out: QueueEvent[] = [];
  const defaults = new Map<string, string>();
  let i = 0;
  while (i < pairs.length && pairs[i]!.length <= 2) {
    defaults.set(pairs[i]!, pairs[i + 1] ?? '');
    i += 2;
  }
  let index = -1;
  while (i < pairs.length) {
    const type = pairs[i]!;
    const id = pairs[i + 1] ?? '';
    const details = new Map<string, string>(defaults);
    i += 2;
    while (i < pairs.length && pairs[i]!.length <= 2) {
      details.set(pairs[i]!, pairs[i + 1] ?? '');
      i += 2;
    }
    index++;
    if (index < from || !TYPES.has(type)) continue;
    const event = buildEvent(type as QueueEventType, { queue, id, at, cursor: `${entryId}/${index}`, ...optional('name', details.get('n')) }, details);
    if (event !== undefined) out.push(event);
  }
  return out;
}

function optional<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

function num(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

function errorOf(details: Map<string, string>): { name: string; message: string } {
  return { name: details.get('en') ?? 'Error', message: details.get('em') ?? '' };
}

function buildEvent(type: QueueEventType, base: EventBase, d: Map<string, string>): QueueEvent | undefined {
  switch (type) {
    case 'queued':
      return { ...base, type, ...optional('dueAt', num(d.get('d'))), ...(d.get('o') === 'dead-letter' ? { origin: 'dead-letter' as const } : {}) };
    case 'deduplicated':
      return { ...base, type, ...optional('by', d.get('by')) };
    case 'replaced':
      return { ...base, type, by: d.get('by') ?? '', reason: d.get('r') === 'debounced' ? 'debounced' : 'replaced' };
    case 'waiting':
      return { ...base, type, holder: d.get('h') ?? '' };
    case 'started':
      return { ...base, type, worker: d.get('w') ?? '', attempt: num(d.get('a')) ?? 1 };
    case 'progress': {
      let value = 0;
      let message: string | undefined;
      try {
        const p = JSON.parse(d.get('p') ?? '{}') as { v?: unknown; m?: unknown };
        if (typeof p.v === 'number') value = p.v;
        if (typeof p.m === 'string') message = p.m;
      } catch {
        // A report that is not JSON: value 0, no message.
      }
      return { ...base, type, value, ...optional('message', message) };
    }
    case 'succeeded':
      return { ...base, type, ...optional('worker', d.get('w')), ...optional('runtimeMs', num(d.get('rt'))) };
    case 'failed':
      return { ...base, type, ...optional('worker', d.get('w')), ...optional('runtimeMs', num(d.get('rt'))), error: errorOf(d) };
    case 'retried':
      return { ...base, type, ...optional('worker', d.get('w')), ...optional('attempt', num(d.get('a'))), delayMs: num(d.get('dl')) ?? 0, error: errorOf(d) };
    case 'revoked':
      return { ...base, type, reason: d.get('r') ?? 'revoked' };
    case 'rate-limited':
      return { ...base, type, delayMs: num(d.get('dl')) ?? 0 };
    case 'recovered':
      return { ...base, type, ...optional('worker', d.get('w')) };
    case 'handed-back':
      return { ...base, type, ...optional('worker', d.get('w')), ...optional('delayMs', num(d.get('dl'))) };
    case 'dead-lettered':
      return { ...base, type, reason: d.get('r') ?? '' };
    case 'lock-released':
      return { ...base, type, lockKey: d.get('k') ?? '' };
    case 'lock-extended':
      return { ...base, type, lockKey: d.get('k') ?? '', ttlMs: num(d.get('lt')) ?? 0 };
  }
}
