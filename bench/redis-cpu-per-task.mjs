#!/usr/bin/env node
// Where Redis's CPU goes per task in the bench's drain (issue 14): `node bench/redis-cpu-per-task.mjs`.
// A private redis-server. For each system and variant, CPU_TASKS (20000) tasks are queued (bulk),
// then one worker process (bench/lib/worker-child.mjs, as in `npm run bench`) drains them at
// CPU_CONCURRENCY (50). Before the worker starts, CONFIG RESETSTAT; after its last end event,
// INFO cpu and INFO commandstats: calls and usec per command, per task. Redis 7.0 times a script
// call's inner commands inside the call too, so evalsha's usec = its commands' usec + Lua's own.
//   CPU_SYSTEMS (heimdall,bullmq,bee-queue), CPU_REPS (3), CPU_VARIANTS (heimdall only, comma-separated):
//     base        the library as built from src/
//     events-off  the worker with events: false (BENCH_HEIMDALL_EVENTS=off)
//     no-publish  fetch without the done-channel SPUBLISH of each end (a patched copy of the build)
//     no-expire   fetch without the PEXPIRE of each ended record
//     no-stats    fetch without the stats HINCRBY (countEnds)
//     bare        the three patches and events off
//     narrow-reads the start's and end's HMGET cut to the fields of a plain task's record (bench tasks only)
//     lean        bare and narrow-reads
//     no-scans, no-peek, no-next-delay, no-noop-trim: a call's own work (the scans for lapsed claims,
//                 leases and due tasks; the peek; the next-delay lookup; the no-op LTRIM) left out;
//     per-call-min all four and no-stats (with events-off's cap 0 in the batch calls when named so)
//     dir:<path>  a build saved before (a copy of .bench-build-cpu/ beside it, e.g. .bench-build-cpu-old/,
//                 so that it finds the root's node_modules), to compare a change of src/ with what it
//                 replaces in the same run: CPU_VARIANTS=base,dir:$PWD/.bench-build-cpu-old for the
//                 drains, CPU_BATCH_VARIANTS=base,dir:$PWD/.bench-build-cpu-old for the batch calls
//   The patched copies are for measurement only: they change what the library promises.
//   CPU_FIXED=1 (default) also times crafted fetch calls on the admin connection: one that starts
//   and ends nothing, and the script cut after its function definitions (CPU_CALLS of each, 5000).
//   CPU_C1=1 also drains at concurrency 1 (one end and one start per call).
//   CPU_BATCH=0 leaves out the fetch calls that end and start CPU_BATCH_SIZES (1,25,50) tasks
//   each, one at a time on an idle Redis, per variant in CPU_BATCH_VARIANTS, about CPU_BATCH_TASKS
//   (10000) tasks per size and variant, with start-only and end-only calls; CPU_BATCH_ROUNDS (1)
//   times, the variants in turn (CPU_BATCH_SPLIT=0 leaves out the start-only and end-only calls) (the table gives min–max over all rounds and repetitions).
//   CPU_MICRO=1 adds one command as a script calls it, Lua's side included (CPU_MICRO_LOOPS).
//   CPU_PERF=<dir> records redis-server with `perf record -g` during each drain (from the worker's
//   go to its last end), one file per system, variant and repetition in <dir>; read them with
//   `perf report -i <file> --no-children --sort symbol`. Needs perf (Debian: linux-perf) and root
//   or perf_event_paranoid <= 1.
//   CPU_OUT: where the JSON goes (bench/results/redis-cpu-per-task.json). Sections of BENCHMARKS.md:
//   "Where Redis's CPU per task goes at concurrency 50".
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const BUILD = `${ROOT}.bench-build-cpu/`;
process.env.BENCH_HEIMDALL_BUILD = BUILD;
const { producer, rootIoredis, ADMIN_NAME } = await import('./lib/systems.mjs');
const { startChild } = await import('./lib/child.mjs');
const { startRedis } = await import('../scripts/redis-launcher.mjs');

