// Prefetch (WorkerOptions.prefetch): a worker reserves tasks ahead of running them. A reservation
// is started in Redis (lease, run token, unique lock, a start in its rate window, attempt) but
// reads PENDING (field rs) until its handler begins; it begins as soon as a handler slot frees,
// before any round trip; a revoke ends it at once; a closing or dying worker's reservations go
// back to the front of the queue without counting an attempt or a recovery.
import { describe, expect, it } from 'vitest';
import { ConfigError, Task, currentTask } from 'heimdall-tasks';
import { FIELDS, gate, recordEvents, redisNowMs, useHarness, waitFor, waitReserved, type Gate, type Harness } from '../helpers.js';
import { byTask, openGate, readRuns } from '../fixtures/faults/control.js';
import { FaultService } from '../fixtures/faults/services.js';
import { killWorkerProcess, startWorkerProcess } from '../fixtures/worker-processes.js';

class PrefetchProbe {
  /** Task ids whose body ran, with their attempt, in order. */
  readonly runs: { id: string; label: string; attempt: number }[] = [];
  readonly gates = new Map<string, Gate>();

  /** Runs until its gate (by label) opens. */
  @Task()
  async gated(label: string): Promise<string> {
    return this.hold(label);
  }

  /** Unique per label; runs until its gate opens. */
  @Task<[label: string]>({ unique: true, key: ([label]) => `u-${label}` })
  async uniqueGated(label: string): Promise<string> {
    return this.hold(label);
  }

  /** Returns at once. */
  @Task()
  async quick(n: number): Promise<number> {
    return n;
  }

  /** At most one start a minute. */
  @Task({ rateLimit: [1, 60] })
  async limited(label: string): Promise<string> {
    return this.hold(label);
  }

  private async hold(label: string): Promise<string> {
    const t = currentTask();
    this.runs.push({ id: t.id, label, attempt: t.attempt });
    const g = gate();
    this.gates.set(label, g);
    await g.promise;
    return label;
  }
}

/** Whether the queue's event stream holds a 'started' event of task `id`. */
async function startedEvent(h: Harness, id: string): Promise<boolean> {
  const entries = await h.admin.xrange(h.queueKeys().events, '-', '+');
  return entries.some(([, pairs]) => pairs.some((v, i) => i % 2 === 0 && v === 'started' && pairs[i + 1] === id));
}

/**
 * A started worker at concurrency 1 with prefetch 1 whose one handler slot runs gated task 'a':
 * the next task sent is reserved.
 */
async function oneRunning(h: Harness) {
  const probe = new PrefetchProbe();
  const w = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
  const ev = recordEvents(w);
  await w.start();
  const d = h.dispatcher();
  const a = await d.tasks(PrefetchProbe).gated.delay('a');
  await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
  return { probe, w, ev, d, a };
}

