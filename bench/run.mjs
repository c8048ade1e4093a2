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
// The growth scenarios (workers, payload, delayed, waiting, uniqueHeld: how cost grows with the
// work) run BENCH_GROWTH_REPS (1) times, in the first repetitions; their sizes:
//   BENCH_GROWTH_DRAIN (20000 tasks, drained by 1, 2 and 4 worker processes: BENCH_GROWTH_WORKERS),
//   BENCH_GROWTH_PAYLOAD (10000 tasks per payload size, at most BENCH_GROWTH_PAYLOAD_MB (200) MB of
//   payload per size), BENCH_GROWTH_DELAYED (1000000), BENCH_GROWTH_WAITING (1000000),
//   BENCH_GROWTH_HEAD (20000: the tasks drained at the head of those two), BENCH_GROWTH_UNIQUE (10000).
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
  // The growth scenarios (see the header and BENCHMARKS.md, "How cost grows with the work").
  growthReps: int('BENCH_GROWTH_REPS', 1),
  growthDrain: int('BENCH_GROWTH_DRAIN', 20_000),
  growthWorkers: (process.env.BENCH_GROWTH_WORKERS || '1,2,4').split(',').map((s) => Number(s.trim())),
  growthPayload: int('BENCH_GROWTH_PAYLOAD', 10_000),
  growthPayloadMb: int('BENCH_GROWTH_PAYLOAD_MB', 200),
  growthSizes: [100, 10_240, 102_400],
  growthDelayed: int('BENCH_GROWTH_DELAYED', 1_000_000),
  growthWaiting: int('BENCH_GROWTH_WAITING', 1_000_000),
  growthHead: int('BENCH_GROWTH_HEAD', 20_000),
  growthUnique: int('BENCH_GROWTH_UNIQUE', 10_000),
  systems: (process.env.BENCH_SYSTEMS ?? SYSTEMS.join(',')).split(',').map((s) => s.trim()).filter(Boolean),
  // Optional subset of scenarios (for profiling one of them); the report shows '–' for the rest.
  // Scenarios left out of the default set (see the header): run only when named there.
  scenarios: process.env.BENCH_SCENARIOS ? new Set(process.env.BENCH_SCENARIOS.split(',').map((s) => s.trim())) : undefined,
  optIn: ['backlog'],
  // Extra node flags for the worker processes, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'.
  childArgs: (process.env.BENCH_CHILD_ARGS ?? '').split(' ').filter(Boolean),
};
for (const k of cfg.growthWorkers) if (!Number.isInteger(k) || k < 1) throw new Error(`BENCH_GROWTH_WORKERS must list whole numbers >= 1, got '${process.env.BENCH_GROWTH_WORKERS}'`);
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
async function enqueueAll(p, n, kind = 'noop', ids, make = payload) {
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      const id = await p.enqueue(make(i), kind);
      if (ids) ids[i] = id;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.inFlight, n) }, lane));
}

