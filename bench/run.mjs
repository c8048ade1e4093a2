#!/usr/bin/env node
// The side-by-side benchmark: heimdall-tasks, BullMQ and bee-queue on one private redis-server.
// Run from the repository root with `npm run bench` (= node --import tsx bench/run.mjs).
// See BENCHMARKS.md for what each figure means. Sizes come from the environment:
//   BENCH_REPS (3), BENCH_ENQUEUE (100000), BENCH_DRAIN (20000), BENCH_LATENCY (5000 tasks),
//   BENCH_LATENCY_RATE (500/s), BENCH_RATE_TASKS (5000), BENCH_SYSTEMS (heimdall,bullmq,bee-queue),
//   BENCH_OUT (bench/results/latest.json), BENCH_CHART (bench/results/chart.svg), REDIS_URL,
//   BENCH_SCENARIOS (a subset, e.g. drain50,latency), BENCH_CHILD_ARGS (node flags of the workers),
//   BENCH_HEIMDALL_EVENTS (on; off runs heimdall-tasks with events: false),
//   BENCH_HEIMDALL_PREFETCH (unset: the Worker's default prefetch; a number runs its workers with it).
// One scenario runs only when BENCH_SCENARIOS names it: `backlog` (heimdall only), a backlog of
// BENCH_BACKLOG (10000) tasks queued at once behind a rate limit of [100, 1], drained by 2 worker
// processes at concurrency 50. Its drain lasts BENCH_BACKLOG / 100 seconds by design (about 100 s
// per repetition at the default size: 5 more minutes in a default run of 3 repetitions, which takes
// about 3½ without it), so it is left out of the default set: run it with BENCH_SCENARIOS=backlog
// (BENCH_REPS as you like).
// BENCH_BACKLOG_TIMEOUT (seconds; default the ideal drain + 600) bounds its wait;
// BENCH_BACKLOG_DUMP (a file name; .1, .2, ... per repetition) receives every task's send order,
// createdAt, startedAt and put-backs.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, platform, release } from 'node:os';
import { dirname, join } from 'node:path';
import { startRedis } from '../scripts/redis-launcher.mjs';
import { startChild as startChildProcess } from './lib/child.mjs';
import { renderChart, renderTable, stats } from './lib/report.mjs';
import { ADMIN_NAME, BACKLOG_RATE, BENCH, benchDepsInstalled, buildHeimdall, clientCommands, producer, QUEUE, rootIoredis, SYSTEMS, versions } from './lib/systems.mjs';
import { int } from './lib/env.mjs';

const cfg = {
  reps: int('BENCH_REPS', 3),
  enqueue: int('BENCH_ENQUEUE', 100_000),
  drain: int('BENCH_DRAIN', 20_000),
  latencyTasks: int('BENCH_LATENCY', 5_000),
  latencyRate: int('BENCH_LATENCY_RATE', 500),
  rateTasks: int('BENCH_RATE_TASKS', 5_000),
  inFlight: 100,
  bulkBatch: 1_000,
  latencyConcurrency: 50,
  rateWorkers: 4,
  rateWorkerConcurrency: 50,
  backlog: int('BENCH_BACKLOG', 10_000),
  backlogTimeoutS: int('BENCH_BACKLOG_TIMEOUT', Math.ceil(int('BENCH_BACKLOG', 10_000) / BACKLOG_RATE[0]) * BACKLOG_RATE[1] + 600),
  backlogWorkers: 2,
  backlogWorkerConcurrency: 50,
  systems: (process.env.BENCH_SYSTEMS ?? SYSTEMS.join(',')).split(',').map((s) => s.trim()).filter(Boolean),
  // Optional subset of scenarios (for profiling one of them); the report shows '–' for the rest.
  // Scenarios left out of the default set (see the header): run only when named there.
  scenarios: process.env.BENCH_SCENARIOS ? new Set(process.env.BENCH_SCENARIOS.split(',').map((s) => s.trim())) : undefined,
  optIn: ['backlog'],
  // Extra node flags for the worker processes, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'.
  childArgs: (process.env.BENCH_CHILD_ARGS ?? '').split(' ').filter(Boolean),
};
for (const s of cfg.systems) if (!SYSTEMS.includes(s)) throw new Error(`unknown system '${s}' in BENCH_SYSTEMS; known: ${SYSTEMS.join(', ')}`);
const OUT = process.env.BENCH_OUT ?? join(BENCH, 'results', 'latest.json');
const CHART = process.env.BENCH_CHART ?? join(BENCH, 'results', 'chart.svg');
const PREFIX = 'hbench';
const log = (m) => console.error(m);

