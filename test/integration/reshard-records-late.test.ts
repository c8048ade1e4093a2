/**
 * A reshard that moves a queue's keys to the importing master before its task records. Every
 * script declares every key it touches (the fetch and the lease renewal declare the records of
 * the runs they name and of the tasks they start), and in a slot being moved Redis runs a call
 * of several keys only on a master that holds every key the call declares: the old master
 * answers TRYAGAIN while it holds some of them but not all, and sends the call on (ASK) only once
 * it holds none; the importing master answers TRYAGAIN while any is missing. So no script runs
 * where a record it declares has yet to arrive, and none reads such a record as missing.
 *
 * Here the queue's fixed keys (wait, delayed, active, dead, events, stats, claimed, names, the
 * registry's: all but the task records) reach the target master first, and the records stay on
 * the source. The worker's calls (the end of the task it just ran with a request for more, the
 * renewal of its lease) declare records on the source beside keys now on the target: Redis
 * refuses them before they run, ioredis gives up after its redirections, and the worker reports
 * the error and calls again. Nothing may be lost meanwhile: every id stays queued, nothing is
 * dead-lettered, the lease and the end are kept, no queued task runs. Once the records are moved
 * and the slot is the target's, every task runs once and ends SUCCESS.
 *
 * Every fixed key the fetch declares exists before the split (a run ended: stats; a stray id
 * dead-lettered: dead; a task due in an hour: delayed; one running: active; a claim of a worker
 * gone away: claimed), so that only records are missing on the target: a call that did not
 * declare a record, as the fetch once did, would run there and read it as missing.
 * (test/integration/reshard.test.ts moves a busy queue's slot in random batches.)
 */
import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, Task, Worker, currentTask, type TaskResult } from 'heimdall-tasks';
import { startCluster } from '../../scripts/redis-deployments.mjs';
import { gate, newPrefix, recordEvents, reportFigures, waitFor, type Gate } from '../helpers.js';

