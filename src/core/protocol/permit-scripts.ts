// The typed calls of permit-3.lua (concurrency permits) and permit-wake-2.lua (waking a waiter
// that was handed one): keys and arguments as their headers say, and their replies decoded.
import { UnexpectedReplyError } from '../errors.js';
import { permit as permitScript, permitWake as permitWakeScript } from '../../redis-scripts/scripts.generated.js';
import { QueueKeys } from './queue-keys.js';
import type { ScriptRunner } from './script-runner.js';

/** One scope of concurrency permits: its keys, its number of permits, and a name for messages. */
export interface PermitScope {
  /** The holders', waiters' and deadlines' keys, in one slot of their own. */
  readonly keys: readonly [string, string, string];
  /** Permits of the scope. */
  readonly n: number;
  /** What it is, for messages: `limit 'gpu'`, `limit 'tenant' key 'acme'`, `task T key 'k'`. */
  readonly label: string;
}

/**
 * The keys of a scope, under a hash tag of their own (a scope is shared by tasks of any queue).
 * A named limit's: `<prefix>:{permit:<name>}:` or, with a key, `<prefix>:{permit:<name> <key>}:`
 * (a limit's name holds no space). A task's own `concurrency`: `<prefix>:{task-permit:<JSON of
 * [task name] or [task name, key]>}:`. A key may hold anything, braces included: the hash tag
 * then ends early, but at the same place for the three keys of the scope.
 */
export function permitScope(prefix: string, of: { limit: string } | { task: string }, key: string | undefined, n: number): PermitScope {
  let tag: string;
  let label: string;
  if ('limit' in of) {
    tag = key === undefined ? `permit:${of.limit}` : `permit:${of.limit} ${key}`;
    label = key === undefined ? `limit '${of.limit}'` : `limit '${of.limit}' key ${JSON.stringify(key)}`;
  } else {
    tag = `task-permit:${JSON.stringify(key === undefined ? [of.task] : [of.task, key])}`;
    label = key === undefined ? `the concurrency of task ${of.task}` : `the concurrency of task ${of.task} key ${JSON.stringify(key)}`;
  }
  const base = `${prefix}:{${tag}}:`;
  return { keys: [`${base}h`, `${base}q`, `${base}d`], n, label };
}

/** A run's name in a scope: '<attempt>|<length of the queue name>|<queue>|<task id>' (read back by parsePermitRun). */
export function permitRunName(queue: string, id: string, attempt: number): string {
  return `${attempt}|${queue.length}|${queue}|${id}`;
}

/** The queue, task id and attempt a run's name holds; undefined for a name this library did not write. */
export function parsePermitRun(name: string): { queue: string; id: string; attempt: number } | undefined {
  const m = /^(\d+)\|(\d+)\|/.exec(name);
  if (!m) return undefined;
  const length = Number(m[2]);
  const rest = name.slice(m[0].length);
  if (rest.length < length + 1 || rest[length] !== '|') return undefined;
  return { attempt: Number(m[1]), queue: rest.slice(0, length), id: rest.slice(length + 1) };
}

/** What an acquire answered: hold a permit now, or ask again in `againMs`; and the waiters it handed a permit (to wake). */
export interface PermitAcquire {
  verdict: 'start' | 'wait';
  againMs: number;
  woken: string[];
}

/** Takes a permit of `scope` for `run` (a lease of `leaseMs`), or makes it a waiter. */
export async function acquirePermit(runner: ScriptRunner, scope: PermitScope, run: string, leaseMs: number): Promise<PermitAcquire> {
  const reply = await runner.run<(string | number)[]>(permitScript, [...scope.keys], ['acquire', scope.n, leaseMs, run]);
  const [verdict, detail, ...woken] = reply;
  if (verdict !== 'start' && verdict !== 'wait') throw new UnexpectedReplyError(`the permit script answered ${JSON.stringify(reply)} to an acquire`);
  return { verdict, againMs: Number(detail), woken: woken.map(String) };
}

/** Gives back the permits of `runs` in `scope` (and their places as waiters); resolves to the waiters handed them (to wake). */
export async function releasePermits(runner: ScriptRunner, scope: PermitScope, runs: readonly string[], leaseMs: number): Promise<string[]> {
  const reply = await runner.run<(string | number)[]>(permitScript, [...scope.keys], ['release', scope.n, leaseMs, ...runs]);
  return reply.slice(2).map(String);
}

/** Renews the permits of `runs` for a lease from now; resolves to the runs that hold none any more and the waiters handed a lapsed permit. */
export async function renewPermits(runner: ScriptRunner, scope: PermitScope, runs: readonly string[], leaseMs: number): Promise<{ lost: string[]; woken: string[] }> {
  const reply = await runner.run<(string | number)[]>(permitScript, [...scope.keys], ['renew', scope.n, leaseMs, ...runs]);
  const k = Number(reply[1]);
  return { lost: reply.slice(2, 2 + k).map(String), woken: reply.slice(2 + k).map(String) };
}

/**
 * Makes the tasks of the waiters `runs` (all of one queue) due now. Resolves to one answer per
 * run: 'woken', 'waiting' (not in the delayed set: it asks for its permit soon), or 'gone' (it
 * never will: the permit it was handed should be given back).
 */
export async function wakePermitWaiters(
  runner: ScriptRunner,
  prefix: string,
  queue: string,
  runs: readonly { id: string; attempt: number }[],
): Promise<('woken' | 'waiting' | 'gone')[]> {
  const keys = new QueueKeys(prefix, queue);
  const reply = await runner.run<number[]>(
    permitWakeScript,
    [keys.wait, keys.delayed, ...runs.map((r) => keys.task(r.id))],
    [keys.base, ...runs.flatMap((r) => [r.id, r.attempt])],
  );
  return reply.map((x) => (Number(x) === 1 ? 'woken' : Number(x) === 0 ? 'waiting' : 'gone'));
}
