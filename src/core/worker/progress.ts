import { ConfigError } from '../errors.js';
import { describe } from '../task/durations.js';

/** At most one progress write per run in this many ms; the latest value always gets written. */
export const PROGRESS_INTERVAL_MS = 250;
/** Messages are cut to this many characters. */
const MAX_MESSAGE = 200;

/** A checked progress report, as stored: `{ v, m?, at }`. */
export interface ProgressReport {
  v: number;
  m?: string;
  at: number;
}

/** Checks a `currentTask().progress()` call; a ConfigError for a value that is not a fraction from 0 to 1. */
export function progressReport(value: unknown, message: unknown): ProgressReport {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new ConfigError(`progress(value) takes a fraction from 0 to 1, got ${describe(value)}`);
  }
  if (message !== undefined && typeof message !== 'string') throw new ConfigError(`progress(value, message) takes a string message, got ${describe(message)}`);
  const report: ProgressReport = { v: value, at: Date.now() };
  if (message !== undefined) report.m = message.length > MAX_MESSAGE ? message.slice(0, MAX_MESSAGE) : message;
  return report;
}

/**
 * The progress writes of one run, throttled: the first report is written at once, later ones at
 * most every PROGRESS_INTERVAL_MS, the latest winning (a trailing write); `flush()` writes what
 * waits now (the run is ending), `stop()` drops it.
 */
export class ProgressThrottle {
  private lastWriteAt = -Infinity;
  private pending: ProgressReport | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly write: (report: ProgressReport) => void) {}

  report(r: ProgressReport): void {
    this.pending = r;
    if (this.timer) return;
    const wait = this.lastWriteAt + PROGRESS_INTERVAL_MS - Date.now();
    if (wait <= 0) this.flush();
    else {
      this.timer = setTimeout(() => this.flush(), wait);
      this.timer.unref();
    }
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const r = this.pending;
    this.pending = undefined;
    if (!r) return;
    this.lastWriteAt = Date.now();
    this.write(r);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = undefined;
  }
}
