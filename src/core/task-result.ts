import type { Redis } from 'ioredis';
import { toMillis, type Duration } from './durations.js';
import { ConfigError, TaskFailedError, TaskRevokedError, TimeoutError } from './errors.js';
import type { QueueKeys } from './queue-keys.js';
import type { ResultWaiter, Watch } from './result-waiter.js';
import type { ScriptRunner } from './script-runner.js';
import { forget, revoke } from '../redis-scripts/scripts.generated.js';
import { taskByName } from './registry.js';
import { DEFAULT_RESULT_EXPIRES_MS } from './task-options.js';
import { decodeError, decodeTaskInfo, FINAL_STATES, type TaskInfo, type TaskState } from './task-state.js';

/** What a TaskResult needs from the dispatcher that made it. */
export interface ResultBackend {
  readonly client: Redis;
  readonly scripts: ScriptRunner;
  waiter(): ResultWaiter;
}

// A waiter re-reads the state this often even without a message (a reconnect can lose one).
const RECHECK_MS = 5_000;

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

/**
 * A handle on a sent task, as Celery's AsyncResult: read its state, wait for its result.
 * Cheap to create; every method reads Redis afresh.
 */
export class TaskResult<T = unknown> {
  constructor(
    private readonly backend: ResultBackend,
    private readonly keys: QueueKeys,
    /** The task's id. */
    readonly id: string,
    /** The task's registry name, when known to this process. */
    readonly name: string | undefined,
    /** True when a unique dispatch found the lock taken and returned the holder instead. */
    readonly duplicate = false,
  ) {}

  /** The queue the task was sent to. */
  get queue(): string {
    return this.keys.queue;
  }

  /** Current state; `PENDING` for queued, delayed, or unknown ids. */
  async status(): Promise<TaskState> {
    const s = await this.backend.client.hget(this.keys.task(this.id), 's');
    return (s as TaskState | null) ?? 'PENDING';
  }

  /** Everything stored about the task: state, result, error and traceback, attempts, timestamps, worker. */
  async info(): Promise<TaskInfo<T>> {
    return decodeTaskInfo<T>(this.id, await this.backend.client.hgetall(this.keys.task(this.id)));
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
   * message and traceback), `TaskRevokedError` (REVOKED) or `TimeoutError`.
   */
  async get(options: GetOptions = {}): Promise<T> {
    const limit = options.timeout === undefined ? Infinity : toMillis(options.timeout, 'get({ timeout })');
    const deadline = Date.now() + limit;
    const watching = this.backend.waiter().watch(this.keys.done(this.id));
    let watch: Watch;
    try {
      watch = await this.withDeadline(watching, deadline, limit);
    } catch (err) {
      watching.then((w) => w.close(), () => undefined);
      throw err;
    }
    try {
      for (;;) {
        const [s, r, e, rr] = await this.backend.client.hmget(this.keys.task(this.id), 's', 'r', 'e', 'rr');
        if (s === 'SUCCESS') return (r === null || r === undefined ? undefined : JSON.parse(r)) as T;
        if (s === 'FAILURE') throw new TaskFailedError(this.id, decodeError(e ?? '{}'));
        if (s === 'REVOKED') throw new TaskRevokedError(this.id, rr ?? 'revoked');
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new TimeoutError(
            `task ${this.id} did not end within ${limit} ms (it is ${s ?? 'PENDING'}); is a worker consuming queue '${this.queue}'?`,
          );
        }
        await watch.next(Math.min(remaining, RECHECK_MS));
      }
    } finally {
      watch.close();
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
    const [code, state] = await this.backend.scripts.run<[number, string]>(
      revoke,
      [this.keys.task(this.id), this.keys.active, this.keys.delayed],
      [this.keys.base, this.id, options.terminate ? '1' : '0', expireMs, 'revoked'],
    );
    return code === 0 ? 'PENDING' : (state as TaskState);
  }

  /**
   * Deletes the stored state and result of an ended task now instead of when they expire.
   * Rejects with ConfigError while the task is still queued or running.
   */
  async forget(): Promise<void> {
    const deleted = await this.backend.scripts.run<number>(forget, [this.keys.task(this.id)], []);
    if (deleted !== 1) {
      throw new ConfigError(`task ${this.id} has not ended; forget() deletes the records of ended tasks only`);
    }
  }

  toJSON(): { id: string; name: string | undefined; duplicate: boolean } {
    return { id: this.id, name: this.name, duplicate: this.duplicate };
  }
}
