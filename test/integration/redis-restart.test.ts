// Redis restarting under a running worker process: a redis-server of the test's own
// (appendonly yes, appendfsync always) is stopped with SIGTERM and started again on the same
// port and directory while 1,000 tasks are queued and a worker process runs them. Every run
// records its start and completion in Redis from inside the task, with a run id, so a task
// that ran twice is told apart from a record ioredis re-sent after the reconnect.
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskResult } from 'heimdall-tasks';
import { nextEvent, reportFigures, scanKeys, settleWithin, useHarness, waitFor } from '../helpers.js';
import { byTask, duplicates, OwnRedis, readRuns } from '../fixtures/faults/control.js';
import { ReplyDropper } from '../fixtures/faults/reply-dropper.js';
import { FaultService, Gate, RunLog, faultKeys } from '../fixtures/faults/services.js';
import { startWorkerProcess, stopWorkerProcesses } from '../fixtures/worker-processes.js';
import { enqueue as enqueueScript, fetch as fetchScript } from '../../src/redis-scripts/scripts.generated.js';

const TASKS = 1000;
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Count of an error reply kind in INFO errorstats, e.g. NOSCRIPT. */
async function errorCount(client: Redis, kind: string): Promise<number> {
  const info = await client.info('errorstats');
  return Number(new RegExp(`^errorstat_${kind}:count=(\\d+)`, 'm').exec(info)?.[1] ?? 0);
}

