// Runs every program in examples/ as a user would (a child process under tsx, with REDIS_URL
// and HEIMDALL_PREFIX set) and checks what it prints. A program is a top-level file of
// examples/; subfolders (examples/services) hold the modules the programs import. A new
// program with no checks below fails its test, so no example goes unexercised.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exitOf, ROOT, useHarness, type Harness } from './helpers.js';

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

/** The one line that matches `pattern`, as a match; fails naming the pattern otherwise. */
function line(out: Run, pattern: RegExp): RegExpMatchArray {
  const found = out.lines.map((l) => pattern.exec(l)).filter((m): m is RegExpExecArray => m !== null);
  expect(found.length, `expected one line matching ${pattern} in:\n${out.stdout}`).toBe(1);
  return found[0]!;
}

/** Keys left under the test's prefix (the examples delete theirs before exiting). */
async function keysLeft(h: Harness): Promise<string[]> {
  const left: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await h.admin.scan(cursor, 'MATCH', `${h.prefix}:*`, 'COUNT', 1000);
    left.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return left;
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

  'http-status.ts': (out) => {
    interface Get {
      path: string;
      code: number;
      body: Record<string, unknown>;
    }
    const gets: Get[] = [];
    for (const l of out.lines) {
      const m = /^GET (\S+) -> (\d{3}) (\{.*\})$/.exec(l);
      if (m) gets.push({ path: m[1]!, code: Number(m[2]), body: JSON.parse(m[3]!) as Record<string, unknown> });
    }
    expect(gets.map((g) => g.path.replace(new RegExp(ID), '<id>'))).toEqual([
      '/start?rows=3',
      '/start?rows=5',
      '/status',
      '/status?id=<id>',
      '/status',
      '/start?rows=-1',
      '/status?id=<id>',
    ]);
    const [start, again, queued, done, idle, failing, failed] = gets as [Get, Get, Get, Get, Get, Get, Get];
    const id = start.body.id as string;
    expect(id).toMatch(new RegExp(`^${ID}$`));
    // No worker yet: the export is queued, and a second start (other arguments, same key) returns it.
    expect(start).toEqual({ path: '/start?rows=3', code: 202, body: { id, status: 'PENDING', duplicate: false } });
    expect(again).toEqual({ path: '/start?rows=5', code: 200, body: { id, status: 'PENDING', duplicate: true } });
    expect(queued).toEqual({ path: '/status', code: 200, body: { id, status: 'PENDING' } });
    // After the worker ran it: its result by id, and no current export.
    expect(done).toEqual({
      path: `/status?id=${id}`,
      code: 200,
      body: { id, status: 'SUCCESS', result: { rows: 3, file: '/exports/export-3.csv' } },
    });
    expect(idle.code).toBe(404);
    // The lock was released, so a new export starts; it fails and /status shows the traceback.
    const second = failing.body.id as string;
    expect(failing.code).toBe(202);
    expect(failing.body.duplicate).toBe(false);
    expect(second).toMatch(new RegExp(`^${ID}$`));
    expect(second).not.toBe(id);
    expect(failed).toEqual({
      path: `/status?id=${second}`,
      code: 200,
      body: { id: second, status: 'FAILURE', error: 'RangeError: rows must be a whole number >= 0, got -1' },
    });
    const tb = out.lines.filter((l) => l.startsWith('traceback: '));
    expect(tb[0]).toBe('traceback: RangeError: rows must be a whole number >= 0, got -1');
    expect(tb[1]).toMatch(/^traceback: at _?ExportService\.runExport \(.*examples\/services\/export-service\.ts:\d+:\d+\)$/);
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
    expect(await keysLeft(h)).toEqual([]);
  });
});