const int = (name, dflt) => (process.env[name] ? Number(process.env[name]) : dflt);
const list = (name, dflt) => (process.env[name] ?? dflt).split(',').map((s) => s.trim()).filter(Boolean);
const N = int('CPU_TASKS', 20_000);
const REPS = int('CPU_REPS', 3);
const CONC = int('CPU_CONCURRENCY', 50);
const CALLS = int('CPU_CALLS', 5_000);
const SYSTEMS = list('CPU_SYSTEMS', 'heimdall,bullmq,bee-queue');
const VARIANTS = list('CPU_VARIANTS', 'base,events-off');
const PREFIX = 'cpu';
const payload = (i) => ({ i, s: 'x'.repeat(100) });
const log = (m) => console.error(m);

// ------------------------------------------------------------------ builds
const PATCHES = {
  'no-publish': [["redis.call('SPUBLISH', doneChannelOf(base, id), state)", '']],
  'no-expire': [["redis.call('PEXPIRE', key, msText(expireMs))", '']],
  'no-stats': [['if count > 0 then pcall(countEnds, KEYS[6], outcomes, now) end', '']],
};
PATCHES.bare = [...PATCHES['no-publish'], ...PATCHES['no-expire'], ...PATCHES['no-stats']];
// The start's and the end's reads of the record cut to the fields a plain task's record holds, the
// others given as absent (false): right only for the bench's plain tasks (no lock, rate limit,
// expiry, time limit, retries, history), for measuring what narrower reads would save.
PATCHES['narrow-reads'] = [
  [
    "local t = redis.pcall('HMGET', key, 's', 'n', 'a', 'lk', 'lt', 'rk', 'rn', 'rp', 'at', 'v', 'ex', 'tl', 'ry', 'ac', 'd',\n      'a1', 'a2', 'a3', 'mr', 'lw', 'cb', 'lu', 'rs', 'cm')",
    "local t = redis.pcall('HMGET', key, 's', 'n', 'a', 'at', 'v', 'ac', 'a1', 'rs')\n    if not t.err then t = { t[1], t[2], t[3], false, false, false, false, false, t[4], t[5], false, false, false, t[6], false, t[7], false, false, false, false, false, false, t[8], false } end",
  ],
  [
    "local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'fk', 'rv', 'ry', 'lk', 'lw', 'n', 'st', 'at', 'cm', 'lu', 'rs')",
    "local t = redis.pcall('HMGET', key, 's', 'w', 'tk', 'fk', 'n', 'st', 'at', 'rs')\n  if not t.err then t = { t[1], t[2], t[3], t[4], false, false, false, false, t[5], t[6], t[7], false, false, t[8] } end",
  ],
];
PATCHES.lean = [...PATCHES.bare, ...PATCHES['narrow-reads']];
// The per-call work of a call that starts or ends anything (what a worker woken for one task pays
// once per task): the scans for lapsed claims, lapsed leases and due delayed tasks, the peek at the
// tail, the next-delay lookup, the no-op LTRIM that lets a full Redis take the starts. Right only
// on an idle bench queue (no claims, leases or delayed tasks to find), for measuring.
PATCHES['no-scans'] = [
  ["redis.pcall('ZRANGEBYSCORE', claimedKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 100)", '{}'],
  ["redis.pcall('ZRANGEBYSCORE', activeKey, '-inf', now, 'LIMIT', 0, 20)", '{}'],
  ["redis.pcall('ZRANGEBYSCORE', delayedKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)", '{}'],
];
PATCHES['no-peek'] = [['if peekCount > 0 then', 'if false then']];
PATCHES['no-next-delay'] = [['pcall(nextDelayOf, delayedKey, now)', 'true, -1']];
PATCHES['no-noop-trim'] = [["  redis.pcall('LTRIM', waitKey, 0, -1)\n", '']];
PATCHES['per-call-min'] = [...PATCHES['no-scans'], ...PATCHES['no-peek'], ...PATCHES['no-next-delay'], ...PATCHES['no-noop-trim'], ...PATCHES['no-stats']];

/** The generated fetch script of a build: { file, text, source, sha, start, end } */
function fetchOf(dir) {
  const file = `${dir}redis-scripts/scripts.generated.js`;
  const text = readFileSync(file, 'utf8');
  const at = text.indexOf('name: "fetch"');
  const m = /sha: '([0-9a-f]{40})',\s*source: ("(?:[^"\\]|\\.)*")/.exec(text.slice(at));
  return { file, text, sha: m[1], source: JSON.parse(m[2]), start: at + m.index, end: at + m.index + m[0].length };
}

