import { ConfigError } from '../errors.js';
import { describe, toMillis, type Duration } from './durations.js';
import { DEFAULT_QUEUE, validateName } from '../protocol/queue-keys.js';
import { normalizeLimits, type LimitUse, type NormalizedLimitUse } from './limits.js';

/** `[n, period]`: at most `n` starts in any rolling window of `period` (seconds, or an `ms` string). */
export type RateLimit = readonly [limit: number, period: Duration];

/** A key of `@Task` options: one string for every call, or one computed from the call's arguments. */
export type TaskKey<A extends readonly unknown[] = unknown[]> = string | ((args: A) => string);

/** A key option after validation: always a function of the arguments. */
export type KeyOf = (args: readonly unknown[]) => string;

/** An error class, for `retries.on`. */
export type ErrorClass = abstract new (...args: never) => Error;

/**
 * Delay before a retry: a fixed Duration, or `'exponential'` (1 s, 2 s, 4 s... capped at
 * 10 min, as Celery's `retry_backoff`), or exponential with your own base and cap.
 */
export type Backoff = Duration | 'exponential' | { type: 'exponential'; base?: Duration; cap?: Duration };

/** How a failing task is tried again. */
export interface RetryOptions {
  /** Attempts after the first. `0` turns retries off. */
  max: number;
  /** Delay before each retry. Default: `'exponential'` (base 1 s, cap 10 min). */
  backoff?: Backoff;
  /** Pick the delay at random between 0 and the computed value ("full jitter"). Default: `true`. */
  jitter?: boolean;
  /**
   * Error classes that are retried (by `instanceof`). Default: every error except
   * `ConfigError`, `SerializationError` and `NonRetryableError`.
   */
  on?: readonly ErrorClass[];
}

/** Options of `@Task()`. Every option is checked when the class is defined. */
export interface TaskOptions<A extends readonly unknown[] = unknown[]> {
  /** Registry name. Default: `'ClassName.methodName'`. */
  name?: string;
  /** Queue the task is sent to. Default: `'default'`. */
  queue?: string;
  /** One queued-or-running task per key (the arguments' hash, or `key`). Default: `false`. */
  unique?: boolean;
  /** Lifetime of the unique lock: the deadlock escape. Seconds or an `ms` string, at most 10 years. Default: `'1h'`. */
  uniqueTimeout?: Duration;
  /**
   * A duplicate dispatch throws `AlreadyQueuedError` instead of returning the holder: the older
   * spelling of `onConflict: 'raise'` (giving both is a ConfigError). Default: `false`.
   */
  uniqueRaises?: boolean;
  /**
   * What a dispatch does when another task holds its unique lock. Default: `'return'`.
   * - `'return'`: nothing is sent; the dispatch resolves to the holder (`duplicate: true`).
   * - `'raise'`: nothing is sent; the dispatch rejects with `AlreadyQueuedError`.
   * - `'replace'`: a holder that has not started (queued, delayed, retrying, or claimed by a
   *   worker) ends REVOKED with reason `'replaced'` and the new task takes the lock; a holder
   *   that runs is returned as with `'return'`, so at most one runs.
   * - `'keepLast'`: at most one running and one pending task per key: the new task replaces
   *   the pending one (REVOKED `'replaced'`), and waits for the running one, if any, to end.
   * - `{ debounce: { wait, maxWait } }`: trailing edge, the newest arguments win: each call
   *   replaces the pending task (REVOKED `'debounced'`) and is due `wait` after it (seconds or an
   *   `ms` string), but no later than `maxWait` after the first call of the series (default:
   *   never forced); a call while one runs waits as the next pending one, as with `'keepLast'`.
   */
  onConflict?: ConflictOption;
  /** Keep the lock after the task ends, until it lapses: "at most once per `uniqueTimeout`". Default: `false`. */
  uniqueWaitForExpiry?: boolean;
  /**
   * The unique key and the rate-limit bucket, scoped by task name: a string (one key for every
   * call) or a function of the call's arguments. Shorthand for `uniqueKey` and `rateKey` both;
   * either of those, when given, wins for its own use. Default: a hash of the arguments (unique)
   * and the task itself (rate limit).
   */
  key?: TaskKey<A>;
  /**
   * The unique lock's key, scoped by task name: a string or a function of the arguments. Two
   * calls with the same key are duplicates. Default: `key`, else a hash of the arguments
   * (whatever their object key order).
   */
  uniqueKey?: TaskKey<A>;
  /**
   * The rate-limit bucket, scoped by task name: a string or a function of the arguments. Calls
   * with the same key share one window. Default: `key`, else one window for the task.
   */
  rateKey?: TaskKey<A>;
  /**
   * At most `n` starts in any rolling window of `period`, across all workers, on the Redis
   * clock. A function is evaluated at dispatch, per call. Default: no limit.
   */
  rateLimit?: RateLimit | ((args: A) => RateLimit);
  /**
   * Named limits this task counts in (see `Limits.define`), each shared by every task that
   * names it, in any queue: a run starts only when every one of them has room (all or none).
   * An entry is a limit's name or handle (1 unit per run) or `{ limit, cost }`, `cost` a whole
   * number >= 1 or a function of the arguments evaluated by the worker. Default: none.
   */
  limits?: readonly LimitUse<A>[];
  /**
   * At most this many runs of the task at once, across every worker and queue: a number, or
   * `{ limit, key }` to bound the runs per key (a string, or a function of the arguments, scoped
   * by task name). A run holds a permit while it runs: a lease renewed with the run's, given back
   * at its end and handed to the run that waited longest; a killed worker's permits lapse within
   * its lease. A run that finds none free waits in the delayed set (PENDING, no attempt counted)
   * until one is handed to it. Default: no bound (only the workers' own `concurrency`).
   */
  concurrency?: number | { limit: number; key?: TaskKey<A> };
  /** How long the result is kept after the task ends. Seconds or an `ms` string. Default: one day. */
  resultExpires?: Duration;
  /** Retries on failure. Default: none. `currentTask().retry()` works without it (up to 3 retries). */
  retries?: RetryOptions;
  /**
   * Wall-clock limit of one run: seconds or an `ms` string. At the limit the task's AbortSignal
   * fires with `TimeLimitExceededError` and the task ends FAILURE (or is retried). Default: none.
   */
  timeLimit?: Duration;
  /**
   * How many times a task whose worker died (its lease lapsed) is put back in the queue before
   * it ends FAILURE with a `WorkerLostError`. Default: 1.
   */
  maxRecoveries?: number;
}

