import type { OnApplicationBootstrap, OnApplicationShutdown, OnModuleDestroy } from '@nestjs/common';
import type { DiscoveryService, MetadataScanner, ModuleRef } from '@nestjs/core';
import type { Dispatcher } from '../core/producer/dispatcher.js';
import { Worker } from '../core/worker/worker.js';
import { toMillis, type Duration } from '../core/task/durations.js';
import type { InlineTransport } from '../core/inline/inline-transport.js';
import type { TaskEventSource } from '../core/worker/worker-options.js';
import type { HeimdallModuleOptions } from './heimdall-options.js';
import { exploreProviders, heimdallLogger as logger, type ExploredProviders } from './task-explorer.js';

/**
 * Starts the worker when the application has bootstrapped; closes it in `onModuleDestroy`, the
 * first shutdown phase, and the dispatcher in `onApplicationShutdown`, the last. Nest runs a
 * global module's shutdown hooks after every other module's in each phase, so the worker has
 * let its running tasks end before any provider's `beforeApplicationShutdown` or
 * `onApplicationShutdown` closes what they use (docs/nestjs.md, Shutdown). Built by a factory
 * provider, so it needs no decorator metadata.
 */
export class HeimdallLifecycle implements OnApplicationBootstrap, OnModuleDestroy, OnApplicationShutdown {
  private worker: Worker | undefined;
  /** How long shutdown waits for the running tasks (the `worker.closeTimeout` option); undefined: as long as they take. */
  private closeTimeout: Duration | undefined;

  constructor(
    private readonly options: HeimdallModuleOptions,
    private readonly dispatcher: Dispatcher,
    private readonly inline: InlineTransport | null,
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly moduleRef: ModuleRef,
  ) {}

  /** The running worker, or undefined (producer-only, or no provider has tasks). */
  get currentWorker(): Worker | undefined {
    return this.worker;
  }

  async onApplicationBootstrap(): Promise<void> {
    try {
      await this.startWorker();
    } catch (err) {
      // Nest does not run the shutdown hooks of an application that failed to bootstrap: close
      // what was opened here, so no connection keeps the process alive.
      const worker = this.worker;
      this.worker = undefined;
      await worker?.close({ timeout: 0 }).catch(() => undefined);
      await this.dispatcher.close().catch(() => undefined);
      throw err;
    }
  }

  private async startWorker(): Promise<void> {
    const options = this.options;
    if (options.worker === false) return;
    if (options.inline === true) {
      this.startInline(this.inline!, options.worker?.closeTimeout);
      return;
    }
    const { closeTimeout, ...workerOptions } = options.worker ?? {};
    const explored = exploreProviders(this.discovery, this.scanner, this.moduleRef);
    if (explored.services.length === 0) {
      logger.warn('no provider has @Task methods: the worker is not started (set worker: false for a producer-only application)');
      return;
    }
    // Without `queues`, every queue the providers' tasks name (with 'default'), as createTestApp does.
    const queues = workerOptions.queues ?? [...new Set(['default', ...explored.queues])];
    const worker = new Worker({ ...workerOptions, queues, connection: options.connection, prefix: options.prefix, services: explored.services });
    worker.on('error', (err) => logger.error(`worker ${worker.id}: ${err.message}`, err.stack));
    this.listen(worker, explored.listeners);
    this.worker = worker;
    this.closeTimeout = closeTimeout;
    await worker.start();
    logger.log(`worker ${worker.id} started on ${worker.queues.join(', ')}: ${explored.classes.join(', ')}`);
  }

  /** Inline mode: the providers run the tasks in this process; no worker. */
  private startInline(inline: InlineTransport, closeTimeout: Duration | undefined): void {
    const explored = exploreProviders(this.discovery, this.scanner, this.moduleRef);
    inline.on('error', (err) => logger.error(`inline: ${err.message}`, err.stack));
    this.listen(inline, explored.listeners);
    this.closeTimeout = closeTimeout;
    inline.serve(explored.services);
    logger.log(`inline mode: tasks run in this process, without Redis: ${explored.classes.join(', ') || 'no provider has @Task methods'}`);
  }

  /** Calls the `@OnTaskEvent` methods on the events of the worker (or the inline engine). */
  private listen(source: TaskEventSource, listeners: ExploredProviders['listeners']): void {
    for (const listener of listeners) {
      source.on(listener.event, (payload: unknown) => {
        const fail = (err: unknown): void => logger.error(`@OnTaskEvent('${listener.event}') ${listener.owner} threw: ${String(err)}`);
        try {
          const returned = listener.call(payload);
          if (returned instanceof Promise) returned.catch(fail);
        } catch (err) {
          fail(err);
        }
      });
    }
  }

  /** Stops fetching and waits for the running tasks (up to `worker.closeTimeout`). */
  async onModuleDestroy(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.close({ timeout: this.closeTimeout });
    if (this.inline) await this.inline.close(this.closeTimeout === undefined ? Infinity : toMillis(this.closeTimeout, 'worker.closeTimeout'));
  }

  async onApplicationShutdown(): Promise<void> {
    try {
      // Already done in onModuleDestroy, unless that hook was skipped.
      await this.onModuleDestroy();
    } finally {
      // Last: providers may still dispatch while the worker's running tasks end.
      await this.dispatcher.close();
    }
  }
}
