// The `heimdall` command (issue 11, point 3, first part), spawned as a user runs it: its output,
// --json, and exit codes, against a live system where a unique task holds a lock and a
// rate-limited task waits on a full window.
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Dispatcher, Task, Worker } from 'heimdall-tasks';
import { gate, useHarness, waitFor } from '../helpers.js';
import { runHeimdall as heimdall, spawnHeimdall } from '../fixtures/cli/heimdall.js';

let held = gate();

class Flaky {
  @Task({ queue: 'cli-reports', retries: { max: 1, backoff: '20ms', jitter: false } })
  async twice(): Promise<string> {
    if (currentTask().attempt === 1) throw new TypeError('attempt 1 fails');
    return 'second';
  }
}

class Reports {
  @Task({ unique: true, key: ([customer]: [number]) => `customer-${customer}`, queue: 'cli-reports', concurrency: { limit: 2, key: 'pdf' } })
  async build(customer: number): Promise<string> {
    currentTask().progress(0.4, 'rendering page 4 of 10');
    await held.promise;
    return `report-${customer}.pdf`;
  }

  @Task({ rateLimit: [1, '60s'], queue: 'cli-reports' })
  async notify(customer: number): Promise<number> {
    return customer;
  }

  @Task({ queue: 'cli-reports' })
  async broken(): Promise<never> {
    throw new RangeError('no such customer');
  }
}

const fresh = useHarness('cli');
const open: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  held.open();
  for (const c of open.splice(0).reverse()) await c.close();
  held = gate();
});