/** `onConflict` of a unique task: see TaskOptions.onConflict. */
export type ConflictOption = 'return' | 'raise' | 'replace' | 'keepLast' | { debounce: { wait: Duration; maxWait?: Duration } };

/** `onConflict` after validation: the debounce times in ms (`maxWaitMs` 0: none). */
export type ConflictMode =
  | { kind: 'return' }
  | { kind: 'raise' }
  | { kind: 'replace' }
  | { kind: 'keepLast' }
  | { kind: 'debounce'; waitMs: number; maxWaitMs: number };

/** Retry settings in the units the worker uses. */
export interface NormalizedRetries {
  max: number;
  backoff: { kind: 'fixed'; ms: number } | { kind: 'exponential'; baseMs: number; capMs: number };
  jitter: boolean;
  on: readonly ErrorClass[] | undefined;
}

/** A rate limit in the units the scripts use. */
export interface RateLimitMs {
  limit: number;
  periodMs: number;
}

/** Options after validation, with defaults applied. */
export interface NormalizedTaskOptions {
  name: string | undefined;
  queue: string;
  unique: boolean;
  uniqueTimeoutMs: number;
  uniqueRaises: boolean;
  /** What a dispatch does when another task holds the lock (`uniqueRaises` is `kind: 'raise'`). */
  onConflict: ConflictMode;
  uniqueWaitForExpiry: boolean;
  /** The unique lock's key (`uniqueKey`, else `key`); undefined: the hash of the arguments. */
  uniqueKey: KeyOf | undefined;
  /** The rate window's key (`rateKey`, else `key`); undefined: one window for the task. */
  rateKey: KeyOf | undefined;
  rateLimit: RateLimitMs | ((args: readonly unknown[]) => RateLimit) | undefined;
  /** Named limits; undefined: none. */
  limits: NormalizedLimitUse[] | undefined;
  /** The task's own concurrency bound; undefined: none. */
  concurrency: { limit: number; key: KeyOf | undefined } | undefined;
  resultExpiresMs: number | undefined;
  retries: NormalizedRetries | undefined;
  timeLimitMs: number | undefined;
  maxRecoveries: number | undefined;
}

/** How long a result is kept when neither the task nor the worker says otherwise: one day. */
export const DEFAULT_RESULT_EXPIRES_MS = 24 * 60 * 60 * 1000;

