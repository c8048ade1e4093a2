import { randomBytes } from 'node:crypto';
import { ConfigError } from '../core/errors.js';
import { DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, dispatcherOver, type DispatcherOptions, type TaskProxy } from '../core/producer/dispatcher.js';
import type { ConnectionOption, RedisClient } from '../core/protocol/connection.js';
import { DEFAULT_QUEUE, validateName } from '../core/protocol/queue-keys.js';
import { toMillis, toMillisOrZero, type Duration } from '../core/task/durations.js';
import { discover, type Constructor } from '../core/task/registry.js';
import { Worker } from '../core/worker/worker.js';
import type { WorkerEvents, WorkerOptions } from '../core/worker/worker-options.js';
import { bounded, drainApp, drainInline, TaskLog, type DrainOptions, type DrainReport } from './drain.js';
import { InlineTransport } from '../core/inline/inline-transport.js';
import { escapeGlob, scanKeys } from '../core/protocol/scan.js';

/** Options of `createTestApp()`. */
export interface TestAppOptions {
  /** The worker's services: instances used as they are, or classes built with `resolve` (or `new`). */
  services: readonly object[];
  /**
   * Where Redis is: a URL, ioredis options or a client (which you keep and close).
   * Default: `process.env.REDIS_URL`; a ConfigError when neither is given.
   */
  connection?: ConnectionOption;
  /** Key prefix of this app. Default: a fresh random `heimdall-test-<16 hex>`, so tests never share keys. */
  prefix?: string;
  /**
   * Queues the worker consumes and `drain()` watches. Default: `'default'` plus every queue a
   * `@Task` of the services names.
   */
  queues?: readonly string[];
  /** Tasks run at once by the worker. Default: 10. */
  concurrency?: number;
  /** Builds the instance of a service class, as the Worker's `resolve`. Default: `new Class()`. */
  resolve?: WorkerOptions['resolve'];
  /** Start the worker before `createTestApp()` resolves. `false` leaves that to `app.worker.start()`. Default: true. */
  start?: boolean;
  /** More Worker options (lease, result lifetime, ...). Default: none. */
  worker?: Omit<WorkerOptions, 'connection' | 'prefix' | 'services' | 'queues' | 'concurrency' | 'resolve'>;
  /** More Dispatcher options. Default: none. */
  dispatcher?: Omit<DispatcherOptions, 'connection' | 'prefix'>;
  /**
   * Inline mode (Celery's `task_always_eager`): no Redis and no Worker. `delay()` checks the call
   * as usual and starts the task in this process at once (its countdown, retries and rate
   * windows on timers), with unique locks and rate windows kept in memory; `connection`,
   * `concurrency`, `start` and `worker` are not used. What differs from a real Redis is in
   * docs/testing.md. Default: false.
   */
  inline?: boolean;
}

/** Options of `app.close()`. */
export interface TestAppCloseOptions {
  /**
   * How long running tasks may take to end before their AbortSignal fires and they are handed
   * back (then deleted with the other keys): seconds or an `ms` string. Default: 5 s.
   */
  timeout?: Duration;
}

/** What a test app is, with Redis or inline. */
export interface TestAppBase {
  /** True for an inline app (`inline: true`): no Redis, no Worker. */
  readonly inline: boolean;
  /** The key prefix every key of this app starts with (inline: the prefix its task ids and locks are named under). */
  readonly prefix: string;
  /** The queues the worker consumes and `drain()` watches. */
  readonly queues: readonly string[];
  /** The app's Dispatcher (on `prefix`); inline, one whose tasks run in this process (its `client` is a ConfigError). */
  readonly dispatcher: Dispatcher;
  /** Typed handles on the tasks of a class: the Dispatcher's `tasks()`. */
  tasks<T extends object>(cls: Constructor<T>): TaskProxy<T>;
  /** Listens to the tasks' events (the Worker's events: started, succeeded, failed, retried, revoked, ...). */
  on<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this;
  /** Stops listening. */
  off<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this;
  /**
   * Resolves when nothing of the app is left to run: see {@link DrainOptions} for what counts.
   * The report lists the tasks that ended since the previous `drain()` (or since the app was
   * created). Rejects with a TimeoutError naming what is left when that takes too long.
   */
  drain(options?: DrainOptions): Promise<DrainReport>;
  /**
   * Closes the worker (gracefully, within `timeout`), deletes every key under the prefix
   * (SCAN + UNLINK) and closes the dispatcher. Inline: waits up to `timeout` for running tasks
   * and drops the scheduled ones. Safe to call twice.
   */
  close(options?: TestAppCloseOptions): Promise<void>;
}

/** A Dispatcher and a Worker on a key prefix of their own, from `createTestApp()`. */
export interface TestApp extends TestAppBase {
  readonly inline: false;
  /** The app's Worker (on `prefix`), started unless `start: false`. */
  readonly worker: Worker;
}

/** An inline test app, from `createTestApp({ inline: true })`: tasks run in this process, without Redis. */
export interface InlineTestApp extends TestAppBase {
  readonly inline: true;
}

/** The queues the `@Task` methods of these services name, with 'default'. */
function queuesOf(services: readonly object[]): string[] {
  const queues = new Set<string>([DEFAULT_QUEUE]);
  for (const service of services) {
    const cls = typeof service === 'function' ? (service as Constructor) : (service.constructor as Constructor | undefined);
    if (typeof cls !== 'function') continue;
    for (const def of discover(cls).values()) queues.add(def.options.queue);
  }
  return [...queues];
}

