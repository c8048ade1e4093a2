// The worker registry (issue 11, point 1): every worker heartbeats what it is and runs into
// Redis (heartbeat-3.lua, per queue), leaves on close, and lapses when killed; a dispatcher lists
// them and pings them over Pub/Sub. Worker processes are real child processes.
import { describe, expect, it } from 'vitest';
import { Dispatcher, Worker } from 'heimdall-tasks';
import { useHarness, waitFor } from '../helpers.js';
import { openGate } from '../fixtures/faults/control.js';
import { killWorkerProcess, startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';

const fresh = useHarness('registry');

describe('worker registry', () => {
  it('lists live worker processes with what they run; a closed one leaves at once, a killed one once its lease passes', { timeout: 60_000 }, async () => {
    const h = fresh();
    // A 1.5-s lease: heartbeats every 0.5 s, each valid 1.5 s.
    const workers = await startWorkerProcesses(h, 2, { services: ['fault'], concurrency: 3, lease: '1500ms' });
    const d = h.dispatcher();
    const listed = await waitFor(async () => {
      const all = await d.workers();
      return all.length === 2 ? all : undefined;
    }, { what: 'both workers in the registry' });
    expect(listed.map((w) => w.id).sort()).toEqual(workers.map((w) => w.workerId).sort());
    for (const w of listed) {
      const proc = workers.find((p) => p.workerId === w.id)!;
      expect(w).toMatchObject({ pid: proc.pid, queues: ['default'], concurrency: 3, running: [], succeeded: 0, failed: 0 });
      expect(w.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(w.host).not.toBe('');
      expect(w.validUntil.getTime()).toBeGreaterThan(Date.now() - 5_000);
    }

    // A held task shows in its worker's entry, with its name and queue.
    const held = await d.send('FaultService.held', [1]);
    const holder = await waitFor(async () => (await d.workers()).find((w) => w.running.some((r) => r.id === held.id)), {
      what: 'the running task in a heartbeat',
    });
    expect(holder.running).toEqual([{ id: held.id, name: 'FaultService.held', queue: 'default', startedAt: expect.any(Date) }]);
    await openGate(h.admin, h.prefix);
    await held.get({ timeout: 20 });
    await waitFor(async () => (await d.workers()).find((w) => w.id === holder.id)?.succeeded === 1, { what: 'the counter of ended tasks' });

    // Closed (SIGTERM, close()): gone at once. Killed: gone once its registration lapses.
    const [closing, killed] = [workers.find((w) => w.workerId === holder.id)!, workers.find((w) => w.workerId !== holder.id)!];
    await stopWorkerProcesses([closing]);
    expect((await d.workers()).map((w) => w.id)).toEqual([killed.workerId]);
    await killWorkerProcess(killed);
    const killedAt = Date.now();
    await waitFor(async () => (await d.workers()).length === 0, { what: 'the killed worker to lapse', timeout: 10_000 });
    expect(Date.now() - killedAt).toBeLessThan(5_000);
    // Its entry is trimmed by the next heartbeat of any worker of the queue.
    const next = new Worker({ connection: h.connection(), prefix: h.prefix, services: [], leaseDuration: '1500ms' });
    await next.start();
    try {
      expect(await h.admin.zrange(`${h.prefix}:{default}:workers`, 0, -1)).toEqual([next.id]);
      expect(await h.admin.hkeys(`${h.prefix}:{default}:worker-info`)).toEqual([next.id]);
    } finally {
      await next.close();
    }
    expect(await h.admin.exists(`${h.prefix}:{default}:workers`, `${h.prefix}:{default}:worker-info`)).toBe(0);
  });

  it('ping: each live worker answers once (whatever the number of its queues); a killed one does not', { timeout: 60_000 }, async () => {
    const h = fresh();
    const inProcess = new Worker({ connection: h.connection(), prefix: h.prefix, services: [], queues: ['default', 'registry-other'], name: 'in-process' });
    await inProcess.start();
    const workers = await startWorkerProcesses(h, 2, { services: ['fault'] });
    const d = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    try {
      const replies = await d.ping({ queues: ['default', 'registry-other'], timeout: '500ms' });
      expect(replies.map((r) => r.id).sort()).toEqual(['in-process', ...workers.map((w) => w.workerId)].sort());
      const own = replies.find((r) => r.id === 'in-process')!;
      expect(own).toMatchObject({ pid: process.pid, queues: ['default', 'registry-other'] });
      expect(own.latencyMs).toBeLessThan(500);

      await killWorkerProcess(workers[0]!);
      const after = await d.ping({ timeout: '300ms' });
      expect(after.map((r) => r.id).sort()).toEqual(['in-process', workers[1]!.workerId].sort());
      // Only the queues asked about: nobody consumes this one.
      expect(await d.ping({ queues: ['registry-nobody'], timeout: '200ms' })).toEqual([]);
    } finally {
      await d.close();
      await inProcess.close();
      await stopWorkerProcesses(workers.slice(1));
    }
  });

  it('an inline dispatcher has no worker processes to list or ping', async () => {
    const { createTestApp } = await import('heimdall-tasks/testing');
    const app = await createTestApp({ services: [], inline: true });
    try {
      expect(await app.dispatcher.workers()).toEqual([]);
      expect(await app.dispatcher.ping({ timeout: '10ms' })).toEqual([]);
    } finally {
      await app.close();
    }
  });
});
