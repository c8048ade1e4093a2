#!/usr/bin/env node
// heimdall-tasks on a local Redis Cluster: what its Pub/Sub costs each node, and how the Redis work
// of three queues splits over three masters. Run from the repository root with
// `npm run bench:cluster` (= node --import tsx bench/cluster.mjs); see BENCHMARKS.md, "Redis
// Cluster", for what each figure means. Sizes and parts come from the environment:
//   BENCH_REPS (3), BENCH_CLUSTER_TASKS (30000 tasks per run and queue),
//   BENCH_CLUSTER_PARTS (pubsub,scaling), BENCH_CLUSTER_OUT (bench/results/cluster.json).
// It always starts its own servers (REDIS_URL is ignored: a server shared with anything else
// would spoil the CPU figures).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { ask, startCluster } from '../scripts/redis-deployments.mjs';
import { redisServerBin, startRedis } from '../scripts/redis-launcher.mjs';
import { startChild } from './lib/child.mjs';
import { BENCH, buildHeimdall, HEIMDALL_BUILD, producer, ROOT, versions } from './lib/systems.mjs';
import { int } from './lib/env.mjs';
import { cell, fmt, stats } from './lib/report.mjs';

const cfg = {
  reps: int('BENCH_REPS', 3),
  tasks: int('BENCH_CLUSTER_TASKS', 30_000),
  parts: (process.env.BENCH_CLUSTER_PARTS ?? 'pubsub,scaling').split(',').map((s) => s.trim()).filter(Boolean),
  concurrency: 50,
  batch: 1_000,
};
for (const p of cfg.parts) if (!['pubsub', 'scaling'].includes(p)) throw new Error(`unknown part '${p}' in BENCH_CLUSTER_PARTS; known: pubsub, scaling`);
const OUT = process.env.BENCH_CLUSTER_OUT ?? join(BENCH, 'results', 'cluster.json');
const PREFIX = 'hbench';
const log = (m) => console.error(m);
delete process.env.REDIS_URL;

// ------------------------------------------------------------------ nodes
/** A node's CPU so far (INFO cpu: used_cpu_user + used_cpu_sys, getrusage of the server), µs. */
async function cpuUs(port) {
  const text = await ask(port, 'INFO cpu');
  const field = (name) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(text)?.[1]);
  const us = (field('used_cpu_user') + field('used_cpu_sys')) * 1e6;
  if (!Number.isFinite(us)) throw new Error(`no CPU figures from the node on port ${port}: ${JSON.stringify(text.slice(0, 200))}`);
  return us;
}
const cpuOf = (ports) => Promise.all(ports.map(cpuUs));

/**
 * What a cluster node did so far besides CPU: cluster-bus messages received
 * (cluster_stats_messages_received) and commands run (INFO commandstats, less the bench's own
 * INFO and CLUSTER probes).
 */
