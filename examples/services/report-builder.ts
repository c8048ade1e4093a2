// The service behind examples/http-api.ts: one report at a time, whatever its arguments, which
// is the "one task at a time" case of the Celery + FastAPI guide, and a report that stops
// cleanly when it is cancelled, the guide's "cancel".
import { currentTask, Task } from 'heimdall-tasks';

/** Pages the report pretends to render in one step, and how long a step takes. */
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

export class ReportBuilder {
  /**
   * `key` returns one constant, so every call shares one lock: a single report queued or
   * running. The time limit is shorter than the lock's lifetime, so a stuck report gives the
   * lock up before it lapses.
   *
   * The report renders 1,000 pages every 10 ms and stops within a step when its AbortSignal
   * fires (revoke, time limit, or a worker shutting down): it rejects with the signal's reason,
   * a TaskRevokedError after a revoke, so the task ends REVOKED.
   */
  @Task({ unique: true, key: () => 'the-report', uniqueTimeout: '15m', timeLimit: '10m' })
  async build(pages: number): Promise<{ pages: number; file: string }> {
    if (!Number.isInteger(pages) || pages < 0) throw new RangeError(`pages must be a whole number >= 0, got ${pages}`);
    const { signal } = currentTask();
    for (let done = 0; done < pages; done += BATCH) {
      await pause(STEP_MS, signal); // pretend to render a batch
      // Throttled by the library (a few writes a second), so calling it every step is fine.
      currentTask().progress(Math.min(1, (done + BATCH) / pages), `${Math.min(pages, done + BATCH)} of ${pages} pages`);
    }
    return { pages, file: `/reports/report-${pages}.pdf` };
  }
}
