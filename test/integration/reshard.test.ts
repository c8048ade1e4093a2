/**
 * A busy queue's slot moves from one master to another while tasks run and more are sent, with
 * the protocol a reshard uses (redis-cli --cluster reshard does the same): CLUSTER SETSLOT
 * IMPORTING on the target and MIGRATING on the source, CLUSTER GETKEYSINSLOT and MIGRATE ... KEYS
 * in batches, then CLUSTER SETSLOT NODE on every master. During the move the queue's keys are
 * split between two masters. Every script declares every key it touches, and Redis runs a call
 * of several keys only on a master that holds all of them: a call whose declared keys are split
 * (or include one that exists nowhere yet) gets TRYAGAIN before it runs, and ioredis tries again,
 * then gives up ("Too many Cluster redirections"); the worker reports that and calls again. A
 * script that runs on the source may still find a key it emptied (and so deleted) gone when it
 * writes it again ("non local key"). Every task must still run exactly once and end SUCCESS,
 * none left PENDING in no list (issue 12).
 */
import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, Task, Worker, currentTask, type TaskResult } from 'heimdall-tasks';
import { startCluster, type LocalCluster } from '../../scripts/redis-deployments.mjs';
import { fetch as fetchScript } from '../../src/redis-scripts/scripts.generated.js';
import { newPrefix, recordEvents, reportFigures, waitFor } from '../helpers.js';

const QUEUE = 'reshard';

class Busy {
  /** Runs per task id: each must end at 1. */
  readonly runs = new Map<string, number>();

  @Task({ queue: QUEUE })
  async work(n: number): Promise<number> {
    const id = currentTask().id;
    this.runs.set(id, (this.runs.get(id) ?? 0) + 1);
    // A little work, so tasks overlap and the worker keeps ~20 in hand.
    await new Promise((r) => setTimeout(r, 2 + (n % 7)));
    return n;
  }
}

/** What the worker's script calls met: counted on its own Cluster client, below the worker. */
interface CallCounts {
  fetches: number;
  /** Fetch calls Redis or ioredis failed (the script did not run, or failed as a whole). */
  failed: number;
  failedBy: Map<string, number>;
  /** The distinct texts of those failures, at most 5 (Redis names the script's line). */
  failedTexts: Set<string>;
  /** Fetch calls that ran but had commands refused (the reply's `problem`). */
  refused: number;
  /** The refusals those replies listed (a problem lists one per command refused). */
  refusals: number;
  refusedBy: Map<string, number>;
}

function countCalls(client: Cluster): CallCounts {
  const counts: CallCounts = { fetches: 0, failed: 0, failedBy: new Map(), failedTexts: new Set(), refused: 0, refusals: 0, refusedBy: new Map() };
  const kind = (text: string): string =>
    /non local key/.test(text)
      ? 'non local key'
      : /TRYAGAIN/.test(text)
        ? 'TRYAGAIN'
        : /redirections/.test(text)
          ? 'too many redirections'
          : text.slice(0, 60);
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
  const original = client.evalsha.bind(client) as (...args: unknown[]) => Promise<unknown>;
  (client as unknown as { evalsha: (...args: unknown[]) => Promise<unknown> }).evalsha = (...args: unknown[]) => {
    const isFetch = args[0] === fetchScript.sha;
    if (isFetch) counts.fetches++;
    return original(...args).then(
      (reply) => {
        // The reply's `problem` (start-tasks.lua: the seventh item).
        const problem = isFetch && Array.isArray(reply) ? String(reply[6] ?? '') : '';
        if (problem) {
          counts.refused++;
          for (const part of problem.split('; ')) {
            counts.refusals++;
            bump(counts.refusedBy, kind(part));
          }
        }
        return reply;
      },
      (err: unknown) => {
        if (isFetch) {
          counts.failed++;
          const text = String((err as Error).message);
          bump(counts.failedBy, kind(text));
          if (counts.failedTexts.size < 5) counts.failedTexts.add(text.replace(/[0-9a-f]{40}/, '<sha>'));
        }
        throw err;
      },
    );
  };
  return counts;
}

/**
 * Moves `slot` from the master on `from` to the one on `to` as a reshard does. MIGRATE refuses a
 * key the target already holds (BUSYKEY): a script the target ran through an ASK may have
 * created one the source still had (the queue's event stream, its stats); such a batch is sent
 * again with REPLACE, as `redis-cli --cluster reshard --cluster-replace` does.
 */