const DEFAULT_BACKOFF = { kind: 'exponential', baseMs: 1000, capMs: 600_000 } as const;

/** Retry settings of `currentTask().retry()` on a task without a `retries` option. */
/** How many times a run whose worker was lost is recovered when the message says nothing (start-tasks.lua applies it). */
export const DEFAULT_MAX_RECOVERIES = 1;

export const DEFAULT_RETRIES: NormalizedRetries = {
  max: 3,
  backoff: DEFAULT_BACKOFF,
  jitter: true,
  on: undefined,
};

const DEFAULT_UNIQUE_TIMEOUT_MS = 60 * 60 * 1000;
// Longer lock lifetimes are refused: SET PX takes a 64-bit integer of ms, and Lua numbers
// (doubles) are exact only up to 2^53.
const MAX_UNIQUE_TIMEOUT_MS = 10 * 365 * 24 * 60 * 60 * 1000;
const KNOWN = new Set([
  'name',
  'queue',
  'unique',
  'uniqueTimeout',
  'uniqueRaises',
  'uniqueWaitForExpiry',
  'onConflict',
  'key',
  'uniqueKey',
  'rateKey',
  'rateLimit',
  'limits',
  'concurrency',
  'resultExpires',
  'retries',
  'timeLimit',
  'maxRecoveries',
]);
const RETRY_KNOWN = new Set(['max', 'backoff', 'jitter', 'on']);

/** A unique lock's lifetime in whole ms (at least 1, at most 10 years), from a Duration; `where` prefixes the error. */
export function lockLifetime(duration: unknown, where: string): number {
  const ms = Math.ceil(toMillis(duration as Duration, where));
  if (ms > MAX_UNIQUE_TIMEOUT_MS) throw new ConfigError(`${where} must be at most 10 years (${MAX_UNIQUE_TIMEOUT_MS} ms), got ${ms} ms`);
  return ms;
}

/** Checks an `onConflict` option; `uniqueRaises` is its older spelling of 'raise'. */
export function normalizeConflict(value: unknown, uniqueRaises: boolean, where: string): ConflictMode {
  if (value === undefined) return { kind: uniqueRaises ? 'raise' : 'return' };
  if (uniqueRaises) throw new ConfigError(`${where}: uniqueRaises is the older spelling of onConflict: 'raise'; give one of them`);
  if (value === 'return' || value === 'raise' || value === 'replace' || value === 'keepLast') return { kind: value };
  const shape = `'return', 'raise', 'replace', 'keepLast' or { debounce: { wait, maxWait? } }`;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(`${where}: onConflict must be ${shape}, got ${describe(value)}`);
  }
  const o = value as Record<string, unknown>;
  const extra = Object.keys(o).find((k) => k !== 'debounce');
  if (extra !== undefined || typeof o.debounce !== 'object' || o.debounce === null || Array.isArray(o.debounce)) {
    throw new ConfigError(`${where}: onConflict must be ${shape}, got ${describe(value)}`);
  }
  const d = o.debounce as Record<string, unknown>;
  const unknown = Object.keys(d).find((k) => k !== 'wait' && k !== 'maxWait');
  if (unknown !== undefined) throw new ConfigError(`${where}: onConflict.debounce: unknown option '${unknown}'; known: wait, maxWait`);
  if (d.wait === undefined) throw new ConfigError(`${where}: onConflict.debounce.wait is required (seconds or an ms string)`);
  const waitMs = lockLifetime(d.wait, `${where}: onConflict.debounce.wait`);
  let maxWaitMs = 0;
  if (d.maxWait !== undefined) {
    maxWaitMs = lockLifetime(d.maxWait, `${where}: onConflict.debounce.maxWait`);
    if (maxWaitMs < waitMs) {
      throw new ConfigError(`${where}: onConflict.debounce.maxWait (${maxWaitMs} ms) must be at least wait (${waitMs} ms)`);
    }
  }
  return { kind: 'debounce', waitMs, maxWaitMs };
}

