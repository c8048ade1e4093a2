import type { Redis } from 'ioredis';
import { toMillis, type Duration } from './durations.js';
import { TaskFailedError, TaskRevokedError, TimeoutError } from './errors.js';
import type { QueueKeys } from './queue-keys.js';
import type { ResultWaiter } from './result-waiter.js';
import { decodeError, decodeTaskInfo, FINAL_STATES, type TaskInfo, type TaskState } from './task-state.js';

/** What a TaskResult needs from the dispatcher that made it. */
export interface ResultBackend {
  readonly client: Redis;
  waiter(): ResultWaiter;
}

// A waiter re-reads the state this often even without a message (a reconnect can lose one).
const RECHECK_MS = 5_000;

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
    const watch = await this.backend.waiter().watch(this.keys.done(this.id));
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

  /** Deletes the stored state and result now instead of waiting for them to expire. */
  async forget(): Promise<void> {
    await this.backend.client.del(this.keys.task(this.id));
  }

  toJSON(): { id: string; name: string | undefined; duplicate: boolean } {
    return { id: this.id, name: this.name, duplicate: this.duplicate };
  }
}