if (cfg.systems.some((s) => s !== 'heimdall') && !benchDepsInstalled()) {
  log('bench: installing BullMQ and bee-queue (npm ci --prefix bench)');
  execFileSync('npm', ['ci', '--prefix', BENCH, '--no-audit', '--no-fund'], { stdio: 'inherit' });
}

const payload = (i) => ({ i, s: 'x'.repeat(100) });
const now = () => process.hrtime.bigint();
const seconds = (ns) => Number(ns) / 1e9;

// ------------------------------------------------------------------ Redis helpers
let admin;
async function info(section) {
  const text = await admin.info(section);
  const out = {};
  for (const line of text.split('\r\n')) {
    const at = line.indexOf(':');
    if (at > 0 && !line.startsWith('#')) out[line.slice(0, at)] = line.slice(at + 1);
  }
  return out;
}
/** Redis CPU so far (user + system), in microseconds. */
async function redisCpuUs() {
  const c = await info('cpu');
  return (Number(c.used_cpu_user) + Number(c.used_cpu_sys)) * 1e6;
}
/** INFO commandstats as { command: calls }. */
async function commandStats() {
  const text = await admin.info('commandstats');
  const out = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2]);
  return out;
}
const SCRIPT_CALLS = ['evalsha', 'eval', 'evalsha_ro', 'eval_ro', 'fcall', 'fcall_ro'];
/**
 * Server-side counts between two snapshots. Redis counts the commands a script runs in
 * commandstats as well, so: all = every call except INFO (the bench's own probes);
 * scripts = EVAL/EVALSHA/FCALL calls (only clients call them).
 */
function commandDelta(before, after) {
  let all = 0;
  let scripts = 0;
  for (const [cmd, calls] of Object.entries(after)) {
    if (cmd === 'info') continue;
    const d = calls - (before[cmd] ?? 0);
    all += d;
    if (SCRIPT_CALLS.includes(cmd)) scripts += d;
  }
  return { all, scripts };
}
async function snapshot() {
  return { cpu: await redisCpuUs(), cmds: await commandStats(), mem: Number((await info('memory')).used_memory) };
}
async function reset() {
  await admin.flushall();
}

// ------------------------------------------------------------------ workers in child processes
function startChild(system, url, options) {
  return startChildProcess(system, url, { ...options, prefix: PREFIX, execArgv: cfg.childArgs });
}

// ------------------------------------------------------------------ scenarios
/** Enqueues `payloads(i)` for i < n with up to `inFlight` calls waiting at once. */
async function enqueueAll(p, n, kind = 'noop', ids) {
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      const id = await p.enqueue(payload(i), kind);
      if (ids) ids[i] = id;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.inFlight, n) }, lane));
}

async function fill(p, n) {
  if (p.bulk) {
    for (let i = 0; i < n; i += cfg.bulkBatch) {
      await p.bulk(Array.from({ length: Math.min(cfg.bulkBatch, n - i) }, (_, k) => payload(i + k)));
    }
  } else {
    await enqueueAll(p, n);
  }
}

/** Single enqueue calls, up to 100 in flight: rate, and the costs per task, memory included. */
async function scenarioEnqueue(system, url, kind = 'noop') {
  await reset();
  const p = await producer(system, url, PREFIX);
  await enqueueAll(p, Math.min(2_000, cfg.enqueue), kind); // warm-up: connections, script loads, the JIT
  await reset();
  const n = cfg.enqueue;
  const before = await snapshot();
  const cmd0 = clientCommands.n;
  const cpu0 = process.cpuUsage();
  const t0 = now();
  await enqueueAll(p, n, kind);
  const elapsed = seconds(now() - t0);
  const cpu = process.cpuUsage(cpu0);
  const clientCmds = clientCommands.n - cmd0;
  const after = await snapshot();
  await p.close();
  const cmds = commandDelta(before.cmds, after.cmds);
  return {
    rate: n / elapsed,
    bytesPerTask: (after.mem - before.mem) / n,
    redisCpuUs: (after.cpu - before.cpu) / n,
    nodeCpuUs: (cpu.user + cpu.system) / n,
    clientCmds: clientCmds / n,
    scriptCalls: cmds.scripts / n,
    scriptInternal: (cmds.all - clientCmds) / n,
  };
}