async function fill(p, n, options) {
  if (p.bulk) {
    for (let i = 0; i < n; i += cfg.bulkBatch) {
      await p.bulk(Array.from({ length: Math.min(cfg.bulkBatch, n - i) }, (_, k) => payload(i + k)), 'noop', options);
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

// ------------------------------------------------------------------ growth scenarios
// How cost grows with the work (BENCHMARKS.md, "How cost grows with the work"). Each runs
// BENCH_GROWTH_REPS times (1 by default: the queues of 1,000,000 tasks take minutes).

/** The key of a system's delayed set, for its size (each system's own layout). */
const delayedKey = (system) => (system === 'heimdall' ? `${PREFIX}:{${QUEUE}}:delayed` : `${PREFIX}:${QUEUE}:delayed`);

/** The longest command Redis ran since `SLOWLOG RESET` (µs; the bench logs every call over 1 ms). */
async function slowlogReset() {
  await admin.config('SET', 'slowlog-log-slower-than', '1000');
  await admin.config('SET', 'slowlog-max-len', '1024');
  await admin.slowlog('RESET');
}
/** The slow log's entries but the bench's own probes. */
async function slowlogEntries() {
  const own = ['slowlog', 'config', 'info', 'zcard', 'flushall'];
  return (await admin.slowlog('GET', 1024)).filter((e) => !own.includes(String(e[3][0]).toLowerCase()));
}
async function slowlogMaxUs() {
  const entries = await slowlogEntries();
  return entries.reduce((max, e) => Math.max(max, Number(e[2])), 0);
}
/** The longest command's name and first argument (e.g. 'evalsha <sha>'), for the samples. */
async function slowlogLongest() {
  const entries = await slowlogEntries();
  let top;
  for (const e of entries) if (!top || Number(e[2]) > Number(top[2])) top = e;
  return top ? `${top[3].slice(0, 2).join(' ').slice(0, 60)} (${top[2]} µs)` : '';
}

/**
 * One worker process at c=50 drains `target` tasks of a queue already filled; returns the rate,
 * Redis CPU per task and the longest Redis command meanwhile. With `untilDelayedEmpty` it also
 * waits, the worker still running, until the delayed set is empty, and gives the Redis CPU from
 * the start to then and the tasks ended by then.
 */
async function drainHead(system, url, target, { activateDelayed = false, untilDelayedEmpty = false } = {}) {
  const child = startChild(system, url, { concurrency: 50, target, activateDelayed });
  try {
    await child.next('ready');
    await slowlogReset();
    const before = await snapshot();
    child.send({ type: 'go' });
    const { stats } = await child.next('done', 900_000);
    const after = await snapshot();
    const longestUs = await slowlogMaxUs();
    const out = {
      rate: target / (Number(stats.elapsedNs) / 1e9),
      redisCpuUs: (after.cpu - before.cpu) / target,
      nodeCpuUs: stats.cpuUs / target,
      longestMs: longestUs / 1000,
      longestCmd: await slowlogLongest(),
    };
    if (untilDelayedEmpty) {
      out.delayedLeftAtHead = await admin.zcard(delayedKey(system));
      const t0 = Date.now();
      while ((await admin.zcard(delayedKey(system))) > 0) {
        if (Date.now() - t0 > 900_000) throw new Error(`${system}: the delayed set did not empty within 900 s`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const emptied = await snapshot();
      out.promoteCpuS = (emptied.cpu - before.cpu) / 1e6;
      out.ranByEmpty = Math.max(child.state.done, target);
      out.longestToEmptyMs = (await slowlogMaxUs()) / 1000;
      out.longestToEmptyCmd = await slowlogLongest();
    }
    await child.stop();
    return out;
  } finally {
    child.kill();
  }
}

/** BENCH_GROWTH_DRAIN tasks drained by k worker processes at c=50 each: rate from the first start to the last end. */
async function scenarioWorkers(system, url, k) {
  await reset();
  const n = cfg.growthDrain;
  const p = await producer(system, url, PREFIX);
  await fill(p, n);
  await p.close();
  const children = Array.from({ length: k }, () => startChild(system, url, { concurrency: 50, target: 0 }));
  try {
    await Promise.all(children.map((c) => c.next('ready')));
    const before = await snapshot();
    for (const c of children) c.send({ type: 'go' });
    const started = await Promise.all(children.map((c) => c.next('started')));
    const deadline = Date.now() + 600_000;
    while (children.reduce((sum, c) => sum + c.state.done, 0) < n) {
      if (Date.now() > deadline) throw new Error(`${system}: ${k} workers did not drain ${n} tasks in 600 s`);
      await new Promise((r) => setTimeout(r, 5));
    }
    const after = await snapshot();
    const t0 = started.reduce((min, m) => (BigInt(m.t0) < min ? BigInt(m.t0) : min), BigInt(started[0].t0));
    const t1 = children.reduce((max, c) => (BigInt(c.state.lastDoneNs ?? 0) > max ? BigInt(c.state.lastDoneNs) : max), 0n);
    await Promise.all(children.map((c) => c.stop()));
    return { rate: n / seconds(t1 - t0), redisCpuUs: (after.cpu - before.cpu) / n };
  } finally {
    for (const c of children) c.kill();
  }
}

/** A payload of about `size` bytes as JSON: { i, s: 'x' × (size − 20) }. */
const sized = (size) => (i) => ({ i, s: 'x'.repeat(Math.max(0, size - 20)) });

/** Tasks of one payload size: single enqueue (rate, memory per task), then drained at c=50. */
async function scenarioPayload(system, url, size) {
  await reset();
  const n = Math.max(1, Math.min(cfg.growthPayload, Math.floor((cfg.growthPayloadMb * 1e6) / size)));
  const make = sized(size);
  const p = await producer(system, url, PREFIX);
  await enqueueAll(p, Math.min(500, n), 'noop', undefined, make); // warm-up
  await reset();
  const before = await snapshot();
  const cpu0 = process.cpuUsage();
  const t0 = now();
  await enqueueAll(p, n, 'noop', undefined, make);
  const elapsed = seconds(now() - t0);
  const cpu = process.cpuUsage(cpu0);
  const after = await snapshot();
  await p.close();
  const drained = await drainHead(system, url, n);
  return {
    tasks: n,
    enqueueRate: n / elapsed,
    enqueueRedisCpuUs: (after.cpu - before.cpu) / n,
    enqueueNodeCpuUs: (cpu.user + cpu.system) / n,
    drainNodeCpuUs: drained.nodeCpuUs,
    bytesPerTask: (after.mem - before.mem) / n,
    drainRate: drained.rate,
    drainRedisCpuUs: drained.redisCpuUs,
  };
}

/**
 * BENCH_GROWTH_DELAYED delayed tasks, bulk-enqueued with one due time (set from a timed warm-up
 * so that it falls just after the last one is stored); memory per task; once they are all due,
 * one worker process at c=50 drains the first BENCH_GROWTH_HEAD, and keeps going until the
 * delayed set is empty.
 */
async function scenarioDelayed(system, url) {
  await reset();
  const m = cfg.growthDelayed;
  const p = await producer(system, url, PREFIX);
  // Warm-up and calibration: the bulk rate of delayed tasks on this machine.
  const probe = Math.min(10_000, m);
  let t0 = now();
  await fill(p, probe, { dueAt: Date.now() + 3_600_000 });
  const probeRate = probe / seconds(now() - t0);
  await reset();
  // Due when the bulk enqueue, at the probe's rate, would have taken 1.5 times as long, + 250 ms.
  const dueAt = Date.now() + Math.ceil(((1.5 * m) / probeRate) * 1000) + 250;
  const before = await snapshot();
  t0 = now();
  await fill(p, m, { dueAt });
  const elapsed = seconds(now() - t0);
  const after = await snapshot();
  await p.close();
  const late = Date.now() > dueAt;
  if (late) log(`  delayed: ${system} stored its tasks after their due time (${Date.now() - dueAt} ms late); some may not have been delayed`);
  const delayedHeld = await admin.zcard(delayedKey(system));
  while (Date.now() <= dueAt + 50) await new Promise((r) => setTimeout(r, 20));
  const head = Math.min(cfg.growthHead, m);
  const drained = await drainHead(system, url, head, { activateDelayed: true, untilDelayedEmpty: true });
  return {
    enqueueRate: m / elapsed,
    bytesPerTask: (after.mem - before.mem) / m,
    delayedHeld,
    headRate: drained.rate,
    headRedisCpuUs: drained.redisCpuUs,
    headLongestMs: drained.longestMs,
    longestCmd: drained.longestToEmptyCmd,
    delayedLeftAtHead: drained.delayedLeftAtHead,
    promoteRedisCpuUs: (drained.promoteCpuS * 1e6) / m,
    ranByEmpty: drained.ranByEmpty,
    longestToEmptyMs: drained.longestToEmptyMs,
  };
}

/**
 * BENCH_GROWTH_WAITING tasks waiting (bulk), memory per task; one worker process at c=50 drains
 * the first BENCH_GROWTH_HEAD with the rest behind. Then, for comparison, BENCH_GROWTH_HEAD
 * tasks alone, drained the same way.
 */
async function scenarioWaiting(system, url) {
  await reset();
  const m = cfg.growthWaiting;
  const head = Math.min(cfg.growthHead, m);
  let p = await producer(system, url, PREFIX);
  await fill(p, Math.min(cfg.bulkBatch, m)); // warm-up
  await reset();
  const before = await snapshot();
  const t0 = now();
  await fill(p, m);
  const elapsed = seconds(now() - t0);
  const after = await snapshot();
  await p.close();
  const long = await drainHead(system, url, head);
  await reset();
  p = await producer(system, url, PREFIX);
  await fill(p, head);
  await p.close();
  const short = await drainHead(system, url, head);
  return {
    bulkRate: m / elapsed,
    bytesPerTask: (after.mem - before.mem) / m,
    headRate: long.rate,
    headRedisCpuUs: long.redisCpuUs,
    headLongestMs: long.longestMs,
    headLongestCmd: long.longestCmd,
    shortRate: short.rate,
    shortRedisCpuUs: short.redisCpuUs,
    shortLongestMs: short.longestMs,
  };
}

/**
 * BENCH_GROWTH_UNIQUE tasks each with its own unique key, single enqueue, held (no worker):
 * memory and costs per task against as many plain tasks; then the same keys again (every call a
 * duplicate).
 */
async function scenarioUniqueHeld(system, url) {
  const n = cfg.growthUnique;
  const p = await producer(system, url, PREFIX);
  const measure = async (kind, fresh = true) => {
    if (fresh) await reset();
    const before = await snapshot();
    const t0 = now();
    await enqueueAll(p, n, kind);
    const elapsed = seconds(now() - t0);
    const after = await snapshot();
    return { rate: n / elapsed, redisCpuUs: (after.cpu - before.cpu) / n, bytesPerTask: (after.mem - before.mem) / n };
  };
  await reset();
  await enqueueAll(p, Math.min(2_000, n), 'unique'); // warm-up
  const plain = await measure('noop');
  const unique = await measure('unique');
  const dup = await measure('unique', false);
  await p.close();
  return {
    plainRate: plain.rate,
    plainRedisCpuUs: plain.redisCpuUs,
    plainBytes: plain.bytesPerTask,
    uniqueRate: unique.rate,
    uniqueRedisCpuUs: unique.redisCpuUs,
    uniqueBytes: unique.bytesPerTask,
    dupRate: dup.rate,
    dupRedisCpuUs: dup.redisCpuUs,
    dupBytes: dup.bytesPerTask,
  };
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

// The growth scenarios (run BENCH_GROWTH_REPS times) and their rows.
const GROWTH_SCENARIOS = ['workers', 'payload', 'delayed', 'waiting', 'uniqueHeld'];
const kb = (size) => (size >= 1024 ? `${Math.round(size / 1024)} KB` : `${size} B`);
function growthRows() {
  const n = (x) => x.toLocaleString('en-US');
  const rows = [];
  for (const k of cfg.growthWorkers) {
    rows.push({ id: `g_workers${k}_rate`, label: `Drain ${n(cfg.growthDrain)} tasks, ${k} worker process${k > 1 ? 'es' : ''} at c=50 each`, unit: 'tasks/s', better: 'higher', from: [`workers${k}`, 'rate'] });
  }
  for (const k of cfg.growthWorkers) {
    rows.push({ id: `g_workers${k}_cpu`, label: `Redis CPU per task, ${k} worker process${k > 1 ? 'es' : ''}`, unit: 'µs', better: 'lower', from: [`workers${k}`, 'redisCpuUs'] });
  }
  for (const size of cfg.growthSizes) {
    rows.push({ id: `g_payload${size}_enqueue`, label: `Payload ${kb(size)}: single enqueue`, unit: 'tasks/s', better: 'higher', from: [`payload${size}`, 'enqueueRate'] });
    rows.push({ id: `g_payload${size}_drain`, label: `Payload ${kb(size)}: drain, c=50`, unit: 'tasks/s', better: 'higher', from: [`payload${size}`, 'drainRate'] });
    rows.push({ id: `g_payload${size}_bytes`, label: `Payload ${kb(size)}: Redis memory per queued task`, unit: 'bytes', better: 'lower', from: [`payload${size}`, 'bytesPerTask'] });
  }
  const d = n(cfg.growthDelayed);
  const h = n(Math.min(cfg.growthHead, cfg.growthDelayed));
  rows.push(
    { id: 'g_delayed_bytes', label: `${d} delayed tasks: Redis memory per task`, unit: 'bytes', better: 'lower', from: ['delayed', 'bytesPerTask'] },
    { id: 'g_delayed_enqueue', label: `${d} delayed tasks: bulk enqueue`, unit: 'tasks/s', better: 'higher', from: ['delayed', 'enqueueRate'] },
    { id: 'g_delayed_head_rate', label: `All due: drain the first ${h}, c=50`, unit: 'tasks/s', better: 'higher', from: ['delayed', 'headRate'] },
    { id: 'g_delayed_head_cpu', label: `All due: Redis CPU per task, first ${h}`, unit: 'µs', better: 'lower', from: ['delayed', 'headRedisCpuUs'] },
    { id: 'g_delayed_promote_cpu', label: `All due: Redis CPU until none is left delayed, per delayed task (runs meanwhile included)`, unit: 'µs', better: 'lower', from: ['delayed', 'promoteRedisCpuUs'] },
    { id: 'g_delayed_ran', label: `All due: tasks ended by the time none is left delayed`, unit: 'tasks', better: 'lower', from: ['delayed', 'ranByEmpty'], noRatio: true },
    { id: 'g_delayed_longest', label: `All due: longest single Redis command until none is left delayed`, unit: 'ms', better: 'lower', from: ['delayed', 'longestToEmptyMs'], noRatio: true },
  );
  const w = n(cfg.growthWaiting);
  const wh = n(Math.min(cfg.growthHead, cfg.growthWaiting));
  rows.push(
    { id: 'g_waiting_bytes', label: `${w} waiting tasks: Redis memory per task`, unit: 'bytes', better: 'lower', from: ['waiting', 'bytesPerTask'] },
    { id: 'g_waiting_bulk', label: `${w} waiting tasks: bulk enqueue`, unit: 'tasks/s', better: 'higher', from: ['waiting', 'bulkRate'] },
    { id: 'g_waiting_head_rate', label: `Drain the first ${wh} of ${w}, c=50`, unit: 'tasks/s', better: 'higher', from: ['waiting', 'headRate'] },
    { id: 'g_short_rate', label: `Drain ${wh} of ${wh}, c=50`, unit: 'tasks/s', better: 'higher', from: ['waiting', 'shortRate'] },
    { id: 'g_waiting_head_cpu', label: `Redis CPU per task, first ${wh} of ${w}`, unit: 'µs', better: 'lower', from: ['waiting', 'headRedisCpuUs'] },
    { id: 'g_short_cpu', label: `Redis CPU per task, ${wh} of ${wh}`, unit: 'µs', better: 'lower', from: ['waiting', 'shortRedisCpuUs'] },
    { id: 'g_waiting_longest', label: `Longest single Redis command, first ${wh} of ${w}`, unit: 'ms', better: 'lower', from: ['waiting', 'headLongestMs'], noRatio: true },
  );
  const u = n(cfg.growthUnique);
  rows.push(
    { id: 'g_unique_bytes', label: `${u} unique tasks held: Redis memory per task`, unit: 'bytes', better: 'lower', from: ['uniqueHeld', 'uniqueBytes'] },
    { id: 'g_plain_bytes', label: `${u} plain tasks: Redis memory per task`, unit: 'bytes', better: 'lower', from: ['uniqueHeld', 'plainBytes'] },
    { id: 'g_unique_rate', label: `${u} unique tasks: single enqueue`, unit: 'tasks/s', better: 'higher', from: ['uniqueHeld', 'uniqueRate'] },
    { id: 'g_plain_rate', label: `${u} plain tasks: single enqueue`, unit: 'tasks/s', better: 'higher', from: ['uniqueHeld', 'plainRate'] },
    { id: 'g_unique_cpu', label: `Unique enqueue: Redis CPU per task`, unit: 'µs', better: 'lower', from: ['uniqueHeld', 'uniqueRedisCpuUs'] },
    { id: 'g_plain_cpu', label: `Plain enqueue: Redis CPU per task`, unit: 'µs', better: 'lower', from: ['uniqueHeld', 'plainRedisCpuUs'] },
    { id: 'g_dup_rate', label: `The same ${u} keys again (all duplicates): enqueue`, unit: 'tasks/s', better: 'higher', from: ['uniqueHeld', 'dupRate'] },
    { id: 'g_dup_cpu', label: `Duplicates: Redis CPU per call`, unit: 'µs', better: 'lower', from: ['uniqueHeld', 'dupRedisCpuUs'] },
  );
  return rows;
}

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
    const lastRep = Math.max(cfg.reps, cfg.growthReps);
    for (let rep = 1; rep <= lastRep; rep++) {
      for (const system of cfg.systems) {
        // `name` selects the scenario (BENCH_SCENARIOS); `key` files its samples (a growth
        // scenario's sizes each under their own).
        const step = async (name, fn, key = name) => {
          if (cfg.scenarios ? !cfg.scenarios.has(name) : cfg.optIn.includes(name)) return;
          const growth = GROWTH_SCENARIOS.includes(name);
          if (rep > (growth ? cfg.growthReps : cfg.reps)) return;
          const t = Date.now();
          const r = await fn();
          add(system, key, r);
          log(`rep ${rep}/${growth ? cfg.growthReps : cfg.reps} ${system.padEnd(9)} ${key.padEnd(11)} ${brief(r)} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
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
        for (const k of cfg.growthWorkers) await step('workers', () => scenarioWorkers(system, redis.url, k), `workers${k}`);
        for (const size of cfg.growthSizes) await step('payload', () => scenarioPayload(system, redis.url, size), `payload${size}`);
        await step('delayed', () => scenarioDelayed(system, redis.url));
        await step('waiting', () => scenarioWaiting(system, redis.url));
        await step('uniqueHeld', () => scenarioUniqueHeld(system, redis.url));
      }
    }
    await reset();
    const pick = (system, [scenario, field]) => (samples[system]?.[scenario] ?? []).map((r) => r[field]);
    // A row's statistics per system, and heimdall-tasks' ratio to each other system's median.
    const measure = (row) => {
      const values = {};
      for (const system of cfg.systems) {
        const s = stats(pick(system, row.from));
        if (s) values[system] = s;
      }
      const h = values.heimdall?.median;
      const ratio = (other) => (h !== undefined && values[other]?.median >= 0.01 ? h / values[other].median : undefined);
      return { values, ratios: { bullmq: ratio('bullmq'), 'bee-queue': ratio('bee-queue') } };
    };
    const rows = ROWS.map((row) => ({ id: row.id, group: row.group, label: row.label, unit: row.unit, better: row.better, ...measure(row) }));
    const growth = growthRows().map((row) => {
      const { values, ratios } = measure(row);
      return { id: row.id, label: row.label, unit: row.unit, better: row.better, values, ratios: row.noRatio ? {} : ratios };
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
      growth,
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
