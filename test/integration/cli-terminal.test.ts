// What `heimdall` draws on a terminal (issue 11, point 3), driven in a real pseudo-terminal
// (util-linux `script`, see fixtures/cli/pty.ts) and, for comparison, through pipes:
// - `status --wait`: a progress bar redrawn in place on a terminal, a line per change elsewhere;
// - `inspect --watch`: a live screen (alternate buffer, cursor hidden) that `q` or Ctrl-C quits
//   with exit 0 and the terminal restored; timestamped blocks (or JSON lines) when stdout is a pipe.
// Every wait is on output or state with a deadline.
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Task } from 'heimdall-tasks';
import { gate, ROOT, useHarness, waitFor, type Gate, type Harness } from '../helpers.js';
import { CLI_MAIN, spawnHeimdall } from '../fixtures/cli/heimdall.js';
import { ptyUnavailable, spawnInPty, type PtyProcess } from '../fixtures/cli/pty.js';

const ALT_SCREEN_ON = '\x1b[?1049h';
const ALT_SCREEN_OFF = '\x1b[?1049l';
const CURSOR_HIDE = '\x1b[?25l';
const CURSOR_SHOW = '\x1b[?25h';
const HOME = '\x1b[H';

let first: Gate = gate();
let second: Gate = gate();

class Steps {
  @Task({ queue: 'cli-term' })
  async steps(): Promise<string> {
    const t = currentTask();
    t.progress(0.25, 'reading');
    await first.promise;
    t.progress(0.5, 'half way');
    await second.promise;
    t.progress(1, 'done');
    return 'ok';
  }

  @Task({ queue: 'cli-term-watch' })
  async idle(): Promise<void> {}
}

const inPty: PtyProcess[] = [];
afterEach(() => {
  for (const p of inPty.splice(0)) if (!p.exited) p.child.kill('SIGKILL');
});

/** `heimdall ...args` in a pseudo-terminal, with the harness's Redis and prefix. */
function heimdallInPty(h: Harness, ...args: string[]): PtyProcess {
  const proc = spawnInPty([process.execPath, '--import', 'tsx', CLI_MAIN, ...args], { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix }, { cwd: ROOT });
  inPty.push(proc);
  return proc;
}

/** Waits until `read()` matches `pattern`. */
function until(read: () => string, pattern: RegExp | string, what: string): Promise<unknown> {
  return waitFor(() => (typeof pattern === 'string' ? read().includes(pattern) : pattern.test(read())), { timeout: 20_000, what });
}

/** Starts a worker and a Steps.steps task, and waits until the task has reported 25%. */
async function stepsAtQuarter(h: Harness) {
  first = gate();
  second = gate();
  await h.worker({ services: [new Steps()], queues: ['cli-term'] }).start();
  const task = await h.dispatcher().tasks(Steps).steps.delay();
  await waitFor(async () => (await task.info()).progress?.value === 0.25, { what: 'the first progress report' });
  return task;
}

const unavailable = ptyUnavailable();

