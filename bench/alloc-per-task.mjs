#!/usr/bin/env node
// Bytes the heimdall-tasks worker allocates per task (issue 14): `node bench/alloc-per-task.mjs`.
// A private redis-server; for each run, a worker process (this file, forked) runs the bench's
// no-op task and counts what its V8 heap allocated between the end of a warm-up and the end of
// the measured tasks. Allocation does not depend on how busy the machine is, so the figure is
// steady from run to run where times are not.
//   drain1 / drain50: ALLOC_TASKS (20000) tasks queued first, drained at concurrency 1 / 50;
//   paced: ALLOC_PACED (5000) tasks sent at ALLOC_RATE (500) per s to a waiting worker at
//   concurrency 50 (the bench's latency scenario). ALLOC_WARMUP (2000) tasks before each.
//   ALLOC_RUNS: a subset (drain1,drain50,paced). ALLOC_REPS (1): runs of each.
//   ALLOC_WHERE=1: the worker also takes a sampling heap profile with the objects collected since
//   (every 4 KB, V8's sampling heap profiler) and prints the top allocation sites.
//   BENCH_HEIMDALL_PREFETCH: the workers' prefetch, as in the bench (unset: the default).
//   ALLOC_BUILD: a compiled build to measure instead of compiling src/ (another commit's, say).
// How: v8.GCProfiler records the used heap before and after every collection; the bytes allocated
// over a span are the used heap at its end minus at its start, plus what each collection freed.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';

const CHILD = process.env.ALLOC_CHILD;
const ROOT = fileURLToPath(new URL('../', import.meta.url));
// ALLOC_BUILD: a build made beforehand (e.g. of another commit, beside this checkout's node_modules) to measure instead.
const BUILD = process.env.ALLOC_BUILD ? `${process.env.ALLOC_BUILD.replace(/\/$/, '')}/` : `${ROOT}.bench-build-alloc/`;
process.env.BENCH_HEIMDALL_BUILD = BUILD;
const { worker, producer, rootIoredis, clientCommands } = await import('./lib/systems.mjs');

const PREFIX = 'alloc';
const int = (name, dflt) => (process.env[name] ? Number(process.env[name]) : dflt);
const payload = (i) => ({ i, s: 'x'.repeat(100) });

if (CHILD) await child(JSON.parse(CHILD));
else await main();

