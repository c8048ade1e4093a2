/**
 * Conflict modes of unique tasks (issue 13, point 5): what a dispatch does when another task
 * holds its lock. 'replace' replaces a holder that has not started; 'keepLast' keeps at most one
 * running and one pending per key, the pending one waiting behind the running one and handed the
 * lock at its end; a debounce replaces the pending task and delays it, bounded by maxWait. Each
 * conflict is an event carrying both task ids, and the dispatch says what it met.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Task, type QueueEvent, type TaskResult } from 'heimdall-tasks';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { fetch, readFetchReply } from '../../src/core/protocol/scripts.js';
import { gate, nextEvent, recordEvents, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';

/** What each run saw: its id and arguments, in the order runs began. */
interface Run {
  id: string;
  n: number;
}

class Conflicts {
  readonly runs: Run[] = [];
  /** Runs of `held` wait for this gate. */
  readonly gate = gate();
  /** How many runs of `held` are running now, and the most at once. */
  running = 0;
  most = 0;

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async replaced(key: string, n: number): Promise<number> {
    this.runs.push({ id: currentTask().id, n });
    return n;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async replacedHeld(key: string, n: number): Promise<number> {
    this.runs.push({ id: currentTask().id, n });
    await this.gate.promise;
    return n;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'keepLast' })
  async latest(key: string, n: number): Promise<number> {
    this.runs.push({ id: currentTask().id, n });
    this.running++;
    this.most = Math.max(this.most, this.running);
    try {
      if (n === 0) await this.gate.promise;
      return n;
    } finally {
      this.running--;
    }
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: { debounce: { wait: '300ms' } } })
  async debounced(key: string, n: number): Promise<number> {
    this.runs.push({ id: currentTask().id, n });
    if (n === 0) await this.gate.promise;
    return n;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: { debounce: { wait: '400ms', maxWait: '1s' } } })
  async bounded(key: string, n: number): Promise<number> {
    this.runs.push({ id: currentTask().id, n });
    return n;
  }
}

const fresh = useHarness('conflict');
const open: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  for (const c of open.splice(0).reverse()) await c.close();
});