async function scenarioBulk(system, url) {
  await reset();
  const p = await producer(system, url, PREFIX);
  if (!p.bulk) {
    await p.close();
    return undefined;
  }
  await fill(p, Math.min(cfg.bulkBatch, cfg.enqueue));
  await reset();
  const n = cfg.enqueue;
  const before = await snapshot();
  const t0 = now();
  await fill(p, n);
  const elapsed = seconds(now() - t0);
  const after = await snapshot();
  await p.close();
  return { rate: n / elapsed, redisCpuUs: (after.cpu - before.cpu) / n };
}

/** n queued tasks, then one worker process at `concurrency` drains them. */
async function scenarioDrain(system, url, concurrency) {
  await reset();
  const n = cfg.drain;
  const p = await producer(system, url, PREFIX);
  await fill(p, n);
  await p.close();
  const child = startChild(system, url, { concurrency, target: n });
  await child.next('ready');
  const before = await snapshot();
  child.send({ type: 'go' });
  const { stats } = await child.next('done');
  const after = await snapshot();
  await child.stop();
  const cmds = commandDelta(before.cmds, after.cmds);
  return {
    rate: n / (Number(stats.elapsedNs) / 1e9),
    redisCpuUs: (after.cpu - before.cpu) / n,
    nodeCpuUs: stats.cpuUs / n,
    clientCmds: stats.clientCommands / n,
    scriptCalls: cmds.scripts / n,
    scriptInternal: (cmds.all - stats.clientCommands) / n,
  };
}

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const at = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[at];
}

