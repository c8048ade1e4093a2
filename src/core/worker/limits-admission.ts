import { fromRedis, RedisRefusedError, UnexpectedReplyError } from '../errors.js';
import { deferLimit, takeLimit, type LimitTake } from '../protocol/limit-scripts.js';
import { resolveLimits, type ResolvedLimit } from '../task/limits.js';
import type { TaskDefinition } from '../task/registry.js';
import { deferRun, type AdmissionHost } from './admission.js';
import { parseArgs, type LimitCharge, type Run } from './run.js';

/** The name a run has in its limits: '<queue>|<id>:<attempt>' (an attempt sent back keeps its number, so it finds its turn). */
export function limitRunName(queue: string, id: string, attempt: number): string {
  return `${queue}|${id}:${attempt}`;
}

/**
 * Takes a started run's named limits before it runs (limit-2.lua, one call per limit, each in the
 * slot of its own hash tag; the calls go out together). A limit with room charges the run now; a
 * full one reserves its turn. When all have room the run goes on (resolves true) and remembers its
 * charges for `reportCost()`. Otherwise it waits for the latest turn: what the other limits hold
 * for it moves to that turn (window) or is taken back (gcra), and the queue's script takes the
 * start back and puts the task in the delayed set, due then (deferRun); resolves false. A limit
 * this process never defined, or a cost that cannot be charged, fails the run (resolves true with
 * `run.admissionError` set): it never waits for a limit it could never pass.
 */
export async function takeLimits(run: Run, def: TaskDefinition, host: AdmissionHost): Promise<boolean> {
  const { task, runner } = run;
  if (run.admissionError !== undefined || !def.options.limits) return true;
  let limits: ResolvedLimit[];
  try {
    limits = resolveLimits(def.name, def.options.limits, parseArgs(task.argsJson));
  } catch (err) {
    run.admissionError = err;
    return true;
  }
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
  const uses = def.options.limits;
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
  return deferRun(run, host, Math.max(0, Math.ceil(due - performance.now())));
}