async function traffic(port) {
  const bus = Number(/^cluster_stats_messages_received:(\d+)/m.exec(await ask(port, 'CLUSTER INFO'))?.[1] ?? 0);
  let calls = 0;
  for (const m of (await ask(port, 'INFO commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (m[1] !== 'info' && !m[1].startsWith('cluster')) calls += Number(m[2]);
  return { bus, calls };
}

/** Who is who in the cluster, from CLUSTER NODES: [{ id, port, master (id or null), slots: [[lo, hi]] }]. */
async function topology(port) {
  const text = await ask(port, 'CLUSTER NODES', 3000);
  const body = text.slice(text.indexOf('\r\n') + 2);
  return body
    .split('\n')
    .filter((l) => l.includes('@'))
    .map((line) => {
      const [id, address, flags, master, , , , , ...slots] = line.trim().split(' ');
      return {
        id,
        port: Number(address.split('@')[0].split(':')[1]),
        master: flags.includes('master') ? null : master,
        slots: slots.filter((s) => !s.startsWith('[')).map((s) => s.split('-').map(Number)).map(([lo, hi]) => [lo, hi ?? lo]),
      };
    });
}

/** The slot of a queue's keys (the hash tag is the queue's name), as the server computes it. */
async function slotOf(port, queue) {
  const reply = await ask(port, `CLUSTER KEYSLOT {${queue}}`);
  return Number(/^:(\d+)/.exec(reply)?.[1]);
}

/** One queue name per master, each in a slot that master owns: [{ queue, slot, master }]. */
async function queuePerMaster(port, masters) {
  const picked = [];
  for (const m of masters) {
    for (let n = 0; ; n++) {
      const queue = `bench-${n}`;
      if (picked.some((p) => p.queue === queue)) continue;
      const slot = await slotOf(port, queue);
      if (m.slots.some(([lo, hi]) => slot >= lo && slot <= hi)) {
        picked.push({ queue, slot, master: m });
        break;
      }
      if (n > 1000) throw new Error(`no queue name bench-<n> falls in the slots of master ${m.port}`);
    }
  }
  return picked;
}

async function flushMasters(ports) {
  for (const port of ports) {
    const reply = await ask(port, 'FLUSHALL', 10_000);
    if (!reply.startsWith('+OK')) throw new Error(`FLUSHALL on ${port} answered ${JSON.stringify(reply)}`);
  }
}

/** Queues `n` no-op tasks on `queue` (delayMany in batches), from this process. */
async function fill(where, queue, n) {
  const p = await producer('heimdall', where, PREFIX, { queue });
  for (let i = 0; i < n; i += cfg.batch) {
    await p.bulk(Array.from({ length: Math.min(cfg.batch, n - i) }, (_, k) => ({ i: i + k, s: 'x'.repeat(100) })));
  }
  await p.close();
}

/**
 * One worker process per queue (c=50, the drain scenarios' no-op task) drains `n` queued tasks
 * each; all start at once. Returns the wall time from the start to the last worker's last task,
 * and each node's CPU over that time.
 */
async function drain(where, queues, n, ports, env = {}, { countTraffic = false } = {}) {
  const children = queues.map((queue) => startChild('heimdall', where, { prefix: PREFIX, concurrency: cfg.concurrency, target: n, queue, env }));
  try {
    await Promise.all(children.map((c) => c.next('ready')));
    const traffic0 = countTraffic ? await Promise.all(ports.map(traffic)) : undefined;
    const before = await cpuOf(ports);
    const t0 = process.hrtime.bigint();
    for (const c of children) c.send({ type: 'go' });
    await Promise.all(children.map((c) => c.next('done')));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const after = await cpuOf(ports);
    const traffic1 = countTraffic ? await Promise.all(ports.map(traffic)) : undefined;
    await Promise.all(children.map((c) => c.stop()));
    const moved = traffic1?.map((t, i) => ({ bus: t.bus - traffic0[i].bus, calls: t.calls - traffic0[i].calls }));
    return { seconds, cpuUs: after.map((a, i) => a - before[i]), traffic: moved };
  } catch (err) {
    for (const c of children) c.kill();
    throw err;
  }
}

/** Each node's CPU per second while nothing runs (cluster bus pings, cron), µs/s, over `ms`. */
async function idleRates(ports, ms = 1500) {
  const before = await cpuOf(ports);
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, ms));
  const after = await cpuOf(ports);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return after.map((a, i) => (a - before[i]) / seconds);
}

// ------------------------------------------------------------------ variants of the build
/**
 * The working tree's build with its scripts publishing one way: 'classic' (PUBLISH, broadcast to
 * every node over the cluster bus) or 'sharded' (SPUBLISH, kept to the shard that owns the
 * channel's slot). Only the Lua text changes, so both variants do the same work otherwise; a drain
 * has no revoke and nobody waiting on done:<id>, so the library's subscribers play no part.
 */
function variantBuild(kind) {
  const dir = `${ROOT}.bench-build-${kind}/`;
  rmSync(dir, { recursive: true, force: true });
  cpSync(HEIMDALL_BUILD, dir, { recursive: true });
  const file = join(dir, 'redis-scripts', 'scripts.generated.js');
  const [from, to] = kind === 'classic' ? ["redis.call('SPUBLISH', ", "redis.call('PUBLISH', "] : ["redis.call('PUBLISH', ", "redis.call('SPUBLISH', "];
  let published = 0;
  // Each script is { sha, source }: a changed source needs its own SHA1, or EVALSHA would run
  // the unchanged script another process loaded under the old one.
  const out = readFileSync(file, 'utf8').replace(/sha: '([0-9a-f]{40})',(\s*)source: ("(?:[^"\\]|\\.)*")/g, (_, _sha, space, json) => {
    const source = JSON.parse(json).replaceAll(from, to);
    if (source.includes(to)) published++;
    return `sha: '${createHash('sha1').update(source).digest('hex')}',${space}source: ${JSON.stringify(source)}`;
  });
  if (published === 0 || out.includes(from)) throw new Error(`could not make the ${kind} variant of ${file}`);
  writeFileSync(file, out);
  return dir;
}

