// dispatcher.events() (issue 11, point 4): typed events read from a bounded Redis stream per
// queue, written by the scripts themselves (one entry per script call), from a start time or a
// cursor; capped by length and by age; off with events: false; the same in inline mode.
import { fetchStarting } from '../fetch-starting.js';
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Dispatcher, Inspector, Task, Worker, type QueueEvent } from 'heimdall-tasks';
import { createTestApp } from 'heimdall-tasks/testing';
import { fetch, readFetchReply } from '../../src/core/protocol/scripts.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { gate, scanKeys, useHarness, waitFor } from '../helpers.js';

let held = gate();
// A test that needs the gate shut makes its own (the helpers open the gates of earlier tests).

class Evented {
  @Task({ queue: 'ev' })
  async add(a: number, b: number): Promise<number> {
    currentTask().progress(0.5, 'half way');
    return a + b;
  }

  @Task({ queue: 'ev', retries: { max: 1, backoff: '20ms', jitter: false } })
  async flaky(): Promise<string> {
    if (currentTask().attempt === 1) throw new TypeError('first attempt fails');
    return 'second';
  }

  @Task({ queue: 'ev' })
  async broken(): Promise<void> {
    throw new RangeError('always');
  }

  @Task({ queue: 'ev', unique: true, key: ([k]: [string]) => k })
  async once(k: string): Promise<string> {
    await held.promise;
    return k;
  }

  @Task({ queue: 'ev', rateLimit: [1, '60s'] })
  async limited(n: number): Promise<number> {
    return n;
  }
}

const fresh = useHarness('events');
const open: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  held.open();
  for (const c of open.splice(0).reverse()) await c.close();
});

/** Takes events from `it` until `done` says the list is complete (or the deadline passes). */
async function collect(it: AsyncIterableIterator<QueueEvent>, done: (seen: QueueEvent[]) => boolean, timeoutMs = 10_000): Promise<QueueEvent[]> {
  const seen: QueueEvent[] = [];
  const deadline = setTimeout(() => void it.return?.(), timeoutMs);
  try {
    for await (const e of it) {
      seen.push(e);
      if (done(seen)) break;
    }
  } finally {
    clearTimeout(deadline);
  }
  return seen;
}

const typesOf = (events: QueueEvent[], id: string): string[] => events.filter((e) => e.id === id).map((e) => e.type);

