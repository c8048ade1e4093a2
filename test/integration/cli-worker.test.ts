// `heimdall worker --app <module>` (issue 11, point 3), spawned as a user runs it against the test
// Redis: an app module in TypeScript (through tsx) and one in plain JavaScript (.mjs); a line per
// task at --log-level info; SIGTERM while a task runs (it ends, the process exits 0), and a second
// signal that hands the running task back to its queue at once.
import { describe, expect, it } from 'vitest';
import { settleWithin, useHarness, waitFor } from '../helpers.js';
import { spawnHeimdall as heimdall, type RunningHeimdall } from '../fixtures/cli/heimdall.js';

/** Waits for a stdout line matching `pattern`; fails early, with stderr, if the process exits. */
async function line(cli: RunningHeimdall, pattern: RegExp, what: string): Promise<string> {
  return waitFor(
    async () => {
      const found = cli.lines.find((l) => pattern.test(l));
      if (!found && cli.exited) throw new Error(`heimdall exited before ${what}:\n${cli.lines.join('\n')}\n${(await cli.exit).stderr}`);
      return found;
    },
    { timeout: 20_000, what },
  );
}

describe('heimdall worker', () => {
  const fresh = useHarness('cli-worker');

  it('runs a TypeScript app through tsx: a line per task; SIGTERM lets the running task end, then exits 0', { timeout: 60_000 }, async () => {
    const h = fresh();
    // The module says concurrency 3; the flag wins.
    const cli = heimdall(h, 'worker', '--app', 'test/fixtures/cli/worker-app.ts', '--concurrency', '2', '--prefetch', '0');
    const start = await line(cli, /INFO  worker \S+ started: /, 'the start line');
    expect(start).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z INFO  worker \S+ started: queues cli-ts; concurrency 2; prefetch 0; pid \d+$/);

    const d = h.dispatcher();
    const echo = await d.send('CliJobs.echo', [5], { queue: 'cli-ts' });
    expect(await echo.get({ timeout: 10 })).toBe(5);
    await line(cli, new RegExp(`INFO  started      CliJobs\\.echo\\[${echo.id}\\] attempt 1$`), 'the started line');
    await line(cli, new RegExp(`INFO  succeeded    CliJobs\\.echo\\[${echo.id}\\] in [\\d.]+ ms$`), 'the succeeded line');
    const broken = await d.send('CliJobs.broken', [], { queue: 'cli-ts' });
    await line(cli, new RegExp(`WARN  failed       CliJobs\\.broken\\[${broken.id}\\] in [\\d.]+ ms: RangeError: no such customer$`), 'the failed line');

    const releaseKey = `${h.prefix}:test:release`;
    const held = await d.send('CliJobs.hold', [releaseKey], { queue: 'cli-ts' });
    await line(cli, new RegExp(`started      CliJobs\\.hold\\[${held.id}\\]`), 'the held task to start');
    cli.child.kill('SIGTERM');
    await line(cli, /INFO  SIGTERM: stopping; 1 running task\(s\) get 25 s to end/, 'the stopping line');
    // The worker waits for the running task: it is still running, and the process with it.
    expect(await held.status()).toBe('STARTED');
    expect(cli.exited).toBe(false);
    await h.admin.set(releaseKey, '1');
    const exit = await cli.exit;
    expect(exit.code, exit.stderr).toBe(0);
    expect(await held.get({ timeout: 5 })).toBe('released');
    expect(cli.lines.some((l) => new RegExp(`succeeded    CliJobs\\.hold\\[${held.id}\\]`).test(l))).toBe(true);
    expect(cli.lines.at(-1)).toMatch(/INFO  worker \S+ stopped$/);
    expect(await d.workers({ queues: ['cli-ts'] })).toEqual([]);
  });

  it('runs a plain .mjs app (named export worker); a second signal hands the running task back at once; --log-level warn', { timeout: 60_000 }, async () => {
    const h = fresh();
    // A shutdown timeout of 10 minutes: only the second signal can hand the task back in time.
    const cli = heimdall(h, 'worker', '--app', 'test/fixtures/cli/worker-app.mjs', '--log-level', 'warn', '--shutdown-timeout', '600');
    const d = h.dispatcher();
    await waitFor(async () => (await d.workers({ queues: ['cli-mjs'] })).length === 1, { timeout: 20_000, what: 'the worker to register' });
    const echo = await d.send('MjsJobs.echo', ['hi'], { queue: 'cli-mjs' });
    expect(await echo.get({ timeout: 10 })).toBe('hi');

    const held = await d.send('MjsJobs.hold', [`${h.prefix}:test:never`], { queue: 'cli-mjs' });
    await waitFor(async () => (await held.status()) === 'STARTED', { what: 'the held task to start' });
    cli.child.kill('SIGTERM');
    // A second signal counts once 1 s has passed since the first (sooner, it is taken for an echo
    // of the same key press): send it until the worker says it hands the task back.
    await waitFor(
      () => {
        if (!cli.exited) cli.child.kill('SIGINT');
        return cli.lines.some((l) => / WARN  SIGINT again: handing 1 running task\(s\) back to their queue now$/.test(l));
      },
      { timeout: 20_000, interval: 200, what: 'the hand-back line' },
    );
    const exit = (await settleWithin(cli.exit, 10_000, 'the worker to exit after handing the task back')).value!;
    expect(exit.code, exit.stderr).toBe(0);
    // Back at the head of its queue, same id, not counted as a recovery; nothing below warn was printed.
    expect(await held.status()).toBe('PENDING');
    expect(await h.admin.lrange(h.queueKey('wait', 'cli-mjs'), 0, -1)).toContain(held.id);
    expect(cli.lines.filter((l) => / (INFO|DEBUG) /.test(l))).toEqual([]);
  });

  it('usage errors exit 2; a module that cannot be found or exports nothing exits 1 saying why', { timeout: 60_000 }, async () => {
    const h = fresh();
    const noApp = await heimdall(h, 'worker').exit;
    expect(noApp.code).toBe(2);
    expect(noApp.stderr).toContain('worker needs --app <module>');
    const level = await heimdall(h, 'worker', '--app', 'test/fixtures/cli/worker-app.mjs', '--log-level', 'loud').exit;
    expect(level.code).toBe(2);
    expect(level.stderr).toContain('--log-level must be one of debug, info, warn, error, silent');
    const prefetch = await heimdall(h, 'worker', '--app', 'test/fixtures/cli/worker-app.mjs', '--prefetch', 'lots').exit;
    expect(prefetch.code).toBe(2);
    expect(prefetch.stderr).toContain(`--prefetch must be 'auto' or a whole number >= 0, got "lots"`);
    const missing = await heimdall(h, 'worker', '--app', 'test/fixtures/cli/no-such-app.mjs').exit;
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^heimdall worker: no app module at \S+no-such-app\.mjs$/m);
    const empty = await heimdall(h, 'worker', '--app', 'test/fixtures/cli/hold.mjs').exit;
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain("test/fixtures/cli/hold.mjs exports no worker configuration: 'export default { services: [...] }'");
  });
});
