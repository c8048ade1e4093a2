import { fromRedis, RedisRefusedError, UnexpectedReplyError } from '../errors.js';
import { deferLimit, takeLimit, type LimitTake } from '../protocol/limit-scripts.js';
import type { PermitScope } from '../protocol/permit-scripts.js';
import { resolveLimits, type NormalizedLimitUse, type ResolvedLimit } from '../task/limits.js';
import type { TaskDefinition } from '../task/registry.js';
import { admit, deferRun, needsAdmission, type AdmissionHost } from './admission.js';
import { acquirePermits, giveBack, permitScopesOf, type PermitHold } from './permits.js';
import { parseArgs, type LimitCharge, type Run } from './run.js';

/** The name a run has in its limits: '<queue>|<id>:<attempt>' (an attempt sent back keeps its number, so it finds its turn). */
export function limitRunName(queue: string, id: string, attempt: number): string {
  return `${queue}|${id}:${attempt}`;
}

/** Whether runs of the task take anything here: named limits, or the task's own concurrency. */
export function hasLimits(def: TaskDefinition): boolean {
  return def.options.limits !== undefined || def.options.concurrency !== undefined;
}

/**
 * Takes a started run's concurrency permits (its task's own `concurrency` and its concurrency
 * limits), then what its message lacks of the worker's unique lock and rate window (admit), then
 * its named rate limits, before it runs. Resolves true to run it (or to fail it,
 * with `run.admissionError` set); false when it was sent back to wait (or released meanwhile).
 *
 * Permits come first so that only runs holding them queue for rate turns: a run with no permit
 * waits in the delayed set until one is handed to it (or its re-check) and takes nothing from a
 * rate window meanwhile; a run holding its permits that must wait for a rate turn keeps them
 * through the wait (their lapse moved past its turn), so it starts at its turn. The other order
 * lets the two queues pass turns back and forth under a backlog: a run admitted by its rate
 * limits but refused a permit gave its charge back and, handed a permit later, found itself
 * behind every turn, gave the permit back, and so on.
 */
export async function takeLimits(run: Run, def: TaskDefinition, host: AdmissionHost): Promise<boolean> {
  if (run.admissionError !== undefined || !hasLimits(def)) return true;
  const { task, runner } = run;
  let all: ResolvedLimit[];
  let scopes: PermitScope[];
  try {
    const args = parseArgs(task.argsJson);
    all = def.options.limits ? resolveLimits(def.name, def.options.limits, args) : [];
    scopes = permitScopesOf(runner.keys.prefix, def, args, all);
  } catch (err) {
    run.admissionError = err;
    return true;
  }
  if (scopes.length > 0 && !(await takePermits(run, scopes, host))) return false;
  // The worker's own unique lock and rate window where the message lacks them (a task that may
  // take permits is sent without its rate window: call-checks.ts, mayTakePermits), kept after
  // the permits for the same reason.
  if (run.admissionError === undefined && needsAdmission(def, run) && !(await admit(run, def, host))) return false;
  if (run.admissionError !== undefined) return true;
  const uses = def.options.limits ?? [];
  const rate = all.map((l, i) => ({ l, use: uses[i]! })).filter((x) => x.l.def.algorithm !== 'concurrency');
  if (rate.length === 0) return true;
  return takeRateLimits(run, rate.map((x) => x.l), rate.map((x) => x.use), host);
}

/** The permits of a started run, all or none (permits.ts); over a full scope, the run waits. */
async function takePermits(run: Run, scopes: readonly PermitScope[], host: AdmissionHost): Promise<boolean> {
  const { task, runner } = run;
  const scripts = runner.limitScripts;
  const prefix = runner.keys.prefix;
  let answer: { held: PermitHold[] } | { againMs: number } | undefined;
  for (let failures = 0; answer === undefined; failures++) {
    try {
      answer = await acquirePermits(scripts, prefix, scopes, runner.keys.queue, task.id, task.attempt, host);
    } catch (err) {
      const seen = fromRedis(err, `task ${task.id} (${task.name}): taking its concurrency permits`);
      if (seen instanceof RedisRefusedError || err instanceof UnexpectedReplyError) {
        run.admissionError = err instanceof UnexpectedReplyError ? err : seen;
        return true;
      }
      host.reportError(seen);
      await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** failures)).unref());
    }
    if (run.released) {
      if (answer && 'held' in answer) await giveBack(scripts, prefix, answer.held, host);
      return false;
    }
  }
  if ('held' in answer) {
    run.permits = answer.held;
    return true;
  }
  return deferRun(run, host, answer.againMs, true);
}

