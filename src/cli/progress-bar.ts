// The progress of a task `heimdall status --wait` waits on, on stderr: a bar redrawn in place
// when stderr is a terminal, one plain line per change when it is not (a log, a pipe), so the
// final status on stdout stays as it is either way.

/** What the bar shows: `info().progress` (value 0..1, message). */
export interface ProgressView {
  value: number;
  message?: string | undefined;
}

/** Cells of the bar between its brackets. */
const WIDTH = 20;

/** Draws a task's progress on a stream; only changes are drawn. */
export class ProgressBar {
  private last: string | undefined;
  private drawn = false;

  /** `write`: raw output (no newline added); `tty`: redraw in place; `columns`: the terminal's width (default 80). */
  constructor(
    private readonly write: (text: string) => void,
    private readonly tty: boolean,
    private readonly columns = 80,
  ) {}

  /** Shows `p` if it differs (in whole percent or message) from what is shown. */
  update(p: ProgressView): void {
    const percent = Math.round(Math.min(1, Math.max(0, p.value)) * 100);
    const message = (p.message ?? '').replace(/\s+/g, ' ').trim();
    const key = `${percent} ${message}`;
    if (key === this.last) return;
    this.last = key;
    if (!this.tty) {
      this.write(`progress ${String(percent).padStart(3)}%${message ? `  ${message}` : ''}\n`);
      return;
    }
    const filled = Math.round((percent / 100) * WIDTH);
    const head = `[${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${String(percent).padStart(3)}%`;
    // Cut the message to the line, so the bar never wraps (a wrapped line cannot be redrawn with \r).
    const room = Math.max(0, this.columns - 1 - head.length - 2);
    const text = message.length > room ? `${message.slice(0, Math.max(0, room - 1))}…` : message;
    this.write(`\r${head}${text ? `  ${text}` : ''}\x1b[K`);
    this.drawn = true;
  }

  /** Ends the bar's line (the last state stays visible), so what follows starts on a line of its own. */
  end(): void {
    if (this.drawn) this.write('\n');
    this.drawn = false;
  }
}
