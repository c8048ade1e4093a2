import { ConfigError } from '../errors.js';
import { eventsSettings, type EventsOptions, type EventsSettings } from '../events/queue-events.js';
import { DEFAULT_MAX_PAYLOAD_BYTES, type ConnectionOptions } from '../producer/dispatcher.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, validateName } from '../protocol/queue-keys.js';
import type { RemoteError, RevokeReason } from '../protocol/task-record.js';
import { describe, toMillis, toMillisOrZero, type Duration } from '../task/durations.js';
import type { Constructor } from '../task/registry.js';
import { DEFAULT_RESULT_EXPIRES_MS } from '../task/task-options.js';

/** Options of `new Worker()`. */
export interface WorkerOptions extends ConnectionOptions {
  /**
   * Objects whose `@Task` methods this worker runs: instances, used as they are, or classes,
   * built with `resolve` (or `new Class()` when there is no `resolve`). Default: `[]`.
   */
  services?: readonly object[];
  /** Builds the instance for a task's class, e.g. `(cls) => app.get(cls)` in NestJS. Called once per class. Default: none. */
  resolve?: (cls: Constructor) => object | Promise<object>;
  /** Queues to consume. Default: `['default']`. */
  queues?: readonly string[];
  /** Tasks run at once by this worker, across its queues. Default: 10. */
  concurrency?: number;
  /**
   * Prefetch: tasks this worker reserves ahead of running them, beyond its `concurrency` handler
   * slots, so that a handler slot that frees begins the next task at once instead of waiting a
   * round trip to Redis. A reservation is started in Redis as a task about to run is (lease, run
   * token, unique lock, attempt; a task with a rate limit, an expiry or onConflict 'replace' is
   * never reserved) but
   * reads PENDING, with no `startedAt`, until its handler begins; those of a closing or dying
   * worker go back to the front of the queue without counting an attempt (see
   * docs/guarantees.md, Prefetch).
   *
   * `'auto'`: at most one task ahead, from a queue whose handlers this worker ran lately took
   * under 100 ms on average (none before the first there ends): short tasks save a round trip
   * each, long ones are left to whichever worker frees first. A whole number n >= 0: up to n
   * tasks ahead, whatever their length; 0 reserves none. Default: `'auto'`
   * (docs/decisions.md, "The default prefetch").
   */
  prefetch?: number | 'auto';
  /** A started task's lease; the worker renews it every third of this. Seconds or an `ms` string. Default: 30 s. */
  leaseDuration?: Duration;
  /** How long results are kept, unless the task sets its own. Seconds or an `ms` string. Default: one day. */
  resultExpires?: Duration;
  /**
   * Largest result stored, in bytes of its JSON (UTF-8). A task whose result is larger ends
   * FAILURE with a PayloadTooLargeError. Default: 524288 (512 KiB), as the Dispatcher's.
   */
  maxPayloadBytes?: number;
  /**
   * This worker's id in task records. It must be unique among live workers: leases, finishes
   * and reclaims are matched by it. Default: `<hostname>:<pid>:<random>`.
   */
  name?: string;
  /**
   * How long a task whose name this worker does not run may wait for a worker that does,
   * counted from the first time a worker handed it back (or the last one that found the name
   * declared): seconds or an `ms` string; `0` fails it at once. Such a task is handed back
   * without counting an attempt, with a delay that doubles from 250 ms up to 10 s (2 s while
   * some worker declares the name), and runs as soon as a worker that declares its name takes
   * it; while some live worker of the queue declares the name it waits as long as that takes.
   * Only when none has for this long does it end FAILURE with `UnknownTaskError`. Default: 5
   * minutes: long enough for a rolling deploy to bring up the first worker of a new build, short
   * enough that a misspelt name fails within minutes.
   */
  unknownTaskGrace?: Duration;
  /**
   * The queues' event streams (read with `dispatcher.events()`): what this worker's script calls
   * write (started, succeeded, failed, retried, ...), capped at `maxLength` entries per queue, and
   * trimmed to `maxAge` on every heartbeat. `false` writes none. Default: `{ maxLength: 10_000, maxAge: '1h' }`.
   */
  events?: EventsOptions | false;
}

/** Identifies the task an event is about. */
export interface TaskEvent {
  id: string;
  name: string;
  queue: string;
  args: unknown[];
  attempt: number;
}

