// The typed calls of limit-2.lua (named limits): keys and arguments as its header says, and its
// replies decoded.
import { UnexpectedReplyError } from '../errors.js';
import type { LimitHandle } from '../task/limits.js';
import type { ScriptRunner } from './script-runner.js';
import { limit as limitScript } from '../../redis-scripts/scripts.generated.js';

/**
 * The keys of a named limit, under a hash tag of their own (a limit is shared by queues that live
 * in other Cluster slots; the name is checked by Limits.define, so it cannot bring braces):
 * `w`, `<prefix>:{limit:<name>}:w`, the window's entries (window) or the TAT (gcra); `r`,
 * `<prefix>:{limit:<name>}:r`, the sum of the window's costs (window) or the reservations (gcra).
 */
export function limitKeys(prefix: string, name: string): { base: string; w: string; r: string } {
  const base = `${prefix}:{limit:${name}}:`;
  return { base, w: `${base}w`, r: `${base}r` };
}

/** What a take answered: start now, or wait `delayMs` for the reserved turn. `tat`: what a gcra defer needs back ('' none). */
export interface LimitTake {
  verdict: 'start' | 'wait';
  delayMs: number;
  tat: string;
}

function keysOf(prefix: string, def: LimitHandle): string[] {
  const k = limitKeys(prefix, def.name);
  return [k.w, k.r];
}

/**
 * Charges a run (`run`: '<queue>|<id>:<attempt>') `cost` units of `def` now, or reserves its turn.
 * A key of another type, or a cost over the limit, is an error naming the limit.
 */
export async function takeLimit(runner: ScriptRunner, prefix: string, def: LimitHandle, run: string, cost: number): Promise<LimitTake> {
  const reply = await runner.run<[string, number | string, string?]>(limitScript, keysOf(prefix, def), ['take', def.algorithm, def.limit, def.periodMs, run, cost]);
  const [verdict, detail, tat] = reply;
  if (verdict === 'start' || verdict === 'wait') return { verdict, delayMs: Number(detail), tat: tat ?? '' };
  if (verdict === 'bad') throw new UnexpectedReplyError(`limit '${def.name}': ${String(detail)}`);
  throw new UnexpectedReplyError(`the limit script answered ${JSON.stringify(reply)} to a take`);
}

/** Moves what a run holds in `def` to its turn `delayMs` from now (window), or takes back its charge when nothing was charged since (gcra). */
export async function deferLimit(runner: ScriptRunner, prefix: string, def: LimitHandle, run: string, cost: number, delayMs: number, tat: string): Promise<void> {
  await runner.run(limitScript, keysOf(prefix, def), ['defer', def.algorithm, def.limit, def.periodMs, run, cost, Math.max(0, Math.ceil(delayMs)), tat]);
}

/** Corrects a run's charge in `def` from `charged` to `actual` units. False when its entry has left the window (nothing to correct). */
export async function correctLimit(runner: ScriptRunner, prefix: string, def: LimitHandle, run: string, charged: number, actual: number): Promise<boolean> {
  const reply = await runner.run<[string, number]>(limitScript, keysOf(prefix, def), ['cost', def.algorithm, def.limit, def.periodMs, run, charged, actual]);
  return Number(reply[1]) === 1;
}
