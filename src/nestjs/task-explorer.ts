import { Logger, type InjectionToken } from '@nestjs/common';
import { ContextIdFactory, type DiscoveryService, type MetadataScanner, type ModuleRef } from '@nestjs/core';
import type { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper.js';
import { currentTask, type CurrentTask } from '../core/worker/current-task.js';
import { discover, type Constructor } from '../core/task/registry.js';
import { taskEventsOf, type TaskEventName } from './on-task-event.decorator.js';

/**
 * What a request-scoped (or transient) provider receives as `REQUEST` when the module resolves it
 * for a task run: the running task.
 */
export interface HeimdallTaskRequest {
  task: CurrentTask;
}

/** A method of a singleton provider that listens to worker events. */
export interface TaskEventListener {
  event: TaskEventName;
  owner: string;
  call: (payload: unknown) => unknown;
}

/** The providers of the container the worker runs tasks on, and the event listeners among them. */
export interface ExploredProviders {
  /** Singleton instances, and one stand-in per request-scoped or transient class. */
  services: object[];
  /** Names of the classes, for the log. */
  classes: string[];
  /** The queues their tasks name. */
  queues: string[];
  listeners: TaskEventListener[];
}

const logger = new Logger('HeimdallModule');

/**
 * Walks the container's providers once. A singleton provider with `@Task` methods is used as it
 * is. A provider that is request-scoped, transient, or depends on one has no single instance: it
 * is served by a stand-in whose task methods resolve a fresh instance in a new context for each
 * task run (`ModuleRef.resolve` with `ContextIdFactory.create()`), with `REQUEST` bound to
 * `{ task }`, so one run never shares such an instance with another.
 */
export function exploreProviders(discovery: DiscoveryService, scanner: MetadataScanner, moduleRef: ModuleRef): ExploredProviders {
  const seen = new Set<object>();
  // One instance can sit behind several providers (an alias, a re-provided value): listen once.
  const listening = new Set<object>();
  const explored: ExploredProviders = { services: [], classes: [], queues: [], listeners: [] };
  for (const wrapper of discovery.getProviders()) {
    const scoped = wrapper.isTransient || !wrapper.isDependencyTreeStatic();
    if (scoped) {
      const cls = classOf(wrapper);
      if (!cls || seen.has(cls)) continue;
      const tasks = discover(cls);
      if (tasks.size === 0) {
        warnOfScopedListeners(cls, scanner);
        seen.add(cls);
        continue;
      }
      seen.add(cls);
      warnOfScopedListeners(cls, scanner);
      for (const def of tasks.values()) explored.queues.push(def.options.queue);
      // Resolved by its token: a class provided under another token (a string, an abstract class) is not found by its class.
      explored.services.push(standIn(cls, wrapper.token as InjectionToken, [...tasks.keys()], moduleRef));
      explored.classes.push(`${cls.name} (${wrapper.isTransient ? 'transient' : 'request-scoped'}: a fresh instance per task run)`);
      continue;
    }
    const instance: unknown = wrapper.instance;
    if (typeof instance !== 'object' || instance === null) continue;
    const cls = instance.constructor as Constructor | undefined;
    if (typeof cls !== 'function' || cls === Object) continue;
    if (!seen.has(cls)) {
      seen.add(cls);
      const tasks = discover(cls);
      if (tasks.size > 0) {
        for (const def of tasks.values()) explored.queues.push(def.options.queue);
        explored.services.push(instance);
        explored.classes.push(cls.name);
      }
    }
    if (listening.has(instance)) continue;
    listening.add(instance);
    for (const name of scanner.getAllMethodNames(Object.getPrototypeOf(instance) as object)) {
      const method: unknown = (instance as Record<string, unknown>)[name];
      for (const event of taskEventsOf(method)) {
        explored.listeners.push({ event, owner: `${cls.name}.${name}`, call: (payload) => (method as (p: unknown) => unknown).call(instance, payload) });
      }
    }
  }
  return explored;
}

/** `@OnTaskEvent` needs one instance to call: on a request-scoped or transient provider it is not called. Says so. */
function warnOfScopedListeners(cls: Constructor, scanner: MetadataScanner): void {
  const methods = scanner.getAllMethodNames(cls.prototype as object).filter((name) => taskEventsOf((cls.prototype as Record<string, unknown>)[name]).length > 0);
  if (methods.length > 0) {
    logger.warn(`@OnTaskEvent on ${methods.map((m) => `${cls.name}.${m}`).join(', ')} is not called: ${cls.name} is request-scoped or transient; put listeners on a singleton provider`);
  }
}

function classOf(wrapper: InstanceWrapper): Constructor | undefined {
  // A factory provider's metatype is its factory, not a class: it has `inject`.
  if (wrapper.inject || typeof wrapper.metatype !== 'function') return undefined;
  return wrapper.metatype as Constructor;
}

/** An object of the class whose task methods each resolve a fresh instance and run on it. */
function standIn(cls: Constructor, token: InjectionToken, methods: string[], moduleRef: ModuleRef): object {
  const stand = Object.create(cls.prototype as object) as Record<string, unknown>;
  for (const name of methods) {
    stand[name] = async (...args: unknown[]): Promise<unknown> => {
      const contextId = ContextIdFactory.create();
      const request: HeimdallTaskRequest = { task: currentTask() };
      moduleRef.registerRequestByContextId(request, contextId);
      const instance = await moduleRef.resolve<object, Record<string, (...a: unknown[]) => unknown>>(token, contextId, { strict: false });
      return instance[name]!(...args);
    };
  }
  return stand;
}

export { logger as heimdallLogger };
