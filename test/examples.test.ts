// Runs every program in examples/ as a user would (a child process under tsx, with REDIS_URL
// and HEIMDALL_PREFIX set) and checks what it prints. A program is a top-level file of
// examples/; subfolders (examples/services) hold the modules the programs import. A new
// program with no checks below fails its test, so no example goes unexercised. The last tests
// stop the programs with SIGINT and SIGTERM mid-run, as a user or a supervisor would, and check
// that they close their worker gracefully (handing a running task back to the queue).
import type { ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exitOf, ROOT, useHarness, waitFor, type Harness } from './helpers.js';

const PROGRAM = /\.(?:ts|mts|cts|js|mjs|cjs)$/;
const programs = readdirSync(join(ROOT, 'examples'), { withFileTypes: true })
  .filter((e) => e.isFile() && PROGRAM.test(e.name) && !e.name.endsWith('.d.ts'))
  .map((e) => e.name)
  .sort();

const ID = '[0-9A-Za-z]{22}';
// Longest a program may take before the test kills it: the quickstart needs about 3 s.
const KILL_AFTER_MS = 30_000;

interface Run {
  stdout: string;
  stderr: string;
  lines: string[];
}

/** Runs examples/<file> to its end and returns its output; fails on a non-zero exit or a hang. */
async function run(h: Harness, file: string): Promise<Run> {
  const child = h.spawnTs(`examples/${file}`);
  const timer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
  const { code, stdout, stderr } = await exitOf(child).finally(() => clearTimeout(timer));
  expect(code, `examples/${file} exited with ${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`).toBe(0);
  return { stdout, stderr, lines: stdout.split('\n').map((l) => l.trim()) };
}

/** A program still running: its process, a way to wait for a line of its output, and its exit. */
interface Live {
  child: ChildProcess;
  /** Resolves with the first stdout line matching `pattern`, as soon as it is printed. */
  line(pattern: RegExp): Promise<RegExpExecArray>;
  /** Resolves when the program has exited, with its output. */
  exit: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Starts examples/<file> with arguments, as `run` does, without waiting for its end. */
function launch(h: Harness, file: string, args: string[] = []): Live {
  const child = h.spawnTs(`examples/${file}`, {}, args);
  const exit = exitOf(child);
  let seen = '';
  const watchers = new Set<() => void>();
  child.stdout?.on('data', (d: Buffer) => {
    seen += d.toString();
    for (const check of [...watchers]) check();
  });
  return {
    child,
    exit,
    line: (pattern) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`no line matching ${pattern} within ${KILL_AFTER_MS} ms:\n${seen}`)), KILL_AFTER_MS);
        const finish = (err?: Error, match?: RegExpExecArray): void => {
          clearTimeout(timer);
          watchers.delete(check);
          if (match) resolve(match);
          else reject(err);
        };
        // Only complete lines count, so a match is never cut off mid-line.
        const check = (): void => {
          for (const l of seen.split('\n').slice(0, -1)) {
            const m = pattern.exec(l.trim());
            if (m) return finish(undefined, m);
          }
        };
        watchers.add(check);
        void exit.then(({ code, stderr }) => finish(new Error(`exited with ${code} before printing a line matching ${pattern}:\n${seen}\n${stderr}`)));
        check();
      }),
  };
}

/** Kills a program a failed test left running. */
function stop(live: Live): void {
  if (live.child.exitCode === null && live.child.signalCode === null) live.child.kill('SIGKILL');
}

/** The one line that matches `pattern`, as a match; fails naming the pattern otherwise. */
function line(out: Run, pattern: RegExp): RegExpMatchArray {
  const found = out.lines.map((l) => pattern.exec(l)).filter((m): m is RegExpExecArray => m !== null);
  expect(found.length, `expected one line matching ${pattern} in:\n${out.stdout}`).toBe(1);
  return found[0]!;
}

