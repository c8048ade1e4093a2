/**
 * A permit handed over while its waiter is still on its way back: the run was told to wait, and
 * before its deferral (admit-6 with deferMs) has put its task in the delayed set, the holder ends
 * and hands it the permit. permit-wake-2 finds the record STARTED at that attempt and marks it
 * (pw); the deferral sees the mark and makes the task due at once. Without the mark the task
 * waited for its re-check (up to a lease) while its permit sat unused. The window (the refund of
 * its rate limits and the admit-6 round trip) is widened here by delaying the deferral (found by
 * a review).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { recordEvents, useHarness, waitFor } from '../helpers.js';
import { QueueRunner } from '../../src/core/worker/queue-runner.js';
import { LIMIT_QUEUES, LimitsService, permitLog, type SpanEntry } from '../fixtures/limits/services.js';

const original = QueueRunner.prototype.admit;
afterEach(() => {
  QueueRunner.prototype.admit = original;
});

describe('permit hand-over during a deferral', () => {
  const fresh = useHarness('permit-race');

  it('a waiter handed a permit while its deferral is in flight still starts at once, not at its re-check', { timeout: 60_000 }, async () => {
    const h = fresh();
    QueueRunner.prototype.admit = async function (this: QueueRunner, ...args: Parameters<typeof original>) {
      if (args[1].deferMs !== undefined) await new Promise((r) => setTimeout(r, 1500));
      return original.apply(this, args);
    };
    const w = h.worker({ queues: [...LIMIT_QUEUES], services: [new LimitsService(h.admin, h.prefix)], concurrency: 4 });
    const ev = recordEvents(w);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const spans = async () => (await h.admin.lrange(permitLog(h.prefix), 0, -1)).map((l) => JSON.parse(l) as SpanEntry);
    const first = await t.perKey.delay('k', 500);
    await waitFor(async () => (await spans()).length > 0, { what: 'the first run to start' });
    const second = await t.perKey.delay('k', 10);
    await first.get({ timeout: 10 });
    // Handed the permit about 1 s before its deferral lands: it should run right after it.
    await second.get({ timeout: 10 });
    const log = await spans();
    const at = (id: string, edge: string) => log.find((e) => e.id === id && e.edge === edge)!.at;
    expect(at(second.id, 'start') - at(first.id, 'end')).toBeLessThan(5000);
    expect(ev.rateLimited.map((e) => e.id)).toEqual([second.id]);
  });
});