function variantBuild(variant) {
  if (variant.startsWith('dir:')) return variant.slice(4).replace(/\/?$/, '/');
  if (!PATCHES[variant]) return BUILD;
  const dir = `${ROOT}.bench-build-cpu-${variant}/`;
  rmSync(dir, { recursive: true, force: true });
  cpSync(BUILD, dir, { recursive: true });
  const f = fetchOf(dir);
  let source = f.source;
  for (const [from, to] of PATCHES[variant]) {
    if (!source.includes(from)) throw new Error(`patch ${variant}: '${from}' not in fetch`);
    source = source.split(from).join(to);
  }
  const sha = createHash('sha1').update(source).digest('hex');
  writeFileSync(f.file, f.text.slice(0, f.start) + `sha: '${sha}',\n  source: ${JSON.stringify(source)}` + f.text.slice(f.end));
  return dir;
}

// ------------------------------------------------------------------ Redis counters
const Redis = rootIoredis();
let admin;
async function cpuUs() {
  const text = await admin.info('cpu');
  const v = (k) => Number(new RegExp(`${k}:([0-9.]+)`).exec(text)[1]);
  return (v('used_cpu_user') + v('used_cpu_sys')) * 1e6;
}
async function commandStats() {
  const text = await admin.info('commandstats');
  const out = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    if (m[1] === 'info' || m[1].startsWith('config')) continue;
    out[m[1]] = { calls: Number(m[2]), usec: Number(m[3]) };
  }
  return out;
}
const SCRIPT_CALLS = new Set(['evalsha', 'eval', 'evalsha_ro', 'eval_ro', 'fcall', 'fcall_ro']);

/** One drain: per task, Redis CPU and every command's calls and usec (since CONFIG RESETSTAT). */
async function drain(system, url, { variant = 'base', concurrency = CONC } = {}) {
  await admin.flushall();
  const p = await producer(system, url, PREFIX);
  for (let i = 0; i < N; i += 1000) await p.bulk(Array.from({ length: Math.min(1000, N - i) }, (_, k) => payload(i + k)));
  await p.close();
  const env = {};
  if (system === 'heimdall') {
    env.BENCH_HEIMDALL_BUILD = variantBuild(variant);
    if (['events-off', 'bare', 'lean', 'per-call-min'].includes(variant)) env.BENCH_HEIMDALL_EVENTS = 'off';
  }
  const child = startChild(system, url, { prefix: PREFIX, concurrency, target: N, env });
  await child.next('ready');
  await admin.config('RESETSTAT');
  const recorder = await startPerf(`${system}-${variant}-c${concurrency}`);
  const cpu0 = await cpuUs();
  child.send({ type: 'go' });
  const { stats } = await child.next('done');
  const cpu1 = await cpuUs();
  await recorder?.stop();
  const cmds = await commandStats();
  await child.stop();
  const perTask = {};
  let inner = { calls: 0, usec: 0 };
  let scripts = { calls: 0, usec: 0 };
  for (const [cmd, s] of Object.entries(cmds)) {
    perTask[cmd] = { calls: s.calls / N, usec: s.usec / N };
    const into = SCRIPT_CALLS.has(cmd) ? scripts : inner;
    into.calls += s.calls;
    into.usec += s.usec;
  }
  return {
    system,
    variant,
    concurrency,
    rate: N / (Number(stats.elapsedNs) / 1e9),
    redisCpuUs: (cpu1 - cpu0) / N,
    clientCmds: stats.clientCommands / N,
    scriptCalls: scripts.calls / N,
    scriptUsec: scripts.usec / N,
    // every command but the script calls: with scripts, the commands they ran plus the client's own
    otherUsec: inner.usec / N,
    otherCalls: inner.calls / N,
    perTask,
  };
}

let perfRuns = 0;
/** With CPU_PERF set: `perf record -g` of the redis-server process until stop() (SIGINT). */
async function startPerf(label) {
  const dir = process.env.CPU_PERF;
  if (!dir) return undefined;
  const pid = /process_id:(\d+)/.exec(await admin.info('server'))[1];
  const file = `${dir}/${label.replace(/[^\w.-]+/g, '_')}-${++perfRuns}.data`;
  const rec = spawn('perf', ['record', '-g', '-q', '-p', pid, '-o', file], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise((r) => {
    rec.once('exit', r);
    // No perf on this machine: the drain goes on without a profile.
    rec.once('error', (err) => {
      log(`perf: ${err.message}`);
      r();
    });
  });
  // perf attaches within a few ms; give it until it has opened its output file.
  for (let i = 0; i < 200 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 10));
  return {
    async stop() {
      rec.kill('SIGINT');
      await exited;
      log(existsSync(file) ? `perf: ${file}` : `perf: no profile written (is perf allowed here? perf_event_paranoid, root)`);
    },
  };
}

