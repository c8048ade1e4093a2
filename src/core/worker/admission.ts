import { fromRedis, StaleRunError } from '../errors.js';
import { FAILURE_ERRORS } from '../protocol/reply-codes.js';
import type { AdmissionChecks, Verdict } from '../protocol/scripts.js';
import { callChecks } from '../task/call-checks.js';
import { DEFAULT_MAX_RECOVERIES } from '../task/task-options.js';
import { underscoreTwin, type TaskDefinition } from '../task/registry.js';
import type { RemoteError } from '../protocol/task-record.js';
import { parseArgs, safeArgs, type Run } from './run.js';
import type { WorkerEvents } from './worker-options.js';
import { giveBack, renewHolds, type PermitHold, type PermitHost } from './permits.js';

/** What admitting or handing back a run needs from its worker (its lease, errors and background calls: PermitHost). */
export interface AdmissionHost extends PermitHost {
  readonly workerId: string;
  /** unknownTaskGrace, ms. */
  readonly graceMs: number;
  /** Frees the run's slot without storing an end (Redis has what became of it). */
  release(run: Run): void;
  emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void;
}

/** Whether a run's message lacks a check the worker's definition of its task has. */
export function needsAdmission(def: TaskDefinition, run: Run): boolean {
  return (
    (def.options.unique && !run.task.carriesLock) ||
    (def.options.rateLimit !== undefined && !run.task.carriesRate) ||
    recoveriesToFill(def, run) !== undefined
  );
}

/**
 * The worker's maxRecoveries for a message that lacks one, when it differs from the default of 1
 * that recovery applies to such a message (so the default costs no admission call).
 */
function recoveriesToFill(def: TaskDefinition, run: Run): number | undefined {
  const mine = def.options.maxRecoveries;
  return mine !== undefined && mine !== DEFAULT_MAX_RECOVERIES && !run.task.carriesRecoveries ? mine : undefined;
}

/**
 * Admits a run under the worker's own unique lock and rate limit where its message lacks them
 * (admit-6.lua). Resolves true when the task may run; otherwise the run is released and the
 * event for what became of it is emitted.
 */
export async function admit(run: Run, def: TaskDefinition, host: AdmissionHost): Promise<boolean> {
  const { task, runner } = run;
  let checks: AdmissionChecks;
  try {
    checks = {
      ...callChecks(runner.keys, def.name, def.options, parseArgs(task.argsJson), task.argsJson, {
        lock: !task.carriesLock,
        rate: !task.carriesRate,
      }),
      maxRecoveries: recoveriesToFill(def, run),
    };
  } catch (err) {
    // Malformed arguments, or a key or rateLimit function that throws: the run fails with it.
    run.admissionError = err;
    return true;
  }
  // Permits taken before (limits-admission.ts) are kept through a rate turn this may give it.
  const kept = takeKept(run, checks.rate !== undefined);
  const verdict = await settle(run, host, 'admitting it under this worker\'s options', () => runner.admit(task, checks));
  await settleKept(run, host, kept, verdict, verdict?.verdict === 'LIMITED' ? verdict.delayMs : 0);
  return conclude(run, host, verdict);
}

/**
 * The permits a run holds, taken off it while a call that may send it back to wait for a rate
 * turn is out (`when`): the worker's lease tick must not renew them meanwhile, which would cut
 * short the longer lapse settleKept gives them.
 */
function takeKept(run: Run, when: boolean): PermitHold[] | undefined {
  const kept = when ? run.permits : undefined;
  if (kept) run.permits = undefined;
  return kept;
}

/**
 * What becomes of permits taken off a run by takeKept, once its call answered: sent back for a
 * turn `waitMs` away, the run keeps them until a lease past it (they lapse then if it never
 * comes back: revoked, or its worker died before the renewal); let run, it holds them again;
 * anything else (revoked, failed, stale, released meanwhile) gives them back.
 */
async function settleKept(run: Run, host: AdmissionHost, kept: PermitHold[] | undefined, verdict: Verdict | undefined, waitMs: number): Promise<void> {
  if (!kept) return;
  if (verdict?.verdict === 'RUN' && !run.released) {
    run.permits = kept;
  } else if (verdict?.verdict === 'LIMITED') {
    await renewHolds(run.runner.limitScripts, run.runner.keys.prefix, kept, host, waitMs + host.leaseMs, false);
  } else {
    host.track?.(giveBack(run.runner.limitScripts, run.runner.keys.prefix, kept, host));
  }
}

/**
 * Sends a run back to wait `deferMs` for the turn its named limits gave it, or (`forPermit`) to
 * ask again for a concurrency permit (admit-6.lua, LIMITED): the start is taken back and the task
 * waits in the delayed set (due at once when a permit was handed to it meanwhile). Resolves false
 * (the run is released) unless the script let it run.
 */
export async function deferRun(run: Run, host: AdmissionHost, deferMs: number, forPermit = false): Promise<boolean> {
  // A run sent back for a rate turn keeps the permits it holds through the wait (settleKept).
  const kept = takeKept(run, !forPermit);
  const verdict = await settle(run, host, forPermit ? 'sending it back to wait for a concurrency permit' : 'sending it back to wait for its named limits', () =>
    run.runner.admit(run.task, { lock: undefined, rate: undefined, deferMs, forPermit }),
  );
  await settleKept(run, host, kept, verdict, deferMs);
  return conclude(run, host, verdict, forPermit);
}

