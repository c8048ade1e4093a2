import 'reflect-metadata';
import { ConfigError } from '../core/errors.js';
import type { WorkerEvents } from '../core/worker/worker-options.js';

/** Metadata key under which `@OnTaskEvent` stores its event names on the method. */
export const TASK_EVENT_METADATA = 'heimdall:on-task-event';

/** The worker events a provider method can listen to (`error` is logged by the module). */
export type TaskEventName = Exclude<keyof WorkerEvents, 'error'>;

/**
 * Calls the method with the payload of each `event` of the application's worker: `started`,
 * `succeeded`, `failed`, `retried`, `revoked` or `rateLimited`, with the payloads of
 * `WorkerEvents`. It works on singleton providers; a listener that throws or rejects is logged and
 * does not affect the task. Without a worker (`worker: false`) it is never called.
 *
 * @example
 * @OnTaskEvent('failed')
 * onFailed(event: WorkerEvents['failed'][0]) { this.alerts.send(event.name, event.error.message); }
 */
export function OnTaskEvent<E extends TaskEventName>(event: E) {
  // Generic in the method's own type: a TypedPropertyDescriptor is invariant, so a fixed type would
  // refuse an async listener (returning a Promise) that the constraint itself accepts.
  return <M extends (payload: WorkerEvents[E][0]) => unknown>(_target: object, _key: string | symbol, descriptor: TypedPropertyDescriptor<M>): void => {
    const method = descriptor.value;
    if (typeof method !== 'function') throw new ConfigError('@OnTaskEvent goes on methods');
    Reflect.defineMetadata(TASK_EVENT_METADATA, [...taskEventsOf(method), event], method);
  };
}

/** The events a method listens to, or none. */
export function taskEventsOf(method: unknown): TaskEventName[] {
  if (typeof method !== 'function') return [];
  return (Reflect.getMetadata(TASK_EVENT_METADATA, method) as TaskEventName[] | undefined) ?? [];
}
