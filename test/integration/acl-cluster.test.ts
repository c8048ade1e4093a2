// docs/acl.md's Cluster rules, on a local Redis Cluster of three masters with a replica each
// (scripts/redis-deployments.mjs): the rules are set on every node, replicas too, a Dispatcher
// and a Worker connect as that user through a redis+cluster:// URL, an Inspector as an operator
// user, and a flow touches queues of every master, a unique task, a rate limit, a revoke, get(),
// ping() and the Inspector's listings; every task must end as expected and no node's ACL LOG may
// hold a denial.
//
// How the Cluster rules were found: HEIMDALL_ACL_EXPLORE=1 grants +@all instead and prints, per
// node, the commands the flow ran beyond the single-server rules (INFO commandstats; on replicas
// the replication stream's SELECT, PING, LMOVE and PEXPIREAT come from the master's link, not the
// user); HEIMDALL_ACL_CLUSTER_RULES='+cluster|slots +cluster|info' (say) grants the
// single-server rules plus those, and HEIMDALL_ACL_DEADLINE_MS shortens the wait before a hung
// flow fails with the nodes' ACL LOG.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { currentTask, Dispatcher, Inspector, Task, Worker } from 'heimdall-tasks';
import { startCluster } from '../../scripts/redis-deployments.mjs';
import { aclCommandRules, aclRules, clusterCommandRules, OPERATOR_COMMANDS } from '../fixtures/security/acl-rules.js';
import { nextEvent, ROOT, waitFor } from '../helpers.js';

/** The line of docs/acl.md that grants the Cluster commands. */
const clusterLine = readFileSync(join(ROOT, 'docs/acl.md'), 'utf8').split('\n').find((l) => l.startsWith('user heimdall on ') && l.includes('+cluster|slots')) ?? '';
const EXPLORE = process.env.HEIMDALL_ACL_EXPLORE === '1';
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;
const QUEUES = ['acl-a', 'acl-b', 'acl-c', 'acl-d', 'acl-e', 'acl-f'];
/** How long the flow may take before the test reads ACL LOG and fails. */
const DEADLINE_MS = Number(process.env.HEIMDALL_ACL_DEADLINE_MS ?? 60_000);
const PREFIX = `heimdall:acl-cluster-${process.pid}`;

class ClusterFlow {
  @Task()
  async double(n: number): Promise<number> {
    return n * 2;
  }

  @Task({ unique: true })
  async once(n: number): Promise<number> {
    return n * 10;
  }

  @Task({ rateLimit: [1, 1] })
  async limited(n: number): Promise<number> {
    return n;
  }

  /** Runs until revoked, then throws the revoke's reason: the task ends REVOKED. */
  @Task()
  async untilRevoked(): Promise<void> {
    const signal = currentTask().signal;
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    throw signal.reason;
  }
}

/** ACL LOG of one node, as `user: reason object (context)`. */
async function denials(admin: Redis): Promise<string[]> {
  const log = (await admin.call('ACL', 'LOG', '256')) as unknown[][];
  return log.map((entry) => {
    const f = new Map<string, unknown>();
    for (let i = 0; i < entry.length; i += 2) f.set(String(entry[i]), entry[i + 1]);
    return `${String(f.get('username'))}: ${String(f.get('reason'))} ${String(f.get('object'))} (${String(f.get('context'))})`;
  });
}

/** The commands a node ran (INFO commandstats), as `name` (subcommands `name|sub`). */
async function commandsRan(admin: Redis): Promise<string[]> {
  const info = await admin.info('commandstats');
  return [...info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)].map((m) => m[1]!);
}