describe('heimdall on a terminal', () => {
  const fresh = useHarness('cli-term');

  it('is run in a pseudo-terminal here', () => {
    expect(unavailable).toBeUndefined();
  });

  it('status --wait draws the progress as a bar redrawn in place on a terminal, then the final status', { timeout: 60_000 }, async () => {
    const h = fresh();
    const task = await stepsAtQuarter(h);

    const tty = heimdallInPty(h, 'status', task.id, '--wait');
    await until(tty.output, '\r[#####...............]  25%  reading\x1b[K', 'the bar at 25%');
    first.open();
    await until(tty.output, '\r[##########..........]  50%  half way\x1b[K', 'the bar redrawn at 50%');
    second.open();
    expect(await tty.exit).toBe(0);
    const out = tty.output();
    expect(out).toContain('\r[####################] 100%  done\x1b[K\r\n');
    expect(out).toContain('state    SUCCESS');
    expect(out).toContain('result   "ok"');
    // Redrawn in place: none of the plain lines written when stderr is not a terminal.
    expect(out).not.toContain('progress  25%  reading');
  });

  it('status --wait prints a line per progress change when stderr is not a terminal; stdout unchanged', { timeout: 60_000 }, async () => {
    const h = fresh();
    const task = await stepsAtQuarter(h);

    const piped = spawnHeimdall(h, 'status', task.id, '--wait');
    await until(() => piped.seen.stderr, 'progress  25%  reading\n', 'the line at 25%');
    first.open();
    await until(() => piped.seen.stderr, 'progress  50%  half way\n', 'the line at 50%');
    second.open();
    const exit = await piped.exit;
    expect(exit.code, exit.stderr).toBe(0);
    expect(exit.stderr).toBe('progress  25%  reading\nprogress  50%  half way\nprogress 100%  done\n');
    expect(exit.stdout).toMatch(/^task     \S+ \(Steps\.steps\)\nstate    SUCCESS\n/);
    expect(exit.stdout).toContain('progress 100% done\n');
    expect(exit.stdout).not.toContain('\x1b');
  });

  it('inspect --watch is a live screen refreshed in place; q quits with exit 0 and the terminal restored', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const idle = d.tasks(Steps).idle;
    for (let i = 0; i < 3; i++) await idle.delay();
    const tty = heimdallInPty(h, 'inspect', 'queues', '--queue', 'cli-term-watch', '--watch', '--interval', '0.2');
    await until(tty.output, /cli-term-watch\s+3\s+0\s+0\s+0\s+0/, 'a screen showing 3 waiting');
    expect(tty.output().startsWith(ALT_SCREEN_ON + CURSOR_HIDE)).toBe(true);
    await idle.delay();
    await until(tty.output, /cli-term-watch\s+4\s+0/, 'the screen to show 4 waiting');
    // Redrawn from the top left each time, not scrolled.
    expect(tty.output().split(HOME).length).toBeGreaterThan(2);
    expect(tty.output()).toMatch(/heimdall inspect queues {3}every 0\.2 s {3}\d\d:\d\d:\d\d UTC {3}q: quit/);
    tty.type('q');
    expect(await tty.exit).toBe(0);
    const out = tty.output();
    // Left the alternate screen with the cursor shown, after the last frame.
    expect(out.lastIndexOf(CURSOR_SHOW + ALT_SCREEN_OFF)).toBeGreaterThan(out.lastIndexOf(HOME));
  });

  it('inspect --watch quits on Ctrl-C (raw mode: the key, not a signal) with exit 0 and the terminal restored', { timeout: 60_000 }, async () => {
    const h = fresh();
    const tty = heimdallInPty(h, 'inspect', 'locks', '--queue', 'cli-term-watch', '--watch', '--interval', '0.2');
    await until(tty.output, 'no unique locks held', 'the first screen');
    tty.type('\x03');
    expect(await tty.exit).toBe(0);
    expect(tty.output().endsWith(CURSOR_SHOW + ALT_SCREEN_OFF)).toBe(true);
  });

  it('inspect --watch without a terminal prints a timestamped block per refresh (or a JSON line with --json) until SIGINT, exit 0', { timeout: 60_000 }, async () => {
    const h = fresh();
    await h.dispatcher().tasks(Steps).idle.delay();
    const text = spawnHeimdall(h, 'inspect', 'queues', '--queue', 'cli-term-watch', '--watch', '--interval', '0.2');
    const block = /--- \d{4}-\d\d-\d\dT[\d:.]+Z heimdall inspect queues\nQUEUE +WAITING.*\ncli-term-watch +1 +0/g;
    await waitFor(() => (text.seen.stdout.match(block) ?? []).length >= 2, { timeout: 20_000, what: 'two refreshes' });
    text.child.kill('SIGINT');
    const exit = await text.exit;
    expect(exit.code, exit.stderr).toBe(0);
    expect(exit.stdout).not.toContain('\x1b');

    const json = spawnHeimdall(h, 'inspect', 'queues', '--queue', 'cli-term-watch', '--watch', '--interval', '0.2', '--json');
    await waitFor(() => json.seen.stdout.split('\n').filter(Boolean).length >= 2, { timeout: 20_000, what: 'two JSON lines' });
    json.child.kill('SIGTERM');
    const jsonExit = await json.exit;
    expect(jsonExit.code, jsonExit.stderr).toBe(0);
    for (const line of jsonExit.stdout.split('\n').filter(Boolean)) {
      expect(JSON.parse(line)).toMatchObject({ at: expect.any(String), value: [{ queue: 'cli-term-watch', waiting: 1 }] });
    }
  });
});