/** Crafted fetch calls on the admin connection: usec per call (commandstats), and Redis CPU per call. */
async function fixedCost() {
  const f = fetchOf(BUILD);
  const base = `${PREFIX}:{bench}:`;
  const keys = ['wait', 'delayed', 'active', 'dead', 'events', 'stats', 'claimed'].map((k) => base + k);
  // ARGV: base, worker, lease, want 0, seed, result lifetime, events cap, claim ms, peek 0, handlers 0,
  // 0 begins, 0 ends, 0 candidates: a plain finish of nothing.
  const argv = (cap) => [base, 'w-fixed', '30000', '0', '12345', '86400000', String(cap), '30000', '0', '0', '0', '0', '0'];
  const cut = f.source.replace('local base, workerId = ARGV[1], ARGV[2]\n', 'do return 0 end\nlocal base, workerId = ARGV[1], ARGV[2]\n');
  if (cut === f.source) throw new Error('could not cut the fetch script after its definitions');
  const shaCut = await admin.script('LOAD', cut);
  const shaFull = await admin.script('LOAD', f.source);
  const shaZero = await admin.script('LOAD', 'return 0');
  const out = {};
  const time = async (label, sha, args) => {
    await admin.flushall();
    for (let i = 0; i < 200; i++) await admin.evalsha(sha, keys.length, ...keys, ...args);
    await admin.config('RESETSTAT');
    const c0 = await cpuUs();
    for (let i = 0; i < CALLS; i += 100) {
      const pipe = admin.pipeline();
      for (let k = 0; k < 100; k++) pipe.evalsha(sha, keys.length, ...keys, ...args);
      await pipe.exec();
    }
    const c1 = await cpuUs();
    const s = await commandStats();
    const inner = Object.entries(s).filter(([c]) => c !== 'evalsha').map(([c, v]) => `${c} ${(v.calls / CALLS).toFixed(2)}`);
    out[label] = { usecPerCall: s.evalsha.usec / CALLS, cpuUsPerCall: (c1 - c0) / CALLS, inner: inner.join(', ') };
  };
  await time('return 0', shaZero, []);
  await time('fetch cut after its definitions', shaCut, argv(10000));
  await time('fetch, nothing to do, events on', shaFull, argv(10000));
  await time('fetch, nothing to do, events off', shaFull, argv(0));
  return out;
}

/**
 * Fetch calls that end `size` runs and start `size` tasks, sent one at a time by this process on an
 * otherwise idle Redis (no worker process competing for the cores): per call, evalsha's usec, its
 * inner commands' usec, and Redis CPU. The ids come from the wait list (declared as hints, as the
 * worker does with its last peek); the run token of a call's starts is its seed, so the next call
 * can end them. `source`: the fetch script (a patched one for a variant); `cap` the events cap.
 */