/** Takes events from the queue's stream until `done` says the list is complete. */
async function collect(h: Harness, since: number, done: (seen: QueueEvent[]) => boolean): Promise<QueueEvent[]> {
  const it = h.dispatcher().events({ since: new Date(since) });
  const seen: QueueEvent[] = [];
  const deadline = setTimeout(() => void it.return?.(), 10_000);
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

/** The keys of a test's queue that conflict modes must not leave behind: locks and pending pointers. */
async function leftovers(h: Harness): Promise<string[]> {
  return [...(await h.keys('{default}:lock:*')), ...(await h.keys('{default}:next:*'))];
}

describe('onConflict: replace', () => {
  it('replaces a queued holder: it ends REVOKED replaced and leaves the wait list; the new task takes the lock and runs', async () => {
    const h = fresh();
    const since = Date.now() - 1000;
    const tasks = h.dispatcher().tasks(Conflicts);
    const first = await tasks.replaced.delay('a', 1);
    expect(first.conflict).toBeUndefined();
    const second = await tasks.replaced.delay('a', 2);
    expect(second.id).not.toBe(first.id);
    expect(second.duplicate).toBe(false);
    expect(second.conflict).toEqual({ outcome: 'replaced', replaced: first.id });
    expect(await first.status()).toBe('REVOKED');
    expect((await first.info()).revokeReason).toBe('replaced');
    await expect(first.get({ timeout: 5 })).rejects.toMatchObject({ code: 'HEIMDALL_TASK_REVOKED' });
    const lock = await h.lockKeyOf(second.id);
    expect(await h.admin.get(lock)).toBe(second.id);

    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    const ev = recordEvents(worker);
    await worker.start();
    expect(await second.get({ timeout: 10 })).toBe(2);
    expect(service.runs).toEqual([{ id: second.id, n: 2 }]);
    // The replaced task's entry in the wait list was dropped by the fetch, not run, not reported.
    expect(ev.revoked).toEqual([]);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await leftovers(h)).toEqual([]);

    const events = await collect(h, since, (s) => s.some((e) => e.type === 'succeeded' && e.id === second.id));
    const replaced = events.find((e) => e.type === 'replaced');
    expect(replaced).toMatchObject({ type: 'replaced', id: first.id, by: second.id, reason: 'replaced', name: 'Conflicts.replaced' });
    expect(events.find((e) => e.type === 'revoked' && e.id === first.id)).toMatchObject({ reason: 'replaced' });
  });

  it('replaces a delayed holder, which leaves the delayed set', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const first = await tasks.replaced.applyAsync(['b', 1], { countdown: 60 });
    expect(await h.admin.zscore(h.queueKey('delayed'), first.id)).not.toBeNull();
    const second = await tasks.replaced.delay('b', 2);
    expect(second.conflict).toEqual({ outcome: 'replaced', replaced: first.id });
    expect(await h.admin.zscore(h.queueKey('delayed'), first.id)).toBeNull();
    // (The first one's due time pushed a wake marker, '', for idle workers.)
    expect((await h.admin.lrange(h.queueKey('wait'), 0, -1)).filter((id) => id !== '')).toEqual([second.id]);
    expect(await first.status()).toBe('REVOKED');
  });

  it('five calls of one key in one batch (delayMany): each replaces the one before, the last stays', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    // One enqueue call carries the five: the second finds the lock the first took in the same
    // call, and is sent again declaring it (code 8), and so on.
    const sent = await tasks.replaced.delayMany([1, 2, 3, 4, 5].map((n) => ['batch', n] as [string, number]));
    const states = await Promise.all(sent.map(async (r) => `${await r.status()} ${(await r.info()).revokeReason ?? ''}`.trim()));
    expect(states).toEqual(['REVOKED replaced', 'REVOKED replaced', 'REVOKED replaced', 'REVOKED replaced', 'PENDING']);
    expect(sent.slice(1).map((r) => r.conflict)).toEqual(sent.slice(0, -1).map((r) => ({ outcome: 'replaced', replaced: r.id })));
    expect(await h.admin.get(await h.lockKeyOf(sent[4]!.id))).toBe(sent[4]!.id);
  });

  it('returns a running holder as a duplicate: at most one runs', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    const first = await tasks.replacedHeld.delay('c', 1);
    await waitFor(async () => (await first.status()) === 'STARTED', { what: 'the holder to start' });
    const second = await tasks.replacedHeld.delay('c', 2);
    expect(second.id).toBe(first.id);
    expect(second.duplicate).toBe(true);
    expect(second.conflict).toEqual({ outcome: 'duplicate', holder: first.id });
    service.gate.open();
    expect(await first.get({ timeout: 10 })).toBe(1);
    expect(service.runs.map((r) => r.n)).toEqual([1]);
    expect(await leftovers(h)).toEqual([]);
  });

  it('replaces a holder a worker has claimed: the claim is dropped at the next fetch, not started, and not left in the claimed set', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const tasks = d.tasks(Conflicts);
    const first = await tasks.replaced.delay('d', 1);
    // A fetch that was not told of the id claims it for its next call (start-tasks).
    const keys = h.queueKeys();
    const runner = new ScriptRunner(h.admin);
    const worker = { workerId: 'w-test', leaseMs: 30_000, resultExpiresMs: 60_000, eventsCap: 1000 };
    const claimed = readFetchReply(await fetch(runner, keys, worker, 1, []), 0);
    expect(claimed.claims.map((c) => c.id)).toEqual([first.id]);
    expect(await h.admin.zscore(keys.claimed, first.id)).not.toBeNull();

    const second = await tasks.replaced.delay('d', 2);
    expect(second.conflict).toEqual({ outcome: 'replaced', replaced: first.id });
    expect(await first.status()).toBe('REVOKED');

    // The worker's next call names its claim: the task is REVOKED, so it is dropped, not started.
    const next = readFetchReply(await fetch(runner, keys, worker, 1, [], { claims: claimed.claims }), 0);
    expect(next.started.map((s) => s.id)).not.toContain(first.id);
    expect(await h.admin.zscore(keys.claimed, first.id)).toBeNull();
    expect(await first.status()).toBe('REVOKED');
    expect((await first.info()).attempts).toBe(0);
  });
});