/** Events of a Worker and their payloads. */
export interface WorkerEvents {
  /** A task began to run. */
  started: [TaskEvent];
  /** A task returned; its result is stored. `runtimeMs` is its run time in milliseconds. */
  succeeded: [TaskEvent & { result: unknown; runtimeMs: number }];
  /**
   * A task threw (or its result could not be stored); the error is stored. Also a task this
   * worker does not run that it ended with `UnknownTaskError` (`attempt` 0: it never ran).
   */
  failed: [TaskEvent & { error: RemoteError; runtimeMs: number }];
  /** A running task reported progress (`currentTask().progress()`): `value` a fraction from 0 to 1. Every call, before throttling. */
  progress: [TaskEvent & { value: number; message: string | undefined }];
  /**
   * A task was over its rate limit, or one of its named limits, and goes back to the delayed set
   * for `delayMs` milliseconds; or (`permit: true`) it found no concurrency permit free: it is
   * woken as soon as one is handed to it, and asks again after `delayMs` at the latest.
   */
  rateLimited: [Omit<TaskEvent, 'attempt'> & { delayMs: number; permit?: true }];
  /** A task failed and will run again after `delayMs` milliseconds (state RETRY). */
  retried: [TaskEvent & { error: RemoteError; delayMs: number; runtimeMs: number }];
  /**
   * A task ended REVOKED: `reason` 'revoked' (by a user), 'duplicate' (another task holds its
   * unique lock), or 'expired' (not started before its `expires`).
   */
  revoked: [Omit<TaskEvent, 'attempt'> & { reason: RevokeReason }];
  /** A problem outside any task, such as a lost connection. The worker carries on. */
  error: [Error];
}

/** What emits the Worker's events: a Worker, or an inline dispatcher's engine. */
export interface TaskEventSource {
  on<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): unknown;
  off<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): unknown;
}

/** Options of `worker.close()`. */
export interface CloseOptions {
  /**
   * How long to wait for running tasks: seconds or an `ms` string. Tasks still running then
   * get their AbortSignal fired and go back to the queue. Default: wait as long as they take.
   */
  timeout?: Duration;
}

const DEFAULT_LEASE_MS = 30_000;
/** The default of WorkerOptions.prefetch (docs/decisions.md, "The default prefetch"). */
export const DEFAULT_PREFETCH = 'auto';
const DEFAULT_UNKNOWN_TASK_GRACE_MS = 5 * 60_000;

/** Worker options after validation, with defaults applied and durations in ms. */
export interface WorkerSettings {
  prefix: string;
  queues: readonly string[];
  concurrency: number;
  /** Most tasks reserved ahead (prefetch 'auto': 1). */
  prefetch: number;
  /** Prefetch 'auto': reserve only while the queue's handlers are short (queue-runner.ts SHORT_RUN_MS). */
  prefetchAuto: boolean;
  maxPayloadBytes: number;
  leaseMs: number;
  resultExpiresMs: number;
  unknownTaskGraceMs: number;
  events: EventsSettings;
}

/** Checks the options of `new Worker()`; a ConfigError names the first bad one. */
export function workerSettings(options: WorkerOptions): WorkerSettings {
  if (typeof options !== 'object' || options === null) throw new ConfigError('new Worker() needs { connection, services }');
  const prefix = options.prefix === undefined ? DEFAULT_PREFIX : validateName(options.prefix, 'prefix');
  const queues = options.queues ?? [DEFAULT_QUEUE];
  if (!Array.isArray(queues) || queues.length === 0) throw new ConfigError('queues must be a non-empty array of queue names');
  const concurrency = options.concurrency ?? 10;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new ConfigError(`concurrency must be a whole number >= 1, got ${describe(concurrency)}`);
  }
  const prefetchOption = options.prefetch ?? DEFAULT_PREFETCH;
  const prefetchAuto = prefetchOption === 'auto';
  const prefetch = prefetchAuto ? 1 : prefetchOption;
  if (!Number.isInteger(prefetch) || prefetch < 0) {
    throw new ConfigError(`prefetch must be 'auto' or a whole number >= 0, got ${describe(prefetchOption)}`);
  }
  const maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  if (!Number.isInteger(maxPayloadBytes) || maxPayloadBytes < 1) {
    throw new ConfigError(`maxPayloadBytes must be a whole number of bytes >= 1, got ${describe(options.maxPayloadBytes)}`);
  }
  if (options.resolve !== undefined && typeof options.resolve !== 'function') {
    throw new ConfigError('resolve must be a function (cls) => instance');
  }
  return {
    prefix,
    queues: [...new Set(queues.map((q) => validateName(q, 'queue')))],
    concurrency,
    prefetch,
    prefetchAuto,
    maxPayloadBytes,
    leaseMs: options.leaseDuration === undefined ? DEFAULT_LEASE_MS : toMillis(options.leaseDuration, 'leaseDuration'),
    resultExpiresMs: options.resultExpires === undefined ? DEFAULT_RESULT_EXPIRES_MS : toMillis(options.resultExpires, 'resultExpires'),
    unknownTaskGraceMs:
      options.unknownTaskGrace === undefined ? DEFAULT_UNKNOWN_TASK_GRACE_MS : toMillisOrZero(options.unknownTaskGrace, 'unknownTaskGrace'),
    events: eventsSettings(options.events),
  };
}