describe('prefetch', () => {
  const fresh = useHarness('prefetch');

  it('refuses a prefetch that is not a whole number >= 0', () => {
    const h = fresh();
    expect(() => h.worker({ services: [], prefetch: -1 })).toThrow(ConfigError);
    expect(() => h.worker({ services: [], prefetch: 1.5 })).toThrow(ConfigError);
    expect(() => h.worker({ services: [], prefetch: 'sometimes' as 'auto' })).toThrow(ConfigError);
    expect(() => h.worker({ services: [], prefetch: 0 })).not.toThrow();
    expect(() => h.worker({ services: [], prefetch: 'auto' })).not.toThrow();
  });

  it('at concurrency 1, prefetch 1: the next task is reserved (PENDING, rs, a lease) while one runs, and begins as it ends', async () => {
    const h = fresh();
    const { probe, ev, d, a } = await oneRunning(h);
    const b = await d.tasks(PrefetchProbe).gated.delay('b');
    await waitReserved(h, b.id);
    // Reserved, not begun: readers say PENDING, no start time, no attempt, and its body has not run.
    expect(await b.status()).toBe('PENDING');
    const info = await b.info();
    expect(info).toMatchObject({ state: 'PENDING', attempts: 0, startedAt: undefined });
    expect(await h.field(b.id, 'attempts')).toBe('1');
    expect(probe.runs.map((r) => r.label)).toEqual(['a']);
    expect(ev.started.map((e) => e.id)).toEqual([a.id]);
    expect(await startedEvent(h, a.id)).toBe(true);
    expect(await startedEvent(h, b.id)).toBe(false);

    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('b'), { what: 'b to begin' });
    expect(await a.get({ timeout: 5 })).toBe('a');
    // The call that stored a's end carried b's begin (before it): STARTED, st not before a's end.
    await waitFor(async () => (await b.status()) === 'STARTED', { what: 'b to read STARTED' });
    const [aInfo, bInfo] = [await a.info(), await b.info()];
    expect(bInfo.startedAt).toBeDefined();
    expect(bInfo.startedAt!.getTime()).toBeGreaterThanOrEqual(aInfo.finishedAt!.getTime());
    expect(bInfo.attempts).toBe(1);
    expect(await h.field(b.id, 'reserved')).toBeNull();
    expect(await startedEvent(h, b.id)).toBe(true);
    expect(ev.started.map((e) => e.id)).toEqual([a.id, b.id]);
    probe.gates.get('b')!.open();
    expect(await b.get({ timeout: 5 })).toBe('b');
    expect(probe.runs.map((r) => [r.label, r.attempt])).toEqual([
      ['a', 1],
      ['b', 1],
    ]);
    expect(ev.errors).toEqual([]);
  });

  it('a task with an expiry is never reserved: it waits at the front for a handler slot, and one that expired meanwhile ends REVOKED without running', async () => {
    const h = fresh();
    const { probe, ev, d, a } = await oneRunning(h);
    const expiring = await d.tasks(PrefetchProbe).gated.applyAsync(['e'], { expires: '1s' });
    const behind = await d.tasks(PrefetchProbe).gated.delay('b');
    // Its expiry passes on the Redis clock while a runs: it was never reserved, nor was the task behind it.
    const expiry = Number(await h.field(expiring.id, 'expires'));
    await waitFor(async () => (await redisNowMs(h.admin)) > expiry, { timeout: 5000, what: 'the expiry to pass' });
    expect(await h.admin.hmget(h.taskKey(expiring.id), FIELDS.state, FIELDS.reserved)).toEqual(['PENDING', null]);
    expect(await h.field(behind.id, 'reserved')).toBeNull();
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([behind.id, expiring.id]);

    probe.gates.get('a')!.open();
    await waitFor(async () => (await expiring.status()) === 'REVOKED', { what: 'the expired task to end' });
    expect((await expiring.info()).revokeReason).toBe('expired');
    await waitFor(() => probe.gates.has('b'), { what: 'b to begin' });
    probe.gates.get('b')!.open();
    expect(await behind.get({ timeout: 5 })).toBe('b');
    expect(probe.runs.map((r) => r.label)).toEqual(['a', 'b']);
    expect(ev.errors).toEqual([]);
  });

  it("prefetch 'auto' (the default) reserves one task ahead once the queue's handlers are short", async () => {
    const h = fresh();
    const probe = new PrefetchProbe();
    const w = h.worker({ services: [probe], concurrency: 1 });
    expect(w.prefetch).toBe(1);
    await w.start();
    const d = h.dispatcher();
    // A short run first: until one ends, the worker knows nothing of the queue's runtimes.
    expect(await (await d.tasks(PrefetchProbe).quick.delay(1)).get({ timeout: 5 })).toBe(1);
    const a = await d.tasks(PrefetchProbe).gated.delay('a');
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    const b = await d.tasks(PrefetchProbe).gated.delay('b');
    await waitReserved(h, b.id);
    expect(await b.status()).toBe('PENDING');
    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('b'), { what: 'b to begin' });
    probe.gates.get('b')!.open();
    expect([await a.get({ timeout: 5 }), await b.get({ timeout: 5 })]).toEqual(['a', 'b']);
  });

  it("prefetch 'auto': a worker whose handlers ran long reserves nothing, so an idle worker takes the next task while the first still runs", async () => {
    const h = fresh();
    const busy = new PrefetchProbe();
    const first = h.worker({ services: [busy], concurrency: 1 });
    await first.start();
    const d = h.dispatcher();
    // One run of 150 ms or more on the Redis clock: the queue's handlers are long for this worker.
    const long = await d.tasks(PrefetchProbe).gated.delay('long');
    await waitFor(() => busy.gates.has('long'), { what: 'the long task to run' });
    await waitFor(async () => (await long.status()) === 'STARTED', { what: 'the long task to read STARTED' });
    const began = (await long.info()).startedAt!.getTime();
    await waitFor(async () => (await redisNowMs(h.admin)) >= began + 150, { what: '150 ms to pass' });
    busy.gates.get('long')!.open();
    expect(await long.get({ timeout: 5 })).toBe('long');

    const c = await d.tasks(PrefetchProbe).gated.delay('c');
    await waitFor(() => busy.gates.has('c'), { what: 'c to run' });
    const next = await d.tasks(PrefetchProbe).quick.delay(7);
    const idle = h.worker({ services: [new PrefetchProbe()], concurrency: 1, prefetch: 0 });
    await idle.start();
    // Not reserved behind c: the idle worker runs it while c still runs.
    expect(await next.get({ timeout: 5 })).toBe(7);
    expect(await h.field(next.id, 'worker')).toBe(idle.id);
    expect(await c.status()).toBe('STARTED');
    busy.gates.get('c')!.open();
    expect(await c.get({ timeout: 5 })).toBe('c');
  });

  it("a reservation revoked without its worker hearing (the message lost): its begin's reply says so, and the handler is stopped at once", async () => {
    const h = fresh();
    const { probe, ev, d, a } = await oneRunning(h);
    const b = await d.tasks(PrefetchProbe).gated.delay('b');
    await waitReserved(h, b.id);
    // What revoke-4 writes for a reservation, without the message on the revoke channel.
    await h.admin.hset(h.taskKey(b.id), FIELDS.state, 'REVOKED', FIELDS.revokeReason, 'revoked');
    await h.admin.hdel(h.taskKey(b.id), FIELDS.reserved);
    await h.admin.zrem(h.queueKey('active'), b.id);

    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('b'), { what: 'b to begin' });
    expect(await a.get({ timeout: 5 })).toBe('a');
    // The call that carried b's begin found it REVOKED: the worker stops b and frees its slot.
    await waitFor(() => ev.revoked.some((e) => e.id === b.id), { timeout: 5000, what: 'the worker to stop b' });
    const c = await d.tasks(PrefetchProbe).quick.delay(3);
    expect(await c.get({ timeout: 5 })).toBe(3);
    expect(await b.status()).toBe('REVOKED');
    probe.gates.get('b')!.open();
  });

  it('a unique task is checked against its lock when reserved: a lapsed lock is taken again, one held by another ends it duplicate', async () => {
    const h = fresh();
    const probe = new PrefetchProbe();
    const d = h.dispatcher();
    const a = await d.tasks(PrefetchProbe).gated.delay('a');
    const taken = await d.tasks(PrefetchProbe).uniqueGated.delay('x');
    const dup = await d.tasks(PrefetchProbe).uniqueGated.delay('y');
    const lockX = await h.lockKeyOf(taken.id);
    const lockY = await h.lockKeyOf(dup.id);
    // x's lock lapsed; y's lock is held by another task now.
    await h.admin.del(lockX);
    await h.admin.set(lockY, 'another-task');
    const w = h.worker({ services: [probe], concurrency: 1, prefetch: 2 });
    await w.start();
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    await waitReserved(h, taken.id);
    expect(await h.admin.get(lockX)).toBe(taken.id);
    await waitFor(async () => (await dup.status()) === 'REVOKED', { what: 'y to end duplicate' });
    expect((await dup.info()).revokeReason).toBe('duplicate');
    // All of that while a still runs: the checks were made at the reservation.
    expect(probe.runs.map((r) => r.label)).toEqual(['a']);
    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('x'), { what: 'x to begin' });
    probe.gates.get('x')!.open();
    expect(await taken.get({ timeout: 5 })).toBe('x');
    expect(probe.runs.map((r) => r.label)).toEqual(['a', 'x']);
  });

  it('a rate-limited task is never reserved: it waits for a handler slot, nothing behind it is reserved, and its window counts its begin', async () => {
    const h = fresh();
    const probe = new PrefetchProbe();
    const d = h.dispatcher();
    const a = await d.tasks(PrefetchProbe).gated.delay('a');
    const r1 = await d.tasks(PrefetchProbe).limited.delay('r1');
    const p = await d.tasks(PrefetchProbe).gated.delay('p');
    const w = h.worker({ services: [probe], concurrency: 1, prefetch: 2 });
    await w.start();
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    // The worker asked for reservations and met r1 first: r1 stays queued at the front, with no
    // lease and no start in its window, and p behind it is not reserved ahead of it.
    await waitFor(async () => (await h.admin.lrange(h.queueKey('wait'), 0, -1)).join(',') === `${p.id},${r1.id}`, { what: 'r1 and p to stay queued' }).catch(async (e) => { throw new Error(String(e) + JSON.stringify([await h.admin.lrange(h.queueKey('wait'), 0, -1), await h.admin.zrange(h.queueKey('claimed'), 0, -1), await h.admin.zrange(h.queueKey('active'), 0, -1), r1.id, p.id, await h.admin.hgetall(h.taskKey(r1.id))])); });
    const rateKey = (await h.field(r1.id, 'rateKey'))!;
    expect(await h.admin.zcard(rateKey)).toBe(0);
    expect(await h.admin.zscore(h.queueKey('active'), r1.id)).toBeNull();
    expect(await h.field(r1.id, 'reserved')).toBeNull();
    expect(await r1.status()).toBe('PENDING');
    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('r1'), { what: 'r1 to begin' });
    // Counted when its handler began: the window's entry is its start time.
    const st = Number(await h.field(r1.id, 'startedAt'));
    expect(Number(await h.admin.zscore(rateKey, `${r1.id}:1`))).toBe(st);
    // The worker reserves nothing on the queue for a while after a rate-limited task: p waits queued.
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([p.id]);
    probe.gates.get('r1')!.open();
    await waitFor(() => probe.gates.has('p'), { what: 'p to begin' });
    probe.gates.get('p')!.open();
    expect(await r1.get({ timeout: 5 })).toBe('r1');
    expect(await p.get({ timeout: 5 })).toBe('p');
    expect(await a.get({ timeout: 5 })).toBe('a');
    expect(probe.runs.map((r) => r.label)).toEqual(['a', 'r1', 'p']);
  });

  it('tasks run in the order they were sent at concurrency 1 with prefetch (a reservation is never overtaken)', async () => {
    const h = fresh();
    const probe = new PrefetchProbe();
    const w = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
    await w.start();
    const d = h.dispatcher();
    const labels = ['1', '2', '3', '4', '5', '6'];
    const handles = await Promise.all(labels.map((l) => d.tasks(PrefetchProbe).gated.delay(l)));
    for (const l of labels) {
      await waitFor(() => probe.gates.has(l), { what: `${l} to run` });
      probe.gates.get(l)!.open();
    }
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 5 })))).toEqual(labels);
    expect(probe.runs.map((r) => r.label)).toEqual(labels);
  });

  it('revoke of a reserved task ends it REVOKED at once, releases its lock, and its body never runs', async () => {
    const h = fresh();
    const { probe, ev, d, a } = await oneRunning(h);
    const b = await d.tasks(PrefetchProbe).uniqueGated.delay('b');
    const lock = await h.lockKeyOf(b.id);
    await waitReserved(h, b.id);
    expect(await b.revoke()).toBe('REVOKED');
    expect(await b.status()).toBe('REVOKED');
    // It never ran: no attempt counted.
    expect((await b.info()).attempts).toBe(0);
    expect(await h.admin.zscore(h.queueKey('active'), b.id)).toBeNull();
    expect(await h.admin.exists(lock)).toBe(0);
    await expect(b.get({ timeout: 5 })).rejects.toMatchObject({ name: 'TaskRevokedError' });
    // The worker heard of it and dropped the reservation: its slot takes the next task.
    await waitFor(() => ev.revoked.some((e) => e.id === b.id), { what: 'the worker to drop b' });
    const c = await d.tasks(PrefetchProbe).gated.delay('c');
    await waitReserved(h, c.id);
    probe.gates.get('a')!.open();
    await waitFor(() => probe.gates.has('c'), { what: 'c to begin' });
    probe.gates.get('c')!.open();
    expect(await c.get({ timeout: 5 })).toBe('c');
    expect(await a.get({ timeout: 5 })).toBe('a');
    expect(probe.runs.map((r) => r.label)).toEqual(['a', 'c']);
    expect(await b.status()).toBe('REVOKED');
  });

  it('close() puts a reservation back at the front of the queue: another worker runs it first, attempt 1, no recovery counted', async () => {
    const h = fresh();
    const probe = new PrefetchProbe();
    const first = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
    await first.start();
    const d = h.dispatcher();
    const a = await d.tasks(PrefetchProbe).gated.delay('a');
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    const b = await d.tasks(PrefetchProbe).gated.delay('b');
    await waitReserved(h, b.id);
    const c = await d.tasks(PrefetchProbe).gated.delay('c');
    const closed = first.close();
    // b goes back to the front (the tail the fetch reads first), ahead of c.
    await waitFor(async () => (await h.admin.lrange(h.queueKey('wait'), -2, -1)).join(',') === `${c.id},${b.id}`, {
      what: 'b back at the front of the queue',
    });
    expect(await h.admin.hmget(h.taskKey(b.id), FIELDS.state, FIELDS.reserved, FIELDS.attempts, FIELDS.recoveries)).toEqual(['PENDING', null, '0', null]);
    expect(await h.admin.zscore(h.queueKey('active'), b.id)).toBeNull();
    probe.gates.get('a')!.open();
    await closed;
    expect(await a.get({ timeout: 5 })).toBe('a');

    const second = h.worker({ services: [probe], concurrency: 1 });
    await second.start();
    await waitFor(() => probe.gates.has('b'), { what: 'b to run on the second worker' });
    probe.gates.get('b')!.open();
    await waitFor(() => probe.gates.has('c'), { what: 'c to run' });
    probe.gates.get('c')!.open();
    expect(await b.get({ timeout: 5 })).toBe('b');
    expect(await c.get({ timeout: 5 })).toBe('c');
    expect(probe.runs.map((r) => [r.label, r.attempt])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
    expect((await b.info()).attempts).toBe(1);
    expect(await h.field(b.id, 'recoveries')).toBeNull();
  });

  it('a worker killed with a reservation: the reservation goes back uncounted (maxRecoveries 0 does not fail it) and runs once', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const a = await startWorkerProcess(h, { services: ['fault'], concurrency: 1, prefetch: 1, lease: '1s' });
    const running = await d.tasks(FaultService).held.delay(0);
    await waitFor(async () => (await readRuns(h.admin, h.prefix)).some((e) => e.id === running.id && e.ev === 'start'), { what: 'held(0) to run' });
    // Never recovered: a lost run of it would end FAILURE at once.
    const fragile = await d.tasks(FaultService).fragile.delay(1);
    await waitReserved(h, fragile.id);
    await killWorkerProcess(a);

    await openGate(h.admin, h.prefix);
    const b = await startWorkerProcess(h, { services: ['fault'], concurrency: 1, lease: '1s' });
    expect(await fragile.get({ timeout: 30 })).toBe(1);
    expect(await running.get({ timeout: 30 })).toBe(0);
    const tasks = byTask(await readRuns(h.admin, h.prefix));
    // The reservation never ran on the dead worker: one start, attempt 1, on b; one end.
    const f = tasks.get(fragile.id)!;
    expect(f.starts.map((e) => [e.attempt, e.pid])).toEqual([[1, b.pid]]);
    expect(f.dones).toHaveLength(1);
    expect(await fragile.info()).toMatchObject({ state: 'SUCCESS', attempts: 1 });
    expect(await h.field(fragile.id, 'recoveries')).toBeNull();
    // The run that was running is recovered as ever (a recovery counted), and ends once.
    const r = tasks.get(running.id)!;
    expect(r.starts.map((e) => [e.attempt, e.pid])).toEqual([
      [1, a.pid],
      [2, b.pid],
    ]);
    expect(r.dones).toHaveLength(1);
    expect(await h.field(running.id, 'recoveries')).toBe('1');
    b.child.kill('SIGTERM');
    await b.exit;
  });
});
