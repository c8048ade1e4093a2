// Concurrency permits of a run (permit-3.lua): taken before the run's named rate limits, renewed
// on the worker's lease tick (and past its turn when a rate limit sends it back), given back at
// its end. A permit given back, or found
// lapsed, goes to the run that waited longest, whose task this process then wakes in its own
// queue (permit-wake-2.lua).
import { fromRedis, PermitLostError } from '../errors.js';
import {
  acquirePermit,
  parsePermitRun,
  permitRunName,
  permitScope,
  releasePermits,
  renewPermits,
  wakePermitWaiters,
  type PermitScope,
} from '../protocol/permit-scripts.js';
import type { ScriptRunner } from '../protocol/script-runner.js';
import { concurrencyKey, type ResolvedLimit } from '../task/limits.js';
import type { TaskDefinition } from '../task/registry.js';

/** A permit a run holds: its scope and its name there. */
export interface PermitHold {
  readonly scope: PermitScope;
  readonly run: string;
}

/** What the permit calls need from their worker. */
export interface PermitHost {
  /** The worker's lease, ms: a permit lapses one lease after it was taken or last renewed. */
  readonly leaseMs: number;
  reportError(err: unknown): void;
  /** Follows a call made in the background (a give-back, a wake-up) until it settles: the testing kit's drain() waits for them. */
  track?(call: Promise<unknown>): void;
}

/**
 * The scopes a run needs a permit of: its task's own `concurrency`, then each concurrency limit
 * among its resolved named limits. Throws ConfigError when a key function throws or returns what
 * is not a key (the run fails with it).
 */
export function permitScopesOf(prefix: string, def: TaskDefinition, args: readonly unknown[], limits: readonly ResolvedLimit[]): PermitScope[] {
  const scopes: PermitScope[] = [];
  const own = def.options.concurrency;
  if (own) {
    const key = own.key === undefined ? undefined : concurrencyKey(own.key, args, `task ${def.name}: concurrency`);
    scopes.push(permitScope(prefix, { task: def.name }, key, own.limit));
  }
  for (const l of limits) {
    if (l.def.algorithm === 'concurrency') scopes.push(permitScope(prefix, { limit: l.def.name }, l.key, l.def.limit));
  }
  return scopes;
}

/**
 * Takes a permit of every scope for the run, all or none: resolves to the permits held, or to
 * the ms after which the run should ask again (it is then a waiter of the first full scope, and
 * holds nothing in the others: what it took, or was handed while it waited, is given back). Calls
 * fail as Redis fails them.
 */
export async function acquirePermits(
  scripts: ScriptRunner,
  prefix: string,
  scopes: readonly PermitScope[],
  queue: string,
  id: string,
  attempt: number,
  host: PermitHost,
): Promise<{ held: PermitHold[] } | { againMs: number }> {
  const run = permitRunName(queue, id, attempt);
  const held: PermitHold[] = [];
  for (const [i, scope] of scopes.entries()) {
    let answer;
    try {
      answer = await acquirePermit(scripts, scope, run, host.leaseMs);
    } catch (err) {
      await giveBack(scripts, prefix, held, host);
      throw err;
    }
    wake(scripts, prefix, scope, answer.woken, host);
    if (answer.verdict === 'wait') {
      // It waits in this scope only: what it took here, and a permit of a later scope handed to
      // it while it waited there before, go to the next waiters rather than sit unused.
      await giveBack(scripts, prefix, scopes.filter((_, j) => j !== i).map((s) => ({ scope: s, run })), host);
      return { againMs: answer.againMs };
    }
    held.push({ scope, run });
  }
  return { held };
}

/** Gives back permits (a run's end, or an all-or-none take that could not finish) and wakes who they go to; failures are reported (the permits then lapse within a lease). */
export async function giveBack(scripts: ScriptRunner, prefix: string, holds: readonly PermitHold[], host: PermitHost): Promise<void> {
  await Promise.all(
    holds.map(async (h) => {
      try {
        wake(scripts, prefix, h.scope, await releasePermits(scripts, h.scope, [h.run], host.leaseMs), host);
      } catch (err) {
        host.reportError(fromRedis(err, `giving back the permit of ${h.scope.label} (it lapses within a lease)`));
      }
    }),
  );
}

/**
 * Renews the permits of running runs (or of a run sent back to wait for a rate turn), one call
 * per scope: they lapse `leaseMs` from now (default: the worker's lease). Each run that no longer
 * holds its permit is reported (PermitLostError) when `reportLost`; the permits that lapsed
 * meanwhile go to waiters, woken.
 */
export async function renewHolds(
  scripts: ScriptRunner,
  prefix: string,
  holds: readonly PermitHold[],
  host: PermitHost,
  leaseMs: number = host.leaseMs,
  reportLost = true,
): Promise<void> {
  const byScope = new Map<string, { scope: PermitScope; runs: string[] }>();
  for (const h of holds) {
    const entry = byScope.get(h.scope.keys[0]) ?? { scope: h.scope, runs: [] };
    entry.runs.push(h.run);
    byScope.set(h.scope.keys[0], entry);
  }
  await Promise.all(
    [...byScope.values()].map(async ({ scope, runs }) => {
      try {
        const { lost, woken } = await renewPermits(scripts, scope, runs, leaseMs);
        if (reportLost) for (const r of lost) host.reportError(new PermitLostError(parsePermitRun(r)?.id ?? r, scope.label));
        wake(scripts, prefix, scope, woken, host);
      } catch (err) {
        host.reportError(fromRedis(err, `renewing the permits of ${scope.label}`));
      }
    }),
  );
}

/**
 * Wakes the tasks of waiters handed a permit, in their queues. A waiter that will never ask for
 * it (its task ended, or was deleted) gives it back, which hands it on: at most a few rounds, the
 * rest lapse within a lease. Runs in the background; failures are reported (a waiter not woken
 * asks again at its re-check, at most a lease later).
 */
function wake(scripts: ScriptRunner, prefix: string, scope: PermitScope, woken: readonly string[], host: PermitHost, round = 0): void {
  if (woken.length === 0) return;
  const byQueue = new Map<string, { name: string; id: string; attempt: number }[]>();
  for (const name of woken) {
    const r = parsePermitRun(name);
    if (!r) continue; // not a name this library wrote: it lapses
    const list = byQueue.get(r.queue) ?? [];
    list.push({ name, id: r.id, attempt: r.attempt });
    byQueue.set(r.queue, list);
  }
  for (const [queue, runs] of byQueue) {
    const call = (async () => {
      try {
        const answers = await wakePermitWaiters(scripts, prefix, queue, runs);
        const gone = runs.filter((_, i) => answers[i] === 'gone').map((r) => r.name);
        if (gone.length > 0 && round < 3) {
          wake(scripts, prefix, scope, await releasePermits(scripts, scope, gone, host.leaseMs), host, round + 1);
        }
      } catch (err) {
        host.reportError(fromRedis(err, `waking the tasks handed a permit of ${scope.label} in queue ${queue} (they ask again within a lease)`));
      }
    })();
    host.track?.(call);
  }
}
