import { ConfigError } from '../errors.js';
import { describe } from './durations.js';
import { hashArgs, type QueueKeys } from '../protocol/queue-keys.js';
import { canonicalJson } from './serialization.js';
import { normalizeRateLimit, type KeyOf, type NormalizedTaskOptions } from './task-options.js';
import { Limits } from './limits.js';

/**
 * Whether runs of the task may take concurrency permits: its own `concurrency`, or a use of a
 * concurrency limit (or of a limit this process has not defined, which may be one). Such a
 * task's message carries no rate window: the worker takes the window after the permits
 * (limits-admission.ts), so only runs that hold their permits queue for rate turns.
 */
export function mayTakePermits(opts: NormalizedTaskOptions): boolean {
  if (opts.concurrency !== undefined) return true;
  return (opts.limits ?? []).some((use) => {
    const algorithm = (use.handle ?? Limits.get(use.name))?.algorithm;
    return algorithm !== 'window' && algorithm !== 'gcra';
  });
}

/** The unique lock one call of a task takes. */
export interface LockCheck {
  key: string;
  ttlMs: number;
  waitForExpiry: boolean;
}

/** The rate window one call of a task is counted in, with its limit. */
export interface RateCheck {
  key: string;
  limit: number;
  periodMs: number;
}

/**
 * The unique lock and rate window of one call, from the task's options and the call's
 * arguments: the dispatcher computes them at dispatch and writes them into the message; a
 * worker computes the ones a message lacks before it runs the task (the worker is the authority
 * on a task's options). `want` picks which to compute. Throws ConfigError when `key` or a
 * dynamic `rateLimit` returns something unusable.
 */
export function callChecks(
  keys: QueueKeys,
  name: string,
  opts: NormalizedTaskOptions,
  args: readonly unknown[],
  argsJson: string,
  want: { lock: boolean; rate: boolean } = { lock: true, rate: true },
): { lock: LockCheck | undefined; rate: RateCheck | undefined } {
  const needLock = want.lock && opts.unique;
  const needRate = want.rate && opts.rateLimit !== undefined;
  let lock: LockCheck | undefined;
  if (needLock) {
    lock = { key: keys.lock(name, uniqueKey(name, opts, args, argsJson)), ttlMs: opts.uniqueTimeoutMs, waitForExpiry: opts.uniqueWaitForExpiry };
  }
  let rate: RateCheck | undefined;
  if (needRate) {
    const rl =
      typeof opts.rateLimit === 'function'
        ? normalizeRateLimit(opts.rateLimit(args), `rateLimit of ${name} for args ${argsJson}`)
        : opts.rateLimit!;
    const key = opts.rateKey ? callKey(name, 'rateKey', opts.rateKey, args) : undefined;
    rate = { key: keys.rate(name, key), limit: rl.limit, periodMs: rl.periodMs };
  }
  return { lock, rate };
}

/** The unique key of a call: `uniqueKey` (or `key`) of the arguments, or their hash. */
export function uniqueKey(name: string, opts: NormalizedTaskOptions, args: readonly unknown[], argsJson: string): string {
  return opts.uniqueKey ? callKey(name, 'uniqueKey', opts.uniqueKey, args) : defaultUniqueKey(argsJson);
}

function callKey(name: string, what: string, fn: KeyOf, args: readonly unknown[]): string {
  const key = fn(args);
  if (typeof key !== 'string' || key === '') {
    throw new ConfigError(`${what} of ${name} must be a non-empty string, got ${describe(key)}`);
  }
  return key;
}

/** Without a `key` option, a unique task is keyed by its arguments, whatever their key order. */
function defaultUniqueKey(argsJson: string): string {
  return hashArgs(canonicalJson(JSON.parse(argsJson)));
}