describe('onConflict: keepLast', () => {
  it('keeps one running and one pending: later calls replace the pending one, which starts with the last arguments when the running one ends', async () => {
    const h = fresh();
    const since = Date.now() - 1000;
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    const ev = recordEvents(worker);
    await worker.start();
    const running = await tasks.latest.delay('k', 0);
    await waitFor(async () => (await running.status()) === 'STARTED', { what: 'the first task to start' });

    const pending: TaskResult<number>[] = [];
    for (let n = 1; n <= 3; n++) pending.push(await tasks.latest.delay('k', n));
    expect(pending[0]!.conflict).toEqual({ outcome: 'waiting', holder: running.id });
    expect(pending[1]!.conflict).toEqual({ outcome: 'waiting', holder: running.id, replaced: pending[0]!.id });
    expect(pending[2]!.conflict).toEqual({ outcome: 'waiting', holder: running.id, replaced: pending[1]!.id });
    expect(await pending[0]!.status()).toBe('REVOKED');
    expect((await pending[1]!.info()).revokeReason).toBe('replaced');
    const last = pending[2]!;
    expect(await last.status()).toBe('PENDING');
    // The lock stays with the running task; the pointer names the pending one.
    const lock = await h.lockKeyOf(running.id);
    expect(await h.admin.get(lock)).toBe(running.id);
    const pointer = h.queueKeys().next(lock);
    expect(await h.admin.get(pointer)).toMatch(new RegExp(` ${last.id}$`));

    const started = nextEvent(worker, 'started', (e) => e.id === last.id);
    service.gate.open();
    expect(await running.get({ timeout: 10 })).toBe(0);
    // Its end handed the lock over and made the pending task due now: it starts without a poll
    // (the fallback re-check would come 10 s later).
    await started;
    const [ended, next] = await Promise.all([running.info(), last.info()]);
    expect(next.startedAt!.getTime() - ended.finishedAt!.getTime()).toBeLessThan(5000);
    expect(await last.get({ timeout: 10 })).toBe(3);
    expect(service.runs.map((r) => r.n)).toEqual([0, 3]);
    expect(service.most).toBe(1);
    expect(ev.revoked).toEqual([]);
    expect(await leftovers(h)).toEqual([]);

    const events = await collect(h, since, (s) => s.some((e) => e.type === 'succeeded' && e.id === last.id));
    expect(events.filter((e) => e.type === 'waiting').map((e) => [e.id, e.type === 'waiting' && e.holder])).toEqual(
      pending.map((p) => [p.id, running.id]),
    );
    expect(events.filter((e) => e.type === 'replaced').map((e) => [e.id, e.type === 'replaced' && e.by])).toEqual([
      [pending[0]!.id, pending[1]!.id],
      [pending[1]!.id, pending[2]!.id],
    ]);
  });

  it('a pending task a worker meets while the running one holds the lock waits for it, instead of ending duplicate', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    const ev = recordEvents(worker);
    await worker.start();
    const running = await tasks.latest.delay('m', 0);
    await waitFor(async () => (await running.status()) === 'STARTED', { what: 'the first task to start' });
    const pending = await tasks.latest.delay('m', 7);
    const delayed = h.queueKey('delayed');
    const placed = Number(await h.admin.zscore(delayed, pending.id));

    // Make it due now, as if its recheck came, and wake the worker with a marker.
    const now = await redisNowMs(h.admin);
    await h.admin.zadd(delayed, now, pending.id);
    await h.admin.lpush(h.queueKey('wait'), '');
    await waitFor(async () => Number(await h.admin.zscore(delayed, pending.id)) > now, { what: 'the fetch to put the pending task back' });
    expect(await pending.status()).toBe('PENDING');
    expect(Number(await h.admin.zscore(delayed, pending.id))).toBeGreaterThanOrEqual(placed - 1000);
    expect(ev.revoked).toEqual([]);

    service.gate.open();
    expect(await pending.get({ timeout: 10 })).toBe(7);
    expect(service.runs.map((r) => r.n)).toEqual([0, 7]);
    expect(await leftovers(h)).toEqual([]);
  });

  it('with nothing running, a new call replaces the queued one and takes the lock', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const first = await tasks.latest.delay('q', 1);
    const second = await tasks.latest.delay('q', 2);
    expect(second.conflict).toEqual({ outcome: 'replaced', replaced: first.id });
    expect(await h.admin.get(await h.lockKeyOf(second.id))).toBe(second.id);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    expect(await second.get({ timeout: 10 })).toBe(2);
    expect(service.runs.map((r) => r.n)).toEqual([2]);
    expect(await leftovers(h)).toEqual([]);
  });

  it('a waiting task revoked by its user is never handed the lock: the running one ends, the lock is free, and the next send takes it', { timeout: 30_000 }, async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    const running = await tasks.latest.delay('r', 0);
    await waitFor(async () => (await running.status()) === 'STARTED', { what: 'the first task to start' });
    const waiting = await tasks.latest.delay('r', 1);
    expect(waiting.conflict).toEqual({ outcome: 'waiting', holder: running.id });
    expect(await waiting.revoke()).toBe('REVOKED');
    service.gate.open();
    expect(await running.get({ timeout: 10 })).toBe(0);
    // The lock went with the running task's end, to nobody: the revoked task was not in the
    // delayed set any more. Its pointer stays (the finish cannot tell a revoked task from one
    // due now) until the lock's lifetime passes or the next send, which drops it.
    const lock = await h.lockKeyOf(running.id);
    expect(await h.admin.exists(lock)).toBe(0);
    expect(await h.admin.get(h.queueKeys().next(lock))).toMatch(new RegExp(` ${waiting.id}$`));
    expect(service.runs.map((r) => r.n)).toEqual([0]);
    const again = await tasks.latest.delay('r', 2);
    expect(again.conflict).toBeUndefined();
    expect(await again.get({ timeout: 10 })).toBe(2);
    expect(await leftovers(h)).toEqual([]);
    expect(service.runs.map((r) => r.n)).toEqual([0, 2]);
    await worker.close();
  });

  it('a running task revoked with terminate (no finish to hand the lock over): the waiting one starts once it finds the lock free, within the 10-s re-check', { timeout: 40_000 }, async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    const running = await tasks.latest.delay('t', 0);
    await waitFor(async () => (await running.status()) === 'STARTED', { what: 'the first task to start' });
    const waiting = await tasks.latest.delay('t', 1);
    expect(waiting.conflict).toEqual({ outcome: 'waiting', holder: running.id });
    const revokedAt = Date.now();
    expect(await running.revoke({ terminate: true })).toBe('REVOKED');
    expect(await waiting.get({ timeout: 20 })).toBe(1);
    expect(Date.now() - revokedAt).toBeLessThan(20_000);
    expect(service.runs.map((r) => r.n)).toEqual([0, 1]);
    service.gate.open();
    await worker.close();
    await waitFor(async () => (await leftovers(h)).length === 0, { timeout: 10_000, what: 'the lock and the pointer to go' });
  });
});