describe('a restricted ACL user on a Redis Cluster (docs/acl.md)', () => {
  let cluster: Awaited<ReturnType<typeof startCluster>> | undefined;
  const admins: Redis[] = [];
  /** The ports of the masters that own the queues' slots. */
  const owners = new Set<number | undefined>();

  beforeAll(async () => {
    expect(clusterLine, "docs/acl.md's Cluster line").toBe(`user heimdall on >CHANGE-ME ${aclRules('heimdall', [...aclCommandRules(), ...clusterCommandRules()])}`);
    const said: string[] = [];
    cluster = await startCluster({ masters: 3, replicas: 1, log: (m) => said.push(m) }).catch((err: unknown) => {
      throw new Error(`the Cluster did not start: ${err instanceof Error ? err.message : String(err)}\n${said.join('\n')}`, { cause: err });
    });
    for (const node of cluster.nodes) admins.push(new Redis(node.port, '127.0.0.1'));
    const slots = await admins[0]!.cluster('SLOTS');
    for (const q of QUEUES) owners.add(slots.find(([lo, hi]) => calculateSlot(`{${q}}`) >= lo && calculateSlot(`{${q}}`) <= hi)?.[2]?.[1]);
    // docs/acl.md's Cluster line, as written there (the rules of acl-rules.ts, checked first), with
    // its password replaced; the operator's user adds the Inspector's commands to it.
    const documented = clusterLine.replace(/^user heimdall on >CHANGE-ME /, '');
    const only = process.env.HEIMDALL_ACL_CLUSTER_RULES;
    const worker = EXPLORE ? '~* &* +@all' : only !== undefined ? aclRules('heimdall', [...aclCommandRules(), ...only.split(' ')]) : documented;
    const operator = EXPLORE ? '~* &* +@all' : `${worker} ${OPERATOR_COMMANDS.map((c) => c.rule).join(' ')}`;
    for (const admin of admins) {
      await admin.call('ACL', 'SETUSER', 'heimdall', 'reset', 'on', '>worker-secret', ...worker.split(' '));
      await admin.call('ACL', 'SETUSER', 'operator', 'reset', 'on', '>operator-secret', ...operator.split(' '));
      await admin.call('ACL', 'LOG', 'RESET');
      await admin.call('CONFIG', 'RESETSTAT');
    }
  }, 60_000);

  afterAll(async () => {
    await Promise.all(admins.map((a) => a.quit()));
    await cluster?.stop();
  });

  it('runs dispatches to every master, unique, rate-limited and revoked tasks, get(), ping() and the Inspector with an empty ACL LOG on every node', { timeout: 90_000 }, async () => {
    const c = cluster!;
    const hosts = c.nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
    const workerUrl = `redis+cluster://heimdall:worker-secret@${hosts}`;
    const operatorUrl = `redis+cluster://operator:operator-secret@${hosts}`;

    // The queues' slots fall on every master.
    expect(owners.size).toBe(3);

    const worker = new Worker({ connection: workerUrl, prefix: PREFIX, services: [new ClusterFlow()], queues: QUEUES, concurrency: 8 });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    const dispatcher = new Dispatcher({ connection: workerUrl, prefix: PREFIX });
    const inspector = new Inspector({ connection: operatorUrl, prefix: PREFIX });
    const tasks = dispatcher.tasks(ClusterFlow);
    const flow = async (): Promise<void> => {
      await worker.start();

      // One task per queue: every master runs enqueue, fetch and the done announcement.
      const sent = await Promise.all(QUEUES.map((queue, i) => tasks.double.applyAsync([i], { queue })));
      expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual(QUEUES.map((_, i) => i * 2));

      // Unique: the duplicate meets the lock while the first is queued or running.
      const first = await tasks.once.applyAsync([4], { queue: 'acl-b' });
      const duplicate = await tasks.once.applyAsync([4], { queue: 'acl-b' });
      expect(duplicate.id).toBe(first.id);
      expect(await first.get({ timeout: 20 })).toBe(40);

      // Rate limit, one a second: one of two is pushed back to the delayed set, both end.
      const pushedBack = nextEvent(worker, 'rateLimited', (e) => e.name === 'ClusterFlow.limited');
      const limited = await Promise.all([1, 2].map((n) => tasks.limited.applyAsync([n], { queue: 'acl-c' })));
      await pushedBack;
      expect(await Promise.all(limited.map((r) => r.get({ timeout: 20 })))).toEqual([1, 2]);

      // A running task revoked (SPUBLISH on its queue's revoke channel, heard by the worker's
      // sharded subscription on that master).
      const started = nextEvent(worker, 'started', (e) => e.name === 'ClusterFlow.untilRevoked');
      const running = await tasks.untilRevoked.applyAsync([], { queue: 'acl-d' });
      await started;
      await running.revoke();
      await waitFor(async () => (await running.status()) === 'REVOKED', { what: 'the revoked task to end REVOKED' });
      expect(await running.info()).toMatchObject({ state: 'REVOKED' });

      // ping() reaches the worker through every queue's control channel.
      const replies = await dispatcher.ping({ queues: QUEUES, timeout: 2 });
      expect(replies.map((r) => r.id)).toContain(worker.id);
      expect(new Set(replies.flatMap((r) => r.queues))).toEqual(new Set(QUEUES));

      // The operator's listings.
      expect(await inspector.queueNames()).toEqual(expect.arrayContaining(QUEUES));
      const stats = await inspector.queues(QUEUES);
      expect(stats.map((s) => [s.queue, s.waiting, s.running, s.dead])).toEqual(QUEUES.map((q) => [q, 0, 0, 0]));
      expect(await inspector.deadLetters('acl-a')).toEqual([]);

      expect(errors.map((e) => e.message)).toEqual([]);
    };
    // A refused CLUSTER SLOTS or CLUSTER INFO hangs the clients (they never become ready): the
    // flow gets a deadline, and a failure says what each node's ACL LOG holds.
    let failure: unknown;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        flow(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`the flow did not end within ${DEADLINE_MS} ms`)), DEADLINE_MS))),
      ]);
    } catch (err) {
      failure = err;
    } finally {
      clearTimeout(timer);
    }
    const logs = await Promise.all(admins.map(async (a, i) => `${c.nodes[i]!.port}: ${(await denials(a)).join('; ')}`));
    if (failure) {
      for (const x of [worker, dispatcher, inspector]) void x.close().catch(() => undefined);
      throw new Error(`${failure instanceof Error ? failure.message : String(failure)}\nACL LOG per node:\n${logs.join('\n')}`, { cause: failure });
    }
    await worker.close();
    await dispatcher.close();
    await inspector.close();

    if (EXPLORE) {
      const granted = new Set([...aclCommandRules(), ...OPERATOR_COMMANDS.map((x) => x.rule)].map((r) => r.slice(1)));
      for (const [i, admin] of admins.entries()) {
        const beyond = (await commandsRan(admin)).filter((cmd) => !granted.has(cmd) && !/^(acl|config)\|/.test(cmd));
        const role = await c.nodeFor(c.nodes[i]!.port);
        console.log(`node ${c.nodes[i]!.port} (${role}) ran beyond the single-server rules: ${beyond.join(' ')}`);
      }
    }
    expect(logs).toEqual(c.nodes.map((n) => `${n.port}: `));
  });
  it("a task whose record has not reached the master importing the queue's slot is kept, and runs once after the move, with no CLUSTER command granted beyond ioredis's", { timeout: 90_000 }, async () => {
    // A reshard stopped half way: every key of the queue moved to the importing master but a
    // waiting task's record. The worker's call that would start the task declares its record, and
    // in a slot being moved Redis runs a call of several keys only on a master that holds all of
    // them: the old master holds the record but not the queue's other keys, and the importing
    // master gets a call only through an ASK, which the old one sends once none of them is left
    // there. So Redis answers TRYAGAIN before the script runs, and the task stays queued: it is not
    // dead-lettered as a task with no record, as when the fetch read records it did not declare.
    // The user has the documented line, without +cluster|nodes (those scripts asked CLUSTER NODES
    // whether a record read as missing was only on its way).
    const c = cluster!;
    expect(clusterLine).not.toContain('cluster|nodes');
    const hosts = c.nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
    const url = `redis+cluster://heimdall:worker-secret@${hosts}`;
    const queue = 'acl-reshard';
    const base = `${PREFIX}:{${queue}}:`;
    const slot = calculateSlot(`{${queue}}`);
    const adminOf = (port: number): Redis => admins[c.nodes.findIndex((n) => n.port === port)]!;
    const slots = await admins[0]!.cluster('SLOTS');
    const sourcePort = Number(slots.find(([lo, hi]) => slot >= lo && slot <= hi)?.[2]?.[1]);
    const roles = await Promise.all(c.nodes.map((n) => c.nodeFor(n.port)));
    const targetPort = c.nodes.find((n, i) => roles[i] === 'master' && n.port !== sourcePort)!.port;
    const source = adminOf(sourcePort);
    const target = adminOf(targetPort);
    const sourceId = String(await source.call('CLUSTER', 'MYID'));
    const targetId = String(await target.call('CLUSTER', 'MYID'));
    // Redis's TRYAGAIN replies on the two masters of the slot (INFO errorstats counts redirections too).
    const tryAgains = async (): Promise<number> => {
      let n = 0;
      for (const admin of [source, target]) n += Number(/^errorstat_TRYAGAIN:count=(\d+)/m.exec(await admin.info('errorstats'))?.[1] ?? 0);
      return n;
    };
    // CLUSTER NODES run or refused on any node (commandstats counts a refusal as a rejected call).
    const nodesAsked = async (): Promise<number> => {
      let n = 0;
      for (const admin of admins) {
        const line = /^cmdstat_cluster\|nodes:(.*)$/m.exec(await admin.info('commandstats'))?.[1] ?? '';
        n += Number(/calls=(\d+)/.exec(line)?.[1] ?? 0) + Number(/rejected_calls=(\d+)/.exec(line)?.[1] ?? 0);
      }
      return n;
    };
    const askedBefore = await nodesAsked();

    const dispatcher = new Dispatcher({ connection: url, prefix: PREFIX });
    // Two slots, both taken by running tasks, so the next ones wait; unknown names dead-lettered at once.
    // No prefetch: the next tasks wait in the queue, not reserved by the worker.
    const worker = new Worker({ connection: url, prefix: PREFIX, services: [new ClusterFlow()], queues: [queue], concurrency: 2, prefetch: 0, leaseDuration: '3s', unknownTaskGrace: 0 });
    const fetchErrors: string[] = [];
    worker.on('error', (e) => {
      if (e.message.startsWith(`queue ${queue}: fetching`)) fetchErrors.push(e.message);
    });
    const starts = new Map<string, number>();
    worker.on('started', (e) => starts.set(e.id, (starts.get(e.id) ?? 0) + 1));
    const tasks = dispatcher.tasks(ClusterFlow);
    // The rest of the move (the record, then the slot's new owner on every master), once.
    let moveBegun = false;
    let moved = false;
    const finishMove = async (record: string): Promise<void> => {
      if (!moveBegun || moved) return;
      moved = true;
      await source.call('MIGRATE', '127.0.0.1', String(targetPort), '', '0', '5000', 'KEYS', record);
      // The target first, then the source, then the other masters, as redis-cli does.
      const masters = [target, source, ...admins.filter((a, i) => roles[i] === 'master' && a !== target && a !== source)];
      for (const admin of masters) await admin.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', targetId);
    };
    let record = '';
    // Revoked at the end, or on the way out of a failure: close() waits for running tasks.
    let keepsRunning: Awaited<ReturnType<typeof tasks.untilRevoked.applyAsync>> | undefined;
    try {
      await worker.start();
      // A busy queue, so that on the importing master every fixed key the fetch declares is
      // there and only the record is missing (with any other key missing Redis would refuse the
      // call for that alone): events and stats (a run ended), dead (an unknown task), delayed,
      // active (a task that keeps running), wait (a task queued after the one whose record is
      // late), and claimed (a claim of a worker gone away, lapsing in an hour).
      expect(await (await tasks.double.applyAsync([1], { queue })).get({ timeout: 20 })).toBe(2);
      const unknown = await dispatcher.send('Nobody.runs', [], { queue });
      await waitFor(async () => (await unknown.status()) === 'FAILURE', { what: 'the unknown task to be dead-lettered' });
      const running = await tasks.untilRevoked.applyAsync([], { queue });
      keepsRunning = await tasks.untilRevoked.applyAsync([], { queue });
      const other = keepsRunning;
      await waitFor(() => starts.has(running.id) && starts.has(other.id), { what: 'both slots to be taken' });
      await tasks.double.applyAsync([0], { queue, countdown: '1h' });
      await source.zadd(`${base}claimed`, Date.now() + 3_600_000, `${PREFIX}-claim-of-a-worker-gone`);
      // First in, first out: the pending task is the next to start, the one after it stays queued.
      const pending = await tasks.double.applyAsync([21], { queue });
      const after = await tasks.double.applyAsync([5], { queue });

      // The reshard, stopped half way: every key of the queue on the target but the pending task's record.
      moveBegun = true;
      await target.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', sourceId);
      await source.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', targetId);
      const keys = (await source.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '100')) as string[];
      record = `${base}t:${pending.id}`;
      expect(keys).toContain(record);
      for (const key of ['wait', 'delayed', 'active', 'dead', 'events', 'stats', 'claimed']) expect(keys).toContain(`${base}${key}`);
      await source.call('MIGRATE', '127.0.0.1', String(targetPort), '', '0', '5000', 'KEYS', ...keys.filter((k) => k !== record));
      const refusedBefore = await tryAgains();

      // One running task revoked (on the target): the worker learns it at its next renewal,
      // frees its slot and asks for a task; its call that declares the pending task's record is
      // refused.
      await running.revoke();
      await waitFor(async () => fetchErrors.length > 0 && (await tryAgains()) > refusedBefore, { timeout: 30_000, what: "Redis to refuse the worker's fetch (TRYAGAIN), and the worker to report it" }).catch(async (err: Error) => {
        throw new Error(`${err.message}: ${(await tryAgains()) - refusedBefore} TRYAGAIN, worker errors: ${fetchErrors.join(' | ') || 'none'}`, { cause: err });
      });
      // Kept: PENDING, its id still queued on the target (in the wait list, or claimed by the
      // worker), not dead-lettered, not run, its record still on the source.
      expect(await pending.status()).toBe('PENDING');
      await target.call('ASKING');
      const waiting = await target.lrange(`${base}wait`, 0, -1);
      await target.call('ASKING');
      const claimed = await target.zrange(`${base}claimed`, 0, -1);
      expect([...waiting, ...claimed].filter((id) => id === pending.id)).toEqual([pending.id]);
      await target.call('ASKING');
      expect((await target.lrange(`${base}dead`, 0, -1)).filter((letter) => letter.includes(pending.id))).toEqual([]);
      expect(starts.get(pending.id)).toBeUndefined();
      expect(await source.exists(record)).toBe(1);
      // And every other key the call declares is on the target: only the record is missing, so
      // a call that did not declare it would run there and read it as missing.
      for (const key of ['wait', 'delayed', 'active', 'dead', 'events', 'stats', 'claimed']) {
        await target.call('ASKING');
        expect(await target.exists(`${base}${key}`), key).toBe(1);
      }

      await finishMove(record);
      // A get() begun now, on a Dispatcher whose sharded subscriber still aims at the source:
      // its SSUBSCRIBE does not complete, and get() reads the state without it.
      expect(await pending.get({ timeout: 30 })).toBe(42);
      expect(await pending.info()).toMatchObject({ state: 'SUCCESS', result: 42 });
      expect(await after.get({ timeout: 30 })).toBe(10);
      expect([starts.get(pending.id), starts.get(after.id)]).toEqual([1, 1]);
      expect((await target.lrange(`${base}dead`, 0, -1)).filter((letter) => letter.includes(pending.id))).toEqual([]);
      expect(await running.status()).toBe('REVOKED');
      await other.revoke();
      await waitFor(async () => (await other.status()) === 'REVOKED', { what: 'the other running task to end REVOKED' });
    } finally {
      // A failure half way still ends the move (the worker could not store its ends before) and
      // the task that keeps running.
      await finishMove(record);
      await keepsRunning?.revoke().catch(() => undefined);
      await worker.close();
      await dispatcher.close();
    }
    // No script asked CLUSTER NODES, and no node logged a denial.
    expect(await nodesAsked()).toBe(askedBefore);
    const logs = await Promise.all(admins.map(async (a, i) => `${c.nodes[i]!.port}: ${(await denials(a)).join('; ')}`));
    expect(logs).toEqual(c.nodes.map((n) => `${n.port}: `));
  });
});
