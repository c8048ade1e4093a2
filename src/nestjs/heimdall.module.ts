import type { DynamicModule, Provider } from '@nestjs/common';
import { DiscoveryModule, DiscoveryService, MetadataScanner, ModuleRef } from '@nestjs/core';
import { DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, dispatcherOver } from '../core/producer/dispatcher.js';
import { InlineTransport } from '../core/inline/inline-transport.js';
import { ConfigError } from '../core/errors.js';
import { HeimdallLifecycle } from './heimdall-lifecycle.js';
import { HEIMDALL_INLINE, HEIMDALL_OPTIONS, type HeimdallModuleAsyncOptions, type HeimdallModuleOptions, type HeimdallModuleScope } from './heimdall-options.js';
import { taskTokens } from './inject-tasks.decorator.js';

/**
 * Heimdall in a Nest application: an injectable `Dispatcher`, the task handles of `@InjectTasks`,
 * and a worker that runs the `@Task` methods of the container's providers, started on
 * `onApplicationBootstrap` and closed (then the dispatcher) on `onApplicationShutdown`.
 *
 * @example
 * @Module({ imports: [HeimdallModule.forRoot({ connection: process.env.REDIS_URL! })], providers: [ReportService] })
 * export class AppModule {}
 */
export class HeimdallModule {
  /** The module with options known now. Global unless `global: false`. */
  static forRoot(options: HeimdallModuleOptions & HeimdallModuleScope): DynamicModule {
    if (typeof options !== 'object' || options === null) throw new ConfigError('HeimdallModule.forRoot() needs { connection } (or { inline: true })');
    const { global, ...heimdall } = options;
    return build({ provide: HEIMDALL_OPTIONS, useValue: heimdall }, [], global);
  }

  /** The module with options built by a factory, e.g. from a ConfigService. Global unless `global: false`. */
  static forRootAsync<A extends unknown[]>(options: HeimdallModuleAsyncOptions<A>): DynamicModule {
    if (typeof options?.useFactory !== 'function') throw new ConfigError('HeimdallModule.forRootAsync() needs { useFactory }');
    const factory = async (...args: A): Promise<HeimdallModuleOptions> => {
      const made = await options.useFactory(...args);
      if (typeof made !== 'object' || made === null) throw new ConfigError('the useFactory of HeimdallModule.forRootAsync() must return { connection, ... }');
      return made;
    };
    return build({ provide: HEIMDALL_OPTIONS, useFactory: factory as (...args: unknown[]) => Promise<HeimdallModuleOptions>, inject: options.inject ?? [] }, options.imports ?? [], options.global);
  }
}

function build(optionsProvider: Provider, imports: NonNullable<DynamicModule['imports']>, global = true): DynamicModule {
  const fixed: Provider[] = [
    optionsProvider,
    {
      provide: HEIMDALL_INLINE,
      useFactory: (o: HeimdallModuleOptions): InlineTransport | null => {
        if (o.inline !== undefined && typeof o.inline !== 'boolean') throw new ConfigError(`HeimdallModule: inline must be true or false, got ${typeof o.inline}`);
        if (o.inline !== true) return null;
        // Held until the bootstrap has found the providers that run the tasks.
        return new InlineTransport({
          services: [],
          resolve: undefined,
          maxPayloadBytes: o.dispatcher?.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
          held: true,
          unservedHint: (c) => `add ${c} to the providers of a module of this application`,
        });
      },
      inject: [HEIMDALL_OPTIONS],
    },
    {
      provide: Dispatcher,
      useFactory: (o: HeimdallModuleOptions, inline: InlineTransport | null) =>
        inline !== null || o.inline === true
          ? dispatcherOver(inline!, { ...o.dispatcher, prefix: o.prefix })
          : new Dispatcher({ ...o.dispatcher, connection: o.connection, prefix: o.prefix }),
      inject: [HEIMDALL_OPTIONS, HEIMDALL_INLINE],
    },
    {
      provide: HeimdallLifecycle,
      useFactory: (
        o: HeimdallModuleOptions,
        d: Dispatcher,
        inline: InlineTransport | null,
        discovery: DiscoveryService,
        scanner: MetadataScanner,
        moduleRef: ModuleRef,
      ) => new HeimdallLifecycle(o, d, inline, discovery, scanner, moduleRef),
      inject: [HEIMDALL_OPTIONS, Dispatcher, HEIMDALL_INLINE, DiscoveryService, MetadataScanner, ModuleRef],
    },
  ];
  const taskProviders = (): Provider[] =>
    [...taskTokens()].map(([cls, token]) => ({ provide: token, useFactory: (d: Dispatcher) => d.tasks(cls), inject: [Dispatcher] }));
  return {
    module: HeimdallModule,
    global,
    imports: [DiscoveryModule, ...imports],
    // Read when Nest scans the modules, after every file (and so every @InjectTasks) is loaded.
    get providers(): Provider[] {
      return [...fixed, ...taskProviders()];
    },
    get exports() {
      return [Dispatcher, ...taskTokens().values()];
    },
  };
}
