import type { QueueKeys } from './queue-keys.js';

/**
 * The fields of a task record (the HASH `<prefix>:{<queue>}:t:<id>`), by meaning: the one
 * table the TypeScript side names them from (as QueueKeys is for keys). docs/protocol.md is the
 * contract for other producers; the Lua scripts use the same letters.
 */
export const FIELDS = {
  /** Message layout version, `'1'`; the fetch refuses any other. */
  version: 'v',
  /** Task name. */
  name: 'n',
  /** Arguments, a JSON array; when kept in pieces, the first piece. */
  args: 'a',
  /** Number of pieces of the arguments (`a`, `a1`, `a2`, ...); absent when `a` holds them whole. */
  argsPieces: 'ac',
  /** State: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED. */
  state: 's',
  /** Created, ms, Redis clock. */
  created: 'c',
  /** Due, ms, Redis clock (countdown, eta, rate-limit reschedule, retry, hand-back). */
  due: 'd',
  /** The attempt a concurrency permit was handed to while that run was being started or sent back (permit-wake-2.lua): its deferral makes it due at once (admit-6.lua). */
  permitWoken: 'pw',
  /** Last start, ms, Redis clock: when the handler began (a reservation has none until then). */
  startedAt: 'st',
  /**
   * `'1'`: the task is a worker's reservation (prefetch): STARTED in Redis (lease, run token,
   * lock, rate window, attempt) but its handler has not begun; readers show it as PENDING. The
   * worker's next call after the handler began removes it and sets `st` (fetch-7.lua).
   */
  reserved: 'rs',
  /**
   * `1` once a reservation of the task lapsed (its worker died holding it) and went back to the
   * queue uncounted; any later lapse of a reservation counts as a recovery (includes/recover.lua).
   */
  reservationLapsed: 'rl',
  /** Ended, ms, Redis clock. */
  finishedAt: 'f',
  /** Worker id of the last start. */
  worker: 'w',
  /** Starts so far. */
  attempts: 'at',
  /** Result JSON. */
  result: 'r',
  /** Error JSON `{ name, message, traceback }`. */
  error: 'e',
  /** Why the task ended REVOKED. */
  revokeReason: 'rr',
  /** A revoke of the running task was requested (the reason). */
  revokeRequested: 'rv',
  /** Expires: epoch ms, computed on the producer's clock, compared with the Redis clock when the task would start. */
  expires: 'ex',
  /** Time limit of each run, ms. */
  timeLimit: 'tl',
  /** maxRecoveries. */
  maxRecoveries: 'mr',
  /** Recoveries so far. */
  recoveries: 'rc',
  /** Retries so far. */
  retries: 'ry',
  /**
   * A random token of the dispatch that wrote the record (optional; the Dispatcher sends one):
   * the enqueue script answers a call sent again with it as enqueued (code 1), also once the
   * task has ended, instead of starting the task afresh under its id.
   */
  sendNonce: 'sn',
  /**
   * The unique lock's key, whole, as a producer sends it. Enqueue stores it only when it is not a
   * lock of the task's own (`<base>lock:<n>:<key>`); records written before `lu` hold it too.
   * Read a record's lock with `lockOfRecord()`, never from this field alone.
   */
  lockKey: 'lk',
  /**
   * The unique lock's key as enqueue stores it (includes/record-lock.lua): what follows
   * `<base>lock:<n>:`, that is the task's unique key (the key function's value, or the 40-hex
   * hash of the arguments). The whole key (over 64 bytes with a hash) would turn the record from
   * a listpack into a hashtable. Never sent by a producer.
   */
  lockUnique: 'lu',
  /** The unique lock's lifetime, ms. */
  lockTtl: 'lt',
  /** `'1'`: keep the lock after the end (uniqueWaitForExpiry). */
  lockWaitForExpiry: 'lw',
  /**
   * What a dispatch does when the lock is held (onConflict): `'replace'`, `'keepLast'` or
   * `'debounce'`; absent for return and raise, which only the producer tells apart.
   */
  conflictMode: 'cm',
  /** Debounce: the delay after each call, ms. */
  debounceWait: 'cw',
  /** Debounce: the longest delay after the first call of a series, ms (absent or 0: none). */
  debounceMaxWait: 'cx',
  /** Debounce: when the first call of the series was made (ms, Redis clock), carried from task to task. */
  debounceFirst: 'cf',
  /** The running holder this task was enqueued to wait behind (keepLast, debounce): it waits for the lock instead of ending 'duplicate'. */
  waitingBehind: 'cb',
  /** Sent to enqueue, never stored: the holder of the lock the producer declared ('' none). */
  conflictHolder: 'ch',
  /** Sent to enqueue, never stored: the pending task waiting behind it that the producer declared ('' none). */
  conflictPending: 'cp',
  /** Sent to enqueue, never stored: the result lifetime (ms) of a task the call replaces. */
  conflictExpires: 'ce',
  /** The rate window's key. */
  rateKey: 'rk',
  /** The rate limit n. */
  rateLimit: 'rn',
  /** The rate period, ms. */
  ratePeriod: 'rp',
  /** Run token of the last start. */
  token: 'tk',
  /** Progress of the running task, JSON `{ v: 0..1, m?: message, at: ms }` (progress-2.lua). */
  progress: 'pg',
  /** `<token> <state>` of the last end a run stored itself. */
  finishedRun: 'fk',
  /** Hand-backs by workers that do not run the task: when the grace counts from (ms). */
  declinedAt: 'ud',
  /** Hand-backs in the current series. */
  declines: 'un',
  /** Attempts the task had when the series began. */
  declinedAttempts: 'ua',
  /**
   * The attempts before the current one, JSON array, oldest first, at most 20 (includes/history.lua):
   * `{ a: attempt, st: started ms, f: ended ms, w: worker, en, em: error name and message, b: backoff ms }`
   * for a retried attempt, `{ a, st, w, lost: true }` for one whose worker was lost. Written only on a
   * retry or a recovery.
   */
  history: 'ah',
  /**
   * W3C `traceparent` of the span that sent the task (heimdall-tasks/otel), optional: 55
   * characters, so the record stays a compact listpack. Written by the producer, read by workers.
   */
  traceParent: 'tp',
  /** W3C `tracestate` sent with `tp`, when the producer's span has one (optional). */
  traceState: 'ts',
} as const;

/** The fields `lockOfRecord()` reads, in its order: read them together (one HMGET). */
export const LOCK_FIELDS = [FIELDS.lockKey, FIELDS.lockUnique, FIELDS.name] as const;

/**
 * The unique lock a task record names, from its fields `lk`, `lu` and `n` as read (null or
 * undefined: absent), in the order of `LOCK_FIELDS`; null for none. `lk` wins: it is the whole
 * key (a producer's own key, or a record written before `lu`); else the key is built back from
 * `lu` and the task name, as includes/record-lock.lua builds it in the scripts.
 */
export function lockOfRecord(keys: QueueKeys, [lockKey, lockUnique, name]: readonly (string | null | undefined)[]): string | null {
  if (lockKey != null) return lockKey;
  if (lockUnique != null && name != null) return keys.lock(name, lockUnique);
  return null;
}
