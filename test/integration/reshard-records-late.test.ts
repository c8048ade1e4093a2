/**
 * The fetch's "record not on this node yet" path (notHereYet in
 * src/redis-scripts/includes/refusal.lua), on its own. A reshard moves a queue's slot key by
 * key; here the queue's fixed keys (wait, delayed, active, dead, events, stats, names, the
 * registry's: all but the task records) reach the target master first, and the records stay on
 * the source. The worker's next fetch goes to the target (the source no longer holds its
 * declared keys: ASK), and finds there the ids of the wait list and the lease of the task it
 * just ran, but none of their records: the slot is being imported, so the records may only not
 * have arrived. The fetch must leave every id in the wait list, keep the lease and send the end
 * again, and report a refusal, not dead-letter the ids or drop the end. Once the records are
 * moved and the slot is the target's, every task runs once and ends SUCCESS.
 *
 * Redis runs a script on the importing master (with ASKING) only when every key it declares is
 * there, and answers TRYAGAIN otherwise: fetch declares the wait list, the delayed and active
 * sets, the dead-letter list, the event stream and the stats hash, so the queue has a task in
 * each (one due in an hour, one running, a stray id dead-lettered, one run ended) before the
 * split. (test/integration/reshard.test.ts moves a busy queue's slot in random batches; this
 * test sets up the one split that needs notHereYet.)
 */
import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, Task, Worker, currentTask, type TaskResult } from 'heimdall-tasks';
import { startCluster } from '../../scripts/redis-deployments.mjs';
import { gate, newPrefix, recordEvents, reportFigures, waitFor, type Gate } from '../helpers.js';

const QUEUE = 'records-late';
const TASKS = 6;
const NOT_HERE = /TRYAGAIN the record of task \S+ is not on this node/;

let held: Gate = gate();

class Late {
  /** Runs per task id: each must end at 1. */
  readonly runs = new Map<string, number>();

  @Task({ queue: QUEUE })
  async work(n: number): Promise<number> {
    const id = currentTask().id;
    this.runs.set(id, (this.runs.get(id) ?? 0) + 1);
    return n * 10;
  }

  /** Runs until the test opens `held`: its lease keeps the active set in being. */
  @Task({ queue: QUEUE })
  async hold(): Promise<string> {
    const id = currentTask().id;
    this.runs.set(id, (this.runs.get(id) ?? 0) + 1);
    await held.promise;
    return 'held';
  }
}