/** What an admission answered: true to run; otherwise the run is released and the event for what became of it is emitted. */
function conclude(run: Run, host: AdmissionHost, verdict: Verdict | undefined, forPermit = false): boolean {
  const { task, runner } = run;
  if (!verdict) return false;
  if (verdict.verdict === 'RUN') return true;
  host.release(run);
  const base = { id: task.id, name: task.name, queue: runner.keys.queue, args: safeArgs(task.argsJson) };
  switch (verdict.verdict) {
    case 'REVOKED':
      host.emit('revoked', { ...base, reason: verdict.reason });
      break;
    case 'LIMITED':
      host.emit('rateLimited', forPermit ? { ...base, delayMs: verdict.delayMs, permit: true } : { ...base, delayMs: verdict.delayMs });
      break;
    case 'FAILURE':
      host.emit('failed', { ...base, attempt: task.attempt - 1, error: remote(new FAILURE_ERRORS.admit(verdict.message)), runtimeMs: 0 });
      break;
    case 'STALE':
      host.emit('error', new StaleRunError(task.id, task.name, verdict.state, 'end'));
      break;
    case 'UNEXPECTED':
      host.reportError(verdict.error);
      break;
    default:
      break;
  }
  return false;
}

/**
 * The hint for a name that a toolchain's renaming of the class would explain: this worker knows
 * the same name with other leading underscores (a producer built by a tool or a heimdall version
 * that kept esbuild's `_Class`).
 */
function renamingHint(name: string): string {
  const twin = underscoreTwin(name);
  if (!twin) return '';
  return (
    `. This worker runs '${twin}', which differs only by leading underscores: a build tool renamed the class ` +
    `(esbuild renames a class that refers to itself to _Class). Build producer and worker with one heimdall-tasks version, ` +
    `or give the task an explicit name: @Task({ name: '${twin.replace(/^_+/, '')}' }) (see docs/toolchains.md)`
  );
}

/**
 * Hands back a run of a task this worker does not run (decline-7.lua), for a worker that does
 * (a rolling deploy, another app on the same prefix): no attempt counted; FAILURE only when no
 * worker has declared the name for `unknownTaskGrace`.
 */
export async function decline(run: Run, def: TaskDefinition | undefined, host: AdmissionHost): Promise<void> {
  const { task, runner } = run;
  const queue = runner.keys.queue;
  const why = def
    ? `its class ${def.className} is registered there but not in services, and there is no resolve`
    : 'no class registered there declares it';
  const message =
    `no task named '${task.name}' is run by worker ${host.workerId} (${why}), and no worker of queue '${queue}' ` +
    `declared it within unknownTaskGrace (${host.graceMs} ms): import the module that defines it in the worker process and ` +
    'list its class (or an instance) in services; under standard (TC39) decorators a class is only registered once it is listed there' +
    renamingHint(task.name);
  const verdict = await settle(run, host, 'handing it back for a worker that runs it', () => runner.decline(task, host.graceMs, message));
  if (!verdict) return;
  host.release(run);
  const base = { id: task.id, name: task.name, queue, args: safeArgs(task.argsJson) };
  if (verdict.verdict === 'FAILURE') {
    host.emit('failed', { ...base, attempt: task.attempt - 1, error: remote(new FAILURE_ERRORS.decline(verdict.message)), runtimeMs: 0 });
  } else if (verdict.verdict === 'REVOKED') {
    host.emit('revoked', { ...base, reason: verdict.reason });
  } else if (verdict.verdict === 'STALE') {
    host.emit('error', new StaleRunError(task.id, task.name, verdict.state, 'end'));
  } else if (verdict.verdict === 'UNEXPECTED') {
    host.reportError(verdict.error);
  }
}

/**
 * Sends an admit or decline call until Redis answers; undefined when the run was released
 * meanwhile (handed back at close). While the call is out, and after any answer but RUN until the
 * run is released, `sendingBack` tells the lease tick that Redis may no longer hold the run
 * STARTED by this call's doing: the permits a run sent back for a rate turn keeps are renewed
 * (settleKept) between the answer and the release, and a lease renewal then must stop nothing.
 */
async function settle(run: Run, host: AdmissionHost, what: string, call: () => Promise<Verdict>): Promise<Verdict | undefined> {
  run.sendingBack = true;
  let verdict: Verdict | undefined;
  try {
    verdict = await settleOnce(run, host, what, call);
    return verdict;
  } finally {
    if (verdict === undefined || verdict.verdict === 'RUN') run.sendingBack = false;
  }
}

async function settleOnce(run: Run, host: AdmissionHost, what: string, call: () => Promise<Verdict>): Promise<Verdict | undefined> {
  for (let failures = 0; ; failures++) {
    try {
      const verdict = await call();
      return run.released ? undefined : verdict;
    } catch (err) {
      if (run.released) return undefined;
      host.reportError(fromRedis(err, `task ${run.task.id} (${run.task.name}): ${what}`));
      await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** failures)).unref());
      if (run.released) return undefined;
    }
  }
}

/** An error the script stored, as the event reports it: the name and message Redis holds, no traceback (it was made in Redis). */
function remote(err: Error): RemoteError {
  return { name: err.name, message: err.message, traceback: undefined };
}
