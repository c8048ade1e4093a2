// `heimdall inspect ... --watch`: a reading refreshed every --interval seconds. On a terminal, a
// live screen in the alternate screen buffer (as `top` or `celery events`), the cursor hidden,
// stdin in raw mode so `q` or Ctrl-C quits; the terminal is restored however it ends. Elsewhere
// (a pipe, a file), a timestamped block per refresh, or with --json one JSON line per refresh;
// SIGINT or SIGTERM ends it. Exit 0 either way.
import { EXIT, type Io } from './shared.js';

const ALT_SCREEN_ON = '\x1b[?1049h';
const ALT_SCREEN_OFF = '\x1b[?1049l';
const CURSOR_HIDE = '\x1b[?25l';
const CURSOR_SHOW = '\x1b[?25h';
const HOME = '\x1b[H';
const CLEAR_LINE_END = '\x1b[K';
const CLEAR_BELOW = '\x1b[J';
const CTRL_C = '\x03';

/** Options of watchScreen. */
export interface WatchOptions {
  /** Time between the end of one reading and the start of the next, in ms. */
  intervalMs: number;
  /** One JSON line per refresh instead of text (never the live screen). */
  json: boolean;
  io: Io;
}

/** Shows `snapshot()` (its text, or its JSON) until the user quits; resolves with the exit code. */
export async function watchScreen(title: string, snapshot: () => Promise<[string, unknown]>, { intervalMs, json, io }: WatchOptions): Promise<number> {
  const { stdin, stdout } = io;
  const screen = stdout.isTTY === true && !json;
  const keys = screen && stdin.isTTY === true;
  let quit!: () => void;
  const quitting = new Promise<void>((resolve) => (quit = resolve));
  let quitted = false;
  void quitting.then(() => (quitted = true));
  const onKey = (data: Buffer): void => {
    const k = data.toString();
    if (k === 'q' || k === 'Q' || k.includes(CTRL_C)) quit();
  };
  const onSignal = (): void => quit();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let restored = false;
  // Idempotent, and synchronous so that it can also run on 'exit' (a crash must not leave the terminal raw).
  const restore = (): void => {
    if (restored) return;
    restored = true;
    if (screen) stdout.write(CURSOR_SHOW + ALT_SCREEN_OFF);
    if (keys) {
      stdin.off('data', onKey);
      stdin.setRawMode(false);
      stdin.pause();
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', restore);
  };
  process.on('exit', restore);
  if (screen) stdout.write(ALT_SCREEN_ON + CURSOR_HIDE);
  if (keys) {
    stdin.setRawMode(true);
    stdin.on('data', onKey);
    stdin.resume();
  }
  try {
    while (!quitted) {
      let text: string;
      let value: unknown;
      try {
        [text, value] = await snapshot();
      } catch (err) {
        // Shown and tried again at the next refresh: a watch outlives a Redis restart's first seconds.
        text = `error: ${err instanceof Error ? err.message : String(err)}`;
        value = { error: text.slice(7) };
      }
      const at = new Date();
      if (quitted) break;
      if (screen) stdout.write(frame(`${title}   every ${intervalMs / 1000} s   ${at.toISOString().slice(11, 19)} UTC   q: quit`, text, stdout.columns || 80, stdout.rows || 24));
      else if (json) io.out(JSON.stringify({ at: at.toISOString(), value }));
      else io.out(`--- ${at.toISOString()} ${title}\n${text}\n`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([quitting, new Promise<void>((resolve) => (timer = setTimeout(resolve, intervalMs)))]);
      clearTimeout(timer);
    }
  } finally {
    restore();
  }
  return EXIT.ok;
}

/**
 * One screen: from the top left, each line cut to the width and cleared to its end, the rest of
 * the screen cleared. (Node's raw mode leaves the terminal's \n to \r\n translation on.)
 */
function frame(header: string, text: string, columns: number, rows: number): string {
  let lines = [header, '', ...text.split('\n')];
  if (lines.length > rows - 1) lines = [...lines.slice(0, rows - 2), `… ${lines.length - rows + 2} more lines`];
  return HOME + lines.map((l) => l.slice(0, columns) + CLEAR_LINE_END).join('\n') + CLEAR_BELOW;
}