async function batchCost(url, size, source, cap, calls, split = false) {
  await admin.flushall();
  const tasks = size * (calls + 1);
  const p = await producer('heimdall', url, PREFIX);
  for (let i = 0; i < tasks; i += 1000) await p.bulk(Array.from({ length: Math.min(1000, tasks - i) }, (_, k) => payload(i + k)));
  await p.close();
  const base = `${PREFIX}:{bench}:`;
  const fixed = ['wait', 'delayed', 'active', 'dead', 'events', 'stats', 'claimed'].map((k) => base + k);
  const ids = (await admin.lrange(`${base}wait`, 0, -1)).filter((id) => id !== '').reverse();
  const sha = await admin.script('LOAD', source);
  const batch = (k) => ids.slice(k * size, (k + 1) * size);
  // Ends the runs of batch `ended` (-1: none), started by call `ended` (its seed), and starts batch `start` (-1: none).
  const call = async (ended, start) => {
    const prev = ended >= 0 ? batch(ended) : [];
    const next = start >= 0 ? batch(start) : [];
    const want = next.length;
    const keys = [...fixed, ...prev.map((id) => base + 't:' + id), ...next.map((id) => base + 't:' + id)];
    const argv = [base, 'w-batch', '30000', String(want), String(1000 + start), '86400000', String(cap), '30000', String(want ? 2 * size : 0), String(want), '0', String(prev.length)];
    for (const id of prev) argv.push(id, String(1000 + ended), 'SUCCESS', '', '', '86400000', '0', '', '');
    argv.push(String(next.length));
    for (const id of next) argv.push(id, 'h', '', '');
    const reply = await admin.evalsha(sha, keys.length, ...keys, ...argv);
    if (reply[0].length !== next.length * 8) throw new Error(`call ${start}: started ${reply[0].length / 8} of ${next.length}: ${JSON.stringify(reply).slice(0, 300)}`);
    for (let i = 0; i < reply[5].length; i += 2) if (reply[5][i] !== 'SUCCESS') throw new Error(`call ${ended}: end ${reply[5][i]} ${reply[5][i + 1]}`);
  };
  const measure = async (run) => {
    await admin.config('RESETSTAT');
    const c0 = await cpuUs();
    await run();
    const c1 = await cpuUs();
    const s = await commandStats();
    const inner = Object.entries(s).filter(([c]) => c !== 'evalsha' && !c.startsWith('script'));
    return {
      usecPerCall: s.evalsha.usec / calls,
      innerUsecPerCall: inner.reduce((a, [, v]) => a + v.usec, 0) / calls,
      cpuUsPerCall: (c1 - c0) / calls,
      inner: Object.fromEntries(inner.map(([c, v]) => [c, { calls: v.calls / calls, usec: v.usec / calls }])),
    };
  };
  if (split) {
    // Start-only calls for every batch, then end-only calls (want 0) for each.
    const start = await measure(async () => {
      for (let k = 0; k < calls; k++) await call(-1, k);
    });
    const end = await measure(async () => {
      for (let k = 0; k < calls; k++) await call(k, -1);
    });
    return { start, end };
  }
  await call(-1, 0); // starts the first batch (no ends)
  return measure(async () => {
    for (let k = 1; k <= calls; k++) await call(k - 1, k);
  });
}

/** batchCost for each size and script variant: CPU_BATCH_SIZES (1,25,50), CPU_BATCH_VARIANTS. */
async function batches(url) {
  const f = fetchOf(BUILD);
  const sources = { base: f.source };
  for (const v of Object.keys(PATCHES)) {
    let src = f.source;
    for (const [from, to] of PATCHES[v]) {
      // A patch that no longer matches would measure the base script under the variant's name.
      if (!src.includes(from)) throw new Error(`patch ${v}: '${from}' not in fetch`);
      src = src.split(from).join(to);
    }
    sources[v] = src;
  }
  const out = {};
  for (const size of list('CPU_BATCH_SIZES', '1,25,50').map(Number)) {
    const calls = Math.max(20, Math.round(int('CPU_BATCH_TASKS', 10_000) / size));
    for (const v of list('CPU_BATCH_VARIANTS', 'base,events-off,no-publish,no-expire,no-stats,bare')) {
      const src = v.startsWith('dir:') ? fetchOf(variantBuild(v)).source : sources[v === 'events-off' ? 'base' : v];
      const cap = ['events-off', 'bare', 'lean', 'per-call-min'].includes(v) ? 0 : 10000;
      out[`${size} ${v}`] = await batchCost(url, size, src, cap, calls);
    }
    if (size > 1 && process.env.CPU_BATCH_SPLIT !== '0') {
      const { start, end } = await batchCost(url, size, sources.base, 10000, calls, true);
      out[`${size} base, start only`] = start;
      out[`${size} base, end only`] = end;
    }
  }
  return out;
}

/**
 * One command as a script calls it, Lua's side included: a script runs it CPU_MICRO_LOOPS (1000)
 * times on a record as the bench queues it; usec per command = (the script's usec - an empty
 * loop's) / loops. CPU_MICRO=1 to run.
 */
