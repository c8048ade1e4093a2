import type { InjectionToken, ModuleMetadata, OptionalFactoryDependency } from '@nestjs/common';
import type { ConnectionOptions, DispatcherOptions } from '../core/producer/dispatcher.js';
import type { Duration } from '../core/task/durations.js';
import type { WorkerOptions } from '../core/worker/worker-options.js';

/** Injection token of the resolved `HeimdallModuleOptions` (internal to the module). */
export const HEIMDALL_OPTIONS = Symbol.for('heimdall-tasks.nestjs.options');

/** Injection token of the inline mode's engine, or null on Redis (internal to the module). */
export const HEIMDALL_INLINE = Symbol.for('heimdall-tasks.nestjs.inline');

/**
 * The worker of a Nest application. Every `WorkerOptions` field except `connection` and `prefix`
 * (taken from the module) and `services` / `resolve` (the module finds the providers with `@Task`
 * methods in the container itself).
 */
export interface HeimdallWorkerOptions extends Omit<WorkerOptions, 'connection' | 'prefix' | 'services' | 'resolve' | 'queues'> {
  /** Queues to consume. Default: `'default'` and every queue the providers' `@Task`s name. */
  queues?: readonly string[];
  /**
   * How long the application's shutdown waits for running tasks: seconds or an `ms` string.
   * Tasks still running then get their AbortSignal fired and go back to the queue.
   * Default: wait as long as they take.
   */
  closeTimeout?: Duration;
}

/** The Dispatcher of a Nest application: every `DispatcherOptions` field except `connection` and `prefix`. */
export type HeimdallDispatcherOptions = Omit<DispatcherOptions, 'connection' | 'prefix'>;

/** Options of `HeimdallModule.forRoot()`, and what the factory of `forRootAsync()` returns. */
export type HeimdallModuleOptions = HeimdallRedisOptions | HeimdallInlineOptions;

/** The module on Redis: a Dispatcher, and a Worker unless `worker: false`. */
export interface HeimdallRedisOptions extends ConnectionOptions {
  /** Inline mode instead: see {@link HeimdallInlineOptions}. Default: false. */
  inline?: false;
  /**
   * The worker that runs the `@Task` methods of this application's providers, started on
   * `onApplicationBootstrap` and closed on `onApplicationShutdown`; `false` for a producer-only
   * application (a web tier that only dispatches). Default: `{}` (a worker with the defaults of
   * `new Worker()`: queue `'default'`, concurrency 10).
   */
  worker?: HeimdallWorkerOptions | false;
  /** Options of the injectable Dispatcher. Default: `{}`. */
  dispatcher?: HeimdallDispatcherOptions;
}

/** Options of the module itself, beside the Heimdall options. */
export interface HeimdallModuleScope {
  /** Register the module as global, so `Dispatcher` and `@InjectTasks` work in every module. Default: `true`. */
  global?: boolean;
}

/** Options of `HeimdallModule.forRootAsync()`. */
export interface HeimdallModuleAsyncOptions<A extends unknown[] = never[]> extends HeimdallModuleScope {
  /** Modules that export the providers listed in `inject`. Default: `[]`. */
  imports?: ModuleMetadata['imports'];
  /** Tokens whose providers are passed to `useFactory`, in order. Default: `[]`. */
  inject?: (InjectionToken | OptionalFactoryDependency)[];
  /** Builds the options, e.g. from a ConfigService. */
  useFactory: (...args: A) => HeimdallModuleOptions | Promise<HeimdallModuleOptions>;
}

/**
 * The module in inline mode (Celery's `task_always_eager`), for tests: no Redis and no Worker.
 * The injected Dispatcher and `@InjectTasks` handles run each task in this process on the
 * container's providers, with the same call checks, unique locks and rate windows kept in
 * memory (heimdall-tasks/testing's inline mode; docs/testing.md lists where it differs).
 * Tasks sent before the application's bootstrap start once it has bootstrapped.
 */
export interface HeimdallInlineOptions {
  /** Inline mode on: tasks run in this process, on the container's providers, without Redis. */
  inline: true;
  /** Prefix the task ids and unique locks are named under. Default: `'heimdall'`. */
  prefix?: string;
  /** Options of the injectable Dispatcher. Default: `{}`. */
  dispatcher?: HeimdallDispatcherOptions;
  /**
   * `false`: tasks are accepted but never run (a producer-only application). Otherwise only
   * `closeTimeout` is used: how long shutdown waits for running tasks. Default: `{}`.
   */
  worker?: Pick<HeimdallWorkerOptions, 'closeTimeout'> | false;
}