// ------------------------------------------------------------------------- the worker process
async function child({ url, concurrency, warmup, n }) {
  const where = process.env.ALLOC_WHERE === '1';
  let done = 0;
  let mark;
  let profiler;
  let session;
  const send = (m) => process.send(m);
  const start = async () => {
    if (where) {
      const { Session } = await import('node:inspector/promises');
      session = new Session();
      session.connect();
      await session.post('HeapProfiler.enable');
      await session.post('HeapProfiler.startSampling', {
        samplingInterval: 4096,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    }
    profiler = new v8.GCProfiler();
    profiler.start();
    mark = { used: v8.getHeapStatistics().used_heap_size, cpu: process.cpuUsage(), t: process.hrtime.bigint(), cmds: clientCommands.n };
  };
  let finishing;
  const finish = async () => {
    const used = v8.getHeapStatistics().used_heap_size;
    const cpu = process.cpuUsage(mark.cpu);
    const t = process.hrtime.bigint() - mark.t;
    const data = profiler.stop();
    let freed = 0;
    let scavenges = 0;
    let majors = 0;
    let pauseMs = 0;
    for (const s of data.statistics) {
      freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize;
      if (s.gcType === 'Scavenge' || s.gcType === 'MinorMarkCompact') scavenges++;
      else if (s.gcType === 'MarkSweepCompact') majors++;
      pauseMs += s.cost / 1000;
    }
    const out = { commands: clientCommands.n - mark.cmds, bytes: used - mark.used + freed, scavenges, majors, pauseMs, cpuUs: cpu.user + cpu.system, ms: Number(t) / 1e6 };
    if (where) {
      const { profile } = await session.post('HeapProfiler.stopSampling');
      out.sites = topSites(profile, n);
    }
    send({ type: 'done', ...out });
  };
  const w = await worker('heimdall', url, PREFIX, {
    concurrency,
    handler: () => {},
    onDone: () => {
      done++;
      if (done === warmup) start().catch(fail);
      else if (done === warmup + n) finishing = finish().catch(fail);
    },
  });
  send({ type: 'started' });
  process.on('message', async (m) => {
    if (m.type === 'stop') {
      await finishing;
      await w.close();
      process.exit(0);
    }
  });
}

function fail(err) {
  console.error(err);
  process.exit(1);
}

/** The sampled allocation sites: self bytes per function and line, top 30, as bytes per task. */
function topSites(profile, n) {
  const bySite = new Map();
  const byHeimdall = new Map();
  const walk = (node, stack) => {
    const f = node.callFrame;
    const here = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(node_modules|\.bench-build-alloc|bench)\//, '$1/')}:${f.lineNumber + 1}`;
    const path = [...stack, here];
    if (node.selfSize > 0) {
      bySite.set(here, (bySite.get(here) ?? 0) + node.selfSize);
      // The innermost frame in heimdall-tasks' own code: who asked for it.
      const own = [...path].reverse().find((s) => s.includes('.bench-build-alloc')) ?? '(none)';
      byHeimdall.set(own, (byHeimdall.get(own) ?? 0) + node.selfSize);
    }
    for (const c of node.children) walk(c, path);
  };
  walk(profile.head, []);
  const top = (m) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 30)
      .map(([site, bytes]) => [site, Math.round(bytes / n)]);
  return { self: top(bySite), heimdall: top(byHeimdall) };
}

// -------------------------------------------------------------------------------- the parent
async function main() {
  const { startRedis } = await import('../scripts/redis-launcher.mjs');
  const { execFileSync } = await import('node:child_process');
  // Compiled as the bench compiles it (systems.mjs buildHeimdall), into a folder of its own.
  if (!process.env.ALLOC_BUILD) execFileSync(`${ROOT}node_modules/.bin/tsc`, ['-p', `${ROOT}tsconfig.build.json`, '--outDir', BUILD, '--declaration', 'false', '--sourceMap', 'false'], { stdio: 'inherit' });
  const Redis = rootIoredis();
  const redis = await startRedis();
  const admin = new Redis(redis.url);
  const n = int('ALLOC_TASKS', 20_000);
  const paced = int('ALLOC_PACED', 5_000);
  const rate = int('ALLOC_RATE', 500);
  const warmup = int('ALLOC_WARMUP', 2_000);
  const reps = int('ALLOC_REPS', 1);
  const runs = (process.env.ALLOC_RUNS || 'drain1,drain50,paced').split(',');
  const rows = [];
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const run of runs) {
        await admin.flushall();
        const p = await producer('heimdall', redis.url, PREFIX);
        const concurrency = run === 'drain1' ? 1 : 50;
        const count = run === 'paced' ? paced : n;
        const total = warmup + count;
        if (run !== 'paced') {
          for (let i = 0; i < total; i += 1000) await p.bulk(Array.from({ length: Math.min(1000, total - i) }, (_, k) => payload(i + k)));
        }
        const c = startWorker(redis.url, { concurrency, warmup, n: count });
        await c.next('started');
        if (run === 'paced') {
          const t0 = process.hrtime.bigint();
          const pending = [];
          let sent = 0;
          while (sent < total) {
            const due = Math.min(total, Math.floor((Number(process.hrtime.bigint() - t0) / 1e9) * rate) + 1);
            while (sent < due) pending.push(p.enqueue(payload(sent++)));
            await new Promise((r) => setTimeout(r, 1));
          }
          await Promise.all(pending);
        }
        const r = await c.next('done');
        await c.stop();
        await p.close();
        const row = {
          run,
          tasks: count,
          bytesPerTask: Math.round(r.bytes / count),
          commandsPerTask: +(r.commands / count).toFixed(2),
          scavengesPer1k: +((r.scavenges * 1000) / count).toFixed(2),
          majors: r.majors,
          gcMsPer1k: +((r.pauseMs * 1000) / count).toFixed(1),
          cpuUsPerTask: +(r.cpuUs / count).toFixed(1),
        };
        rows.push(row);
        console.log(JSON.stringify(row));
        if (r.sites) {
          console.log(`  top allocation sites (self), bytes per task:`);
          for (const [s, b] of r.sites.self) console.log(`    ${String(b).padStart(6)}  ${s}`);
          console.log(`  by the innermost heimdall-tasks frame, bytes per task:`);
          for (const [s, b] of r.sites.heimdall) console.log(`    ${String(b).padStart(6)}  ${s}`);
        }
      }
    }
  } finally {
    admin.disconnect();
    await redis.stop();
  }
  console.table(rows);
}

function startWorker(url, opts) {
  const c = fork(fileURLToPath(import.meta.url), [], {
    env: { ...process.env, ALLOC_CHILD: JSON.stringify({ url, ...opts }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const seen = new Map();
  const waiters = new Map();
  let exitErr;
  c.on('message', (m) => {
    seen.set(m.type, m);
    waiters.get(m.type)?.(m);
  });
  const exited = new Promise((resolve) => c.on('exit', resolve));
  c.on('exit', (code) => {
    if (code !== 0) exitErr = new Error(`worker exited with ${code}`);
    for (const w of waiters.values()) w(undefined);
  });
  return {
    next: (type) =>
      seen.has(type)
        ? Promise.resolve(seen.get(type))
        : new Promise((resolve, reject) =>
            waiters.set(type, (m) => (m ? resolve(m) : reject(exitErr ?? new Error(`worker exited before '${type}'`)))),
          ),
    stop: async () => {
      c.send({ type: 'stop' });
      await exited;
    },
  };
}