describe('a reshard that moves the queue before its task records', () => {
  const cluster = useDeployment(() => startCluster({ masters: 3, replicas: 0, log: () => undefined }));

  it('the fetch on the importing master leaves the ids in the wait list, keeps the lease and reports a refusal; once the records arrive every task runs once', { timeout: 60_000 }, async () => {
    const c = cluster();
    const began = Date.now();
    const prefix = newPrefix('late');
    const base = `${prefix}:{${QUEUE}}:`;
    const admin = new Cluster(c.seeds);
    const dispatcherClient = new Cluster(c.seeds);
    const workerClient = new Cluster(c.seeds);
    const nodes = c.nodes.map((n) => new Redis(n.url));
    const dispatcher = new Dispatcher({ connection: dispatcherClient, prefix });
    const service = new Late();
    // Concurrency 1: while `hold` runs, the queued tasks stay in the wait list.
    const worker = new Worker({ connection: workerClient, prefix, services: [service], queues: [QUEUE], concurrency: 1 });
    const ev = recordEvents(worker);
    held = gate();
    // A command to the target for a key of the slot it imports: ASKING first, on the same connection.
    const asking = async <T>(node: Redis, command: (n: Redis) => Promise<T>): Promise<T> => {
      await node.call('ASKING');
      return command(node);
    };

    try {
      const slot = Number(await admin.call('CLUSTER', 'KEYSLOT', `{${QUEUE}}`));
      const owners = (await admin.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
      const from = c.nodes.findIndex((n) => owners.some(([lo, hi, [, port]]) => slot >= lo && slot <= hi && port === n.port));
      expect(from).toBeGreaterThanOrEqual(0);
      const to = (from + 1) % c.nodes.length;
      const source = nodes[from]!;
      const target = nodes[to]!;
      const sourceId = String(await source.call('CLUSTER', 'MYID'));
      const targetId = String(await target.call('CLUSTER', 'MYID'));
      const migrate = (keys: string[]): Promise<unknown> =>
        source.call('MIGRATE', '127.0.0.1', String(c.nodes[to]!.port), '', '0', '5000', 'KEYS', ...keys);

      // The queue before the split: a run ended (stats), a stray id dead-lettered (dead), a task
      // due in an hour (delayed), one running (active), and TASKS waiting (wait).
      const ref = dispatcher.tasks(Late);
      const warm = await ref.work.applyAsync([100], { taskId: `${prefix}-warm` });
      await worker.start();
      expect(await warm.get({ timeout: 20 })).toBe(1000);
      await admin.lpush(`${base}wait`, `${prefix}-stray`);
      await waitFor(async () => (await admin.llen(`${base}dead`)) === 1, { what: 'the stray id to be dead-lettered' });
      const later = await ref.work.applyAsync([200], { taskId: `${prefix}-later`, countdown: 3600 });
      const hold = await ref.hold.applyAsync([], { taskId: `${prefix}-hold` });
      await waitFor(() => service.runs.has(hold.id), { what: 'the held task to start' });
      const sent: TaskResult<number>[] = [];
      for (let n = 0; n < TASKS; n++) sent.push(await ref.work.applyAsync([n], { taskId: `${prefix}-${n}` }));
      const ids = sent.map((r) => r.id);
      expect((await admin.lrange(`${base}wait`, 0, -1)).sort()).toEqual([...ids].sort());

      // The reshard begins, and the queue's keys go over, all but the task records.
      await target.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
      await source.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
      const inSlot = (await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as string[];
      const records = inSlot.filter((k) => k.startsWith(`${base}t:`));
      const fixed = inSlot.filter((k) => !k.startsWith(`${base}t:`));
      for (const id of [...ids, hold.id, later.id]) expect(records).toContain(`${base}t:${id}`);
      for (const key of ['wait', 'delayed', 'active', 'dead', 'events', 'stats']) expect(fixed).toContain(`${base}${key}`);
      await migrate(fixed);

      // The held task ends: the worker's fetch carries its end and asks for a task, and goes to
      // the target, which holds the lists and sets but no record.
      held.open();
      await waitFor(() => ev.errors.some((e) => NOT_HERE.test(e.message)), { timeout: 20_000, what: "the worker to report the fetch's refusal" }).catch(async (err: Error) => {
        const dead = await asking(target, (t) => t.lrange(`${base}dead`, 0, -1));
        throw new Error(`${err.message}; worker errors: ${ev.errors.map((e) => e.message).join(' | ') || 'none'}; dead letters: ${dead.join(' ') || 'none'}`, { cause: err });
      });
      const refusal = ev.errors.find((e) => NOT_HERE.test(e.message))!.message;
      // The call that met the split refused both parts: the held task's end and the starts.
      expect(refusal).toContain(`storing the end of task ${hold.id}: TRYAGAIN the record of task ${hold.id} is not on this node`);
      expect(refusal).toContain(`task ${ids[0]}: TRYAGAIN the record of task ${ids[0]} is not on this node`);
      // Every id is still in the target's wait list, nothing more was dead-lettered, the held
      // task's lease is still there, none of the queued tasks ran, and the records on the
      // source are as they were.
      expect((await asking(target, (t) => t.lrange(`${base}wait`, 0, -1))).sort()).toEqual([...ids].sort());
      expect(await asking(target, (t) => t.llen(`${base}dead`))).toBe(1);
      expect(await asking(target, (t) => t.zrange(`${base}active`, 0, -1))).toEqual([hold.id]);
      expect(ids.filter((id) => service.runs.has(id))).toEqual([]);
      expect(await Promise.all(ids.map((id) => source.hget(`${base}t:${id}`, 's')))).toEqual(ids.map(() => 'PENDING'));
      expect(await source.hget(`${base}t:${hold.id}`, 's')).toBe('STARTED');
      const refusalsReported = ev.errors.filter((e) => NOT_HERE.test(e.message)).length;
      const otherErrors = ev.errors.filter((e) => !NOT_HERE.test(e.message)).map((e) => e.message);

      // The records follow, and the slot is the target's on every master (the target first, then
      // the source, then the others, as redis-cli does).
      await migrate(records);
      for (const i of [to, from, ...c.nodes.map((_, i) => i).filter((i) => i !== to && i !== from)]) {
        await nodes[i]!.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
      }
      const moved = Date.now();

      // Every task runs once and ends SUCCESS, the held one too; the one due in an hour waits.
      const ended = [...ids, hold.id];
      const states = (): Promise<(string | null)[]> => Promise.all(ended.map((id) => admin.hget(`${base}t:${id}`, 's')));
      await waitFor(async () => (await states()).every((s) => s === 'SUCCESS'), { timeout: 20_000, what: 'every task to end SUCCESS' }).catch(async (err: Error) => {
        throw new Error(`${err.message}: states ${JSON.stringify(await states())}; worker errors: ${ev.errors.map((e) => e.message).join(' | ')}`, { cause: err });
      });
      // The results through get(), begun after the move: its SSUBSCRIBE to the done channel goes
      // to the sharded subscriber that still aims at the old master of the slot and never
      // completes, so get() reads the state without waiting for it (task-result.ts).
      const results = await Promise.all([...sent, hold].map((r) => (r as TaskResult<unknown>).get({ timeout: 10 })));
      expect(results).toEqual([...sent.map((_, n) => n * 10), 'held']);
      expect(ids.map((id) => service.runs.get(id))).toEqual(ids.map(() => 1));
      expect(service.runs.get(hold.id)).toBe(1);
      expect(await Promise.all([...ids, hold.id].map((id) => admin.hget(`${base}t:${id}`, 's')))).toEqual([...ids, hold.id].map(() => 'SUCCESS'));
      await waitFor(async () => (await admin.zcard(`${base}active`)) === 0, { what: 'the last leases to go' });
      expect(await admin.llen(`${base}wait`)).toBe(0);
      expect(await admin.llen(`${base}dead`)).toBe(1);
      expect(await admin.zrange(`${base}delayed`, 0, -1)).toEqual([later.id]);
      expect(Number(await source.call('CLUSTER', 'COUNTKEYSINSLOT', String(slot)))).toBe(0);

      reportFigures('a reshard with the records late', {
        tasks: TASKS,
        fixedKeysMovedFirst: fixed.map((k) => k.slice(base.length)).join(' '),
        recordsMovedLast: records.length,
        refusalsReported,
        otherWorkerErrors: otherErrors.length,
        runAllMsAfterTheMove: Date.now() - moved,
        totalMs: Date.now() - began,
        refusal: refusal.slice(0, 200),
      });
    } finally {
      held.open();
      await worker.close();
      await dispatcher.close();
      for (const n of nodes) n.disconnect();
      admin.disconnect();
      workerClient.disconnect();
      dispatcherClient.disconnect();
    }
  });
});
