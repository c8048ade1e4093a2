/**
 * Lua scripts and round trips: transparent reload after SCRIPT FLUSH, one script call per
 * `delay`, and at most two client commands per task for a busy worker.
 *
 * Why a private redis-server: `INFO commandstats` and `SCRIPT FLUSH` are server-wide, and
 * vitest runs the other test files in parallel against the shared server. Counting there
 * would count their commands too, and flushing there would disturb them. So this file
 * starts its own redis-server on a free port (scripts/redis-launcher.mjs), where the only
 * clients are the ones these tests open.
 *
 * What counts as a client command: Redis counts the commands a Lua script calls in
 * commandstats as well (an EVALSHA that runs HGET, TIME, HSET, LPUSH adds one to each), so
 * the deltas mix the two. The commands our scripts can call are read from the scripts'
 * source (`redis.call('NAME'`); every other command in a delta (evalsha, blmove, script,
 * client, info, ...) can only have come from a client. Where a test must also rule out a
 * client sending a command that scripts use too (a stray HGET), it watches MONITOR, which
 * labels each command with its source: the client's address, or `lua` inside a script.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { AlreadyQueuedError, Task, type Worker } from 'heimdall-tasks';
import { allScripts } from '../../src/redis-scripts/scripts.generated.js';
import { FIELDS, Harness, usePrivateRedis, waitFor, commandStats } from '../helpers.js';

/** Commands our Lua scripts can call, lower-case, as INFO names them. */
const SCRIPT_COMMANDS: ReadonlySet<string> = new Set(
  allScripts.flatMap((s) => [...s.source.matchAll(/redis\.p?call\(\s*['"]([A-Za-z]+)['"]/g)].map((m) => m[1]!.toLowerCase())),
);

type Stats = Record<string, number>;


function delta(before: Stats, after: Stats): Stats {
  const d: Stats = {};
  for (const name of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const n = (after[name] ?? 0) - (before[name] ?? 0);
    if (n !== 0) d[name] = n;
  }
  return d;
}

/** The part of a delta that only clients can issue (no script of ours calls these). */
function clientOnly(d: Stats): Stats {
  return Object.fromEntries(Object.entries(d).filter(([name]) => !SCRIPT_COMMANDS.has(name.split('|')[0]!)));
}

function sum(d: Stats): number {
  return Object.values(d).reduce((a, b) => a + b, 0);
}

interface MonitorLine {
  source: string;
  command: string;
}

/** A MONITOR connection recording every command the server runs, with its source. */
async function monitor(admin: Redis): Promise<{ lines: MonitorLine[]; fence(): Promise<void>; close(): void }> {
  const mon = await admin.monitor();
  const lines: MonitorLine[] = [];
  mon.on('monitor', (_time: string, args: string[], source: string) => {
    lines.push({ source, command: String(args[0]).toLowerCase() });
  });
  let fences = 0;
  return {
    lines,
    // The feed is in execution order: once a marker sent now shows up, every earlier command has.
    async fence() {
      const marker = `fence-${++fences}`;
      await admin.echo(marker);
      await waitFor(() => lines.some((l) => l.command === 'echo'), { timeout: 5_000, what: `MONITOR to show ${marker}` });
      lines.splice(
        lines.findIndex((l) => l.command === 'echo'),
        1,
      );
    },
    close: () => mon.disconnect(),
  };
}

/** The MONITOR lines between our two INFO snapshots (sent from `adminAddr`). */
function between(lines: readonly MonitorLine[], adminAddr: string, what: string): MonitorLine[] {
  const infos = lines.flatMap((l, i) => (l.source === adminAddr && l.command === 'info' ? [i] : []));
  expect(infos, `${what}: MONITOR saw our two INFO snapshots`).toHaveLength(2);
  return lines.slice(infos[0]! + 1, infos[1]);
}

/** addr of the connection with this CLIENT SETNAME. */
async function addressOf(admin: Redis, name: string): Promise<string> {
  const list = (await admin.client('LIST')) as string;
  const line = list.split('\n').find((l) => l.includes(` name=${name} `));
  expect(line, `a connection named ${name}`).toBeDefined();
  return /(?:^| )addr=(\S+)/.exec(line!)![1]!;
}

function shaOf(name: string): string {
  const script = allScripts.find((s) => s.name === name);
  expect(script, `a script named ${name}`).toBeDefined();
  return script!.sha;
}

class ScriptsService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task({ unique: true })
  async single(n: number): Promise<number> {
    return n;
  }

  @Task({ unique: true, uniqueRaises: true })
  async strict(n: number): Promise<number> {
    return n;
  }

  @Task({ unique: true, rateLimit: [1000, 1] })
  async guarded(n: number): Promise<number> {
    return n;
  }
}

describe('scripts and round trips (private redis-server)', () => {
  const fresh = usePrivateRedis('scripts');

  it('the scripts call what we think they do (sanity check of the client-only filter)', () => {
    for (const cmd of ['time', 'hget', 'hset', 'lpush', 'rpop', 'set', 'get', 'zadd', 'spublish']) expect(SCRIPT_COMMANDS).toContain(cmd);
    for (const cmd of ['evalsha', 'eval', 'script', 'blmove', 'client', 'info', 'subscribe', 'ssubscribe', 'publish', 'ping', 'quit', 'hello', 'select', 'echo']) {
      expect(SCRIPT_COMMANDS).not.toContain(cmd);
    }
  });

  it('SCRIPT FLUSH between two dispatches: dispatcher and worker reload their scripts on NOSCRIPT', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(ScriptsService);
    const worker = h.worker({ services: [new ScriptsService()] });
    await worker.start();
    const shas = allScripts.map((s) => s.sha);

    const first = await tasks.add.delay(1, 2);
    expect(await first.get({ timeout: 10 })).toBe(3);

    await h.admin.script('FLUSH');
    expect(await h.admin.script('EXISTS', ...shas)).toEqual(shas.map(() => 0));
    // The worker is idle now: it is woken by the enqueue and must reload its own scripts.
    const second = await tasks.add.delay(2, 3);
    expect(second.duplicate).toBe(false);
    expect(await second.get({ timeout: 10 })).toBe(5);
    // Both sides loaded what they use again: the enqueue script, and the worker's fetch (which
    // also carries finishes).
    expect(await h.admin.script('EXISTS', shaOf('enqueue'), shaOf('fetch'))).toEqual([1, 1]);

    // Again, with a unique task and several tasks in flight around the flush.
    await h.admin.script('FLUSH');
    const handles = await Promise.all([tasks.single.delay(7), tasks.single.delay(7), tasks.add.delay(4, 4)]);
    expect(handles[1]!.duplicate).toBe(true);
    expect(handles[1]!.id).toBe(handles[0]!.id);
    await h.admin.script('FLUSH');
    const third = await tasks.add.delay(5, 5);
    expect(await Promise.all([handles[0]!.get({ timeout: 10 }), handles[2]!.get({ timeout: 10 }), third.get({ timeout: 10 })])).toEqual([
      7, 8, 10,
    ]);
  });

  it('one delay costs exactly one script call and no other client command', async () => {
    const h = fresh();
    const dispatcher = h.dispatcher();
    const tasks = dispatcher.tasks(ScriptsService);
    // Warm-up, excluded: the connection's handshake (CLIENT SETNAME, INFO) and SCRIPT LOAD.
    await tasks.add.delay(0, 0);
    const dispatcherAddr = await addressOf(h.admin, `heimdall:${h.prefix}:dispatcher:commands`);
    const adminAddr = await addressOf(h.admin, `admin-${h.prefix}`);
    const mon = await monitor(h.admin);
    try {
      const cases: [string, () => Promise<unknown>][] = [
        ['delay', () => tasks.add.delay(1, 2)],
        ['applyAsync with countdown', () => tasks.add.applyAsync([1, 2], { countdown: 60 })],
        ['unique delay, taking the lock', () => tasks.single.delay(1)],
        ['unique delay, a duplicate', () => tasks.single.delay(1)],
        ['uniqueRaises delay, taking the lock', () => tasks.strict.delay(1)],
        [
          'uniqueRaises delay, throwing AlreadyQueuedError',
          () => expect(tasks.strict.delay(1)).rejects.toBeInstanceOf(AlreadyQueuedError),
        ],
      ];
      const figures: string[] = [];
      for (const [label, call] of cases) {
        await mon.fence();
        mon.lines.length = 0;
        const before = await commandStats(h.admin);
        await call();
        const after = await commandStats(h.admin);
        await mon.fence();

        // INFO commandstats: one EVALSHA, and no client-only command but our own INFO.
        const d = delta(before, after);
        expect(clientOnly(d), label).toEqual({ evalsha: 1, info: 1 });
        // MONITOR: between our two INFOs the dispatcher sent one command, EVALSHA; every other
        // command ran inside the script, and they account for all the rest of the delta.
        const window = between(mon.lines, adminAddr, label);
        expect(window.filter((l) => l.source !== 'lua'), label).toEqual([{ source: dispatcherAddr, command: 'evalsha' }]);
        const insideScript = window.filter((l) => l.source === 'lua').length;
        expect(sum(d) - 2, `${label}: commands counted besides EVALSHA and INFO all ran inside the script`).toBe(insideScript);
        figures.push(`${label}: ${sum(clientOnly(d)) - 1} client command (+${insideScript} inside the script)`);
      }
      console.log(`[round trips] per dispatch:\n  ${figures.join('\n  ')}`);
    } finally {
      mon.close();
    }
  });

  it('a message that carries its lock and rate limit costs no admission call; one that lacks them costs one', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new ScriptsService()] });
    await worker.start();
    const tasks = h.dispatcher().tasks(ScriptsService);
    const admitSha = shaOf('admit');
    const mon = await h.admin.monitor();
    const admissions: string[] = [];
    mon.on('monitor', (_time: string, args: string[]) => {
      if (String(args[0]).toLowerCase() === 'evalsha' && args[1] === admitSha) admissions.push(String(args[3 + Number(args[2]) + 2])); // evalsha, sha, numkeys, the keys, base, worker, id
    });
    try {
      // Sent by a process that knows the task: the message carries lk and rk.
      const carried = await Promise.all(Array.from({ length: 20 }, (_, n) => tasks.guarded.delay(n)));
      expect(await Promise.all(carried.map((r) => r.get({ timeout: 10 })))).toEqual(Array.from({ length: 20 }, (_, n) => n));
      // One without them, as a process that did not know the task writes it: the worker admits it.
      const bare = await tasks.guarded.applyAsync([100], { countdown: 60 });
      const { lockKey, lockUnique, lockTtl, rateKey, rateLimit, ratePeriod } = FIELDS;
      await h.admin.hdel(h.taskKey(bare.id), lockKey, lockUnique, lockTtl, rateKey, rateLimit, ratePeriod);
      await h.admin.zadd(h.queueKey('delayed'), 0, bare.id);
      await h.admin.lpush(h.queueKey('wait'), ''); // the wake-up marker: the idle worker fetches now
      expect(await bare.get({ timeout: 10 })).toBe(100);
      await h.admin.echo('fence');
      await waitFor(() => admissions.length >= 1, { what: 'MONITOR to show the admission' });
      expect(admissions).toEqual([bare.id]);
      // The admission wrote what the message lacked, as a producer that knew the task would have.
      // The lock as enqueue stores a producer's: its key part in lu (includes/record-lock.lua).
      expect(await h.admin.hexists(h.taskKey(bare.id), lockKey)).toBe(0);
      expect([await h.recordLock(bare.id), ...(await h.admin.hmget(h.taskKey(bare.id), rateKey, rateLimit, ratePeriod))]).toEqual([
        h.queueKeys().lock('ScriptsService.guarded', createHash('sha1').update('[100]').digest('hex')),
        h.queueKeys().rate('ScriptsService.guarded', undefined),
        '1000',
        '1000',
      ]);
    } finally {
      mon.disconnect();
    }
  });

  for (const concurrency of [1, 10]) {
    it(`a busy worker spends at most two client commands per task (concurrency ${concurrency}, N = 300)`, async () => {
      const h = fresh();
      const N = 300;
      const dispatcher = h.dispatcher();
      const tasks = dispatcher.tasks(ScriptsService);
      const handles = await Promise.all(Array.from({ length: N }, (_, i) => tasks.add.delay(i, 1)));
      expect(await h.admin.llen(h.queueKey('wait'))).toBe(N);
      await dispatcher.close();

      const adminAddr = await addressOf(h.admin, `admin-${h.prefix}`);
      const mon = await monitor(h.admin);
      let worker: Worker | undefined;
      try {
        worker = h.worker({ services: [new ScriptsService()], concurrency });
        let succeeded = 0;
        const allDone = new Promise<void>((resolve) =>
          worker!.on('succeeded', () => {
            if (++succeeded === N) resolve();
          }),
        );
        const before = await commandStats(h.admin);
        await worker.start();
        await allDone;
        const after = await commandStats(h.admin);
        await mon.fence();

        const d = delta(before, after);
        const client = clientOnly(d);
        // Our own INFO (the first snapshot) is the one client command that is not the worker's.
        const workerCommands = sum(client) - 1;
        const perTask = workerCommands / N;
        const scriptCalls = (client.evalsha ?? 0) / N;
        const startup = (client['script|load'] ?? 0) + (client['client|setname'] ?? 0) + ((client.info ?? 0) - 1);
        console.log(
          `[round trips] worker concurrency ${concurrency}: ${workerCommands} client commands for ${N} tasks = ${perTask.toFixed(3)} per task ` +
            `(evalsha ${client.evalsha ?? 0}, blmove ${client.blmove ?? 0}, startup ${startup}; ` +
            `${((workerCommands - startup) / N).toFixed(3)} per task without startup; ${scriptCalls.toFixed(3)} script calls per task) ${JSON.stringify(client)}`,
        );
        expect(perTask).toBeLessThanOrEqual(2);
        expect(client.evalsha).toBeGreaterThan(0);

        // MONITOR: the worker's connections sent only client-level commands (no stray HGET
        // and the like outside a script), and as many as INFO says.
        const fromWorker = between(mon.lines, adminAddr, 'worker run').filter((l) => l.source !== 'lua' && l.source !== adminAddr);
        const stray = fromWorker.filter((l) => SCRIPT_COMMANDS.has(l.command));
        expect(stray).toEqual([]);
        expect(fromWorker.length / N).toBeLessThanOrEqual(2);

        expect(await h.field(handles[N - 1]!.id, 'state')).toBe('SUCCESS');
        expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
      } finally {
        mon.close();
      }
    });
  }
});