/** Tasks sent at a steady rate to a waiting worker; latency from the send to the handler's start. */
async function scenarioLatency(system, url) {
  await reset();
  const n = cfg.latencyTasks;
  const p = await producer(system, url, PREFIX);
  const child = startChild(system, url, { concurrency: cfg.latencyConcurrency, target: n, recordStarts: true });
  await child.next('ready');
  child.send({ type: 'go' });
  await child.next('started');
  const sentAt = new Array(n);
  const pending = [];
  const t0 = now();
  let sent = 0;
  while (sent < n) {
    const due = Math.min(n, Math.floor((seconds(now() - t0) * cfg.latencyRate)) + 1);
    while (sent < due) {
      const i = sent++;
      sentAt[i] = now();
      pending.push(p.enqueue(payload(i)));
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  await child.next('done');
  const { starts } = await child.stop();
  await p.close();
  const startOf = new Map(starts);
  // The first 5% warm the connections and the JIT; they are left out.
  const skip = Math.floor(n * 0.05);
  const ms = [];
  for (let i = skip; i < n; i++) ms.push(Number(BigInt(startOf.get(i)) - sentAt[i]) / 1e6);
  ms.sort((a, b) => a - b);
  return { p50: percentile(ms, 0.5), p95: percentile(ms, 0.95), p99: percentile(ms, 0.99) };
}

/** heimdall only: [1000, 1] with 4 worker processes; start times are the server clock's. */
async function scenarioRateLimited(url) {
  await reset();
  const n = cfg.rateTasks;
  const p = await producer('heimdall', url, PREFIX);
  const ids = new Array(n);
  await enqueueAll(p, n, 'limited', ids);
  const children = Array.from({ length: cfg.rateWorkers }, () =>
    startChild('heimdall', url, { concurrency: cfg.rateWorkerConcurrency, target: 0 }),
  );
  await Promise.all(children.map((c) => c.next('ready')));
  for (const c of children) c.send({ type: 'go' });
  const deadline = Date.now() + 120_000 + n * 10;
  while (children.reduce((sum, c) => sum + c.state.done, 0) < n) {
    if (Date.now() > deadline) throw new Error('rate-limited drain did not finish in time');
    await new Promise((r) => setTimeout(r, 20));
  }
  await Promise.all(children.map((c) => c.stop()));
  const st = [];
  for (let i = 0; i < n; i += 500) {
    const infos = await Promise.all(ids.slice(i, i + 500).map((id) => p.info(id)));
    for (const inf of infos) {
      if (inf.state !== 'SUCCESS' || !inf.startedAt) throw new Error(`rate-limited task ${inf.id} ended ${inf.state}`);
      st.push(inf.startedAt.getTime());
    }
  }
  await p.close();
  st.sort((a, b) => a - b);
  // Largest number of starts in any window [t, t + 1000 ms) (start times are whole ms).
  let maxWindow = 0;
  for (let lo = 0, hi = 0; hi < st.length; hi++) {
    while (st[hi] - st[lo] >= 1000) lo++;
    maxWindow = Math.max(maxWindow, hi - lo + 1);
  }
  // Achieved rate: the tasks over the time from the first start to the end of the window the
  // last start opened (first start + span + 1 s); a perfect [1000, 1] limiter scores 1000.
  const span = (st[st.length - 1] - st[0]) / 1000;
  return { rate: n / (span + 1), maxWindow, spanS: span };
}

/**
 * heimdall only: a backlog queued at once (delayMany) behind a rate limit of BACKLOG_RATE, then
 * 2 worker processes at concurrency 50 drain it. (BullMQ's limiter counts every job of a queue,
 * and bee-queue has none: neither has a window per kind of task to compare with.) Start and send
 * times are the records' startedAt and createdAt, the Redis server clock.
 */
let backlogRuns = 0;
async function scenarioBacklog(url) {
  await reset();
  const n = cfg.backlog;
  const [limit, periodS] = BACKLOG_RATE;
  const period = periodS * 1000;
  const p = await producer('heimdall', url, PREFIX);
  const ids = [];
  for (let i = 0; i < n; i += cfg.bulkBatch) {
    ids.push(...(await p.bulk(Array.from({ length: Math.min(cfg.bulkBatch, n - i) }, (_, k) => payload(i + k)), 'backlog')));
  }
  const children = Array.from({ length: cfg.backlogWorkers }, () =>
    startChild('heimdall', url, { concurrency: cfg.backlogWorkerConcurrency, target: 0, checkRuns: true }),
  );
  try {
    await Promise.all(children.map((c) => c.next('ready')));
    const before = await snapshot();
    for (const c of children) c.send({ type: 'go' });
    const t0 = Date.now();
    let shown = t0;
    const ended = () => children.reduce((sum, c) => sum + c.state.done, 0);
    while (ended() < n) {
      if (Date.now() - t0 > cfg.backlogTimeoutS * 1000) {
        const states = {};
        for (let i = 0; i < n; i += 500) {
          for (const inf of await Promise.all(ids.slice(i, i + 500).map((id) => p.info(id)))) states[inf.state] = (states[inf.state] ?? 0) + 1;
        }
        throw new Error(`backlog: ${ended()} of ${n} tasks ended after ${cfg.backlogTimeoutS} s; states ${JSON.stringify(states)}`);
      }
      if (Date.now() - shown >= 10_000) {
        shown = Date.now();
        log(`  backlog: ${ended()}/${n} ended after ${Math.round((shown - t0) / 1000)} s`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const after = await snapshot();
    const closed = await Promise.all(children.map((c) => c.stop()));
    const cmds = commandDelta(before.cmds, after.cmds);

    // Every task ran once: the handler's runs in all processes, and the records' attempts.
    const runsOf = new Map();
    for (const c of closed) for (const i of c.ran) runsOf.set(i, (runsOf.get(i) ?? 0) + 1);
    const runs = closed.reduce((sum, c) => sum + c.stats.runs, 0);
    const twice = [...new Set([...closed.flatMap((c) => c.stats.twice), ...[...runsOf].filter(([, k]) => k > 1).map(([i]) => i)])];
    const start = new Array(n);
    const created = new Array(n);
    const odd = [];
    for (let i = 0; i < n; i += 500) {
      const infos = await Promise.all(ids.slice(i, i + 500).map((id) => p.info(id)));
      infos.forEach((inf, k) => {
        if (inf.state !== 'SUCCESS' || inf.attempts !== 1 || !inf.startedAt || !inf.createdAt) {
          odd.push(`${inf.id} (i ${i + k}): ${inf.state}, ${inf.attempts} attempt(s)`);
        }
        start[i + k] = inf.startedAt?.getTime() ?? NaN;
        created[i + k] = inf.createdAt?.getTime() ?? NaN;
      });
    }
    // The put-backs written to the queue's event stream: a check on the workers' count, when the
    // stream still holds every event of the run (its cap is 10,000 entries by default).
    const stream = `${PREFIX}:{${QUEUE}}:events`;
    let streamLimited = 0;
    let streamQueued = 0;
    const limitedOf = new Map();
    for (let from = '-'; ; ) {
      const entries = await admin.xrange(stream, from, '+', 'COUNT', 1000);
      for (const [id, fields] of entries) {
        for (let k = 0; k < fields.length; k += 2) {
          if (fields[k] === 'rate-limited') {
            streamLimited++;
            // The entry's time (ms, Redis clock) and the delay given (dl, the pair after the name).
            const dl = fields[k + 4] === 'dl' ? fields[k + 5] : '?';
            const seen = limitedOf.get(fields[k + 1]) ?? [];
            seen.push(`${id.split('-')[0]}+${dl}`);
            limitedOf.set(fields[k + 1], seen);
          } else if (fields[k] === 'queued') {
            streamQueued++;
          }
        }
      }
      if (entries.length < 1000) break;
      from = `(${entries[entries.length - 1][0]}`;
    }
    await p.close();
    if (odd.length > 0 || runs !== n || twice.length > 0) {
      log(`backlog: ${odd.length} task(s) not ended SUCCESS after one attempt, ${runs} runs for ${n} tasks, run twice: ${twice.slice(0, 20).join(', ') || 'none'}`);
      for (const line of odd.slice(0, 20)) log(`  ${line}`);
    }

    // BENCH_BACKLOG_DUMP: a file per repetition (<name>.<rep>) for every task's send order,
    // createdAt and startedAt (ms), its put-backs in the event stream and each one's time and
    // delay (<ms>+<delay ms>), one task per line; and
    // <name>.<rep>.commandstats, Redis's INFO commandstats at the end (the whole run's).
    if (process.env.BENCH_BACKLOG_DUMP) {
      writeFileSync(`${process.env.BENCH_BACKLOG_DUMP}.${++backlogRuns}`, start.map((t, i) => `${i} ${created[i]} ${t} ${(limitedOf.get(ids[i]) ?? []).length} ${(limitedOf.get(ids[i]) ?? []).join(' ')}\n`).join(''));
      writeFileSync(`${process.env.BENCH_BACKLOG_DUMP}.${backlogRuns}.commandstats`, await admin.info('commandstats'));
    }
    const good = [...start.keys()].filter((i) => Number.isFinite(start[i]));
    const sorted = good.map((i) => start[i]).sort((a, b) => a - b);
    const first = sorted[0];
    // Most starts in any window [t, t + period) (start times are whole ms).
    let maxWindow = 0;
    for (let lo = 0, hi = 0; hi < sorted.length; hi++) {
      while (sorted[hi] - sorted[lo] >= period) lo++;
      maxWindow = Math.max(maxWindow, hi - lo + 1);
    }
    const waits = good.map((i) => start[i] - created[i]).sort((a, b) => a - b);
    // Task i (in the order sent) cannot start before its window: first start + floor(i / limit)
    // periods. How late each started against that (negative: ahead of its place).
    const late = good.map((i) => start[i] - (first + Math.floor(i / limit) * period)).sort((a, b) => a - b);
    // Overtaking: for each task, how many tasks sent after it started more than 50 ms before it
    // (a Fenwick tree over the start times of the tasks after it, walked from the last sent).
    const times = [...new Set(sorted)];
    const rank = (t) => {
      // Number of distinct start times < t.
      let lo = 0;
      let hi = times.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (times[mid] < t) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    const tree = new Int32Array(times.length + 1);
    let overtaken = 0;
    for (let g = good.length - 1; g >= 0; g--) {
      const t = start[good[g]];
      let count = 0;
      for (let x = rank(t - 50); x > 0; x -= x & -x) count += tree[x];
      overtaken = Math.max(overtaken, count);
      for (let x = rank(t) + 1; x <= times.length; x += x & -x) tree[x]++;
    }
    const limited = closed.reduce((sum, c) => sum + c.stats.limited, 0);
    return {
      redisCpuUs: (after.cpu - before.cpu) / n,
      scriptCalls: cmds.scripts / n,
      putBacks: limited / n,
      // -1 when the stream lost events of the run to its cap.
      streamPutBacks: streamQueued === n ? streamLimited / n : -1,
      waitP50S: percentile(waits, 0.5) / 1000,
      waitP95S: percentile(waits, 0.95) / 1000,
      waitMaxS: waits[waits.length - 1] / 1000,
      lateP50Ms: percentile(late, 0.5),
      lateP95Ms: percentile(late, 0.95),
      lateMaxMs: late[late.length - 1],
      lateMinMs: late[0],
      drainS: (sorted[sorted.length - 1] - first) / 1000,
      idealDrainS: (Math.ceil(n / limit) - 1) * periodS,
      maxWindow,
      overtaken,
      notOk: odd.length,
      runsOver: runs - n,
    };
  } finally {
    for (const c of children) c.kill();
  }
}

// ------------------------------------------------------------------ the run

// Each row: where its samples come from, its unit and which way is better. Machine-independent first.
const ROWS = [
  { id: 'redis_cpu_drain50', group: 'machine-independent', label: 'Redis CPU per task, drain c=50', unit: 'µs', better: 'lower', from: ['drain50', 'redisCpuUs'] },
  { id: 'redis_cpu_drain1', group: 'machine-independent', label: 'Redis CPU per task, drain c=1', unit: 'µs', better: 'lower', from: ['drain1', 'redisCpuUs'] },
  { id: 'redis_cpu_enqueue', group: 'machine-independent', label: 'Redis CPU per task, single enqueue', unit: 'µs', better: 'lower', from: ['enqueue', 'redisCpuUs'] },
  { id: 'node_cpu_drain50', group: 'machine-independent', label: 'Worker Node CPU per task, drain c=50', unit: 'µs', better: 'lower', from: ['drain50', 'nodeCpuUs'] },
  { id: 'node_cpu_drain1', group: 'machine-independent', label: 'Worker Node CPU per task, drain c=1', unit: 'µs', better: 'lower', from: ['drain1', 'nodeCpuUs'] },
  { id: 'node_cpu_enqueue', group: 'machine-independent', label: 'Producer Node CPU per task, single enqueue', unit: 'µs', better: 'lower', from: ['enqueue', 'nodeCpuUs'] },
  { id: 'cmds_drain50', group: 'machine-independent', label: 'Client commands per task, drain c=50', unit: 'cmds', better: 'lower', from: ['drain50', 'clientCmds'] },
  { id: 'cmds_drain1', group: 'machine-independent', label: 'Client commands per task, drain c=1', unit: 'cmds', better: 'lower', from: ['drain1', 'clientCmds'] },
  { id: 'cmds_enqueue', group: 'machine-independent', label: 'Client commands per task, single enqueue', unit: 'cmds', better: 'lower', from: ['enqueue', 'clientCmds'] },
  { id: 'scripts_drain50', group: 'machine-independent', label: 'Script calls per task, drain c=50', unit: 'calls', better: 'lower', from: ['drain50', 'scriptCalls'] },
  { id: 'inscript_drain50', group: 'machine-independent', label: 'Commands run inside scripts per task, drain c=50', unit: 'cmds', better: 'lower', from: ['drain50', 'scriptInternal'] },
  { id: 'inscript_enqueue', group: 'machine-independent', label: 'Commands run inside scripts per task, enqueue', unit: 'cmds', better: 'lower', from: ['enqueue', 'scriptInternal'] },
  { id: 'bytes', group: 'machine-independent', label: 'Redis memory per queued task', unit: 'bytes', better: 'lower', from: ['enqueue', 'bytesPerTask'] },
  { id: 'enqueue_rate', group: 'throughput', label: 'Single enqueue (100 in flight)', unit: 'tasks/s', better: 'higher', from: ['enqueue', 'rate'] },
  { id: 'bulk_rate', group: 'throughput', label: 'Bulk enqueue (batches of 1000)', unit: 'tasks/s', better: 'higher', from: ['bulk', 'rate'] },
  { id: 'drain1_rate', group: 'throughput', label: 'Drain, 1 worker process, c=1', unit: 'tasks/s', better: 'higher', from: ['drain1', 'rate'] },
  { id: 'drain50_rate', group: 'throughput', label: 'Drain, 1 worker process, c=50', unit: 'tasks/s', better: 'higher', from: ['drain50', 'rate'] },
  { id: 'lat_p50', group: 'latency', label: 'Latency p50 at 500 tasks/s', unit: 'ms', better: 'lower', from: ['latency', 'p50'] },
  { id: 'lat_p95', group: 'latency', label: 'Latency p95 at 500 tasks/s', unit: 'ms', better: 'lower', from: ['latency', 'p95'] },
  { id: 'lat_p99', group: 'latency', label: 'Latency p99 at 500 tasks/s', unit: 'ms', better: 'lower', from: ['latency', 'p99'] },
];
const HEIMDALL_ROWS = [
  { id: 'unique_rate', label: 'Unique enqueue rate (plain: single enqueue above)', unit: 'tasks/s', better: 'higher', from: ['unique', 'rate'], plain: ['enqueue', 'rate'] },
  { id: 'unique_redis_cpu', label: 'Unique enqueue, Redis CPU per task', unit: 'µs', better: 'lower', from: ['unique', 'redisCpuUs'], plain: ['enqueue', 'redisCpuUs'] },
  { id: 'unique_bytes', label: 'Unique enqueue, Redis memory per queued task', unit: 'bytes', better: 'lower', from: ['unique', 'bytesPerTask'], plain: ['enqueue', 'bytesPerTask'] },
  { id: 'unique_cmds', label: 'Unique enqueue, client commands per task', unit: 'cmds', better: 'lower', from: ['unique', 'clientCmds'], plain: ['enqueue', 'clientCmds'] },
  { id: 'rl_rate', label: 'Rate-limited drain [1000, 1], 4 workers: achieved rate', unit: 'tasks/s', better: 'higher', from: ['rateLimited', 'rate'] },
  { id: 'rl_max_window', label: 'Rate-limited drain: most starts in any 1-s window (limit 1000)', unit: 'starts', better: 'lower', from: ['rateLimited', 'maxWindow'] },
];
// The backlog scenario's rows, in the heimdall-only table when it ran (it is opt-in).
const BACKLOG_ROWS = [
  { id: 'bl_redis_cpu', label: 'Backlog behind [100, 1]: Redis CPU per task', unit: 'µs', better: 'lower', from: ['backlog', 'redisCpuUs'] },
  { id: 'bl_scripts', label: 'Backlog: script calls per task', unit: 'calls', better: 'lower', from: ['backlog', 'scriptCalls'] },
  { id: 'bl_put_backs', label: 'Backlog: rate-limited put-backs per task', unit: 'put-backs', better: 'lower', from: ['backlog', 'putBacks'] },
  { id: 'bl_wait_p50', label: 'Backlog: wait (start − send) p50', unit: 's', better: 'lower', from: ['backlog', 'waitP50S'] },
  { id: 'bl_wait_p95', label: 'Backlog: wait p95', unit: 's', better: 'lower', from: ['backlog', 'waitP95S'] },
  { id: 'bl_wait_max', label: 'Backlog: wait max', unit: 's', better: 'lower', from: ['backlog', 'waitMaxS'] },
  { id: 'bl_late_p95', label: 'Backlog: start after its ideal slot, p95', unit: 'ms', better: 'lower', from: ['backlog', 'lateP95Ms'] },
  { id: 'bl_late_max', label: 'Backlog: start after its ideal slot, max', unit: 'ms', better: 'lower', from: ['backlog', 'lateMaxMs'] },
  { id: 'bl_drain', label: 'Backlog: first to last start (ideal: tasks / 100 − 1 s)', unit: 's', better: 'lower', from: ['backlog', 'drainS'] },
  { id: 'bl_max_window', label: 'Backlog: most starts in any 1-s window (limit 100)', unit: 'starts', better: 'lower', from: ['backlog', 'maxWindow'] },
  { id: 'bl_overtaken', label: 'Backlog: most later-sent tasks started > 50 ms before one task', unit: 'places', better: 'lower', from: ['backlog', 'overtaken'] },
];

async function main() {
  if (cfg.systems.includes('heimdall')) buildHeimdall();
  const redis = await startRedis({ log });
  if (!redis.started) log(`bench: using REDIS_URL ${redis.url}; it is FLUSHALLed between runs`);
  const Redis = rootIoredis();
  admin = new Redis(redis.url, { connectionName: ADMIN_NAME });
  const samples = {}; // samples[system][scenario] = [result per rep]
  const add = (system, scenario, r) => {
    if (r === undefined) return;
    ((samples[system] ??= {})[scenario] ??= []).push(r);
  };
  const started = Date.now();
  try {
    const redisVersion = (await info('server')).redis_version;
    for (let rep = 1; rep <= cfg.reps; rep++) {
      for (const system of cfg.systems) {
        const step = async (name, fn) => {
          if (cfg.scenarios ? !cfg.scenarios.has(name) : cfg.optIn.includes(name)) return;
          const t = Date.now();
          const r = await fn();
          add(system, name, r);
          log(`rep ${rep}/${cfg.reps} ${system.padEnd(9)} ${name.padEnd(11)} ${brief(r)} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
        };
        await step('enqueue', () => scenarioEnqueue(system, redis.url));
        await step('bulk', () => scenarioBulk(system, redis.url));
        await step('drain1', () => scenarioDrain(system, redis.url, 1));
        await step('drain50', () => scenarioDrain(system, redis.url, 50));
        await step('latency', () => scenarioLatency(system, redis.url));
        if (system === 'heimdall') {
          await step('unique', () => scenarioEnqueue(system, redis.url, 'unique'));
          await step('rateLimited', () => scenarioRateLimited(redis.url));
          await step('backlog', () => scenarioBacklog(redis.url));
        }
      }
    }
    await reset();
    const pick = (system, [scenario, field]) => (samples[system]?.[scenario] ?? []).map((r) => r[field]);
    const rows = ROWS.map((row) => {
      const values = {};
      for (const system of cfg.systems) {
        const s = stats(pick(system, row.from));
        if (s) values[system] = s;
      }
      const h = values.heimdall?.median;
      const ratio = (other) => (h !== undefined && values[other]?.median >= 0.01 ? h / values[other].median : undefined);
      return { id: row.id, group: row.group, label: row.label, unit: row.unit, better: row.better, values, ratios: { bullmq: ratio('bullmq'), 'bee-queue': ratio('bee-queue') } };
    });
    const heimdallRows = samples.heimdall?.backlog ? [...HEIMDALL_ROWS, ...BACKLOG_ROWS] : HEIMDALL_ROWS;
    const heimdallOnly = cfg.systems.includes('heimdall')
      ? heimdallRows.map((row) => {
          const value = stats(pick('heimdall', row.from));
          const plain = row.plain ? stats(pick('heimdall', row.plain)) : undefined;
          return { id: row.id, label: row.label, unit: row.unit, better: row.better, value, plain, ratioToPlain: value && plain ? value.median / plain.median : undefined };
        })
      : [];
    const result = {
      generatedAt: new Date().toISOString(),
      durationS: Math.round((Date.now() - started) / 1000),
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, platform: `${platform()} ${release()}` },
      versions: { ...versions(), redis: redisVersion },
      config: { ...cfg, queue: QUEUE, payload: "{ i, s: 'x'.repeat(100) }" },
      systems: cfg.systems,
      rows,
      heimdallOnly,
      samples,
    };
    mkdirSync(dirname(OUT), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
    const table = renderTable(result);
    writeFileSync(OUT.replace(/\.json$/, '') + '.md', table);
    mkdirSync(dirname(CHART), { recursive: true });
    writeFileSync(CHART, renderChart(result));
    process.stdout.write(table);
    log(`bench: wrote ${OUT}, ${CHART} (${result.durationS} s)`);
  } finally {
    admin.disconnect();
    await redis.stop();
  }
}

function brief(r) {
  if (r === undefined) return '(none)';
  return Object.entries(r)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? (Math.abs(v) >= 100 ? Math.round(v) : v.toFixed(2)) : v}`)
    .join(' ');
}

await main();
