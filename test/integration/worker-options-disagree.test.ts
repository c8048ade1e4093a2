// Producer and worker disagree on a task's options: a producer of an older build declares the
// worker's tasks with other options. What the message carries wins; what it lacks, the worker
// fills in from its own definition. (A file of its own: the class below registers these task
// names in this process, which the by-name tests must not have.)
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { useHarness, waitFor } from '../helpers.js';
import { authorityLockKey, oneRunsOneRevoked, openGate } from '../fixtures/deploy/control.js';
import { startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';

/**
 * The same task names as the worker's AuthorityService, as an older build of the producer
 * declared them: `hold` was not unique yet, `limited` had a looser limit, and `plain`, which the
 * worker does not make unique, was unique here.
 */
class OlderProducerBuild {
  @Task({ name: 'AuthorityService.hold' })
  async hold(slot: number): Promise<number> {
    return slot;
  }

  @Task({ name: 'AuthorityService.limited', rateLimit: [5, 1] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task({ name: 'AuthorityService.plain', unique: true })
  async plain(n: number): Promise<number> {
    return n;
  }
}


describe('producer and worker disagree', () => {
  const fresh = useHarness('disagree');

  it('what the message carries wins, what it lacks the worker fills in', { timeout: 60_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const older = d.tasks(OlderProducerBuild);

    // 1. The message has no lock (hold was not unique in the older build): the worker adds its own.
    const holds = [await older.hold.delay(3), await older.hold.delay(3)];
    const [running] = await oneRunsOneRevoked(holds);
    expect(await h.admin.get(authorityLockKey(h, 'hold', 'slot-3'))).toBe(running.id);
    await openGate(h, 'hold-3');
    expect(await running.get({ timeout: 20 })).toBe(3);

    // 2. The message carries [5, 1] (the older, looser limit): it is checked with that limit, so
    // all three start at once although the worker's definition says [1, 60].
    const limited = await Promise.all([1, 2, 3].map((n) => older.limited.delay(n)));
    expect(await Promise.all(limited.map((r) => r.get({ timeout: 20 })))).toEqual([1, 2, 3]);

    // 3. The message carries a lock the worker's definition does not have: it is honoured at
    // dispatch and at start, and released when the task ends.
    const first = await older.plain.delay(5);
    const again = await older.plain.delay(5);
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(first.id);
    await waitFor(async () => (await first.status()) === 'STARTED', { what: 'plain(5) to start' });
    await openGate(h, 'plain-5');
    expect(await first.get({ timeout: 20 })).toBe(5);
    expect(await h.admin.get(await h.lockKeyOf(first.id))).toBeNull();

    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
  });
});
