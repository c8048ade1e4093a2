// The service behind examples/http-status.ts: one export at a time, whatever its arguments,
// which is the "one task at a time" case of the Celery + FastAPI guide.
import { Task } from 'heimdall-tasks';

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class ExportService {
  /** `key` returns one constant, so every call shares one lock: a single export queued or running. */
  @Task({ unique: true, key: () => 'the-export', uniqueTimeout: '15m' })
  async runExport(rows: number): Promise<{ rows: number; file: string }> {
    if (!Number.isInteger(rows) || rows < 0) throw new RangeError(`rows must be a whole number >= 0, got ${rows}`);
    await pause(200); // pretend to write a file
    return { rows, file: `/exports/export-${rows}.csv` };
  }
}
