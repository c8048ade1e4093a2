// Vitest-free waiting helpers (polling with a deadline, worker events), for fixtures that also
// run outside vitest; test/helpers.ts re-exports them.
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

/** Polls `probe` until it returns a truthy value, or fails after `timeout` ms naming `what`. */
export async function waitFor<T>(
  probe: () => T | Promise<T>,
  { timeout = 15_000, interval = 20, what = 'condition' }: { timeout?: number; interval?: number; what?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** How a promise settled, and how long it took (ms). */
export type Settled<T> =
  | { ok: true; value: T; error?: undefined; ms: number }
  | { ok: false; value?: undefined; error: unknown; ms: number };

/**
 * Waits for `promise` to resolve or reject and says which; throws, naming `what`, when it does
 * neither within `ms` (a call that must never hang).
 */
export async function settleWithin<T>(promise: Promise<T>, ms: number, what: string): Promise<Settled<T>> {
  const began = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} neither resolved nor rejected within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        (value): Settled<T> => ({ ok: true, value, ms: Date.now() - began }),
        (error: unknown): Settled<T> => ({ ok: false, error, ms: Date.now() - began }),
      ),
      deadline,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
