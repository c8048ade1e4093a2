// The service behind examples/http-status.ts: one export at a time, whatever its arguments,
// which is the "one task at a time" case of the Celery + FastAPI guide, and an export that
// stops cleanly when it is cancelled, the guide's "cancel".
import { currentTask, Task } from 'heimdall-tasks';

/** Rows the export pretends to write in one step, and how long a step takes. */
const BATCH = 1000;
const STEP_MS = 10;

/** Waits `ms`, or rejects with the signal's reason as soon as the signal fires. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export class ExportService {
  /**
   * `key` returns one constant, so every call shares one lock: a single export queued or
   * running. The time limit is shorter than the lock's lifetime, so a stuck export gives the
   * lock up before it lapses.
   *
   * The export writes 1,000 rows every 10 ms and stops within a step when its AbortSignal
   * fires (revoke, time limit, or a worker shutting down): it rejects with the signal's reason,
   * a TaskRevokedError after a revoke, so the task ends REVOKED.
   */
  @Task({ unique: true, key: () => 'the-export', uniqueTimeout: '15m', timeLimit: '10m' })
  async runExport(rows: number): Promise<{ rows: number; file: string }> {
    if (!Number.isInteger(rows) || rows < 0) throw new RangeError(`rows must be a whole number >= 0, got ${rows}`);
    const { signal } = currentTask();
    for (let written = 0; written < rows; written += BATCH) await pause(STEP_MS, signal); // pretend to write a batch
    return { rows, file: `/exports/export-${rows}.csv` };
  }
}
