import { randomBytes } from 'node:crypto';
import type { Cluster } from 'ioredis';
import { ConfigError } from '../core/errors.js';
import { Dispatcher, type DispatcherOptions, type TaskProxy } from '../core/producer/dispatcher.js';
import type { ConnectionOption, RedisClient } from '../core/protocol/connection.js';
import { DEFAULT_QUEUE, validateName } from '../core/protocol/queue-keys.js';
import type { Duration } from '../core/task/durations.js';
import { discover, type Constructor } from '../core/task/registry.js';
import { Worker } from '../core/worker/worker.js';
import type { WorkerOptions } from '../core/worker/worker-options.js';
import { drainApp, TaskLog, type DrainOptions, type DrainReport } from './drain.js';

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
}

/** Options of `app.close()`. */
export interface TestAppCloseOptions {
  /**
   * How long running tasks may take to end before their AbortSignal fires and they are handed
   * back (then deleted with the other keys): seconds or an `ms` string. Default: 5 s.
   */
  timeout?: Duration;
}

/** A Dispatcher and a Worker on a key prefix of their own, from `createTestApp()`. */
export interface TestApp {
  /** The key prefix every key of this app starts with. */
  readonly prefix: string;
  /** The queues the worker consumes and `drain()` watches. */
  readonly queues: readonly string[];
  /** The app's Dispatcher (on `prefix`). */
  readonly dispatcher: Dispatcher;
  /** The app's Worker (on `prefix`), started unless `start: false`. */
  readonly worker: Worker;
  /** Typed handles on the tasks of a class: the Dispatcher's `tasks()`. */
  tasks<T extends object>(cls: Constructor<T>): TaskProxy<T>;
  /**
   * Resolves when nothing of the app is left to run: see {@link DrainOptions} for what counts.
   * The report lists the tasks that ended since the previous `drain()` (or since the app was
   * created). Rejects with a TimeoutError naming what is left when that takes too long.
   */
  drain(options?: DrainOptions): Promise<DrainReport>;
  /**
   * Closes the worker (gracefully, within `timeout`), deletes every key under the prefix
   * (SCAN + UNLINK) and closes the dispatcher. Safe to call twice.
   */
  close(options?: TestAppCloseOptions): Promise<void>;
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
export async function createTestApp(options: TestAppOptions): Promise<TestApp> {
  if (typeof options !== 'object' || options === null || !Array.isArray(options.services)) {
    throw new ConfigError('createTestApp() needs { services: [...] }');
  }
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
    prefix,
    queues: worker.queues,
    dispatcher,
    worker,
    tasks: (cls) => dispatcher.tasks(cls),
    drain: (drainOptions) => drainApp({ client: dispatcher.client, prefix, queues: worker.queues, worker, log }, drainOptions),
    close: (closeOptions = {}) =>
      (closing ??= (async () => {
        try {
          await worker.close({ timeout: closeOptions.timeout ?? 5 });
        } finally {
          try {
            // Only this app's keys: every key heimdall writes is `<prefix>:{<queue>}:...`, and glob
            // characters a prefix may hold are escaped, so `app` never matches `app:ci:...` or `app-prod:...`.
            await deleteKeys(dispatcher.client, `${escapeGlob(prefix)}:{*}:*`);
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

/** Deletes every key matching `pattern` (SCAN + UNLINK), on every master of a Cluster. */
async function deleteKeys(client: RedisClient, pattern: string): Promise<void> {
  const nodes = (client as { isCluster?: unknown }).isCluster === true ? (client as Cluster).nodes('master') : [client];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      // One key per UNLINK: keys of different queues live in different Cluster slots.
      await Promise.all(keys.map((k) => node.unlink(k)));
      cursor = next;
    } while (cursor !== '0');
  }
}

/** `text` with the characters SCAN's MATCH reads as a pattern escaped. */
function escapeGlob(text: string): string {
  return text.replace(/[\\*?[\]]/g, (c) => `\\${c}`);
}