// ------------------------------------------------------------------ part 1: classic vs sharded Pub/Sub
/**
 * A cluster of 3 masters with a replica each; one queue on the first master; per repetition the two
 * variants in turn (the order alternates), each draining the same number of tasks with one worker
 * process. Per node: its CPU per task, less what it spends idle over the same time.
 */
async function partPubsub() {
  const cluster = await startCluster({ masters: 3, replicas: 1, log });
  try {
    const nodes = await topology(cluster.nodes[0].port);
    const masters = nodes.filter((n) => n.master === null).sort((a, b) => a.slots[0][0] - b.slots[0][0]);
    const [{ queue, slot, master: owner }] = await queuePerMaster(masters[0].port, masters.slice(0, 1));
    // Roles relative to the queue: its master, its master's replica, the other masters, their replicas.
    const roleOf = (n) => (n.id === owner.id ? 'queue master' : n.master === owner.id ? 'queue replica' : n.master === null ? 'other master' : 'other replica');
    const ports = nodes.map((n) => n.port);
    const where = { cluster: cluster.seeds };
    const builds = { classic: variantBuild('classic'), sharded: variantBuild('sharded') };
    const perNode = { classic: nodes.map(() => []), sharded: nodes.map(() => []) };
    const busPerTask = { classic: nodes.map(() => []), sharded: nodes.map(() => []) };
    const callsPerTask = { classic: nodes.map(() => []), sharded: nodes.map(() => []) };
    const rates = { classic: [], sharded: [] };
    for (let rep = 1; rep <= cfg.reps; rep++) {
      const order = rep % 2 ? ['classic', 'sharded'] : ['sharded', 'classic'];
      for (const kind of order) {
        await flushMasters(masters.map((m) => m.port));
        await fill(where, queue, cfg.tasks);
        const idle = await idleRates(ports);
        const r = await drain(where, [queue], cfg.tasks, ports, { BENCH_HEIMDALL_BUILD: builds[kind] }, { countTraffic: true });
        rates[kind].push(cfg.tasks / r.seconds);
        r.cpuUs.forEach((us, i) => perNode[kind][i].push((us - idle[i] * r.seconds) / cfg.tasks));
        r.traffic.forEach((t, i) => {
          busPerTask[kind][i].push(t.bus / cfg.tasks);
          callsPerTask[kind][i].push(t.calls / cfg.tasks);
        });
        log(`pubsub rep ${rep}/${cfg.reps} ${kind.padEnd(7)} ${fmt(cfg.tasks / r.seconds)} tasks/s; µs/task per node: ${r.cpuUs.map((us, i) => `${nodes[i].port} ${roleOf(nodes[i])} ${fmt((us - idle[i] * r.seconds) / cfg.tasks)}`).join(', ')}`);
      }
    }
    return {
      queue,
      slot,
      nodes: nodes.map((n, i) => ({
        port: n.port,
        role: roleOf(n),
        classic: stats(perNode.classic[i]),
        sharded: stats(perNode.sharded[i]),
        bus: { classic: stats(busPerTask.classic[i]), sharded: stats(busPerTask.sharded[i]) },
        calls: { classic: stats(callsPerTask.classic[i]), sharded: stats(callsPerTask.sharded[i]) },
      })),
      rate: { classic: stats(rates.classic), sharded: stats(rates.sharded) },
    };
  } finally {
    await cluster.stop();
  }
}

// ------------------------------------------------------------------ part 2: one node vs three masters
/**
 * Three queues, a worker process each, draining `tasks` each: first all on one redis-server, then
 * on a cluster of 3 masters (no replicas, as the single node has none) with each queue on its own
 * master. The two setups alternate within each repetition.
 */