const QUEUE = 'records-late';
const TASKS = 6;

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

  it("Redis refuses the worker's calls while the records are late (TRYAGAIN): every id stays queued, the lease and the end are kept; once the records arrive every task runs once", { timeout: 60_000 }, async () => {
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
    // Concurrency 1 and no prefetch: while `hold` runs, the queued tasks stay in the wait list.
    const worker = new Worker({ connection: workerClient, prefix, services: [service], queues: [QUEUE], concurrency: 1, prefetch: 0 });
    const ev = recordEvents(worker);
    held = gate();
    // A command to the target for a key of the slot it imports: ASKING first, on the same connection.
    const asking = async <T>(node: Redis, command: (n: Redis) => Promise<T>): Promise<T> => {
      await node.call('ASKING');
      return command(node);
    };
    // Redis's TRYAGAIN replies on some nodes (INFO errorstats counts redirections too).
    const tryAgains = async (on: Redis[]): Promise<number> => {
      let n = 0;
      for (const node of on) n += Number(/^errorstat_TRYAGAIN:count=(\d+)/m.exec(await node.info('errorstats'))?.[1] ?? 0);
      return n;
    };
    const fetchErrors = (): Error[] => ev.errors.filter((e) => e.message.startsWith(`queue ${QUEUE}: fetching`));
    // The end of the move, once it has begun: the records left, then the slot the target's on
    // every master (the target first, then the source, then the others, as redis-cli does).
    // Run in `finally` too: a worker cannot store its ends, nor so close, with the slot split.
    let endMove: (() => Promise<void>) | undefined;

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
      const finishMove = async (): Promise<void> => {
        endMove = undefined;
        const left = (await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as string[];
        if (left.length > 0) await migrate(left);
        for (const i of [to, from, ...c.nodes.map((_, i) => i).filter((i) => i !== to && i !== from)]) {
          await nodes[i]!.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
        }
      };

      // The queue before the split: a run ended (stats), a stray id dead-lettered (dead), a task
      // due in an hour (delayed), a claim of a worker gone away that lapses in an hour (claimed),
      // one running (active), and TASKS waiting (wait).
      const ref = dispatcher.tasks(Late);
      const warm = await ref.work.applyAsync([100], { taskId: `${prefix}-warm` });
      await worker.start();
      expect(await warm.get({ timeout: 20 })).toBe(1000);
      await admin.lpush(`${base}wait`, `${prefix}-stray`);
      await waitFor(async () => (await admin.llen(`${base}dead`)) === 1, { what: 'the stray id to be dead-lettered' });
      const later = await ref.work.applyAsync([200], { taskId: `${prefix}-later`, countdown: 3600 });
      const goneClaim = `${prefix}-claim-of-a-worker-gone`;
      await admin.zadd(`${base}claimed`, Date.now() + 3_600_000, goneClaim);
      const hold = await ref.hold.applyAsync([], { taskId: `${prefix}-hold` });
      await waitFor(() => service.runs.has(hold.id), { what: 'the held task to start' });
      const sent: TaskResult<number>[] = [];
      for (let n = 0; n < TASKS; n++) sent.push(await ref.work.applyAsync([n], { taskId: `${prefix}-${n}` }));
      const ids = sent.map((r) => r.id);
      expect((await admin.lrange(`${base}wait`, 0, -1)).sort()).toEqual([...ids].sort());

      // The reshard begins, and the queue's keys go over, all but the task records.
      endMove = finishMove;
      await target.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
      await source.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
      const inSlot = (await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as string[];
      const records = inSlot.filter((k) => k.startsWith(`${base}t:`));
      const fixed = inSlot.filter((k) => !k.startsWith(`${base}t:`));
      for (const id of [...ids, hold.id, later.id]) expect(records).toContain(`${base}t:${id}`);
      for (const key of ['wait', 'delayed', 'active', 'dead', 'events', 'stats', 'claimed']) expect(fixed).toContain(`${base}${key}`);
      await migrate(fixed);
      const refusedBefore = await tryAgains([source, target]);

      // The held task ends: the worker's call carries its end and asks for a task. It declares
      // the held task's record, still on the source, beside the queue's keys, now on the target.
      held.open();
      await waitFor(async () => fetchErrors().length > 0 && (await tryAgains([source, target])) > refusedBefore, {
        timeout: 20_000,
        what: "Redis to refuse the worker's fetch (TRYAGAIN), and the worker to report it",
      }).catch(async (err: Error) => {
        const dead = await asking(target, (t) => t.lrange(`${base}dead`, 0, -1));
        throw new Error(`${err.message}; worker errors: ${ev.errors.map((e) => e.message).join(' | ') || 'none'}; dead letters: ${dead.join(' ') || 'none'}`, { cause: err });
      });
      const refusal = fetchErrors()[0]!;
      // Redis's own refusal, through ioredis's redirections: no script ran.
      expect(String((refusal.cause as Error | undefined)?.message)).toMatch(/TRYAGAIN|Too many Cluster redirections/);
      // Every id is still queued on the target (in the wait list, or claimed by the worker),
      // nothing more was dead-lettered, the held task's lease is still there, none of the queued
      // tasks ran, the held task's end is not stored, and the records on the source are as they
      // were.
      const waiting = await asking(target, (t) => t.lrange(`${base}wait`, 0, -1));
      const claimed = (await asking(target, (t) => t.zrange(`${base}claimed`, 0, -1))).filter((id) => id !== goneClaim);
      expect([...waiting, ...claimed].sort()).toEqual([...ids].sort());
      expect(await asking(target, (t) => t.llen(`${base}dead`))).toBe(1);
      expect(await asking(target, (t) => t.zrange(`${base}active`, 0, -1))).toEqual([hold.id]);
      expect(ids.filter((id) => service.runs.has(id))).toEqual([]);
      expect(await Promise.all(ids.map((id) => source.hget(`${base}t:${id}`, 's')))).toEqual(ids.map(() => 'PENDING'));
      expect(await source.hget(`${base}t:${hold.id}`, 's')).toBe('STARTED');
      const refusalsReported = fetchErrors().length;
      const otherErrors = ev.errors.filter((e) => !fetchErrors().includes(e)).map((e) => e.message);
      const tryAgainsSeen = (await tryAgains([source, target])) - refusedBefore;

      // The records follow, and the slot is the target's on every master.
      expect(((await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '1000')) as string[]).sort()).toEqual([...records].sort());
      await finishMove();
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
      expect(await admin.zrange(`${base}claimed`, 0, -1)).toEqual([goneClaim]);
      expect(Number(await source.call('CLUSTER', 'COUNTKEYSINSLOT', String(slot)))).toBe(0);

      reportFigures('a reshard with the records late', {
        tasks: TASKS,
        fixedKeysMovedFirst: fixed.map((k) => k.slice(base.length)).join(' '),
        recordsMovedLast: records.length,
        refusalsReported,
        tryAgainsSeen,
        idsWaitingOrClaimed: `${waiting.length}/${claimed.length}`,
        otherWorkerErrors: otherErrors.length,
        runAllMsAfterTheMove: Date.now() - moved,
        totalMs: Date.now() - began,
        refusal: `${refusal.message.slice(0, 120)} (${String((refusal.cause as Error | undefined)?.message).slice(0, 120)})`,
      });
    } finally {
      held.open();
      await endMove?.();
      await worker.close();
      await dispatcher.close();
      for (const n of nodes) n.disconnect();
      admin.disconnect();
      workerClient.disconnect();
      dispatcherClient.disconnect();
    }
  });
});