async function micro(url) {
  await admin.flushall();
  const p = await producer('heimdall', url, PREFIX);
  await p.bulk([payload(0)]);
  await p.close();
  const base = `${PREFIX}:{bench}:`;
  const [id] = await admin.lrange(`${base}wait`, -1, -1);
  const key = `${base}t:${id}`;
  const loops = int('CPU_MICRO_LOOPS', 1000);
  const bodies = {
    'empty loop': '',
    'HMGET 24 fields (start-tasks examine)': "redis.call('HMGET', k, 's', 'n', 'a', 'lk', 'lt', 'rk', 'rn', 'rp', 'at', 'v', 'ex', 'tl', 'ry', 'ac', 'd', 'a1', 'a2', 'a3', 'mr', 'lw', 'cb', 'lu', 'rs', 'cm')",
    'HMGET 14 fields (finish-task)': "redis.call('HMGET', k, 's', 'w', 'tk', 'fk', 'rv', 'ry', 'lk', 'lw', 'n', 'st', 'at', 'cm', 'lu', 'rs')",
    'HMGET 6 fields': "redis.call('HMGET', k, 's', 'n', 'a', 'at', 'v', 'rs')",
    'HSET 5 fields (start)': "redis.call('HSET', k, 's', 'STARTED', 'st', '1700000000000', 'w', 'w-1234567890', 'at', '1', 'tk', '123456789')",
    'HSET 3 fields (end)': "redis.call('HSET', k, 's', 'SUCCESS', 'f', '1700000000000', 'fk', '123456789 SUCCESS')",
    'PEXPIRE': "redis.call('PEXPIRE', k, 86400000)",
    'SPUBLISH, nobody listening': "redis.call('SPUBLISH', b .. 'done:' .. i, 'SUCCESS')",
    'ZADD active': "redis.call('ZADD', b .. 'active', 1700000000000 + n, i)",
    'ZREM active (absent)': "redis.call('ZREM', b .. 'active', 'nope')",
    'a pcall of a Lua function': 'pcall(f, k)',
    'a 9-element table and 8 table.insert': 'local t = {}; for j = 1, 8 do table.insert(t, j) end',
  };
  const out = {};
  for (const [label, body] of Object.entries(bodies)) {
    const script = `local k, b, i = KEYS[1], ARGV[1], ARGV[2]\nlocal function f(x) return x end\nfor n = 1, ${loops} do ${body} end\nreturn 0`;
    const sha = await admin.script('LOAD', script);
    await admin.evalsha(sha, 1, key, base, id);
    await admin.config('RESETSTAT');
    for (let r = 0; r < 20; r++) await admin.evalsha(sha, 1, key, base, id);
    const s = await commandStats();
    out[label] = s.evalsha.usec / 20 / loops;
  }
  const empty = out['empty loop'];
  for (const k of Object.keys(out)) if (k !== 'empty loop') out[k] -= empty;
  return out;
}

// ------------------------------------------------------------------ main
execFileSync(`${ROOT}node_modules/.bin/tsc`, ['-p', `${ROOT}tsconfig.build.json`, '--outDir', BUILD, '--declaration', 'false', '--sourceMap', 'false'], { stdio: 'inherit' });
const redis = await startRedis();
admin = new Redis(redis.url, { connectionName: ADMIN_NAME });
const results = { drains: [], fixed: [], batches: [], micro: [] };
try {
  const version = /redis_version:(\S+)/.exec(await admin.info('server'))[1];
  results.redis = version;
  for (let rep = 0; rep < REPS; rep++) {
    for (const system of SYSTEMS) {
      const variants = system === 'heimdall' ? VARIANTS : ['base'];
      for (const variant of variants) {
        const r = await drain(system, redis.url, { variant });
        r.rep = rep;
        results.drains.push(r);
        log(`${system} ${variant} rep ${rep}: ${r.rate.toFixed(0)}/s, Redis CPU ${r.redisCpuUs.toFixed(1)} µs/task, scripts ${r.scriptUsec.toFixed(1)} µs/task`);
      }
      if (system === 'heimdall' && process.env.CPU_C1 === '1') {
        const r = await drain(system, redis.url, { concurrency: 1 });
        r.rep = rep;
        results.drains.push(r);
        log(`heimdall c=1 rep ${rep}: ${r.rate.toFixed(0)}/s, Redis CPU ${r.redisCpuUs.toFixed(1)} µs/task, scripts ${r.scriptUsec.toFixed(1)} µs/task`);
      }
    }
    if (process.env.CPU_FIXED !== '0') results.fixed.push(await fixedCost());
    // CPU_BATCH_ROUNDS (1) rounds of every size and variant in turn, for a comparison that the
    // machine's drift from minute to minute does not decide (each round is one row in the JSON).
    if (process.env.CPU_BATCH !== '0') for (let round = 0; round < int('CPU_BATCH_ROUNDS', 1); round++) results.batches.push(await batches(redis.url));
    if (process.env.CPU_MICRO === '1') results.micro.push(await micro(redis.url));
  }
} finally {
  admin.disconnect();
  await redis.stop();
}
const out = process.env.CPU_OUT ?? `${ROOT}bench/results/redis-cpu-per-task.json`;
writeFileSync(out, JSON.stringify(results, null, 2));
log(`written to ${out}`);

