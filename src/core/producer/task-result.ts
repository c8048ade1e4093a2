import { toMillis, type Duration } from '../task/durations.js';
import { ConfigError, redisCall, TaskFailedError, TaskRevokedError, TimeoutError } from '../errors.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import type { Watch } from './result-waiter.js';
import { FIELDS } from '../protocol/task-fields.js';
import { taskByName } from '../task/registry.js';
import { DEFAULT_RESULT_EXPIRES_MS } from '../task/task-options.js';
import { awaitingResult } from '../worker/current-task.js';
import { decodeError, decodeResult, decodeTaskInfo, FINAL_STATES, visibleState, type RevokeReason, type TaskInfo, type TaskState } from '../protocol/task-record.js';

/**
 * Where a TaskResult reads and changes its task: Redis (redis-transport.ts), or the in-process
 * store of an inline dispatcher (heimdall-tasks/testing). Records are task hashes with the
 * fields of task-fields.ts either way, so they decode alike.
 */
export interface ResultBackend {
  /** Some fields of a task's record, null for absent ones (HMGET). */
  read(keys: QueueKeys, id: string, fields: readonly string[]): Promise<(string | null)[]>;
  /** The whole record; empty for an unknown id (HGETALL). */
  readAll(keys: QueueKeys, id: string): Promise<Record<string, string>>;
  /** Wakes the caller when the task may have ended (its done channel). */
  watch(keys: QueueKeys, id: string): Promise<Watch>;
  /** Revokes the task (revoke-4.lua's transitions); resolves with its state afterwards. */
  revoke(keys: QueueKeys, id: string, terminate: boolean, expireMs: number): Promise<TaskState>;
  /** Deletes an ended task's record; false when it has not ended. */
  forget(keys: QueueKeys, id: string): Promise<boolean>;
}

// A waiter re-reads the state this often even without a message (a reconnect can lose one).
const RECHECK_MS = 5_000;
/** How long get() waits for its subscription before it reads the state anyway, ms. */
const SUBSCRIBE_GRACE_MS = 1_000;
/** How often get() reads the state while its subscription is not there, ms. */
const POLL_UNSUBSCRIBED_MS = 500;

/** Resolves after `ms`. */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Options of {@link TaskResult.revoke}. */
export interface RevokeOptions {
  /**
   * Also end a running task at once: it is marked REVOKED and its worker frees the slot and the
   * lock without waiting for the task's promise. Default: `false` (the task's AbortSignal fires
   * and it ends REVOKED unless it still returns a value).
   */
  terminate?: boolean;
}

/** Options of {@link TaskResult.get}. */
export interface GetOptions {
  /** How long to wait: seconds or an `ms` string. Default: no limit. */
  timeout?: Duration;
}

const GET_FIELDS = [FIELDS.state, FIELDS.result, FIELDS.error, FIELDS.revokeReason, FIELDS.reserved];
// A reservation (prefetch, field rs) reads PENDING.
const STATUS_FIELDS = [FIELDS.state, FIELDS.reserved];

const INTERNALS: unique symbol = Symbol('heimdall-tasks.task-result');

/**
 * What a TaskResult is made from. Only the library makes one (a Dispatcher's `delay`, `send`,
 * `result`, ...): its only member is keyed by a symbol that is not exported.
 */
export interface TaskResultInternals {
  readonly [INTERNALS]: {
    backend: ResultBackend;
    keys: QueueKeys;
    id: string;
    name: string | undefined;
    duplicate: boolean;
    conflict?: DispatchConflict | undefined;
  };
}

/**
 * What a unique dispatch met when another task held its lock (undefined: the lock was free, or
 * the task is not unique). The ids are of the other tasks; the dispatch's own task is the
 * TaskResult's `id` (the holder's, for `duplicate`).
 * - `duplicate`: nothing was sent; the result is the holder (`onConflict` 'return', or 'replace'
 *   while the holder runs, or a holder that keeps its lock after its end);
 * - `replaced`: the task `replaced` had not started and is REVOKED now (reason 'replaced' or
 *   'debounced'); this task holds the lock;
 * - `waiting`: `holder` runs; this task waits behind it and starts after it ends (keepLast,
 *   debounce), having replaced the task that waited there before (`replaced`), if any.
 */