describe('Redis restart (appendonly, appendfsync always)', () => {
  const fresh = useHarness('restart');
  let server: OwnRedis | undefined;
  const cleanups: (() => Promise<void> | void)[] = [];

  // Registered after useHarness, so it runs before the harness disposes (after hooks run in reverse).
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await server?.dispose();
    server = undefined;
  });

  function dispatcher(prefix: string, connection: string | Record<string, unknown>): Dispatcher {
    const d = new Dispatcher({ connection, prefix });
    cleanups.push(() => d.close());
    return d;
  }

  function client(url: string, name: string): Redis {
    const c = new Redis(url, { connectionName: name });
    c.on('error', () => undefined);
    cleanups.push(() => c.disconnect());
    return c;
  }

  it('1,000 queued tasks all finish exactly once across a restart; dispatches during the outage succeed after it or fail fast, never hang', { timeout: 60_000 }, async () => {
    const h = fresh();
    server = await OwnRedis.create();
    const admin = client(server.url, `admin-${h.prefix}`);
    const d = dispatcher(h.prefix, server.url);
    const quick = d.tasks(FaultService).quick;
    const handles: TaskResult<number>[] = await Promise.all(range(TASKS).map((n) => quick.delay(n)));
    expect(await admin.llen(h.queueKey('wait'))).toBe(TASKS);

    const w = await startWorkerProcess(h, { services: ['fault'], concurrency: 20, lease: '5s' }, { url: server.url, client: admin });
    const runsKey = faultKeys(h.prefix).runs;
    // Restart mid-run: some done, most still queued.
    await waitFor(async () => (await admin.llen(runsKey)) >= 200, { timeout: 30_000, interval: 10, what: 'the first 100 tasks to run' });

    const doneBeforeStop = (await readRuns(admin, h.prefix)).filter((e) => e.ev === 'done').length;
    const linesBefore = w.lines.length;
    const downAt = Date.now();
    await server.stop();
    const stoppedAt = Date.now();
    // A dispatch during the outage with the default client settings waits for the reconnect...
    const patient = quick.delay(TASKS);
    // ...and one whose client gives up after one retry fails with a clear error.
    const impatient = dispatcher(h.prefix, { host: '127.0.0.1', port: server.port, maxRetriesPerRequest: 1 });
    const refused = await settleWithin(impatient.tasks(FaultService).quick.delay(-1), 10_000, 'a dispatch with maxRetriesPerRequest 1');
    expect(refused.ok).toBe(false);
    const refusal = (refused as { error: Error & { code?: string; cause?: Error } }).error;
    expect(refusal).toMatchObject({ name: 'RedisUnavailableError', code: 'HEIMDALL_REDIS_UNAVAILABLE' });
    expect(refusal.cause?.name).toBe('MaxRetriesPerRequestError');
    // A read gives up the same way, with the same class.
    const read = await settleWithin(impatient.result('any-id').status(), 10_000, 'a status() with maxRetriesPerRequest 1');
    expect((read as { error?: { name?: string; message?: string } }).error).toMatchObject({
      name: 'RedisUnavailableError',
      message: expect.stringMatching(/^reading the state of task any-id: /),
    });
    // Redis stays down until the worker process has noticed (a refused reconnect), so the
    // worker goes through its reconnect path, not just a blip.
    await waitFor(
      () => {
        if (w.exited) throw new Error(`worker exited:\n${w.exited.stderr}`);
        return w.lines.slice(linesBefore).some((l) => l.startsWith('error ') && l.includes('ECONNREFUSED'));
      },
      { timeout: 10_000, interval: 10, what: 'the worker process to notice Redis is down' },
    );
    await server.start();
    const upAt = Date.now();

    const sent = await settleWithin(patient, 20_000, 'a dispatch made during the outage');
    if (!sent.ok) throw sent.error;
    handles.push(sent.value);
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 40_000 })));
    expect(results).toEqual([...range(TASKS).map((n) => n * 2), TASKS * 2]);

    const ids = handles.map((r) => r.id);
    const runs = await readRuns(admin, h.prefix);
    const tasks = byTask(runs);
    expect(tasks.size).toBe(TASKS + 1);
    const ranTwice = [...tasks.entries()].filter(([, t]) => t.dones.length !== 1 || t.starts.length !== 1);
    const infos = await Promise.all(handles.map((r) => r.info()));
    const recovered = await Promise.all(ids.map((id) => admin.hget(h.taskKey(id), 'rc')));
    const resent = Number((await admin.get(faultKeys(h.prefix).resent)) ?? 0);
    const noscript = await errorCount(admin, 'NOSCRIPT');
    const [summary] = await stopWorkerProcesses([w]);
    const figures = {
      tasks: TASKS + 1,
      restarts: 1,
      losses: infos.filter((i) => i.state !== 'SUCCESS').length,
      duplicates: duplicates(runs),
      startedTwice: ranTwice.length,
      recoveredAfterLostLease: recovered.filter((r) => r !== null).length,
      attemptsOver1: infos.filter((i) => i.attempts > 1).length,
      recordsResentByIoredis: resent,
      doneBeforeStop,
      outageMs: upAt - downAt,
      stopMs: stoppedAt - downAt,
      noscriptReplies: noscript,
      workerSucceededEvents: summary!.succeeded,
      staleFinishErrors: summary!.errors.filter((e) => e.includes('its result was not stored')).length,
      workerErrors: summary!.errors.length,
    };
    reportFigures('redis-restart', figures);
    if (summary!.errors.length > 0) console.info(`[worker errors]\n${summary!.errors.join('\n')}`);
    if (ranTwice.length > 0) console.info(`[ran twice]\n${ranTwice.map(([id, t]) => `${id}: ${JSON.stringify(t)}`).join('\n')}`);

    // Nothing lost, nothing run twice.
    expect(figures.losses).toBe(0);
    expect(ranTwice).toEqual([]);
    expect(new Set(runs.filter((e) => e.ev === 'done').map((e) => e.id))).toEqual(new Set(ids));
    expect(infos.map((i) => i.state)).toEqual(ids.map(() => 'SUCCESS'));
    // The worker and the dispatcher reloaded their scripts after the restart emptied the cache.
    expect(noscript).toBeGreaterThanOrEqual(2);
    expect(summary!.failed).toBe(0);
    // A finish or fetch whose reply the restart lost is treated as the same call: every result
    // is reported as succeeded, and no task started by a lost reply waits for its lease.
    expect(figures.workerSucceededEvents).toBe(TASKS + 1);
    expect(figures.attemptsOver1).toBe(0);
    // The refused dispatch left nothing behind: 1,001 task records, queues empty.
    expect(await scanKeys(admin, h.taskKey('*'))).toHaveLength(TASKS + 1);
    expect(await admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await admin.zcard(h.queueKey('active'))).toBe(0);
    expect(await admin.zcard(h.queueKey('delayed'))).toBe(0);
  });

  it('with Redis down for good, a dispatch with default client settings fails with RedisUnavailableError within a bound', { timeout: 60_000 }, async () => {
    const h = fresh();
    server = await OwnRedis.create();
    const d = dispatcher(h.prefix, server.url);
    const quick = d.tasks(FaultService).quick;
    await quick.delay(1); // connected and scripts loaded
    await server.stop();
    const began = Date.now();
    const outcome = await settleWithin(quick.delay(2), 30_000, 'a dispatch while Redis is down');
    const tookMs = Date.now() - began;
    expect(outcome.ok).toBe(false);
    expect((outcome as { error: unknown }).error).toMatchObject({ name: 'RedisUnavailableError', code: 'HEIMDALL_REDIS_UNAVAILABLE' });
    reportFigures('dispatch while Redis is down', { msToRedisUnavailableError: tookMs });
  });
});