describe('dispatcher.events()', () => {
  it('yields each task\'s lifecycle as typed events, with names, workers, attempts, errors and progress', { timeout: 30_000 }, async () => {
    held = gate();
    const h = fresh();
    const worker = h.worker({ services: [new Evented()], queues: ['ev'] });
    const d = h.dispatcher();
    open.push(worker, d);
    const events = d.events({ queues: ['ev'] });
    await worker.start();
    const svc = d.tasks(Evented);

    const add = await svc.add.delay(2, 3);
    const flaky = await svc.flaky.delay();
    const broken = await svc.broken.delay();
    const first = await svc.once.delay('k1');
    const dup = await svc.once.delay('k1');
    expect(dup.id).toBe(first.id);
    await Promise.all([add.get(), flaky.get(), broken.get().catch(() => undefined)]);

    const seen = await collect(events, (s) => typesOf(s, add.id).includes('succeeded') && typesOf(s, flaky.id).includes('succeeded') && typesOf(s, broken.id).includes('failed') && typesOf(s, first.id).includes('deduplicated'));
    expect(typesOf(seen, add.id)).toEqual(['queued', 'started', 'progress', 'succeeded']);
    expect(typesOf(seen, flaky.id)).toEqual(['queued', 'started', 'retried', 'started', 'succeeded']);
    expect(typesOf(seen, broken.id)).toEqual(['queued', 'started', 'failed']);
    // The duplicate's event and the worker's start race (the task waits on a gate once started).
    expect(typesOf(seen, first.id)[0]).toBe('queued');
    expect(typesOf(seen, first.id)).toContain('deduplicated');

    const byType = (id: string, type: QueueEvent['type']): QueueEvent => seen.find((e) => e.id === id && e.type === type)!;
    expect(byType(add.id, 'queued')).toMatchObject({ queue: 'ev', name: 'Evented.add' });
    // Started, progress and succeeded go without the name in Redis; the reader fills it in.
    expect(byType(add.id, 'started')).toMatchObject({ worker: worker.id, attempt: 1, name: 'Evented.add' });
    expect(byType(add.id, 'progress')).toMatchObject({ value: 0.5, message: 'half way', name: 'Evented.add' });
    const succeeded = byType(add.id, 'succeeded');
    expect(succeeded).toMatchObject({ worker: worker.id, name: 'Evented.add' });
    // A reader that starts after a task's queued event reads its name from the task's record.
    const after = await collect(d.events({ queues: ['ev'], since: byType(add.id, 'queued').cursor }), (s) => typesOf(s, add.id).includes('succeeded'));
    expect(after.filter((e) => e.id === add.id).map((e) => [e.type, e.name])).toEqual([
      ['started', 'Evented.add'],
      ['progress', 'Evented.add'],
      ['succeeded', 'Evented.add'],
    ]);
    expect(succeeded.type === 'succeeded' && typeof succeeded.runtimeMs).toBe('number');
    expect(byType(flaky.id, 'retried')).toMatchObject({ attempt: 1, delayMs: 20, error: { name: 'TypeError', message: 'first attempt fails' } });
    expect(byType(broken.id, 'failed')).toMatchObject({ error: { name: 'RangeError', message: 'always' } });
    // Times are the Redis clock's, in order; cursors are unique.
    const now = Date.now();
    for (const e of seen) expect(Math.abs(e.at - now)).toBeLessThan(60_000);
    expect(new Set(seen.map((e) => e.cursor)).size).toBe(seen.length);
  });

  it('shows rate-limited and revoked tasks, a recovered one, and an operator\'s lock release and dead-letter retry', { timeout: 30_000 }, async () => {
    held = gate();
    const h = fresh();
    const d = h.dispatcher();
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    open.push(d, inspector);
    const events = d.events({ queues: ['ev'] });
    const svc = d.tasks(Evented);

    // A ghost worker starts a task with a short lease and vanishes; the real worker recovers it.
    const ghostTask = await svc.add.delay(1, 1);
    const runner = new ScriptRunner(h.admin);
    const ghost = await fetchStarting(runner, h.queueKeys('ev'), { workerId: 'ghost', leaseMs: 50, resultExpiresMs: 60_000, eventsCap: 100 }, 1);
    expect(ghost.started.map((s) => s.id)).toEqual([ghostTask.id]);

    const worker = h.worker({ services: [new Evented()], queues: ['ev'] });
    open.push(worker);
    await worker.start();
    await ghostTask.get({ timeout: 10 });

    const l1 = await svc.limited.delay(1);
    const l2 = await svc.limited.delay(2);
    await l1.get();
    const holder = await svc.once.delay('held');
    await waitFor(async () => (await holder.status()) === 'STARTED', { what: 'the unique task to start' });
    const [lock] = await inspector.locks('ev');
    expect(lock, 'the unique task\'s lock is listed').toBeDefined();
    expect(await inspector.releaseLock(lock!.key, holder.id)).toEqual({ released: true });
    await l2.revoke();

    const seen = await collect(events, (s) => typesOf(s, l2.id).includes('revoked') && typesOf(s, holder.id).includes('lock-released') && typesOf(s, ghostTask.id).includes('succeeded'));
    expect(typesOf(seen, ghostTask.id)).toEqual(['queued', 'started', 'recovered', 'started', 'progress', 'succeeded']);
    expect(seen.find((e) => e.id === ghostTask.id && e.type === 'recovered')).toMatchObject({ worker: 'ghost' });
    // Its history: the ghost's attempt, lost, then the run that succeeded.
    expect((await ghostTask.info()).history.map((a) => [a.attempt, a.outcome, a.worker])).toEqual([
      [1, 'lost', 'ghost'],
      [2, 'SUCCESS', worker.id],
    ]);
    // The message carries the rate limit, so the fetch checks it before starting the task.
    expect(typesOf(seen, l2.id)).toEqual(['queued', 'rate-limited', 'revoked']);
    expect(seen.find((e) => e.id === l2.id && e.type === 'rate-limited')).toMatchObject({ name: 'Evented.limited' });
    expect(seen.find((e) => e.id === l2.id && e.type === 'revoked')).toMatchObject({ reason: 'revoked' });
    expect(seen.find((e) => e.id === holder.id && e.type === 'lock-released')).toMatchObject({ lockKey: lock!.key });
    held.open();
    await holder.get();

    // A dead letter retried by an operator is queued again, said so.
    const broken = await svc.broken.delay();
    await broken.get().catch(() => undefined);
    await h.admin.lpush(h.queueKeys('ev').dead, JSON.stringify({ id: broken.id, reason: 'by hand', at: Date.now() }));
    const letters = await inspector.deadLetters('ev');
    const since = Date.now() - 5_000;
    await inspector.retryDead('ev', letters.filter((l) => l.id === broken.id));
    const again = await collect(d.events({ queues: ['ev'], since }), (s) => s.some((e) => e.id === broken.id && e.type === 'queued' && e.origin === 'dead-letter'));
    expect(again.some((e) => e.id === broken.id && e.type === 'queued' && e.origin === 'dead-letter')).toBe(true);
  });

  it('names each event by the task it belongs to, also when an ended task\'s id is sent again as another task', { timeout: 30_000 }, async () => {
    const h = fresh();
    const worker = h.worker({ services: [new Evented()], queues: ['ev'] });
    const d = h.dispatcher();
    open.push(worker, d);
    const since = Date.now() - 1000;
    await worker.start();
    const first = await d.tasks(Evented).add.applyAsync([1, 1], { taskId: 'reused-1' });
    await first.get({ timeout: 10 });
    const second = await d.tasks(Evented).flaky.applyAsync([], { taskId: 'reused-1' });
    expect(await second.get({ timeout: 10 })).toBe('second');
    // One reader over both runs: each event carries the name of the run it belongs to.
    const seen = await collect(d.events({ queues: ['ev'], since }), (s) => s.filter((e) => e.type === 'succeeded').length >= 2);
    expect(seen.map((e) => [e.type, e.name])).toEqual([
      ['queued', 'Evented.add'],
      ['started', 'Evented.add'],
      ['progress', 'Evented.add'],
      ['succeeded', 'Evented.add'],
      ['queued', 'Evented.flaky'],
      ['started', 'Evented.flaky'],
      ['retried', 'Evented.flaky'],
      ['started', 'Evented.flaky'],
      ['succeeded', 'Evented.flaky'],
    ]);
  });

  it('starts from a time or resumes after a cursor, inside an entry of several events, losing and repeating nothing', { timeout: 30_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    open.push(d);
    const before = Date.now() - 1000;
    // One delayMany call: one script call, one stream entry of 20 queued events.
    const results = await d.tasks(Evented).add.delayMany(Array.from({ length: 20 }, (_, i) => [i, i] as [number, number]));
    const ids = results.map((r) => r.id);
    expect(await h.admin.xlen(h.queueKeys('ev').events)).toBe(1);

    const all = await collect(d.events({ queues: ['ev'], since: before }), (s) => s.length >= 20);
    expect(all.map((e) => e.id)).toEqual(ids);
    expect(all.every((e) => e.type === 'queued')).toBe(true);

    // Resume after the 7th: the 8th to the 20th, once each.
    const rest = await collect(d.events({ queues: ['ev'], since: all[6]!.cursor }), (s) => s.length >= 13);
    expect(rest.map((e) => e.id)).toEqual(ids.slice(7));
    // From now: none of those, but what comes next.
    const live = d.events({ queues: ['ev'] });
    const later = await d.tasks(Evented).add.delay(9, 9);
    const next = await collect(live, (s) => s.length >= 1);
    expect(next.map((e) => e.id)).toEqual([later.id]);

    expect(() => d.events({ queues: ['ev'], since: 'not a cursor' })).toThrow(/cursor/);
  });

  it('caps each stream by length when written and by age at the workers\' heartbeat; events: false writes none', { timeout: 30_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher({ events: { maxLength: 10 } });
    open.push(d);
    for (let i = 0; i < 500; i++) await d.tasks(Evented).add.delay(i, i);
    // MAXLEN ~ trims whole nodes of the stream (100 entries by default), so a node's worth more may stay.
    const length = await h.admin.xlen(h.queueKeys('ev').events);
    expect(length).toBeLessThanOrEqual(10 + 100);
    expect(length).toBeGreaterThanOrEqual(10);

    // The cap counts entries (script calls), whatever each holds: 30 entries of 20 events and 60
    // of one, in any order, keep about 20 entries.
    const big = new Dispatcher({ connection: h.connection(), prefix: `${h.prefix}-big`, events: { maxLength: 20 } });
    open.push(big);
    for (let i = 0; i < 30; i++) {
      await big.tasks(Evented).add.delayMany(Array.from({ length: 20 }, (_, j) => [i, j] as [number, number]));
      await big.tasks(Evented).add.delay(i, -1);
      await big.tasks(Evented).add.delay(i, -2);
    }
    const bigKey = `${h.prefix}-big:{ev}:events`;
    const kept = await h.admin.xlen(bigKey);
    expect(kept).toBeGreaterThanOrEqual(20);
    // Redis trims whole nodes (100 entries or 4 KB each): a node's worth more may stay.
    expect(kept).toBeLessThanOrEqual(20 + 100);
    // The newest entries are those kept: the last big entry and the two sends after it.
    const newest = await h.admin.xrevrange(bigKey, '+', '-', 'COUNT', 3);
    expect(newest.map(([, pairs]) => pairs.filter((f, k) => k % 2 === 0 && f === 'queued').length)).toEqual([1, 1, 20]);
    for (const k of await scanKeys(h.admin, `${h.prefix}-big:*`)) await h.admin.del(k);

    // By age: a worker with maxAge 200 ms (lease 300 ms: a heartbeat every 100 ms) trims old nodes.
    const worker = h.worker({ services: [new Evented()], queues: ['ev'], leaseDuration: '300ms', events: { maxAge: '200ms' } });
    open.push(worker);
    const key = h.queueKeys('ev').events;
    await h.admin.del(key);
    for (let i = 0; i < 350; i++) await h.admin.xadd(key, '*', 'queued', `old-${i}`);
    await worker.start();
    await waitFor(async () => (await h.admin.xlen(key)) < 100, { timeout: 10_000, what: 'old events to be trimmed by age' });

    // Off: nothing written by a dispatcher and a worker with events: false.
    const quiet = new Dispatcher({ connection: h.connection(), prefix: `${h.prefix}-quiet`, events: false });
    const quietWorker = new Worker({ connection: h.connection(), prefix: `${h.prefix}-quiet`, services: [new Evented()], queues: ['ev'], events: false });
    open.push(quietWorker, quiet);
    await quietWorker.start();
    await (await quiet.tasks(Evented).add.delay(1, 2)).get();
    expect(await h.admin.exists(`${h.prefix}-quiet:{ev}:events`)).toBe(0);
    for (const k of await scanKeys(h.admin, `${h.prefix}-quiet:*`)) await h.admin.del(k);

    expect(() => new Dispatcher({ connection: h.url, events: { maxLength: 0 } })).toThrow(/maxLength/);
  });

  it('closes its connection when the loop is left, when aborted, and when the dispatcher closes', { timeout: 20_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const names = async (): Promise<string[]> => (await h.openConnections()).filter((n) => n.includes(':events'));
    // One connection; on a Cluster one per node the reader's Cluster client talks to (its
    // queue's master, and the node its keyless TIME went to).
    const open1 = (n: number): boolean => (h.topology.kind === 'cluster' ? n > 0 : n === 1);
    const first = d.events({ queues: ['ev'] });
    await d.tasks(Evented).add.delay(1, 2);
    await collect(first, (s) => s.length >= 1);
    await waitFor(async () => (await names()).length === 0, { what: 'the events connection to close after break' });

    const controller = new AbortController();
    const second = d.events({ queues: ['ev'], signal: controller.signal });
    const pending = second.next();
    await waitFor(async () => open1((await names()).length), { what: 'the events connection to open' });
    controller.abort();
    expect((await pending).done).toBe(true);
    await waitFor(async () => (await names()).length === 0, { what: 'the events connection to close on abort' });

    const third = d.events({ queues: ['ev'] });
    const waiting = third.next();
    await waitFor(async () => open1((await names()).length), { what: 'the events connection to open' });
    await d.close();
    expect((await waiting).done).toBe(true);
  });

  it('inline mode yields the same events from memory', { timeout: 20_000 }, async () => {
    const app = await createTestApp({ inline: true, services: [new Evented()] });
    open.push(app);
    const events = app.dispatcher.events({ queues: ['ev'] });
    const svc = app.dispatcher.tasks(Evented);
    const add = await svc.add.delay(2, 3);
    const flaky = await svc.flaky.delay();
    await add.get();
    await flaky.get();
    const seen = await collect(events, (s) => typesOf(s, flaky.id).includes('succeeded'));
    expect(typesOf(seen, add.id)).toEqual(['queued', 'started', 'progress', 'succeeded']);
    expect(typesOf(seen, flaky.id)).toEqual(['queued', 'started', 'retried', 'started', 'succeeded']);
    const resumed = await collect(app.dispatcher.events({ queues: ['ev'], since: seen[0]!.cursor }), (s) => s.length >= seen.length - 1);
    expect(resumed.map((e) => e.cursor)).toEqual(seen.slice(1).map((e) => e.cursor));
  });
});