/** Checks a `retries` option. */
export function normalizeRetries(value: unknown, where: string): NormalizedRetries {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(`${where} must be an object such as { max: 3 }, got ${describe(value)}`);
  }
  const r = value as Record<string, unknown>;
  for (const k of Object.keys(r)) {
    if (!RETRY_KNOWN.has(k)) throw new ConfigError(`${where}: unknown option '${k}'; known: ${[...RETRY_KNOWN].join(', ')}`);
  }
  if (typeof r.max !== 'number' || !Number.isInteger(r.max) || r.max < 0) {
    throw new ConfigError(`${where}.max must be a whole number of retries >= 0, got ${describe(r.max)}`);
  }
  let backoff: NormalizedRetries['backoff'];
  const b = r.backoff;
  if (b === 'exponential' || b === undefined) {
    backoff = DEFAULT_BACKOFF;
  } else if (typeof b === 'object' && b !== null && !Array.isArray(b)) {
    const o = b as Record<string, unknown>;
    if (o.type !== 'exponential') {
      throw new ConfigError(`${where}.backoff object must be { type: 'exponential', base?, cap? }, got type ${describe(o.type)}`);
    }
    backoff = {
      kind: 'exponential',
      baseMs: o.base === undefined ? DEFAULT_BACKOFF.baseMs : toMillis(o.base as Duration, `${where}.backoff.base`),
      capMs: o.cap === undefined ? DEFAULT_BACKOFF.capMs : toMillis(o.cap as Duration, `${where}.backoff.cap`),
    };
  } else {
    backoff = { kind: 'fixed', ms: toMillis(b as Duration, `${where}.backoff`) };
  }
  if (r.jitter !== undefined && typeof r.jitter !== 'boolean') {
    throw new ConfigError(`${where}.jitter must be true or false, got ${describe(r.jitter)}`);
  }
  if (r.on !== undefined && (!Array.isArray(r.on) || r.on.some((c) => typeof c !== 'function'))) {
    throw new ConfigError(`${where}.on must be an array of error classes such as [TypeError], got ${describe(r.on)}`);
  }
  return { max: r.max, backoff, jitter: r.jitter !== false, on: r.on as readonly ErrorClass[] | undefined };
}

function bool(value: unknown, what: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw new ConfigError(`${what} must be true or false, got ${describe(value)}`);
  return value;
}

/** Checks a `[n, period]` pair; `where` prefixes the message (decoration or dispatch). */
export function normalizeRateLimit(value: unknown, where: string): RateLimitMs {
  if (!Array.isArray(value) || value.length !== 2) {
    throw new ConfigError(`${where} must be [n, period] such as [2, 60] (2 per minute), got ${describe(value)}`);
  }
  const [limit, period] = value as [unknown, unknown];
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1) {
    throw new ConfigError(`${where}: n must be a whole number of starts >= 1, got ${describe(limit)}`);
  }
  return { limit, periodMs: toMillis(period as Duration, `${where}: period`) };
}

/** Checks a key option: a non-empty string (the same key for every call) or a function. */
function keyOption(value: unknown, where: string): KeyOf | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'function') return value as KeyOf;
  if (typeof value === 'string' && value !== '') return () => value;
  throw new ConfigError(`${where} must be a non-empty string or a function (args) => string, got ${describe(value)}`);
}

/** Checks `concurrency`: a whole number of runs >= 1, or `{ limit, key? }`. */
function normalizeConcurrency(value: unknown, where: string): NormalizedTaskOptions['concurrency'] {
  if (value === undefined) return undefined;
  let limit: unknown = value;
  let key: KeyOf | undefined;
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const o = value as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (k !== 'limit' && k !== 'key') throw new ConfigError(`${where}: unknown option '${k}'; known: limit, key`);
    }
    limit = o.limit;
    key = keyOption(o.key, `${where}: key`);
  }
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > 1e6) {
    const what = limit === value ? where : `${where}.limit`;
    throw new ConfigError(`${what} must be a whole number of runs from 1 to 1e6${limit === value ? ', or { limit, key }' : ''}, got ${describe(limit)}`);
  }
  return { limit, key };
}