describe('onConflict: debounce', () => {
  it('runs once, with the newest arguments, wait after the last call; the earlier calls end REVOKED debounced', async () => {
    const h = fresh();
    const since = Date.now() - 1000;
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    const sent: TaskResult<number>[] = [];
    for (let n = 1; n <= 5; n++) sent.push(await tasks.debounced.delay('x', n));
    const last = sent[4]!;
    const lastQueued = await redisNowMs(h.admin);
    expect(await last.get({ timeout: 10 })).toBe(5);
    const info = await last.info();
    expect(info.startedAt!.getTime()).toBeGreaterThanOrEqual(lastQueued + 300 - 50);
    for (const s of sent.slice(0, 4)) {
      expect(await s.status()).toBe('REVOKED');
      expect((await s.info()).revokeReason).toBe('debounced');
    }
    expect(service.runs.map((r) => r.n)).toEqual([5]);
    expect(await leftovers(h)).toEqual([]);
    const events = await collect(h, since, (s) => s.filter((e) => e.type === 'replaced').length >= 4);
    expect(events.filter((e) => e.type === 'replaced').map((e) => e.type === 'replaced' && [e.id, e.by, e.reason])).toEqual(
      sent.slice(0, 4).map((s, i) => [s.id, sent[i + 1]!.id, 'debounced']),
    );
  });

  it('maxWait holds under a steady stream of calls: a run at least every maxWait, each with the newest arguments then', { timeout: 20_000 }, async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    const ev = recordEvents(worker);
    await worker.start();
    // A call every 100 ms for 3.5 s: with wait 400 ms alone the task would never run.
    const began = await redisNowMs(h.admin);
    const calls: { at: number; n: number; id: string }[] = [];
    for (let n = 1; n <= 35; n++) {
      const r = await tasks.bounded.delay('s', n);
      calls.push({ at: await redisNowMs(h.admin), n, id: r.id });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const lastId = calls[calls.length - 1]!.id;
    await waitFor(() => ev.succeeded.some((e) => e.id === lastId), { timeout: 5000, what: 'the last call to run' });
    const starts = await Promise.all(ev.started.map(async (e) => ({ id: e.id, at: (await h.dispatcher().result(e.id).info()).startedAt!.getTime() })));
    // At least three runs in 3.5 s, none more than maxWait (1 s) after the previous cycle began.
    expect(starts.length).toBeGreaterThanOrEqual(3);
    let cycle = began;
    for (const s of starts) {
      expect(s.at - cycle).toBeLessThanOrEqual(1000 + 1000);
      // Each run had the arguments of the newest call made before it was due.
      const newest = calls.filter((c) => c.at <= s.at).pop()!;
      const run = service.runs.find((r) => r.id === s.id)!;
      expect(run.n).toBeGreaterThanOrEqual(newest.n - 1);
      cycle = calls.find((c) => c.at > s.at)?.at ?? s.at;
    }
    expect(await leftovers(h)).toEqual([]);
  });

  it('a call while one runs waits behind it, and runs after it with its own debounce delay', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(Conflicts);
    const service = new Conflicts();
    const worker = h.worker({ services: [service] });
    await worker.start();
    const running = await tasks.debounced.delay('r', 0);
    await waitFor(async () => (await running.status()) === 'STARTED', { timeout: 5000, what: 'the first task to start' });
    const next = await tasks.debounced.delay('r', 1);
    const newer = await tasks.debounced.delay('r', 2);
    expect(next.conflict).toEqual({ outcome: 'waiting', holder: running.id });
    expect(newer.conflict).toEqual({ outcome: 'waiting', holder: running.id, replaced: next.id });
    expect((await next.info()).revokeReason).toBe('debounced');
    service.gate.open();
    expect(await newer.get({ timeout: 10 })).toBe(2);
    expect(service.runs.map((r) => r.n)).toEqual([0, 2]);
    expect(await leftovers(h)).toEqual([]);
  });
});