async function partScaling() {
  const single = await startRedis({ log });
  const cluster = await startCluster({ masters: 3, replicas: 0, log });
  try {
    const nodes = await topology(cluster.nodes[0].port);
    const masters = nodes.filter((n) => n.master === null).sort((a, b) => a.slots[0][0] - b.slots[0][0]);
    const picked = await queuePerMaster(masters[0].port, masters);
    const queues = picked.map((p) => p.queue);
    const shardPorts = picked.map((p) => p.master.port);
    const samples = { single: { rate: [], cpu: [], util: [] }, cluster: { rate: [], shardCpu: [[], [], []], share: [[], [], []], util: [[], [], []], total: [] } };
    const setups = {
      single: async () => {
        await flushMasters([single.port]);
        for (const q of queues) await fill(single.url, q, cfg.tasks);
        const r = await drain(single.url, queues, cfg.tasks, [single.port]);
        const n = cfg.tasks * queues.length;
        samples.single.rate.push(n / r.seconds);
        samples.single.cpu.push(r.cpuUs[0] / n);
        samples.single.util.push(r.cpuUs[0] / 1e6 / r.seconds);
        return `${fmt(n / r.seconds)} tasks/s, Redis ${fmt(r.cpuUs[0] / n)} µs/task`;
      },
      cluster: async () => {
        const where = { cluster: cluster.seeds };
        await flushMasters(shardPorts);
        for (const q of queues) await fill(where, q, cfg.tasks);
        const r = await drain(where, queues, cfg.tasks, shardPorts);
        const n = cfg.tasks * queues.length;
        const total = r.cpuUs.reduce((a, b) => a + b, 0);
        samples.cluster.rate.push(n / r.seconds);
        samples.cluster.total.push(total / n);
        r.cpuUs.forEach((us, i) => {
          samples.cluster.shardCpu[i].push(us / cfg.tasks);
          samples.cluster.share[i].push(us / total);
          samples.cluster.util[i].push(us / 1e6 / r.seconds);
        });
        return `${fmt(n / r.seconds)} tasks/s, Redis µs/task per shard: ${r.cpuUs.map((us) => fmt(us / cfg.tasks)).join(' / ')}`;
      },
    };
    for (let rep = 1; rep <= cfg.reps; rep++) {
      const order = rep % 2 ? ['single', 'cluster'] : ['cluster', 'single'];
      for (const setup of order) log(`scaling rep ${rep}/${cfg.reps} ${setup.padEnd(7)} ${await setups[setup]()}`);
    }
    // The projection, per repetition: each Redis server on a core of its own, saturated (the
    // workers on cores of their own), each task costing the CPU measured here. One node then runs
    // 1e6 / (its µs per task) tasks/s; the cluster, with the three queues equally busy, is bound
    // by its busiest shard: 3 × 1e6 / (the largest shard's µs per task).
    const projSingle = samples.single.cpu.map((us) => 1e6 / us);
    const projCluster = samples.cluster.rate.map((_, k) => (3 * 1e6) / Math.max(...samples.cluster.shardCpu.map((s) => s[k])));
    return {
      queues: picked.map((p) => ({ queue: p.queue, slot: p.slot, port: p.master.port })),
      single: { rate: stats(samples.single.rate), cpuPerTask: stats(samples.single.cpu), util: stats(samples.single.util) },
      cluster: {
        rate: stats(samples.cluster.rate),
        cpuPerTaskAll: stats(samples.cluster.total),
        shards: picked.map((p, i) => ({ queue: p.queue, port: p.master.port, cpuPerTask: stats(samples.cluster.shardCpu[i]), share: stats(samples.cluster.share[i]), util: stats(samples.cluster.util[i]) })),
      },
      speedup: stats(samples.cluster.rate.map((r, k) => r / samples.single.rate[k])),
      projection: { single: stats(projSingle), cluster: stats(projCluster), speedup: stats(projCluster.map((c, k) => c / projSingle[k])) },
    };
  } finally {
    await cluster.stop();
    await single.stop();
  }
}

