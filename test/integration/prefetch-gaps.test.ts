// Two gaps of prefetch (WorkerOptions.prefetch) closed: a unique task with onConflict 'replace'
// is never reserved, so a later call replaces it as a queued holder (keepLast waits behind a
// reserved holder as behind a running one), and a handler awaiting a task result makes its worker
// hand its reservations back (and reserve nothing) so that a task it awaits can run elsewhere.
import { describe, expect, it } from 'vitest';
import { Task, type Dispatcher } from 'heimdall-tasks';
import { FIELDS, gate, recordEvents, useHarness, waitFor, waitReserved, type Gate, type Harness } from '../helpers.js';

class GapProbe {
  /** Labels whose body ran, in order. */
  readonly runs: string[] = [];
  readonly gates = new Map<string, Gate>();
  /** Set by the test before the awaiting tasks run. */
  dispatcher: Dispatcher | undefined;
  /** Opened by the test: the parent then awaits its child's result. */
  readonly awaitChild = gate();
  /** The child the parent sent, once sent. */
  childId: string | undefined;

  /** Runs until its gate (by label) opens. */
  @Task()
  async gated(label: string): Promise<string> {
    this.runs.push(label);
    const g = gate();
    this.gates.set(label, g);
    await g.promise;
    return label;
  }

  @Task<[key: string, label: string]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async replaced(key: string, label: string): Promise<string> {
    this.runs.push(label);
    return label;
  }

  @Task<[key: string, label: string]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'keepLast' })
  async latest(key: string, label: string): Promise<string> {
    this.runs.push(label);
    return label;
  }

  @Task()
  async child(label: string): Promise<string> {
    this.runs.push(label);
    return `${label} done`;
  }

  /** Sends a child, waits for the test, then awaits the child's result (at most 5 s). */
  @Task()
  async parent(label: string): Promise<string> {
    this.runs.push(label);
    const sent = await this.dispatcher!.tasks(GapProbe).child.delay(`${label}-child`);
    this.childId = sent.id;
    await this.awaitChild.promise;
    return `${label}: ${await sent.get({ timeout: 5 })}`;
  }
}

describe('prefetch gaps', () => {
  const fresh = useHarness('prefetch-gaps');

  it("a unique task with onConflict 'replace' is never reserved: it waits at the front, so a later call replaces it as a queued holder (its body never runs)", async () => {
    const h = fresh();
    const probe = new GapProbe();
    const tasks = h.dispatcher().tasks(GapProbe);
    // Both queued before the worker starts: its first calls start a and look at u1 for its
    // reservation slot.
    const a = await tasks.gated.delay('a');
    const u1 = await tasks.replaced.delay('k', 'u1');
    const lock = await h.lockKeyOf(u1.id);
    const w = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
    const ev = recordEvents(w);
    await w.start();
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    // The call that started a left u1 at the front, unreserved: PENDING, no lease, no rs.
    expect(await h.admin.hmget(h.taskKey(u1.id), FIELDS.state, FIELDS.reserved)).toEqual(['PENDING', null]);
    expect(await h.admin.zscore(h.queueKey('active'), u1.id)).toBeNull();
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([u1.id]);

    const u2 = await tasks.replaced.delay('k', 'u2');
    expect(u2.conflict).toEqual({ outcome: 'replaced', replaced: u1.id });
    expect(await u1.status()).toBe('REVOKED');
    expect((await u1.info()).revokeReason).toBe('replaced');
    expect(await h.admin.get(lock)).toBe(u2.id);

    probe.gates.get('a')!.open();
    expect(await a.get({ timeout: 5 })).toBe('a');
    expect(await u2.get({ timeout: 5 })).toBe('u2');
    expect(probe.runs).toEqual(['a', 'u2']);
    expect(await h.admin.exists(lock)).toBe(0);
    expect(ev.errors).toEqual([]);
  });

  it("onConflict 'keepLast' waits behind a reserved holder as behind a running one: the holder runs, then the pending task", async () => {
    const h = fresh();
    const probe = new GapProbe();
    const w = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
    const ev = recordEvents(w);
    await w.start();
    const tasks = h.dispatcher().tasks(GapProbe);
    const a = await tasks.gated.delay('a');
    await waitFor(() => probe.gates.has('a'), { what: 'a to run' });
    const k1 = await tasks.latest.delay('k', 'k1');
    await waitReserved(h, k1.id);
    const k2 = await tasks.latest.delay('k', 'k2');
    expect(k2.conflict).toEqual({ outcome: 'waiting', holder: k1.id });
    expect(await k1.status()).toBe('PENDING');
    expect(await h.field(k1.id, 'reserved')).toBe('1');

    probe.gates.get('a')!.open();
    expect(await a.get({ timeout: 5 })).toBe('a');
    expect(await k1.get({ timeout: 5 })).toBe('k1');
    expect(await k2.get({ timeout: 15 })).toBe('k2');
    expect(probe.runs).toEqual(['a', 'k1', 'k2']);
    expect(ev.errors).toEqual([]);
  });

  it('a handler awaiting a task result makes its worker hand its reservations back: the child it awaits runs on another worker; reserving resumes after', async () => {
    const h = fresh();
    const probe = new GapProbe();
    probe.dispatcher = h.dispatcher();
    const w1 = h.worker({ services: [probe], concurrency: 1, prefetch: 1 });
    const ev1 = recordEvents(w1);
    await w1.start();
    const tasks = probe.dispatcher.tasks(GapProbe);
    const parent = await tasks.parent.delay('p');
    await waitFor(() => probe.childId !== undefined, { what: 'the parent to send its child' });
    const childId = probe.childId!;
    // The only worker is w1, whose one slot the parent holds: it reserves the child.
    await waitReserved(h, childId);
    expect(await h.field(childId, 'worker')).toBe(w1.id);
    // A second worker, idle, that could run the child.
    const w2 = h.worker({ services: [probe], concurrency: 1, prefetch: 0 });
    const ev2 = recordEvents(w2);
    await w2.start();

    // The parent now awaits its child (get({ timeout: 5 })): w1 hands the child back, w2 runs it.
    probe.awaitChild.open();
    expect(await parent.get({ timeout: 15 })).toBe('p: p-child done');
    const child = probe.dispatcher.result(childId);
    expect(await child.get({ timeout: 5 })).toBe('p-child done');
    const info = await child.info();
    expect(info.worker).toBe(w2.id);
    // Handed back, not counted: one attempt, no recovery.
    expect(info.attempts).toBe(1);
    expect(probe.runs).toEqual(['p', 'p-child']);
    expect(ev2.started.map((e) => e.id)).toEqual([childId]);
    expect(ev1.started.map((e) => e.id)).toEqual([parent.id]);

    // No handler awaits any more: w1 reserves again.
    await w2.close();
    const x = await tasks.gated.delay('x');
    await waitFor(() => probe.gates.has('x'), { what: 'x to run' });
    const y = await tasks.gated.delay('y');
    await waitReserved(h, y.id);
    expect(await h.field(y.id, 'worker')).toBe(w1.id);
    probe.gates.get('x')!.open();
    await waitFor(() => probe.gates.has('y'), { what: 'y to begin' });
    probe.gates.get('y')!.open();
    expect(await x.get({ timeout: 5 })).toBe('x');
    expect(await y.get({ timeout: 5 })).toBe('y');
    expect([...ev1.errors, ...ev2.errors]).toEqual([]);
  });
});