/** Validates `@Task` options; throws ConfigError naming the option and what was wrong. */
export function normalizeTaskOptions(options: unknown, where: string): NormalizedTaskOptions {
  if (options === undefined) options = {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new ConfigError(`${where}: options must be an object, got ${describe(options)}`);
  }
  const o = options as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!KNOWN.has(k)) {
      throw new ConfigError(`${where}: unknown option '${k}'; known options are ${[...KNOWN].join(', ')}`);
    }
  }
  if (o.name !== undefined && (typeof o.name !== 'string' || o.name.trim() === '')) {
    throw new ConfigError(`${where}: name must be a non-empty string, got ${describe(o.name)}`);
  }
  const queue = o.queue === undefined ? DEFAULT_QUEUE : validateName(o.queue, `${where}: queue`);
  const unique = bool(o.unique, `${where}: unique`);
  const uniqueRaises = bool(o.uniqueRaises, `${where}: uniqueRaises`);
  const uniqueWaitForExpiry = bool(o.uniqueWaitForExpiry, `${where}: uniqueWaitForExpiry`);
  const uniqueTimeoutMs = o.uniqueTimeout === undefined ? DEFAULT_UNIQUE_TIMEOUT_MS : lockLifetime(o.uniqueTimeout, `${where}: uniqueTimeout`);
  if (!unique) {
    for (const k of ['uniqueTimeout', 'uniqueRaises', 'uniqueWaitForExpiry', 'onConflict'] as const) {
      if (o[k] !== undefined) throw new ConfigError(`${where}: ${k} only applies to unique tasks; add unique: true`);
    }
  }
  const onConflict = normalizeConflict(o.onConflict, uniqueRaises, where);
  if (onConflict.kind === 'debounce') {
    // The lock is taken at the send and lives uniqueTimeout from then: a task due later than that
    // would wait with no lock, and the next send would not see it.
    const longest = Math.max(onConflict.waitMs, onConflict.maxWaitMs);
    if (longest >= uniqueTimeoutMs) {
      throw new ConfigError(
        `${where}: uniqueTimeout (${uniqueTimeoutMs} ms) must be longer than debounce's ${onConflict.maxWaitMs > 0 ? 'maxWait' : 'wait'} (${longest} ms): the lock is taken at the send, and the task waits that long before it runs`,
      );
    }
  }
  const key = keyOption(o.key, `${where}: key`);
  const uniqueKeyFn = keyOption(o.uniqueKey, `${where}: uniqueKey`);
  const rateKeyFn = keyOption(o.rateKey, `${where}: rateKey`);
  if (key && !unique && o.rateLimit === undefined) {
    throw new ConfigError(`${where}: key is used by unique and rateLimit; set one of them`);
  }
  if (uniqueKeyFn && !unique) throw new ConfigError(`${where}: uniqueKey only applies to unique tasks; add unique: true`);
  if (rateKeyFn && o.rateLimit === undefined) throw new ConfigError(`${where}: rateKey only applies with rateLimit; set rateLimit`);
  // `key` stands for whichever of the two is not given; when neither use needs it, it is a mistake.
  const keyUsed = (unique && !uniqueKeyFn) || (o.rateLimit !== undefined && !rateKeyFn);
  if (key && !keyUsed && (uniqueKeyFn || rateKeyFn)) {
    throw new ConfigError(`${where}: key is not used: ${unique ? 'uniqueKey' : 'rateKey'}${unique && o.rateLimit !== undefined ? ' and rateKey' : ''} ${unique && o.rateLimit !== undefined ? 'are' : 'is'} given; drop it`);
  }
  let rateLimit: NormalizedTaskOptions['rateLimit'];
  if (typeof o.rateLimit === 'function') rateLimit = o.rateLimit as (args: readonly unknown[]) => RateLimit;
  else if (o.rateLimit !== undefined) rateLimit = normalizeRateLimit(o.rateLimit, `${where}: rateLimit`);
  const resultExpiresMs =
    o.resultExpires === undefined ? undefined : toMillis(o.resultExpires as Duration, `${where}: resultExpires`);
  if (o.maxRecoveries !== undefined && (typeof o.maxRecoveries !== 'number' || !Number.isInteger(o.maxRecoveries) || o.maxRecoveries < 0)) {
    throw new ConfigError(`${where}: maxRecoveries must be a whole number >= 0, got ${describe(o.maxRecoveries)}`);
  }
  return {
    retries: o.retries === undefined ? undefined : normalizeRetries(o.retries, `${where}: retries`),
    timeLimitMs: o.timeLimit === undefined ? undefined : toMillis(o.timeLimit as Duration, `${where}: timeLimit`),
    maxRecoveries: o.maxRecoveries as number | undefined,
    name: o.name as string | undefined,
    queue,
    unique,
    uniqueTimeoutMs,
    uniqueRaises: onConflict.kind === 'raise',
    onConflict,
    uniqueWaitForExpiry,
    uniqueKey: unique ? (uniqueKeyFn ?? key) : undefined,
    rateKey: o.rateLimit === undefined ? undefined : (rateKeyFn ?? key),
    rateLimit,
    limits: o.limits === undefined ? undefined : normalizeLimits(o.limits, `${where}: limits`),
    concurrency: normalizeConcurrency(o.concurrency, `${where}: concurrency`),
    resultExpiresMs,
  };
}
