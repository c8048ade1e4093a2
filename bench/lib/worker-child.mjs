// One worker process of the bench, driven by run.mjs over IPC:
//   child -> 'ready' (modules loaded)      parent -> 'go'
//   child -> 'started' { t0 } (worker consuming)  ... child -> 'progress' { done, lastDoneNs } now and then
//   child -> 'done' { stats } once `target` tasks ended (target 0: never; parent sends 'stop')
//   parent -> 'stop'                       child -> 'closed' { stats }, then exits
// The stats count the tasks ended (done) and, heimdall only, the tasks its rate windows sent back
// to the delayed set (limited); with checkRuns, the handler's runs too (runs), and the payload's i
// of any task run a second time in this process (twice, the first 20); and the closing message
// lists the i of every task it ran (ran), for the parent to find a task run by two processes.
// Times are process.hrtime.bigint() in nanoseconds: CLOCK_MONOTONIC, one clock for every
// process on a Linux machine, so the parent can compare them with its own.
import { clientCommands, preload, worker } from './systems.mjs';

// url: a Redis URL, or { cluster: seeds } (heimdall only); queue: optional, heimdall only.
const { system, url, prefix, concurrency, target, recordStarts, checkRuns, queue, activateDelayed } = JSON.parse(process.env.BENCH_CHILD);
const send = (msg) => process.send(msg, undefined, undefined, () => {});

let done = 0;
let runs = 0;
let limited = 0;
const ran = checkRuns ? new Set() : undefined;
const twice = [];
let w;
let t0 = 0n;
let cpu0;
let cmd0 = 0;
let stats;
const starts = recordStarts ? new Map() : undefined;
let lastProgress = 0;
// When the last task so far ended (hrtime ns): the parent times a drain shared by several processes
// from their starts to the last end.
let lastDoneAt = 0n;

function snapshot() {
  const cpu = process.cpuUsage(cpu0);
  return {
    done,
    runs,
    limited,
    twice: twice.slice(0, 20),
    elapsedNs: String(process.hrtime.bigint() - t0),
    cpuUs: cpu.user + cpu.system,
    clientCommands: clientCommands.n - cmd0,
  };
}

function handler(payload) {
  if (starts) starts.set(payload.i, String(process.hrtime.bigint()));
  if (ran) {
    runs++;
    if (ran.has(payload.i)) twice.push(payload.i);
    else ran.add(payload.i);
  }
}

function onLimited() {
  limited++;
}

function onDone() {
  done++;
  lastDoneAt = process.hrtime.bigint();
  if (target > 0 && done === target) {
    stats = snapshot();
    send({ type: 'done', stats });
  }
}

// Progress for the parent (the rate-limited drain stops its workers when their sum is reached).
setInterval(() => {
  if (done !== lastProgress) {
    lastProgress = done;
    send({ type: 'progress', done, lastDoneNs: String(lastDoneAt) });
  }
}, 50).unref();

process.on('message', async (msg) => {
  try {
    if (msg.type === 'go') {
      cpu0 = process.cpuUsage();
      cmd0 = clientCommands.n;
      t0 = process.hrtime.bigint();
      w = await worker(system, url, prefix, { concurrency, handler, onDone, onLimited, queue, activateDelayed });
      send({ type: 'started', t0: String(t0) });
    } else if (msg.type === 'stop') {
      const final = stats ?? snapshot();
      await w?.close();
      send({ type: 'closed', stats: { ...final, done }, starts: starts ? [...starts] : undefined, ran: ran ? [...ran] : undefined });
      process.disconnect();
    }
  } catch (err) {
    send({ type: 'error', message: err?.stack ?? String(err) });
    process.exit(1);
  }
});

// Load the system's modules before 'ready', so that loading is not timed.
await preload(system);
send({ type: 'ready' });