// ------------------------------------------------------------------ report
function report(result) {
  const lines = [`Medians of ${cfg.reps} repetitions, (min–max) in brackets; ${fmt(cfg.tasks)} tasks per queue and run. Node ${process.version}, Redis ${result.redis}, ${cpus().length} cores.`, ''];
  if (result.pubsub) {
    const p = result.pubsub;
    lines.push(`### Pub/Sub on a cluster of 3 masters + 3 replicas: Redis CPU per task on each node (µs), queue '${p.queue}' (slot ${p.slot})`, '');
    lines.push('| Node | Role | classic (PUBLISH) | sharded (SPUBLISH) | sharded − classic | bus messages in per task, classic / sharded | commands per task, classic / sharded |', '| --- | --- | ---: | ---: | ---: | ---: | ---: |');
    const order = ['queue master', 'queue replica', 'other master', 'other replica'];
    for (const n of [...p.nodes].sort((a, b) => order.indexOf(a.role) - order.indexOf(b.role))) {
      lines.push(`| ${n.port} | ${n.role} | ${cell(n.classic)} | ${cell(n.sharded)} | ${fmt(n.sharded.median - n.classic.median)} | ${fmt(n.bus.classic.median)} / ${fmt(n.bus.sharded.median)} | ${fmt(n.calls.classic.median)} / ${fmt(n.calls.sharded.median)} |`);
    }
    const sum = (kind) => p.nodes.reduce((a, n) => a + n[kind].median, 0);
    lines.push(`| all | (sum of the medians) | ${fmt(sum('classic'))} | ${fmt(sum('sharded'))} | ${fmt(sum('sharded') - sum('classic'))} | | |`);
    lines.push('', `Drain rate (one worker process, c=50): classic ${cell(p.rate.classic)}, sharded ${cell(p.rate.sharded)} tasks/s.`, '');
  }
  if (result.scaling) {
    const s = result.scaling;
    lines.push(`### Three queues, a worker process each: one redis-server vs a cluster of 3 masters`, '');
    lines.push(`Queues: ${s.queues.map((q) => `'${q.queue}' (slot ${q.slot}, master ${q.port})`).join(', ')}.`, '');
    lines.push('| Figure | One node | Cluster, 3 masters |', '| --- | ---: | ---: |');
    lines.push(`| Throughput, tasks/s | ${cell(s.single.rate)} | ${cell(s.cluster.rate)} |`);
    lines.push(`| Throughput, cluster ÷ one node | | ${cell(s.speedup)} |`);
    lines.push(`| Redis CPU per task, all servers, µs | ${cell(s.single.cpuPerTask)} | ${cell(s.cluster.cpuPerTaskAll)} |`);
    lines.push(`| Redis CPU busy (CPU s ÷ wall s) | ${cell(s.single.util)} | ${s.cluster.shards.map((x) => fmt(x.util.median)).join(' / ')} |`);
    s.cluster.shards.forEach((x, i) => lines.push(`| Shard ${i + 1} ('${x.queue}'): Redis CPU per task of its queue, µs; share of the cluster's Redis CPU | | ${cell(x.cpuPerTask)}; ${fmt(x.share.median * 100)} % |`));
    lines.push(`| Projection, one core per Redis server: tasks/s | ${cell(s.projection.single)} | ${cell(s.projection.cluster)} |`);
    lines.push(`| Projection, cluster ÷ one node | | ${cell(s.projection.speedup)} |`);
    lines.push('');
  }
  return lines.join('\n');
}

async function main() {
  buildHeimdall();
  const started = Date.now();
  const result = { generatedAt: new Date().toISOString(), config: cfg, versions: versions(), machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model } };
  try {
    if (cfg.parts.includes('pubsub')) result.pubsub = await partPubsub();
    if (cfg.parts.includes('scaling')) result.scaling = await partScaling();
  } finally {
    for (const kind of ['classic', 'sharded']) rmSync(`${ROOT}.bench-build-${kind}/`, { recursive: true, force: true });
  }
  result.redis = /v=([\d.]+)/.exec(execFileSync(redisServerBin({ log }), ['--version']).toString())?.[1];
  result.durationS = Math.round((Date.now() - started) / 1000);
  const table = report(result);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(OUT.replace(/\.json$/, '') + '.md', table);
  process.stdout.write(table);
  log(`bench: wrote ${OUT} (${result.durationS} s)`);
}

await main();
