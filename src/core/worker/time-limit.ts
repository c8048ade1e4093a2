import { TimeLimitExceededError } from '../errors.js';
import { abortRun, type Run, type RunOwner } from './run.js';

// A task that honours its AbortSignal gets this long to settle after its time limit.
const TIME_LIMIT_GRACE_MS = 100;

/**
 * Races a run's promise against its time limit of `limitMs`. At the limit the
 * run's signal fires; a task that honours it gets 100 ms to settle, one that ignores it is left
 * running (`ignored` is called, to report it) while its end is stored. Either way the result is
 * a TimeLimitExceededError. A run released meanwhile (handed back, revoked with terminate, lost)
 * is no longer limited or reported.
 */
export function withTimeLimit(run: Run<RunOwner>, promise: Promise<unknown>, limitMs: number, ignored: () => void): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      const error = new TimeLimitExceededError(run.task.id, limitMs);
      if (run.released) {
        settled = true;
        reject(error);
        return;
      }
      abortRun(run, error);
      const grace = setTimeout(() => {
        if (settled) return;
        settled = true;
        ignored();
        reject(error);
      }, TIME_LIMIT_GRACE_MS);
      promise
        .then(
          () => undefined,
          () => undefined,
        )
        .finally(() => {
          clearTimeout(grace);
          if (settled) return;
          settled = true;
          reject(error);
        });
    }, limitMs);
    promise.then(
      (value) => {
        if (settled || timedOut) return;
        settled = true;
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        if (settled || timedOut) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