/**
 * Takes a started run's named rate limits before it runs (limit-2.lua, one call per limit, each in the
 * slot of its own hash tag; the calls go out together). A limit with room charges the run now; a
 * full one reserves its turn. When all have room the run goes on (resolves true) and remembers its
 * charges for `reportCost()`. Otherwise it waits for the latest turn: what the other limits hold
 * for it moves to that turn (window) or is taken back (gcra), and the queue's script takes the
 * start back and puts the task in the delayed set, due then (deferRun); resolves false. A limit
 * this process never defined, or a cost that cannot be charged, fails the run (resolves true with
 * `run.admissionError` set): it never waits for a limit it could never pass.
 */
async function takeRateLimits(run: Run, limits: readonly ResolvedLimit[], uses: readonly NormalizedLimitUse[], host: AdmissionHost): Promise<boolean> {
  const { task, runner } = run;
  const name = limitRunName(runner.keys.queue, task.id, task.attempt);
  const scripts = runner.limitScripts;
  const prefix = runner.keys.prefix;
  // Each limit's answer, once it came: a call that failed is sent again alone, so a limit that
  // answered is never taken twice (a gcra take is not idempotent: it would be charged again).
  const answers: (LimitTake | undefined)[] = limits.map(() => undefined);
  for (let failures = 0; answers.includes(undefined); failures++) {
    const errors: unknown[] = [];
    await Promise.all(
      limits.map(async (l, i) => {
        if (answers[i] !== undefined) return;
        try {
          answers[i] = await takeLimit(scripts, prefix, l.def, name, l.cost);
        } catch (err) {
          errors.push(err);
        }
      }),
    );
    if (run.released) return false;
    if (errors.length === 0) break;
    // A limit's key holding another type of value, or a reply Redis will give again (an ACL's
    // NOPERM, a WRONGTYPE: what fromRedis calls a refusal, unlike a full Redis or one between
    // masters): the run fails, naming it (what the other limits charged leaves their windows
    // within a period).
    const seen = errors.map((err) => (err instanceof UnexpectedReplyError ? err : fromRedis(err, `task ${task.id} (${task.name}): taking its named limits`)));
    const fatal = seen.find((err) => err instanceof UnexpectedReplyError || err instanceof RedisRefusedError);
    if (fatal !== undefined) {
      run.admissionError = fatal;
      return true;
    }
    host.reportError(seen[0]);
    await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** failures)).unref());
    if (run.released) return false;
  }
  const takes = answers as LimitTake[];
  // Handed back meanwhile (close): what it was charged leaves the windows within a period.
  if (run.released) return false;
  const latest = Math.max(...takes.map((t) => (t.verdict === 'wait' ? t.delayMs : 0)));
  if (latest === 0) {
    run.limits = limits.map((l, i): LimitCharge => ({ def: l.def, cost: l.cost, weighted: uses[i]!.weighted, run: name }));
    return true;
  }
  // The turn is `latest` ms after the replies came (a few ms later than the slowest limit said:
  // never earlier).
  const due = performance.now() + latest;
  const moves = limits.map((l, i) => {
    const take = takes[i]!;
    // The limit that gave the latest turn keeps it as it is.
    if (take.verdict === 'wait' && take.delayMs === latest) return undefined;
    return deferLimit(scripts, prefix, l.def, name, l.cost, due - performance.now(), take.tat).catch((err: unknown) => {
      // Left where it is: a charge leaves the window within a period, a turn within a period after it.
      host.reportError(fromRedis(err, `task ${task.id} (${task.name}): moving its place in limit '${l.def.name}' to its turn`));
    });
  });
  await Promise.all(moves);
  // Its permits stay its own until a lease past its turn (deferRun): it comes back holding them.
  return deferRun(run, host, Math.max(0, Math.ceil(due - performance.now())));
}