export type DispatchConflict =
  | { outcome: 'duplicate'; holder: string }
  | { outcome: 'replaced'; replaced: string }
  | { outcome: 'waiting'; holder: string; replaced?: string };

/** Makes a TaskResult (for the library's own use). */
export function makeTaskResult<T = unknown>(
  backend: ResultBackend,
  keys: QueueKeys,
  id: string,
  name: string | undefined,
  duplicate: boolean,
  conflict?: DispatchConflict,
): TaskResult<T> {
  return new TaskResult<T>({ [INTERNALS]: { backend, keys, id, name, duplicate, conflict } });
}

/**
 * A handle on a sent task, as Celery's AsyncResult: read its state, wait for its result.
 * Cheap to create; every method reads Redis afresh. Get one from a Dispatcher (`delay`,
 * `applyAsync`, `send`, `delayMany`, `current`, `result(id)`); it cannot be built by hand.
 */
export class TaskResult<T = unknown> {
  private readonly backend: ResultBackend;
  private readonly keys: QueueKeys;
  /** The task's id. */
  readonly id: string;
  /** The task's registry name, when known to this process. */
  readonly name: string | undefined;
  /** True when a unique dispatch found the lock taken and returned the holder instead. */
  readonly duplicate: boolean;
  /** What the dispatch met when another task held its unique lock (see DispatchConflict); undefined when it met none. */
  readonly conflict: DispatchConflict | undefined;

  constructor(internals: TaskResultInternals) {
    const i = internals[INTERNALS];
    this.backend = i.backend;
    this.keys = i.keys;
    this.id = i.id;
    this.name = i.name;
    this.duplicate = i.duplicate;
    this.conflict = i.conflict;
  }

  /** The queue the task was sent to. */
  get queue(): string {
    return this.keys.queue;
  }

  /** Current state; `PENDING` for queued, delayed, or unknown ids. */
  async status(): Promise<TaskState> {
    const [s, rs] = await redisCall(`reading the state of task ${this.id}`, () => this.backend.read(this.keys, this.id, STATUS_FIELDS));
    return visibleState(s, rs);
  }

  /** Everything stored about the task: state, result, error and traceback, attempts, timestamps, worker. */
  async info(): Promise<TaskInfo<T>> {
    const record = await redisCall(`reading task ${this.id}`, () => this.backend.readAll(this.keys, this.id));
    return decodeTaskInfo<T>(this.id, record);
  }

  /** True once the task has ended (SUCCESS, FAILURE or REVOKED). */
  async ready(): Promise<boolean> {
    return FINAL_STATES.has(await this.status());
  }

  /** True when the task ended in SUCCESS. */
  async successful(): Promise<boolean> {
    return (await this.status()) === 'SUCCESS';
  }

  /** True when the task ended in FAILURE. */
  async failed(): Promise<boolean> {
    return (await this.status()) === 'FAILURE';
  }