async function moveSlot(
  c: LocalCluster,
  slot: number,
  from: number,
  to: number,
  batch: number,
  pauseMs: number,
  busy: Set<string>,
): Promise<{ keys: number; batches: number; replaced: number }> {
  const admins = c.nodes.map((n) => new Redis(n.url));
  try {
    const source = admins[from]!;
    const target = admins[to]!;
    const sourceId = String(await source.call('CLUSTER', 'MYID'));
    const targetId = String(await target.call('CLUSTER', 'MYID'));
    await target.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
    await source.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
    let keys = 0;
    let batches = 0;
    let replaced = 0;
    const port = String(c.nodes[to]!.port);
    for (;;) {
      const some = (await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), String(batch))) as string[];
      if (some.length === 0) break;
      try {
        await source.call('MIGRATE', '127.0.0.1', port, '', '0', '5000', 'KEYS', ...some);
      } catch (err) {
        if (!/BUSYKEY/.test((err as Error).message)) throw err;
        replaced++;
        // The keys in the way: still on the source (a MIGRATE that fails moves the batch's other
        // keys all the same) and on the target (asked with ASKING: the slot is not its yet).
        for (const key of some) {
          const onSource = await source.exists(key).catch(() => 0);
          await target.call('ASKING');
          if (onSource === 1 && (await target.exists(key)) === 1) busy.add(key.replace(/^.*\}:/, ''));
        }
        await source.call('MIGRATE', '127.0.0.1', port, '', '0', '5000', 'REPLACE', 'KEYS', ...some);
      }
      keys += some.length;
      batches++;
      // Spread the move over time, so the queue's calls meet the slot half moved many times.
      await new Promise((r) => setTimeout(r, pauseMs));
    }
    // The target first, then the source, then the other masters, as redis-cli does.
    const order = [to, from, ...admins.map((_, i) => i).filter((i) => i !== to && i !== from)];
    for (const i of order) await admins[i]!.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
    return { keys, batches, replaced };
  } finally {
    for (const a of admins) a.disconnect();
  }
}

