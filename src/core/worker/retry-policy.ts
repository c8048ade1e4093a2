import { ConfigError, MalformedTaskError, NonRetryableError, PayloadTooLargeError, SerializationError, TaskRevokedError } from '../errors.js';
import { DEFAULT_RETRIES, type NormalizedRetries } from '../task/task-options.js';
import { RetryRequest } from './current-task.js';
import { safeInstanceOf } from './remote-error.js';

/** Errors never retried, whatever `retries.on` says: retrying cannot change their outcome. */
const NEVER_RETRIED = [ConfigError, SerializationError, PayloadTooLargeError, NonRetryableError, TaskRevokedError, MalformedTaskError];

/**
 * The delay in ms before the next attempt of a task that failed with `err` after `retriesMade`
 * retries, or undefined when the failure is final. `policy` is the task's `retries` option
 * (undefined: none). A `currentTask().retry()` (a RetryRequest) skips the error filters, uses its
 * own countdown when it has one, and is allowed up to 3 retries on a task without a policy. A
 * thrown value that cannot be classified safely (a revoked Proxy, a throwing
 * `Symbol.hasInstance`) is not retried. Pure but for `random`, which draws the jitter.
 */
export function retryDelay(
  policy: NormalizedRetries | undefined,
  retriesMade: number,
  err: unknown,
  random: () => number = Math.random,
): number | undefined {
  const requested = safeInstanceOf(err, RetryRequest);
  if (requested === undefined) return undefined;
  const p = policy ?? (requested ? DEFAULT_RETRIES : undefined);
  if (!p || retriesMade >= p.max) return undefined;
  if (requested) {
    const countdownMs = (err as RetryRequest).countdownMs;
    if (countdownMs !== undefined) return countdownMs;
  } else {
    for (const never of NEVER_RETRIED) if (safeInstanceOf(err, never) !== false) return undefined;
    if (p.on && !p.on.some((cls) => safeInstanceOf(err, cls) === true)) return undefined;
  }
  const computed = p.backoff.kind === 'fixed' ? p.backoff.ms : Math.min(p.backoff.capMs, p.backoff.baseMs * 2 ** retriesMade);
  return p.jitter ? Math.floor(random() * (computed + 1)) : computed;
}