const checks: Record<string, (out: Run, h: Harness) => void | Promise<void>> = {
  'quickstart.ts': (out, h) => {
    line(out, new RegExp(`^heimdall-tasks quickstart on redis://\\S+, key prefix '${h.prefix}'$`));

    // 1. Ten clicks on a unique task: one task, nine duplicates carrying its id.
    const [, id] = line(out, new RegExp(`^10 clicks -> 1 task \\((${ID})\\), 9 duplicates returned that same task\\.$`));
    line(out, new RegExp(`^generateReport\\.current\\(42\\) names the lock holder: ${id}\\.$`));

    // 2. The result, awaited; then the lock is gone and a new click makes a new task.
    line(out, /^Result: \{"url":"https:\/\/reports\.example\.com\/customer-42\.pdf","pages":12\}$/);
    line(out, /^State SUCCESS, ran \d+ ms on worker \S+\.$/);
    const [, second] = line(out, new RegExp(`^The lock ended with the task: an 11th click starts a new task (${ID}) \\(duplicate: false\\)\\.$`));
    expect(second).not.toBe(id);

    // 3. Rate limit [2, 1]: six starts, each customer once, rescheduled ones reported.
    const started = out.lines.filter((l) => /^\+\d+\.\d{3} s {2}download for customer \d started$/.test(l));
    expect(started.map((l) => Number(/customer (\d)/.exec(l)![1])).sort()).toEqual([1, 2, 3, 4, 5, 6]);
    const limited = out.lines.filter((l) => /^\+\d+\.\d{3} s {2}download for customer \d is over the limit: rescheduled in \d+\.\d{3} s$/.test(l));
    // All six are queued at once, so the four that do not fit the first window are each sent back at least once.
    expect(limited.length).toBeGreaterThanOrEqual(4);
    const [, list] = line(out, /^Start times from info\(\)\.startedAt \(Redis clock\), seconds after the first: (.+)$/);
    const offsets = list!.split(', ').map((s) => Math.round(Number(s) * 1000));
    expect(offsets).toHaveLength(6);
    expect(offsets[0]).toBe(0);
    // Server-clock start times: any three consecutive starts span at least the 1 s period.
    for (let i = 2; i < offsets.length; i++) expect(offsets[i]! - offsets[i - 2]!).toBeGreaterThanOrEqual(1000);
    line(out, /^No 1 s window holds more than 2 starts\.$/);

    // 4. The failure, with the remote error's name, message and traceback.
    line(out, new RegExp(`^get\\(\\) rejected with TaskFailedError \\(code HEIMDALL_TASK_FAILED\\) for task ${ID}:$`));
    line(out, /^name: {4}PaymentDeclinedError$/);
    line(out, /^message: card of customer 7 was declined for 19\.99 EUR$/);
    const tb = out.lines.indexOf('traceback (first 3 lines):');
    expect(tb).toBeGreaterThan(0);
    expect(out.lines[tb + 1]).toBe('PaymentDeclinedError: card of customer 7 was declined for 19.99 EUR');
    expect(out.lines[tb + 2]).toMatch(/^at callGateway \(.*examples\/services\/report-service\.ts:\d+:\d+\)$/);
    expect(out.lines[tb + 3]).toMatch(/^at _?ReportService\.chargeCard \(.*examples\/services\/report-service\.ts:\d+:\d+\)$/);
    line(out, /^status\(\) -> FAILURE$/);

    line(out, /^Closed the worker and the dispatcher and deleted the demo keys\. Done\.$/);
  },

  'http-api.ts': (out) => {
    interface Call {
      method: string;
      path: string;
      body: unknown;
      code: number;
      answer: Record<string, unknown>;
    }
    const calls: Call[] = [];
    for (const l of out.lines) {
      const m = /^(GET|POST|DELETE) (\S+)(?: (\{[^}]*\}))? -> (\d{3}) (\{.*\})$/.exec(l);
      if (m) {
        calls.push({
          method: m[1]!,
          path: m[2]!,
          body: m[3] === undefined ? undefined : (JSON.parse(m[3]) as unknown),
          code: Number(m[4]),
          answer: JSON.parse(m[5]!) as Record<string, unknown>,
        });
      }
    }
    expect(calls.map((c) => `${c.method} ${c.path.replace(new RegExp(ID), '<id>')}`)).toEqual([
      'POST /reports',
      'POST /reports',
      'GET /reports/current',
      'GET /reports/<id>',
      'GET /reports/current',
      'POST /reports',
      'GET /reports/<id>',
      'POST /reports',
      'GET /reports/current',
      'DELETE /reports/<id>',
      'GET /reports/<id>',
      'POST /reports',
      'DELETE /reports/<id>',
    ]);
    const [start, again, queued, done, idle, failing, failed, big, running, cancel, revoked, next, late] = calls as [
      Call, Call, Call, Call, Call, Call, Call, Call, Call, Call, Call, Call, Call,
    ];
    const id = start.answer.id as string;
    expect(id).toMatch(new RegExp(`^${ID}$`));
    // No worker yet: the report is queued, and a second start (other arguments, same key) is
    // refused with the report that holds the lock.
    expect(start).toMatchObject({ body: { pages: 3 }, code: 202, answer: { id, status: 'PENDING' } });
    expect(again).toMatchObject({ body: { pages: 5 }, code: 409, answer: { error: 'a report is already queued or running', id, status: 'PENDING' } });
    expect(queued).toMatchObject({ code: 200, answer: { id, status: 'PENDING' } });
    // After the worker ran it: its result by id, and no current report.
    expect(done).toEqual({
      method: 'GET',
      path: `/reports/${id}`,
      body: undefined,
      code: 200,
      answer: { id, status: 'SUCCESS', result: { pages: 3, file: '/reports/report-3.pdf' } },
    });
    expect(idle).toMatchObject({ code: 404, answer: { error: 'no report is queued or running' } });
    // The lock was released, so a new report starts; it fails and GET shows the traceback.
    const second = failing.answer.id as string;
    expect(failing.code).toBe(202);
    expect(second).toMatch(new RegExp(`^${ID}$`));
    expect(second).not.toBe(id);
    expect(failed).toMatchObject({
      path: `/reports/${second}`,
      code: 200,
      answer: { id: second, status: 'FAILURE', error: 'RangeError: pages must be a whole number >= 0, got -1' },
    });
    const tb = out.lines.filter((l) => l.startsWith('traceback: '));
    expect(tb[0]).toBe('traceback: RangeError: pages must be a whole number >= 0, got -1');
    expect(tb[1]).toMatch(/^traceback: at _?ReportBuilder\.build \(.*examples\/services\/report-builder\.ts:\d+:\d+\)$/);
    // Only the FAILURE shows a traceback (the REVOKED report shows its reason instead).
    expect(tb).toHaveLength(3);

    // Cancel: a 100 s report, revoked while it runs (the program waited for the worker's
    // 'started' event), is told through Redis, stops at its next step and ends REVOKED.
    const third = big.answer.id as string;
    expect(big.code).toBe(202);
    expect([id, second]).not.toContain(third);
    expect(['PENDING', 'STARTED']).toContain(big.answer.status);
    expect(running).toMatchObject({ code: 200, answer: { id: third, status: 'STARTED' } });
    // revoke() without terminate answers STARTED: the signal is fired, the task has yet to stop.
    expect(cancel).toMatchObject({ path: `/reports/${third}`, code: 202, answer: { id: third, status: 'STARTED' } });
    line(out, new RegExp(`^get\\(\\) rejected with TaskRevokedError: task ${third} was revoked \\(revoked\\)$`));
    expect(revoked).toMatchObject({ path: `/reports/${third}`, code: 200, answer: { id: third, status: 'REVOKED', reason: 'revoked' } });
    // Its lock went with it: the next report is a new task at once, not refused.
    expect(next.code).toBe(202);
    expect([id, second, third]).not.toContain(next.answer.id);
    expect(['PENDING', 'STARTED', 'SUCCESS']).toContain(next.answer.status);
    // A report that has ended cannot be cancelled.
    expect(late).toMatchObject({ path: `/reports/${next.answer.id as string}`, code: 409, answer: { status: 'SUCCESS', error: 'it has already ended' } });
    line(out, /^Closed the server, the worker and the dispatcher\. Done\.$/);
  },
};

