// The worker is the authority on a task's options. Tasks are sent by name from this process,
// which never loads their classes (test/fixtures/deploy/services.ts is imported by the worker
// processes only), as a scheduler, another service or another language would send them. The
// unique lock and the rate limit of the worker's own definition still hold, across two worker
// processes.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { reportFigures, useHarness, waitFor } from '../helpers.js';
import { authorityLockKey, oneRunsOneRevoked, openGate, readStarts } from '../fixtures/deploy/control.js';
import { killWorkerProcess, startWorkerProcess, startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';
import { FIELDS } from '../helpers.js';


describe('the worker applies its own unique and rate-limit options to messages sent by name', () => {
  const fresh = useHarness('authority');

  it('two by-name sends of a unique task across two worker processes: one runs under the worker key, the other ends REVOKED duplicate', { timeout: 60_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const sent = [await d.send('AuthorityService.hold', [7]), await d.send('AuthorityService.hold', [7])];
    // The producer knows nothing of the lock: two tasks, neither a duplicate at dispatch.
    expect(sent[0]!.id).not.toBe(sent[1]!.id);
    expect(sent.map((r) => r.duplicate)).toEqual([false, false]);

    const [running, revoked] = await oneRunsOneRevoked(sent);
    expect((await revoked.info()).revokeReason).toBe('duplicate');
    // The lock is the worker's key function's, held by the running task, and recorded in its record.
    expect(await h.admin.get(authorityLockKey(h, 'hold', 'slot-7'))).toBe(running.id);
    expect(await h.lockKeyOf(running.id)).toBe(authorityLockKey(h, 'hold', 'slot-7'));
    // STARTED is in the record before the task body has written its start to the log.
    await waitFor(async () => (await readStarts(h)).length > 0, { what: 'the running task to log its start' });
    expect((await readStarts(h)).map((e) => e.id)).toEqual([running.id]);

    await openGate(h, 'hold-7');
    expect(await running.get({ timeout: 20 })).toBe(7);
    expect(await h.admin.exists(authorityLockKey(h, 'hold', 'slot-7'))).toBe(0);
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    expect(summaries.reduce((n, s) => n + s.started, 0)).toBe(1);
    expect((await readStarts(h)).map((e) => e.id)).toEqual([running.id]);
  });

  it('without a key function the lock key is the hash of the arguments, whatever their key order', { timeout: 60_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const sent = [await d.send('AuthorityService.byArgs', [{ x: 1, y: 2 }]), await d.send('AuthorityService.byArgs', [{ y: 2, x: 1 }])];
    const [running, revoked] = await oneRunsOneRevoked(sent);
    expect((await revoked.info()).revokeReason).toBe('duplicate');
    const digest = createHash('sha1').update('[{"x":1,"y":2}]').digest('hex');
    expect(await h.admin.get(authorityLockKey(h, 'byArgs', digest))).toBe(running.id);
    await openGate(h, 'by-args');
    expect(await running.get({ timeout: 20 })).toBe(2);
    await stopWorkerProcesses(workers);
  });

  it('three by-name sends of a [1, 60] task across two worker processes: one starts, two wait in the delayed set', { timeout: 60_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const sent = await Promise.all([1, 2, 3].map((n) => d.send('AuthorityService.limited', [n])));
    const delayed = h.queueKey('delayed');
    // Both others are rescheduled for when the window frees: PENDING, not started, no attempt counted.
    await waitFor(async () => (await h.admin.zcard(delayed)) === 2, { timeout: 20_000, what: 'two tasks rescheduled by the rate limit' });
    // The one that started may still be storing its end when the other two are rescheduled.
    await waitFor(async () => (await Promise.all(sent.map((r) => r.status()))).includes('SUCCESS'), { timeout: 20_000, what: 'the started task to end' });
    const infos = await Promise.all(sent.map((r) => r.info()));
    const done = infos.filter((i) => i.state === 'SUCCESS');
    const waiting = infos.filter((i) => i.state === 'PENDING');
    expect(done).toHaveLength(1);
    expect(waiting).toHaveLength(2);
    // Each waits for its turn, reserved in the window: the first slot to free (when the start
    // leaves the 60-s window), and the one after it, on the Redis clock, with no jitter.
    for (const w of waiting) expect(w.attempts).toBe(0);
    const starts = await readStarts(h);
    expect(starts.map((e) => e.id)).toEqual([done[0]!.id]);
    // The window the worker used: the task's own key, holding the one start (counted when the
    // worker admitted it, just after the fetch started it) and the two turns.
    const window = h.queueKeys().rate('AuthorityService.limited', undefined);
    const counted = Number(await h.admin.zscore(window, `${done[0]!.id}:1`));
    expect(counted - done[0]!.startedAt!.getTime()).toBeGreaterThanOrEqual(0);
    expect(counted - done[0]!.startedAt!.getTime()).toBeLessThan(5_000);
    const turns = waiting.sort((a, b) => a.dueAt!.getTime() - b.dueAt!.getTime());
    expect(turns.map((w) => w.dueAt!.getTime() - counted)).toEqual([60_000, 120_000]);
    expect(await h.admin.zrange(window, 0, -1, 'WITHSCORES')).toEqual([
      `${done[0]!.id}:1`, String(counted),
      ...turns.flatMap((w) => [`~${w.id}:1`, String(w.dueAt!.getTime())]),
    ]);
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.reduce((n, s) => n + s.rateLimited, 0)).toBeGreaterThanOrEqual(2);
    reportFigures('by-name [1, 60]', { sent: 3, started: starts.length, rescheduled: 2 });
  });

  it("a by-name send of a task with maxRecoveries 0: the worker writes its value into the record, and a lost run ends FAILURE instead of running again", { timeout: 60_000 }, async () => {
    const h = fresh();
    const first = await startWorkerProcess(h, { services: ['authority'], lease: '1s' });
    const d = h.dispatcher();
    const sent = await d.send('AuthorityService.fragile', [3]);
    // The message carries no mr; the worker fills in its own at admission.
    await waitFor(async () => (await readStarts(h)).length === 1, { timeout: 20_000, what: 'the task to start' });
    expect(await h.admin.hget(h.taskKey(sent.id), FIELDS.maxRecoveries)).toBe('0');
    // The worker dies mid-run; another one finds the lapsed lease and, with maxRecoveries 0,
    // ends the task instead of running it again (the default of 1 would run it a second time).
    await killWorkerProcess(first);
    const second = await startWorkerProcess(h, { services: ['authority'], lease: '1s' });
    await waitFor(async () => (await sent.status()) === 'FAILURE', { timeout: 20_000, what: `task ${sent.id} to end FAILURE` });
    const info = await sent.info();
    expect([info.error?.name, info.attempts]).toEqual(['WorkerLostError', 1]);
    expect((await readStarts(h)).map((e) => e.id)).toEqual([sent.id]);
    await stopWorkerProcesses([second]);
  });
});