/**
 * A Dispatcher and a started Worker for one test, on a fresh random key prefix. Use
 * `app.tasks(Class)` to dispatch, `await app.drain()` to let everything run, and
 * `await app.close()` at the end (e.g. in `afterEach`), which also deletes the app's keys.
 */
export async function createTestApp(options: TestAppOptions & { inline: true }): Promise<InlineTestApp>;
export async function createTestApp(options: TestAppOptions & { inline?: false }): Promise<TestApp>;
export async function createTestApp(options: TestAppOptions): Promise<TestApp | InlineTestApp>;
export async function createTestApp(options: TestAppOptions): Promise<TestApp | InlineTestApp> {
  if (typeof options !== 'object' || options === null || !Array.isArray(options.services)) {
    throw new ConfigError('createTestApp() needs { services: [...] }');
  }
  if (options.inline !== undefined && typeof options.inline !== 'boolean') {
    throw new ConfigError(`createTestApp({ inline }) must be true or false, got ${typeof options.inline}`);
  }
  if (options.inline === true) return createInlineApp(options);
  const connection = options.connection ?? process.env.REDIS_URL;
  if (connection === undefined || connection === '') {
    throw new ConfigError(
      'createTestApp() needs a Redis: pass { connection } (e.g. the URL your globalSetup got from startRedis()) or set REDIS_URL',
    );
  }
  const prefix = options.prefix === undefined ? `heimdall-test-${randomBytes(8).toString('hex')}` : validateName(options.prefix, 'prefix');
  const queues = [...new Set(options.queues ?? queuesOf(options.services))];
  const dispatcher = new Dispatcher({ ...options.dispatcher, connection, prefix });
  let worker: Worker;
  try {
    worker = new Worker({
      ...options.worker,
      connection,
      prefix,
      services: options.services,
      queues,
      ...(options.concurrency === undefined ? {} : { concurrency: options.concurrency }),
      ...(options.resolve === undefined ? {} : { resolve: options.resolve }),
    });
  } catch (err) {
    await dispatcher.close();
    throw err;
  }
  const log = new TaskLog(worker);
  let closing: Promise<void> | undefined;
  const app: TestApp = {
    inline: false,
    prefix,
    queues: worker.queues,
    dispatcher,
    worker,
    tasks: (cls) => dispatcher.tasks(cls),
    on(event, listener) {
      log.on(event, listener);
      return this;
    },
    off(event, listener) {
      log.off(event, listener);
      return this;
    },
    drain: (drainOptions) => drainApp({ client: dispatcher.client, prefix, queues: worker.queues, worker, log }, drainOptions),
    close: (closeOptions = {}) =>
      (closing ??= (async () => {
        try {
          await worker.close({ timeout: closeOptions.timeout ?? 5 });
        } finally {
          try {
            // Only this app's keys: every key heimdall writes is `<prefix>:{<queue>}:...`, and glob
            // characters a prefix may hold are escaped, so `app` never matches `app:ci:...` or `app-prod:...`.
            // Bounded by the close timeout: with Redis gone, ioredis would retry each command for seconds.
            const timeoutMs = toMillisOrZero(closeOptions.timeout ?? 5, 'close({ timeout })');
            await bounded(deleteKeys(dispatcher.client, `${escapeGlob(prefix)}:{*}:*`), Math.max(1000, timeoutMs), `close(): deleting the keys of ${prefix}`);
          } finally {
            log.detach();
            await dispatcher.close();
          }
        }
      })()),
  };
  if (options.start !== false) {
    try {
      await worker.start();
    } catch (err) {
      await app.close();
      throw err;
    }
  }
  return app;
}

/** createTestApp({ inline: true }): a Dispatcher over an InlineTransport, with the same drain() and events. */
function createInlineApp(options: TestAppOptions): InlineTestApp {
  const prefix = options.prefix === undefined ? `heimdall-inline-${randomBytes(8).toString('hex')}` : validateName(options.prefix, 'prefix');
  const queues = [...new Set(options.queues ?? queuesOf(options.services))].map((q) => validateName(q, 'queue'));
  const engine = new InlineTransport({
    // An empty list (a test that dispatches by name only) still lets resolve or `new` build any registered class.
    services: options.services.length === 0 && options.resolve === undefined ? undefined : options.services,
    resolve: options.resolve,
    maxPayloadBytes: options.dispatcher?.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
    // As the Redis app's worker: tasks sent to other queues stay PENDING (with no services, any
    // registered class runs, on any queue).
    queues: options.queues === undefined && options.services.length === 0 ? undefined : queues,
  });
  const dispatcher = dispatcherOver(engine, { ...options.dispatcher, prefix });
  const log = new TaskLog(engine);
  let closing: Promise<void> | undefined;
  return {
    inline: true,
    prefix,
    queues,
    dispatcher,
    tasks: (cls) => dispatcher.tasks(cls),
    on(event, listener) {
      log.on(event, listener);
      return this;
    },
    off(event, listener) {
      log.off(event, listener);
      return this;
    },
    drain: (drainOptions) => drainInline(engine, log, drainOptions),
    close: (closeOptions = {}) =>
      (closing ??= (async () => {
        try {
          await engine.close(toMillisOrZero(closeOptions.timeout ?? 5, 'close({ timeout })'));
        } finally {
          log.detach();
          await dispatcher.close();
        }
      })()),
  };
}

/** Deletes every key matching `pattern` (SCAN + UNLINK), on every master of a Cluster. */
async function deleteKeys(client: RedisClient, pattern: string): Promise<void> {
  // One key per UNLINK: keys of different queues live in different Cluster slots.
  await scanKeys(client, pattern, async (node, keys) => {
    await Promise.all(keys.map((k) => node.unlink(k)));
  });
}
