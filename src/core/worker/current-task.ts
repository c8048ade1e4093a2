import { AsyncLocalStorage } from 'node:async_hooks';
import { toMillisOrZero, type Duration } from '../task/durations.js';
import { ConfigError, HeimdallError } from '../errors.js';
import type { LimitHandle } from '../task/limits.js';

/** What a running task can learn about itself through {@link currentTask}. */
export interface CurrentTask {
  /** The task's id. */
  readonly id: string;
  /** Its registry name. */
  readonly name: string;
  /** The queue it came from. */
  readonly queue: string;
  /** 1 for the first run, 2 for the first retry or recovery, and so on. */
  readonly attempt: number;
  /** Fires when the task should stop: revoke, time limit, or worker shutdown. */
  readonly signal: AbortSignal;
  /**
   * Ends this run and schedules the task again, keeping its id and unique lock (state RETRY).
   * Counts against `retries.max` (3 when the task has no `retries` option); past it, the task
   * ends FAILURE with `error` (or a plain error saying so). Throws: call it as `throw`-like
   * last statement, e.g. `return currentTask().retry({ countdown: 5 })`.
   */
  retry(options?: RetryRequestOptions): never;
  /**
   * Reports how far the task has got: `value` a fraction from 0 to 1, `message` a short text (at
   * most 200 characters kept). Stored on the task (`info().progress`, kept after it ends) and
   * emitted as the worker's `progress` event. Cheap to call in a loop: at most one write per
   * 250 ms per run, the latest value winning, and the last one written before the run's end.
   * Throws ConfigError for a value outside 0..1; a write Redis refuses is reported as a worker
   * `error`, never thrown here.
   */
  progress(value: number, message?: string): void;
  /**
   * Gives this task's unique lock `duration` (seconds or an `ms` string) from now on the Redis
   * clock, for a task that runs longer than its `uniqueTimeout`. The lifetime is set, not added
   * to. Resolves true when extended; false when the task no longer holds its lock (it lapsed, and
   * another task may have taken it, or an operator released it). The lock is checked to name
   * this task's id, not this run: a run of the task that was recovered elsewhere meanwhile (its
   * worker was cut off past its lease) can still extend the lock both runs share. Rejects with
   * ConfigError for a task that has no unique lock, or a bad duration.
   */
  extendLock(duration: Duration): Promise<boolean>;
  /**
   * celery-heimdall's `only_after`: true at most once per `interval` (seconds or an `ms` string)
   * for `key`, across every worker and process, on the Redis clock. The first caller takes the
   * key for the interval and gets true; every call until it lapses gets false. `key` is scoped
   * by the task's queue (tasks of one queue that pass the same key share it); the interval starts
   * when the key is taken, whatever the task does next.
   */
  onlyAfter(key: string, interval: Duration): Promise<boolean>;
  /**
   * Corrects what this run was charged in one of its named limits (`limits` of `@Task`) to the
   * `actual` units it used (a whole number >= 0): lower is a refund (later runs find the room
   * now), higher a debt (they wait for it); the limit counts the actual cost from now on, as if
   * it had been charged so at the start. `limit` (a name or a handle) is needed when the task has
   * several limits and not exactly one of them has a `cost`. Resolves true when corrected; false
   * when the run's entry has already left the window (window limits: nothing left to correct).
   * Rejects with ConfigError for a bad cost or limit.
   */
  reportCost(actual: number, limit?: string | LimitHandle): Promise<boolean>;
}

/** Options of `currentTask().retry()`. */
export interface RetryRequestOptions {
  /** Delay before the retry: seconds or an `ms` string. Default: the task's backoff. */
  countdown?: Duration;
  /** The reason, stored as the task's error while it waits (and if no retry is left). */
  error?: unknown;
}

const RETRY_BRAND = Symbol.for('heimdall-tasks.retry-request');

/**
 * Thrown by `currentTask().retry()`; the worker turns it into a RETRY. It carries the name,
 * message and stack of the error given as the reason, if any.
 */
export class RetryRequest extends HeimdallError {
  static readonly CODE = 'HEIMDALL_RETRY_REQUESTED';
  /** Requested delay in ms, or undefined for the task's backoff. */
  readonly countdownMs: number | undefined;
  constructor(options: RetryRequestOptions = {}) {
    const reason = options.error instanceof Error ? options.error.message : 'the task asked to be retried';
    super(RetryRequest.CODE, reason, { cause: options.error });
    this.name = options.error instanceof Error ? options.error.name : 'RetryRequest';
    if (options.error instanceof Error && options.error.stack) this.stack = options.error.stack;
    this.countdownMs = options.countdown === undefined ? undefined : toMillisOrZero(options.countdown, 'retry({ countdown })');
    Object.defineProperty(this, RETRY_BRAND, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[RETRY_BRAND] === true;
  }
}

// Shared through globalThis so currentTask() works whichever build (ESM or CJS) runs the worker.
const STORAGE_KEY = Symbol.for('heimdall-tasks.current-task');

/** The AsyncLocalStorage that carries the running task's context. */
export function taskStorage(): AsyncLocalStorage<CurrentTask> {
  const g = globalThis as Record<symbol, AsyncLocalStorage<CurrentTask> | undefined>;
  let s = g[STORAGE_KEY];
  if (!s) {
    s = new AsyncLocalStorage<CurrentTask>();
    g[STORAGE_KEY] = s;
  }
  return s;
}

/**
 * Internal: the member of a running task's context (keyed by this symbol, not part of
 * CurrentTask) that marks a wait for a task's result: it returns the function that ends the mark.
 * While any handler of a worker waits so, the worker reserves nothing (prefetch): the task awaited
 * may be one it would reserve, and a reservation begins only when a handler slot frees.
 */
export const AWAITING_RESULT = Symbol.for('heimdall-tasks.awaiting-result');

/**
 * Marks that the task this code runs in (if any) waits for a task result (`TaskResult.get()`);
 * returns the function that ends the mark (once), or undefined outside a task run by a Worker.
 */
export function awaitingResult(): (() => void) | undefined {
  const task = taskStorage().getStore() as (CurrentTask & { readonly [AWAITING_RESULT]?: () => () => void }) | undefined;
  return task?.[AWAITING_RESULT]?.();
}

/**
 * The task this code runs in: id, name, attempt and an AbortSignal. Throws ConfigError when
 * called outside a task run by a Worker.
 */
export function currentTask(): CurrentTask {
  const task = taskStorage().getStore();
  if (!task) throw new ConfigError('currentTask() was called outside a task run by a Worker');
  return task;
}
