// Starts one worker process of the bench (worker-child.mjs) and speaks its IPC protocol; shared
// by run.mjs and cluster.mjs.
import { fork } from 'node:child_process';
import { join } from 'node:path';
import { BENCH } from './systems.mjs';

/**
 * Forks worker-child.mjs for `system` on `url` (a Redis URL, or { cluster: seeds } for heimdall),
 * with `execArgv` as extra Node flags and `env` on top of this process's environment.
 * Returns { state, next(type), send(msg), kill(), stop() }: `next` resolves with the first message
 * of a type, `stop` asks the worker to close and resolves with its 'closed' message once it exited.
 */
export function startChild(system, url, { prefix, concurrency, target, recordStarts = false, checkRuns = false, queue, activateDelayed = false, execArgv = [], env = {} }) {
  const child = fork(join(BENCH, 'lib', 'worker-child.mjs'), [], {
    execArgv: ['--import', 'tsx', ...execArgv],
    env: { ...process.env, ...env, BENCH_CHILD: JSON.stringify({ system, url, prefix, concurrency, target, recordStarts, checkRuns, queue, activateDelayed }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiters = new Map();
  const seen = new Map();
  const state = { done: 0 };
  let failure;
  child.on('message', (msg) => {
    if (msg.type === 'progress') {
      state.done = Math.max(state.done, msg.done);
      if (msg.lastDoneNs) state.lastDoneNs = msg.lastDoneNs;
    }
    if (msg.type === 'error') failure = new Error(`${system} worker: ${msg.message}`);
    seen.set(msg.type, msg);
    const w = waiters.get(msg.type);
    if (w) {
      waiters.delete(msg.type);
      w.resolve(msg);
    }
    if (failure) for (const x of waiters.values()) x.reject(failure);
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  child.on('exit', (code) => {
    if (code !== 0 && code !== null) {
      failure ??= new Error(`${system} worker exited with code ${code}`);
      for (const x of waiters.values()) x.reject(failure);
    }
  });
  const next = (type, timeoutMs = 300_000) => {
    if (seen.has(type)) return Promise.resolve(seen.get(type));
    if (failure) return Promise.reject(failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${system} worker: no '${type}' within ${timeoutMs} ms`)), timeoutMs);
      waiters.set(type, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  };
  return {
    state,
    next,
    send: (msg) => child.send(msg),
    /** Kills the process (a run that failed half-way must leave no worker behind). */
    kill: () => child.kill('SIGKILL'),
    stop: async () => {
      child.send({ type: 'stop' });
      const closed = await next('closed', 60_000);
      await exited;
      return closed;
    },
  };
}