// A table per system and variant: per command, calls and usec per task (min–max over repetitions).
const range = (xs, d = 2) => {
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return lo.toFixed(d) === hi.toFixed(d) ? lo.toFixed(d) : `${lo.toFixed(d)}–${hi.toFixed(d)}`;
};
const groups = new Map();
for (const r of results.drains) {
  const k = `${r.system} ${r.variant} c=${r.concurrency}`;
  if (!groups.has(k)) groups.set(k, []);
  groups.get(k).push(r);
}
for (const [k, rs] of groups) {
  console.log(`\n### ${k}: Redis CPU ${range(rs.map((r) => r.redisCpuUs), 1)} µs/task; script calls ${range(rs.map((r) => r.scriptCalls), 3)}, their usec ${range(rs.map((r) => r.scriptUsec))}; other commands' usec ${range(rs.map((r) => r.otherUsec))}; ${range(rs.map((r) => r.rate), 0)} tasks/s`);
  console.log('| command | calls per task | usec per task | usec per call |\n| --- | ---: | ---: | ---: |');
  const cmds = [...new Set(rs.flatMap((r) => Object.keys(r.perTask)))].sort((a, b) => (rs[0].perTask[b]?.usec ?? 0) - (rs[0].perTask[a]?.usec ?? 0));
  for (const c of cmds) {
    const get = (r, f) => r.perTask[c]?.[f] ?? 0;
    console.log(`| ${c} | ${range(rs.map((r) => get(r, 'calls')), 3)} | ${range(rs.map((r) => get(r, 'usec')))} | ${range(rs.map((r) => (get(r, 'calls') ? get(r, 'usec') / get(r, 'calls') : 0)))} |`);
  }
}
if (results.fixed.length) {
  console.log('\n### crafted calls (per call)\n| call | evalsha usec | Redis CPU µs | commands inside |\n| --- | ---: | ---: | --- |');
  for (const label of Object.keys(results.fixed[0])) {
    const xs = results.fixed.map((f) => f[label]);
    console.log(`| ${label} | ${range(xs.map((x) => x.usecPerCall))} | ${range(xs.map((x) => x.cpuUsPerCall))} | ${xs[0].inner} |`);
  }
}
if (results.batches.length) {
  console.log('\n### fetch calls ending and starting `size` tasks each, one at a time on an idle Redis (per task)');
  console.log('| size, variant | evalsha usec | inner commands usec | Lua (evalsha - inner) | Redis CPU µs | inner commands per task |\n| --- | ---: | ---: | ---: | ---: | --- |');
  for (const label of Object.keys(results.batches[0])) {
    const size = Number(label.split(' ')[0]);
    const xs = results.batches.map((b) => b[label]);
    const inner = Object.entries(xs[0].inner).map(([c, v]) => `${c} ${(v.calls / size).toFixed(2)} (${(v.usec / size).toFixed(2)})`).join(', ');
    console.log(`| ${label} | ${range(xs.map((x) => x.usecPerCall / size))} | ${range(xs.map((x) => x.innerUsecPerCall / size))} | ${range(xs.map((x) => (x.usecPerCall - x.innerUsecPerCall) / size))} | ${range(xs.map((x) => x.cpuUsPerCall / size))} | ${inner} |`);
  }
}
if (results.micro.length) {
  console.log('\n### one command as a script calls it, Lua side included (usec per command)\n| command | usec |\n| --- | ---: |');
  for (const label of Object.keys(results.micro[0])) console.log(`| ${label} | ${range(results.micro.map((m) => m[label]))} |`);
}
