/**
 * A permit handed to a run that then waits in another scope goes on: a run of two scopes [A, B]
 * that waits in B is handed B's permit when it is given back; woken, it asks A first, finds A
 * full and waits there. It gives B's permit back (to B's next waiter) rather than hold it unused
 * until it lapses, so a run that needs only B starts at once (found by a review: before, it
 * waited up to a lease while no body held B).
 */
import { describe, expect, it } from 'vitest';
import { Limits, Task } from 'heimdall-tasks';
import { recordEvents, useHarness, waitFor } from '../helpers.js';

const A = Limits.define('rv-idle-a', { concurrency: 1 });
const B = Limits.define('rv-idle-b', { concurrency: 1 });
const starts = new Map<string, number>();
const ends = new Map<string, number>();
async function body(tag: string, ms: number): Promise<void> {
  starts.set(tag, Date.now());
  await new Promise((r) => setTimeout(r, ms));
  ends.set(tag, Date.now());
}

class Idle {
  @Task<[tag: string, ms: number]>({ queue: 'rv-idle', limits: [A, B] })
  async both(tag: string, ms: number): Promise<void> {
    await body(tag, ms);
  }

  @Task<[tag: string, ms: number]>({ queue: 'rv-idle', limits: [B] })
  async onlyB(tag: string, ms: number): Promise<void> {
    await body(tag, ms);
  }

  @Task<[tag: string, ms: number]>({ queue: 'rv-idle', limits: [A] })
  async onlyA(tag: string, ms: number): Promise<void> {
    await body(tag, ms);
  }
}

describe('a permit handed to a run that then waits in another scope', () => {
  const fresh = useHarness('permit-idle');

  it('is not held idle while a run that needs only that scope waits', { timeout: 60_000 }, async () => {
    const h = fresh();
    const w = h.worker({ queues: ['rv-idle'], services: [new Idle()], concurrency: 8 });
    const ev = recordEvents(w);
    await w.start();
    const t = h.dispatcher().tasks(Idle);
    await t.onlyB.delay('u1', 800); // holds B
    await waitFor(() => starts.has('u1'), { what: 'u1 to start' });
    const t1 = await t.both.delay('t1', 10); // takes A, waits in B, gives A back
    await waitFor(() => ev.rateLimited.some((e) => e.id === t1.id), { what: 't1 to wait in B' });
    await t.onlyA.delay('v1', 8000); // takes A (nobody waits in A)
    await waitFor(() => starts.has('v1'), { what: 'v1 to start' });
    // u1 ends: B goes to t1, which wakes, finds A full (v1) and waits there, keeping B.
    await waitFor(() => ends.has('u1') && ev.rateLimited.filter((e) => e.id === t1.id).length >= 2, { timeout: 10_000, what: 't1 woken and waiting in A' });
    const sentAt = Date.now();
    await t.onlyB.delay('u2', 10); // B has no body running: it should start at once
    await waitFor(() => starts.has('u2'), { timeout: 20_000, what: 'u2 to start' });
    const waited = starts.get('u2')! - sentAt;
    expect(waited, `u2 waited ${waited} ms for a permit of B while no body held B (v1 ends ${ends.get('v1') ? 'before' : 'after'})`).toBeLessThan(3000);
  });
});