describe('examples', () => {
  const fresh = useHarness('examples');

  it('finds the programs, and every check belongs to one', () => {
    expect(programs).toContain('quickstart.ts');
    for (const file of Object.keys(checks)) expect(programs, `checks for a missing examples/${file}`).toContain(file);
  });

  it.each(programs)('examples/%s runs, prints what it should, exits 0 and leaves no keys', async (file) => {
    const h = fresh();
    const out = await run(h, file);
    expect(out.stderr).toBe('');
    const check = checks[file];
    if (!check) throw new Error(`examples/${file} is a program with no checks: add them to test/examples.test.ts`);
    await check(out, h);
    expect(await h.keys()).toEqual([]);
  });

  it('examples/quickstart.ts closes its worker on SIGINT mid-tour, exits 0 and leaves no keys', async () => {
    const h = fresh();
    const live = launch(h, 'quickstart.ts');
    try {
      // The rate-limit part takes 2 s at least (six starts at 2 per second), so the signal lands in it.
      await live.line(/^3\. Six downloads of a task with rateLimit \[2, 1\]/);
      live.child.kill('SIGINT');
      const { code, stdout, stderr } = await live.exit;
      expect(code, `stdout:\n${stdout}\nstderr:\n${stderr}`).toBe(0);
      expect(stderr).toBe('');
      const lines = stdout.split('\n').map((l) => l.trim());
      const signalled = lines.indexOf('SIGINT: closing the worker; running tasks get 5 s to end, then go back to the queue');
      const closed = lines.indexOf('Closed the worker and the dispatcher and deleted the demo keys. Done.');
      expect(signalled).toBeGreaterThan(0);
      expect(closed).toBeGreaterThan(signalled);
      expect(lines).not.toContain('4. A task that fails: chargeCard(7, 1999)');
      expect(await h.keys()).toEqual([]);
    } finally {
      stop(live);
    }
  });

  it('examples/http-api.ts --serve: real HTTP requests; DELETE ?terminate=1 frees the lock at once, an unknown id is 404, SIGTERM hands the running report back', async () => {
    const h = fresh();
    const live = launch(h, 'http-api.ts', ['--serve']);
    try {
      const [, base] = await live.line(/^Serving (http:\/\/127\.0\.0\.1:\d+) until Ctrl-C or SIGTERM;/);
      const request = async (method: string, path: string, body?: unknown): Promise<{ code: number; body: Record<string, unknown> }> => {
        const res = await fetch(base! + path, { method, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
        return { code: res.status, body: (await res.json()) as Record<string, unknown> };
      };
      const startedReport = async (): Promise<string> => {
        const started = await request('POST', '/reports', { pages: 10_000_000 });
        expect(started.code).toBe(202);
        const id = started.body.id as string;
        await waitFor(async () => (await request('GET', '/reports/current')).body.status === 'STARTED', { what: `report ${id} to start` });
        return id;
      };

      // A second start while one runs is refused with the running one.
      const first = await startedReport();
      expect(await request('POST', '/reports', { pages: 1 })).toEqual({
        code: 409,
        body: { error: 'a report is already queued or running', id: first, status: 'STARTED' },
      });
      // terminate: REVOKED at once (200, not 202), and the lock is free at once.
      expect(await request('DELETE', `/reports/${first}?terminate=1`)).toEqual({ code: 200, body: { id: first, status: 'REVOKED' } });
      expect(await request('GET', `/reports/${first}`)).toEqual({ code: 200, body: { id: first, status: 'REVOKED', reason: 'revoked' } });
      expect((await request('GET', '/reports/current')).code).toBe(404);
      expect(await request('DELETE', `/reports/${first}`)).toEqual({ code: 200, body: { id: first, status: 'REVOKED' } });
      expect(await request('GET', '/reports/no-such-id')).toEqual({ code: 404, body: { id: 'no-such-id', error: 'no such report' } });

      // Its events as Server-Sent Events, from when it was sent to its end, progress included.
      const short = await request('POST', '/reports', { pages: 3000 });
      expect(short.code).toBe(202);
      const sse = await fetch(`${base!}/reports/${String(short.body.id)}/events`);
      expect(sse.headers.get('content-type')).toBe('text/event-stream');
      const frames = (await sse.text()).split('\n\n').filter((f) => f !== '');
      const types = frames.map((f) => /^event: (\S+)$/m.exec(f)?.[1]);
      expect(types[0]).toBe('queued');
      expect(types[1]).toBe('started');
      expect(types.at(-1)).toBe('succeeded');
      expect(types.filter((t) => t === 'progress').length).toBeGreaterThanOrEqual(1);
      const last = JSON.parse(/^data: (.*)$/m.exec(frames.at(-1)!)![1]!) as { id: string; name: string };
      expect(last).toMatchObject({ id: short.body.id, name: 'ReportBuilder.build' });

      // A second report runs when SIGTERM arrives: after the 1 s close timeout its signal fires
      // and it goes back to the queue, PENDING with the same id, still holding the lock.
      const second = await startedReport();
      expect(second).not.toBe(first);
      live.child.kill('SIGTERM');
      const { code, stdout, stderr } = await live.exit;
      expect(code, `stdout:\n${stdout}\nstderr:\n${stderr}`).toBe(0);
      expect(stderr).toBe('');
      const lines = stdout.split('\n').map((l) => l.trim());
      const signalled = lines.indexOf('SIGTERM: closing the worker; a running report gets 1 s to end, then goes back to the queue');
      const handedBack = lines.indexOf(`Report ${second} was handed back: it is PENDING and still holds the lock, for the next worker to run.`);
      const closed = lines.indexOf('Closed the server, the worker and the dispatcher. Done.');
      expect(signalled).toBeGreaterThan(0);
      expect(handedBack).toBeGreaterThan(signalled);
      expect(closed).toBeGreaterThan(handedBack);
      expect(await h.keys()).toEqual([]);
    } finally {
      stop(live);
    }
  });
});