// A restart loses, at random, the replies of commands Redis ran just before it stopped
// (replies are written after the command runs, and SIGTERM may come between); ioredis then
// re-sends them on the new connection. These tests make that loss deterministic with a proxy
// that cuts the connection right after Redis ran a chosen command, and check that the
// library treats the re-sent command as the same call.
describe('a reply lost when the connection drops after Redis ran the command', () => {
  const fresh = useHarness('lost-reply');
  const cleanups: (() => Promise<void> | void)[] = [];

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function proxy(url: string): Promise<ReplyDropper> {
    const p = await ReplyDropper.create(Number(new URL(url).port));
    cleanups.push(() => p.close());
    return p;
  }

  it('of a finish call: the finished task is reported succeeded, and the task the same call started runs (not stranded until its lease lapses)', { timeout: 30_000 }, async () => {
    const h = fresh();
    const p = await proxy(h.url);
    const d = h.dispatcher();
    const tasks = d.tasks(FaultService);
    await h.admin.set(faultKeys(h.prefix).gateOpen, '1');
    const gate = new Gate(h.admin, h.prefix);
    await gate.listen();
    cleanups.push(() => gate.close());
    // FIFO: the first fetch starts `first`; finishing it starts `second` (maxRecoveries 0, so a
    // lost lease fails it at once); the re-sent finish would start `third`.
    const first = await tasks.quick.delay(1);
    const second = await tasks.fragile.delay(2);
    const third = await tasks.quick.delay(3);

    const worker = h.worker({
      connection: p.url,
      concurrency: 1,
      // The finish of `first` starts `second` in the same call (no reservation made ahead).
      prefetch: 0,
      leaseDuration: '1s',
      services: [new FaultService(new RunLog(h.admin, h.prefix), gate)],
    });
    const errors: string[] = [];
    worker.on('error', (err) => errors.push(err.message));
    const succeeded = new Set<string>();
    worker.on('succeeded', (e) => succeeded.add(e.id));
    // A fetch that carries ends: ARGV[11] is the number B of begins, then B pairs, then the number of ends.
    const endsOf = (args: readonly string[]): string | undefined => {
      const argv = 3 + Number(args[2]);
      return args[argv + 11 + 2 * Number(args[argv + 10])];
    };
    const dropped = p.dropNextReply((args) => args[0]?.toLowerCase() === 'evalsha' && args[1] === fetchScript.sha && endsOf(args) !== '0');
    await worker.start();
    const lost = await dropped;
    // The lost reply held the end of `first` and the start of `second`.
    expect(lost.args).toContain(first.id);
    expect(lost.reply).toContain(second.id);

    const ends = await Promise.all(
      [first, second, third].map((r) =>
        waitFor(async () => ((await r.ready()) ? r.info() : undefined), { timeout: 20_000, what: `task ${r.id} to end` }),
      ),
    );
    const runs = byTask(await readRuns(h.admin, h.prefix));
    const facts = {
      first: { state: ends[0]!.state, reported: succeeded.has(first.id) },
      second: { state: ends[1]!.state, error: ends[1]!.error?.name, attempts: ends[1]!.attempts, runs: runs.get(second.id)?.starts.length ?? 0 },
      third: { state: ends[2]!.state },
      errors: errors.filter((m) => !/ECONNRESET|ECONNREFUSED|Connection is closed/.test(m)),
    };
    console.info(`[lost finish reply] ${JSON.stringify(facts)}`);
    expect(facts).toEqual({
      first: { state: 'SUCCESS', reported: true },
      second: { state: 'SUCCESS', error: undefined, attempts: 1, runs: 1 },
      third: { state: 'SUCCESS' },
      errors: [],
    });
    await worker.close();
  });

  it('of an enqueue with an explicit taskId: the dispatch resolves with the task it made, not a ConfigError', { timeout: 30_000 }, async () => {
    const h = fresh();
    const p = await proxy(h.url);
    const d = h.dispatcher({ connection: p.url });
    const quick = d.tasks(FaultService).quick;
    await d.client.ping();
    const taskId = `fixed-${h.prefix}`;
    const dropped = p.dropNextReply((args) => args[0]?.toLowerCase() === 'evalsha' && args[1] === enqueueScript.sha);
    const outcome = await settleWithin(quick.applyAsync([7], { taskId }), 15_000, 'an enqueue whose reply was lost');
    await dropped;
    // The task was enqueued once, by the first (unanswered) call.
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([taskId]);
    expect(await h.admin.hget(h.taskKey(taskId), 's')).toBe('PENDING');
    const error = outcome.ok ? undefined : (outcome.error as Error);
    console.info(`[lost enqueue reply] ${outcome.ok ? `resolved ${outcome.value.id}` : `${error!.name}: ${error!.message}`}`);
    expect(error).toBeUndefined();
    expect(outcome.ok && outcome.value.id).toBe(taskId);
  });
});