  /**
   * Waits for the task to end and returns its result. Wakes on the worker's announcement
   * rather than polling. Rejects with `TaskFailedError` (FAILURE, with the remote name,
   * message and traceback), `TaskRevokedError` (REVOKED) or `TimeoutError`; with
   * `MalformedTaskError` for a SUCCESS whose stored result is not JSON (a damaged record).
   */
  async get(options: GetOptions = {}): Promise<T> {
    const limit = options.timeout === undefined ? Infinity : toMillis(options.timeout, 'get({ timeout })');
    const deadline = Date.now() + limit;
    const what = `waiting for task ${this.id}`;
    // The subscription to the done channel is waited for a moment only: a subscription that
    // does not complete (a Cluster's sharded subscriber still aiming at the old master of a slot
    // moved by a reshard) must not hold get() up. Until it is there, the state is read every
    // POLL_UNSUBSCRIBED_MS; once it is, on its messages and every RECHECK_MS.
    const watching = redisCall(what, () => this.backend.watch(this.keys, this.id));
    let watch: Watch | undefined;
    let watchFailed: unknown;
    let closed = false;
    // Called in a running task, once the task awaited has not ended: its worker reserves nothing
    // and hands its reservations back while this waits (prefetch: the task awaited may be one).
    let endAwait: (() => void) | undefined;
    let marked = false;
    const settledWatch = watching.then(
      (w) => {
        if (closed) w.close();
        else watch = w;
      },
      (err: unknown) => {
        watchFailed = err;
      },
    );
    try {
      await this.withDeadline(Promise.race([settledWatch, pause(SUBSCRIBE_GRACE_MS)]), deadline, limit);
      for (;;) {
        // A subscription Redis refused (an ACL without SSUBSCRIBE) fails get(), as before.
        if (watchFailed !== undefined) throw watchFailed;
        const [s, r, e, rr, rs] = await redisCall(what, () =>
          this.backend.read(this.keys, this.id, GET_FIELDS),
        );
        if (s === 'SUCCESS') return decodeResult(this.id, r) as T;
        if (s === 'FAILURE') throw new TaskFailedError(this.id, decodeError(e ?? '{}'));
        if (s === 'REVOKED') throw new TaskRevokedError(this.id, (rr as RevokeReason | null) ?? 'revoked');
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new TimeoutError(
            `task ${this.id} did not end within ${limit} ms (it is ${visibleState(s, rs)}); is a worker consuming queue '${this.queue}'?`,
          );
        }
        if (!marked) {
          marked = true;
          endAwait = awaitingResult();
        }
        if (watch) await watch.next(Math.min(remaining, RECHECK_MS));
        else await Promise.race([settledWatch, pause(Math.min(remaining, POLL_UNSUBSCRIBED_MS))]);
      }
    } finally {
      endAwait?.();
      closed = true;
      watch?.close();
    }
  }

  /** Bounds a wait on Redis itself (e.g. a SUBSCRIBE while it is unreachable) by get()'s deadline. */
  private withDeadline<V>(promise: Promise<V>, deadline: number, limit: number): Promise<V> {
    if (deadline === Infinity) return promise;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new TimeoutError(`task ${this.id}: no answer from Redis within ${limit} ms`)),
        Math.max(0, deadline - Date.now()),
      );
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  /**
   * Revokes the task from any process. Queued or delayed: REVOKED at once, it never starts.
   * Running: its worker (in whatever process) is told through Redis and fires the task's
   * AbortSignal; with `terminate` the task is REVOKED at once. The unique lock is released.
   * Resolves with the state after the call (`STARTED` while a revoke without terminate is
   * pending; `PENDING` for an unknown id, which is left alone).
   */
  async revoke(options: RevokeOptions = {}): Promise<TaskState> {
    const expireMs = (this.name && taskByName(this.name)?.options.resultExpiresMs) || DEFAULT_RESULT_EXPIRES_MS;
    return redisCall(`revoking task ${this.id}`, () => this.backend.revoke(this.keys, this.id, options.terminate === true, expireMs));
  }

  /**
   * Deletes the stored state and result of an ended task now instead of when they expire.
   * Rejects with ConfigError while the task is still queued or running.
   */
  async forget(): Promise<void> {
    if (!(await redisCall(`forgetting task ${this.id}`, () => this.backend.forget(this.keys, this.id)))) {
      throw new ConfigError(`task ${this.id} has not ended; forget() deletes the records of ended tasks only`);
    }
  }

  toJSON(): { id: string; name: string | undefined; duplicate: boolean } {
    return { id: this.id, name: this.name, duplicate: this.duplicate };
  }
}
