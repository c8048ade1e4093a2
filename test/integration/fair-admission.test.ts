/**
 * Fair admission (includes/rate-window.lua): a task that finds its rate window full has its turn
 * reserved in the window and waits for it in the delayed set, so tasks start in the order sent
 * (per window), each put back once rather than again and again, and a start is still exact on
 * the Redis clock however late the task ahead of it started.
 */
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { recordEvents, redisNowMs, useHarness, waitFor } from '../helpers.js';
import { maxInWindow } from '../fixtures/processes/control.js';

class Fair {
  @Task({ rateLimit: [2, 1] })
  async pair(label: string): Promise<string> {
    return label;
  }

  @Task({ rateLimit: [10, 2] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task({ rateLimit: [1, '300ms'], key: ([customer]) => `c${String(customer)}` })
  async perCustomer(customer: number, n: number): Promise<number> {
    return customer * 1000 + n;
  }
}

describe('fair admission behind a full rate window', () => {
  const fresh = useHarness('fair');

  it('30 tasks behind [10, 2 s], one worker: they start in the order sent, each put back for their turn, 10 a window', { timeout: 30_000 }, async () => {
    const h = fresh();
    const sent = await h.dispatcher().tasks(Fair).limited.delayMany(Array.from({ length: 30 }, (_, i) => [i] as [number]));
    const worker = h.worker({ services: [new Fair()], concurrency: 10 });
    const { rateLimited } = recordEvents(worker);
    await worker.start();
    expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual(Array.from({ length: 30 }, (_, i) => i));
    await worker.close();
    const st = (await Promise.all(sent.map((r) => r.info()))).map((i) => i.startedAt!.getTime());
    // In the order sent: no task starts before one sent ahead of it (the random jitter of up to
    // 200 ms that over-limit tasks got before turns were reserved mixed each window's order).
    // (A task put back for a few ms when the start ahead of it came late keeps its turn, so no
    // task behind it overtakes it by more than that lateness.)
    for (let i = 1; i < st.length; i++) expect(st[i]! - st[i - 1]!).toBeGreaterThanOrEqual(-50);
    // Ten a window, the next ten when the first ten leave it.
    expect(maxInWindow(st, 2000)).toBe(10);
    expect(st[10]! - st[0]!).toBeGreaterThanOrEqual(2000);
    expect(st[20]! - st[10]!).toBeGreaterThanOrEqual(2000);
    // Each of the 20 over the limit was put back for its turn (the order above is the order of
    // the turns); and at most once more, for a few ms, when the tasks ahead of it started later
    // after their turn than it did.
    const putBack = rateLimited.map((e) => e.args[0] as number);
    expect([...new Set(putBack)].sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 10));
    expect(putBack.length).toBeLessThanOrEqual(40);
    for (const e of rateLimited.slice(20)) expect(e.delayMs).toBeLessThan(500);
  });

  it('windows per key keep their own order, and a full window does not hold up another key', { timeout: 30_000 }, async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(Fair).perCustomer;
    // Customer 1 has a backlog of 6; customer 2's 2 tasks are sent after it.
    const ones = await ref.delayMany(Array.from({ length: 6 }, (_, n) => [1, n] as [number, number]));
    const twos = await ref.delayMany([[2, 0], [2, 1]]);
    const worker = h.worker({ services: [new Fair()], concurrency: 4 });
    await worker.start();
    await Promise.all([...ones, ...twos].map((r) => r.get({ timeout: 20 })));
    await worker.close();
    const one = (await Promise.all(ones.map((r) => r.info()))).map((i) => i.startedAt!.getTime());
    const two = (await Promise.all(twos.map((r) => r.info()))).map((i) => i.startedAt!.getTime());
    for (let i = 1; i < one.length; i++) expect(one[i]! - one[i - 1]!).toBeGreaterThanOrEqual(300);
    expect(two[1]! - two[0]!).toBeGreaterThanOrEqual(300);
    // Customer 2's first task did not wait behind customer 1's backlog.
    expect(two[0]! - one[0]!).toBeLessThan(300);
  });

  it('a task whose turn came counts the window up to now, not the turns of tasks behind it; a task new to the window counts them all', async () => {
    const h = fresh();
    const window = h.queueKeys().rate('Fair.limited', undefined);
    const now = await redisNowMs(h.admin);
    // Nine starts in the last second, and turns reserved for three tasks behind, due later.
    const entries: (string | number)[] = [];
    for (let i = 0; i < 9; i++) entries.push(now - 1000 + i, `old${i}:1`);
    for (let i = 0; i < 3; i++) entries.push(now + 5000 + i, `~behind${i}:1`);
    await h.admin.zadd(window, ...entries);
    const [withTurn, newcomer] = await h.dispatcher().tasks(Fair).limited.delayMany([[1], [2]]);
    // The first task's turn came (reserved a moment ago).
    await h.admin.zadd(window, now - 1, `~${withTurn!.id}:1`);
    const worker = h.worker({ services: [new Fair()] });
    const { rateLimited } = recordEvents(worker);
    await worker.start();
    expect(await withTurn!.get({ timeout: 10 })).toBe(1);
    await waitFor(() => rateLimited.length === 1, { what: 'the new task to be given its turn' });
    await worker.close();
    // With its turn: nine starts up to now, so it started at once. New: it counts the nine
    // starts, that start and the three turns: 13, so its turn is when the 4th of those leaves.
    expect(rateLimited.map((e) => e.id)).toEqual([newcomer!.id]);
    expect(await h.admin.zscore(window, `~${newcomer!.id}:1`)).toBe(String(now - 1000 + 3 + 2000));
    expect(await newcomer!.status()).toBe('PENDING');
  });

  it('a start is exact on the Redis clock: a task whose turn comes while the window is still full (the one ahead started late) takes the next slot', async () => {
    const h = fresh();
    const window = h.queueKeys().rate('Fair.limited', undefined);
    const now = await redisNowMs(h.admin);
    // Ten starts counted 1.5 s ago, and the turn of a task, past: as if the starts ahead of it
    // had been late and left the window full when its turn came.
    const entries: (string | number)[] = [];
    for (let i = 0; i < 10; i++) entries.push(now - 1500 + i, `old${i}:1`);
    await h.admin.zadd(window, ...entries);
    const [late] = await h.dispatcher().tasks(Fair).limited.delayMany([[99]]);
    await h.admin.zadd(window, now - 1000, `~${late!.id}:1`);
    const worker = h.worker({ services: [new Fair()] });
    const { rateLimited } = recordEvents(worker);
    await worker.start();
    expect(await late!.get({ timeout: 10 })).toBe(99);
    await worker.close();
    // Ten starts in the 2 s before it: it waited once, for the first of them to leave.
    expect(rateLimited).toHaveLength(1);
    expect((await late!.info()).startedAt!.getTime()).toBeGreaterThanOrEqual(now - 1500 + 2000);
  });

  it('a task whose turn came is not overtaken by a task behind it whose turn came too: the one behind waits, keeping its turn', async () => {
    const h = fresh();
    const window = h.queueKeys().rate('Fair.pair', undefined);
    const now = await redisNowMs(h.admin);
    // Y is sent first, so a fetch meets it first; but X's turn is ahead of Y's, and the window
    // [2, 1 s] holds one start: room for one of them now, the other in 0.4 s.
    const [y, x] = await h.dispatcher().tasks(Fair).pair.delayMany([['y'], ['x']]);
    await h.admin.zadd(window, now - 600, 'earlier:1', now - 5, `~${x!.id}:1`, now - 4, `~${y!.id}:1`);
    const worker = h.worker({ services: [new Fair()], concurrency: 2 });
    const { rateLimited } = recordEvents(worker);
    await worker.start();
    expect(await Promise.all([x!.get({ timeout: 10 }), y!.get({ timeout: 10 })])).toEqual(['x', 'y']);
    await worker.close();
    const [sx, sy] = await Promise.all([x!.info(), y!.info()]);
    // X started at once; Y waited for the earlier start to leave the window, once, turn kept.
    expect(rateLimited.map((e) => e.id)).toEqual([y!.id]);
    expect(sy.startedAt!.getTime()).toBeGreaterThanOrEqual(now + 400);
    expect(sx.startedAt!.getTime()).toBeLessThan(sy.startedAt!.getTime());
  });
});