describe('heimdall', () => {
  it('inspect shows the held lock and the full rate window; workers, ping, status with progress; revoke; exit codes', { timeout: 60_000 }, async () => {
    const h = fresh();
    held = gate();
    const env = { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix };
    // A 1.5-s lease: the registry entry (running tasks, counts) is renewed every 0.5 s.
    const worker = new Worker({ connection: h.url, prefix: h.prefix, services: [new Reports()], queues: ['cli-reports'], name: 'cli-worker', leaseDuration: '1500ms' });
    const d = new Dispatcher({ connection: h.url, prefix: h.prefix });
    open.push(worker, d);
    await worker.start();
    const reports = d.tasks(Reports);
    const report = await reports.build.delay(42);
    await waitFor(async () => (await report.info()).progress !== undefined, { what: 'the report to run and report progress' });
    await reports.notify.delay(1);
    await reports.notify.delay(2);
    await waitFor(async () => (await h.admin.zcard(`${h.prefix}:{cli-reports}:delayed`)) === 1, { what: 'the second notify to wait for its window' });

    const queues = await heimdall(env, 'inspect', 'queues');
    expect(queues.code, queues.stderr).toBe(0);
    expect(queues.stdout).toMatch(/QUEUE\s+WAITING\s+DELAYED\s+RETRYING\s+RUNNING\s+DEAD\s+WORKERS\s+OLDEST WAIT\s+TASKS\/S\s+ERRORS\/S/);
    // One notify ran in the last minute (1/60 to 1/70 per second, rounded to 0.02 or 0.01).
    expect(queues.stdout).toMatch(/cli-reports\s+0\s+1\s+0\s+1\s+0\s+1\s+-\s+0\.0[12]\s+0\n/);

    const limitsText = await heimdall(env, 'inspect', 'limits', '--queue', 'cli-reports');
    expect(limitsText.stdout).toMatch(/QUEUE\s+TASK\s+WINDOW\s+STARTS\s+TURNS\s+NEXT SLOT\s+WAITING/);
    expect(limitsText.stdout).toMatch(/cli-reports\s+Reports\.notify\s+Reports\.notify\s+1\/1 per 60\.0 s\s+1\s+in [\d.]+ s\s+1\n/);

    const locks = await heimdall(env, 'inspect', 'locks', '--queue', 'cli-reports');
    expect(locks.code, locks.stderr).toBe(0);
    expect(locks.stdout).toMatch(new RegExp(`cli-reports\\s+Reports\\.build\\s+customer-42\\s+${report.id}\\s+STARTED\\s+\\d+ min`));

    // The CLI process does not know the task, so not its number of permits.
    const permits = await heimdall(env, 'inspect', 'permits');
    expect(permits.code, permits.stderr).toBe(0);
    expect(permits.stdout).toMatch(/SCOPE\s+KEY\s+HELD\s+HOLDERS\s+WAITING/);
    expect(permits.stdout).toMatch(new RegExp(`task Reports\\.build\\s+pdf\\s+1/\\?\\s+${report.id} \\(lapses in [\\d.]+ s\\)\\s+0\n`));
    const permitsJson = JSON.parse((await heimdall(env, 'inspect', 'permits', '--json')).stdout) as unknown;
    expect(permitsJson).toEqual([expect.objectContaining({ of: { task: 'Reports.build' }, scopeKey: 'pdf', waiting: 0, holders: [expect.objectContaining({ queue: 'cli-reports', id: report.id, attempt: 1 })] })]);

    const limits = await heimdall(env, 'inspect', 'limits', '--queue', 'cli-reports', '--json');
    expect(limits.code, limits.stderr).toBe(0);
    const { windows, named } = JSON.parse(limits.stdout) as { windows: { task: string; starts: number; limit: number; periodMs: number; nextFreeInMs: number }[]; named: unknown[] };
    expect(named).toEqual([]);
    expect(windows).toEqual([expect.objectContaining({ task: 'Reports.notify', starts: 1, limit: 1, periodMs: 60_000 })]);
    expect(windows[0]!.nextFreeInMs).toBeGreaterThan(50_000);

    await waitFor(async () => {
      const [w] = await d.workers({ queues: ['cli-reports'] });
      return w?.running.length === 1 && w.succeeded === 1;
    }, { what: 'a heartbeat with the running report and the notify that ran' });
    const workers = await heimdall(env, 'inspect', 'workers', '--queue', 'cli-reports');
    expect(workers.stdout).toMatch(/cli-worker\s+\S+\s+\d+\s+cli-reports\s+1\/10\s+1\s+0/);

    const ping = await heimdall(env, 'ping', '--timeout', '300');
    expect(ping.code, ping.stderr).toBe(0);
    expect(ping.stdout).toMatch(/^cli-worker: pong in [\d.]+ ms/);

    const status = await heimdall(env, 'status', report.id);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toContain('state    STARTED');
    expect(status.stdout).toContain('progress 40% rendering page 4 of 10');

    // status --wait: 0 for a success, 3 for a failure (with its error), 2 for a usage error.
    held.open();
    const done = await heimdall(env, 'status', report.id, '--wait', '--timeout', '20');
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toContain('result   "report-42.pdf"');
    const broken = await reports.broken.delay();
    const failed = await heimdall(env, 'status', broken.id, '--wait', '--json');
    expect(failed.code).toBe(3);
    expect(JSON.parse(failed.stdout)).toMatchObject({ state: 'FAILURE', error: { name: 'RangeError', message: 'no such customer' } });

    const later = await reports.notify.applyAsync([3], { countdown: 3600 });
    const revoked = await heimdall(env, 'revoke', later.id);
    expect(revoked).toMatchObject({ code: 0, stdout: `${later.id}: REVOKED\n` });

    // A typo'd id is not a PENDING task; a wait that runs out says so.
    const typo = await heimdall(env, 'status', 'no-such-id');
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain("no task no-such-id on queue 'default'");
    expect((await heimdall(env, 'revoke', 'no-such-id')).code).toBe(1);
    const pending = await reports.notify.applyAsync([4], { countdown: 3600 });
    const waited = await heimdall(env, 'status', pending.id, '--wait', '--timeout', '0.3');
    expect(waited.code).toBe(4);
    expect(waited.stderr).toContain('had not ended after 0.3 s (it is PENDING)');
    expect((await heimdall({ REDIS_URL: `${h.url}/abc`, HEIMDALL_PREFIX: h.prefix }, 'inspect')).code).toBe(2);
    expect((await heimdall(env, 'help', 'ping')).stdout).toContain('Usage: heimdall ping');

    expect((await heimdall(env, 'inspect', 'nonsense')).code).toBe(2);
    expect((await heimdall(env, 'status')).code).toBe(2);
    expect((await heimdall(env, 'frobnicate')).code).toBe(2);
    const help = await heimdall(env, 'inspect', '--help');
    expect(help).toMatchObject({ code: 0 });
    expect(help.stdout).toContain('Usage: heimdall inspect');
  });

  it('exits 1 with a one-line reason when Redis cannot be reached, and ping exits 1 when no worker answers', { timeout: 30_000 }, async () => {
    const h = fresh();
    const down = await heimdall({ REDIS_URL: 'redis://127.0.0.1:1', HEIMDALL_PREFIX: h.prefix }, 'inspect', 'queues');
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^heimdall inspect: .*Redis/);
    const nobody = await heimdall({ REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix }, 'ping', '--timeout', '200', '--queue', 'cli-nobody');
    expect(nobody.code).toBe(1);
    expect(nobody.stderr).toContain('no worker of cli-nobody answered within 200 ms');
  });

  it('locks release|extend and dead retry|drop change Redis only with --yes', { timeout: 30_000 }, async () => {
    const h = fresh();
    held = gate();
    const env = { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix };
    const worker = new Worker({ connection: h.url, prefix: h.prefix, services: [new Reports()], queues: ['cli-reports'] });
    const d = new Dispatcher({ connection: h.url, prefix: h.prefix });
    open.push(worker, d);
    await worker.start();
    const report = await d.tasks(Reports).build.delay(7);
    await waitFor(async () => (await report.status()) === 'STARTED', { what: 'the report to start' });
    const key = `${h.prefix}:{cli-reports}:lock:Reports.build:customer-7`;
    expect(await h.admin.get(key)).toBe(report.id);

    expect((await heimdall(env, 'locks', 'extend', key, '2h')).code).toBe(2);
    const extended = await heimdall(env, 'locks', 'extend', key, '2h', '--yes');
    expect(extended).toMatchObject({ code: 0, stdout: `extended ${key} (held by ${report.id}) for 120 min\n` });
    expect(await h.admin.pttl(key)).toBeGreaterThan(7_000_000);
    expect((await heimdall(env, 'locks', 'extend', key, 'soon', '--yes')).code).toBe(2);
    const refused = await heimdall(env, 'locks', 'release', key);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('locks release changes Redis: add --yes');
    expect(await h.admin.get(key)).toBe(report.id);
    const released = await heimdall(env, 'locks', 'release', key, '--yes');
    expect(released).toMatchObject({ code: 0, stdout: `released ${key} (held by ${report.id})\n` });
    expect(await h.admin.exists(key)).toBe(0);
    expect((await heimdall(env, 'locks', 'release', key, '--yes')).code).toBe(1);

    await h.admin.rpush(`${h.prefix}:{cli-reports}:wait`, 'ghost-cli');
    await waitFor(async () => (await h.admin.llen(`${h.prefix}:{cli-reports}:dead`)) === 1, { what: 'the dead letter' });
    const retried = await heimdall(env, 'dead', 'retry', 'cli-reports', '--yes');
    expect(retried).toMatchObject({ code: 0, stdout: 'retried 0\nskipped ghost-cli: not FAILURE (no record)\n' });
    expect((await heimdall(env, 'dead', 'drop', 'cli-reports')).code).toBe(2);
    const dropped = await heimdall(env, 'dead', 'drop', 'cli-reports', '--id', 'ghost-cli', '--yes', '--json');
    expect(JSON.parse(dropped.stdout)).toEqual({ done: 1, skipped: [] });
    expect(await h.admin.llen(`${h.prefix}:{cli-reports}:dead`)).toBe(0);
  });

  it('events follows the queue as it happens (from a time back, for some ids, as JSON lines) and stops on SIGINT; status lists every attempt', { timeout: 60_000 }, async () => {
    const h = fresh();
    const env = { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix };
    const worker = new Worker({ connection: h.url, prefix: h.prefix, services: [new Reports(), new Flaky()], queues: ['cli-reports'], name: 'cli-worker' });
    const d = new Dispatcher({ connection: h.url, prefix: h.prefix });
    open.push(worker, d);
    const early = await d.tasks(Reports).notify.delay(7);

    const live = spawnHeimdall(h, 'events', '--queue', 'cli-reports', '--since', '10m');
    await waitFor(() => live.seen.stderr.includes('Ctrl-C to stop'), { what: 'the events command to start' });
    // From 10 minutes back: the task queued before the command started is there.
    await waitFor(() => live.lines.some((l) => l.includes(`queued        Reports.notify ${early.id}`)), { what: 'the earlier queued event' });
    await worker.start();
    const flaky = await d.tasks(Flaky).twice.delay();
    expect(await flaky.get({ timeout: 10 })).toBe('second');
    await waitFor(() => live.lines.some((l) => l.includes(`succeeded     Flaky.twice ${flaky.id}`)), { what: 'the succeeded line' });
    const mine = live.lines.filter((l) => l.includes(flaky.id)).map((l) => l.split(/\s+/)[2]);
    expect(mine).toEqual(['queued', 'started', 'retried', 'started', 'succeeded']);
    expect(live.lines.find((l) => l.includes(`retried       Flaky.twice ${flaky.id}`))).toMatch(/TypeError: attempt 1 fails; again in 20 ms$/);
    live.child.kill('SIGINT');
    expect((await live.exit).code).toBe(0);

    // --id and --json: one JSON line per event of that task.
    const json = spawnHeimdall(h, 'events', '--queue', 'cli-reports', '--since', '10m', '--id', flaky.id, '--json');
    await waitFor(() => json.lines.length >= 5, { what: 'the JSON lines of one task' });
    expect(json.lines.map((l) => (JSON.parse(l) as { type: string; id: string }).id)).toEqual(Array(json.lines.length).fill(flaky.id));
    json.child.kill('SIGTERM');
    expect((await json.exit).code).toBe(0);
    expect((await heimdall(env, 'events', '--since', 'yesterday-ish')).code).toBe(2);

    const status = await heimdall(env, 'status', flaky.id);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/ATTEMPT\s+WORKER\s+STARTED\s+RAN\s+ENDED\s+ERROR\s+BACKOFF/);
    expect(status.stdout).toMatch(/\n1\s+cli-worker\s+\S+\s+[\d.]+ ms\s+retried\s+TypeError: attempt 1 fails\s+20 ms\n/);
    expect(status.stdout).toMatch(/\n2\s+cli-worker\s+\S+\s+[\d.]+ ms\s+SUCCESS\s+-\s+-/);
  });
});