describe('resharding a busy queue', () => {
  const cluster = useDeployment(() => startCluster({ masters: 3, replicas: 0, log: () => undefined }));

  it("moving the queue's slot to another master while tasks run and are sent loses no task and runs none twice", { timeout: 90_000 }, async () => {
    const c = cluster();
    const began = Date.now();
    const prefix = newPrefix('reshard');
    const base = `${prefix}:{${QUEUE}}:`;
    const admin = new Cluster(c.seeds);
    const workerClient = new Cluster(c.seeds);
    const counts = countCalls(workerClient);
    const dispatcherClient = new Cluster(c.seeds);
    const dispatcher = new Dispatcher({ connection: dispatcherClient, prefix });
    const service = new Busy();
    const worker = new Worker({ connection: workerClient, prefix, services: [service], queues: [QUEUE], concurrency: 20 });
    const ev = recordEvents(worker);
    const ref = dispatcher.tasks(Busy).work;
    const sent: TaskResult<number>[] = [];
    const failedSends: string[] = [];
    // Sends one task. During the move every enqueue of a new task gets TRYAGAIN: it declares the
    // task's record, which no master holds yet, and in a slot being moved Redis runs a call of
    // several keys only on a node that holds them all. So sends wait for the end of the move:
    // the Dispatcher sends such a call again until its failoverTimeout (15 s), so none should
    // fail; a send that fails all the same is recorded, and the test wants none.
    const send = async (n: number): Promise<void> => {
      // One in five with a countdown, so the delayed set is seldom empty: a queue with none has
      // no fetch that runs at all while its keys are split (a missing declared key is TRYAGAIN).
      const options = n % 5 === 0 ? { countdown: 0.2 + (n % 13) / 10, taskId: `${prefix}-${n}` } : { taskId: `${prefix}-${n}` };
      try {
        sent.push(await ref.applyAsync([n], options));
      } catch (err) {
        failedSends.push(`${n}: ${String(err)}`);
      }
    };

    try {
      const slot = Number(await admin.call('CLUSTER', 'KEYSLOT', `{${QUEUE}}`));
      const owner = (await admin.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
      const first = c.nodes.findIndex((n) => owner.some(([lo, hi, [, port]]) => slot >= lo && slot <= hi && port === n.port));
      expect(first).toBeGreaterThanOrEqual(0);

      // A backlog first, then the worker; the moves start once it is busy.
      let next = 0;
      for (; next < 300; next++) await send(next);
      await worker.start();
      await waitFor(() => service.runs.size >= 50, { timeout: 20_000, what: 'the worker to be busy' });

      // More tasks keep coming during the moves, and a little after them. Sends are not awaited
      // one by one: one the Dispatcher holds while the slot is half moved (see send) must not hold up the others.
      let moving = true;
      const sending: Promise<void>[] = [];
      const producer = (async () => {
        while (moving) {
          for (let i = 0; i < 2; i++) sending.push(send(next++));
          await new Promise((r) => setTimeout(r, 25));
        }
        for (let i = 0; i < 50; i++) sending.push(send(next++));
        await Promise.all(sending);
      })();
      // The slot goes round the three masters: three reshards, each met by a busy worker (a
      // fetch meets the slot half moved in a few ways, at random points of each move).
      const moves: { keys: number; batches: number; replaced: number; ms: number; fetches: number }[] = [];
      const fetchesBefore = counts.fetches;
      // Keys a MIGRATE found on the target already (the part of their names after the queue's tag).
      const busyKeys = new Set<string>();
      for (let k = 0; k < c.nodes.length; k++) {
        const from = (first + k) % c.nodes.length;
        const ranBefore = service.runs.size;
        const fetches = counts.fetches;
        const moveBegan = Date.now();
        const moved = await moveSlot(c, slot, from, (from + 1) % c.nodes.length, 5, 25, busyKeys);
        moves.push({ ...moved, ms: Date.now() - moveBegan, fetches: counts.fetches - fetches });
        // Busy again on the new master before the next move.
        await waitFor(() => service.runs.size >= ranBefore + 30, { timeout: 20_000, what: `tasks to run after move ${k + 1}` });
      }
      moving = false;
      await producer;
      const fetchesDuringMove = counts.fetches - fetchesBefore;
      const failedDuringMove = counts.failed;
      const refusedDuringMove = counts.refused;
      const moved = { keys: moves.reduce((n, m) => n + m.keys, 0), batches: moves.reduce((n, m) => n + m.batches, 0), replaced: moves.reduce((n, m) => n + m.replaced, 0) };
      const moveMs = moves.map((m) => m.ms).join('+');

      // Every task ends: deadlines, not sleeps (the last countdowns are under 1.5 s). Should some
      // not, the failure says where they are: their states and the places that hold them.
      try {
        await waitFor(() => service.runs.size === sent.length, { timeout: 20_000, interval: 50, what: `all ${sent.length} tasks to run` });
      } catch (err) {
        const missing = sent.filter((r) => !service.runs.has(r.id)).map((r) => r.id);
        const where = new Map<string, number>();
        for (const id of missing) {
          const [state, inWait, inDelayed, inActive] = await Promise.all([
            admin.hget(`${base}t:${id}`, 's'),
            admin.lpos(`${base}wait`, id),
            admin.zscore(`${base}delayed`, id),
            admin.zscore(`${base}active`, id),
          ]);
          const places = [inWait !== null && 'wait', inDelayed !== null && 'delayed', inActive !== null && 'active'].filter(Boolean).join('+') || 'no place';
          const k = `${state ?? 'no record'} in ${places}`;
          where.set(k, (where.get(k) ?? 0) + 1);
        }
        const dead = (await admin.lrange(`${base}dead`, 0, -1)).map((d) => (JSON.parse(d) as { reason: string }).reason);
        const reasons = [...new Set(dead)].map((r) => `${dead.filter((x) => x === r).length} x ${r}`);
        throw new Error(
          `${(err as Error).message}: ${missing.length} did not run: ${JSON.stringify(Object.fromEntries(where))}; dead letters: ${reasons.join(', ') || 'none'}; ` +
            `fetches failed: ${JSON.stringify(Object.fromEntries(counts.failedBy))} (${[...counts.failedTexts].join(' | ')}), with refusals: ${JSON.stringify(Object.fromEntries(counts.refusedBy))}`,
          { cause: err },
        );
      }
      const results = await Promise.all(sent.map((r) => r.get({ timeout: 20 })));
      expect(results).toEqual(sent.map((r) => Number(r.id.slice(prefix.length + 1))));
      const twice = [...service.runs].filter(([, n]) => n !== 1);
      expect(twice).toEqual([]);
      // Redis agrees: every record SUCCESS, no list or set holds an id any more, no dead letter.
      const states = await Promise.all(sent.map((r) => admin.hget(`${base}t:${r.id}`, 's')));
      expect(states.filter((s) => s !== 'SUCCESS')).toEqual([]);
      await waitFor(async () => (await admin.zcard(`${base}active`)) === 0, { what: 'the last leases to go' });
      expect(await admin.llen(`${base}wait`)).toBe(0);
      expect(await admin.zcard(`${base}delayed`)).toBe(0);
      expect(await admin.llen(`${base}dead`)).toBe(0);
      // The slot is back on its first master, and the queue's keys are there.
      const targetNode = new Redis(c.nodes[first]!.url);
      try {
        expect(Number(await targetNode.call('CLUSTER', 'COUNTKEYSINSLOT', String(slot)))).toBeGreaterThan(0);
      } finally {
        targetNode.disconnect();
      }

      reportFigures('reshard of a busy queue', {
        tasks: sent.length,
        failedSends: failedSends.length,
        keysMoved: moved.keys,
        migrateBatches: moved.batches,
        batchesSentAgainWithReplace: moved.replaced,
        keysFoundOnTarget: [...busyKeys].join(' ') || 'none',
        moves: moves.length,
        moveMs,
        fetchCalls: fetchesDuringMove,
        fetchesPerMove: moves.map((m) => m.fetches).join('+'),
        fetchesFailed: failedDuringMove,
        fetchesFailedBy: JSON.stringify(Object.fromEntries(counts.failedBy)),
        fetchFailures: [...counts.failedTexts].join(' | '),
        fetchesWithRefusals: refusedDuringMove,
        refusals: counts.refusals,
        refusalsBy: JSON.stringify(Object.fromEntries(counts.refusedBy)),
        workerErrorsReported: ev.errors.length,
        totalMs: Date.now() - began,
      });
      // The moves took seconds, well within the Dispatcher's failoverTimeout: no send failed.
      expect(failedSends, 'sends that failed during the moves').toEqual([]);
    } finally {
      await worker.close();
      await dispatcher.close();
      admin.disconnect();
      workerClient.disconnect();
      dispatcherClient.disconnect();
    }
  });
});
