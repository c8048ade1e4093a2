// Vitest-free helpers on worker events, for fixtures that also run outside vitest.
import type { Worker, WorkerEvents } from 'heimdall-tasks';

/** Resolves with the payload of the next `event` of `worker` that matches `filter`. */
export function nextEvent<E extends keyof WorkerEvents>(
  worker: Worker,
  event: E,
  filter: (...args: WorkerEvents[E]) => boolean = () => true,
  timeout = 15_000,
): Promise<WorkerEvents[E][0]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.off(event, listener);
      reject(new Error(`timed out after ${timeout} ms waiting for worker event '${event}'`));
    }, timeout);
    const listener = (...args: WorkerEvents[E]): void => {
      if (!filter(...args)) return;
      clearTimeout(timer);
      worker.off(event, listener);
      resolve(args[0]);
    };
    worker.on(event, listener);
  });
}
