/**
 * The retry policy as a pure function: given a task's `retries`, the retries made so far, what
 * was thrown and a random source, the delay before the next attempt, or undefined when the
 * failure is final.
 */
import { describe, expect, it } from 'vitest';
import {
  ConfigError,
  HeimdallError,
  MalformedTaskError,
  NonRetryableError,
  PayloadTooLargeError,
  SerializationError,
  TaskRevokedError,
  TimeLimitExceededError,
} from 'heimdall-tasks';
import { normalizeRetries, type NormalizedRetries } from '../../src/core/task/task-options.js';
import { RetryRequest } from '../../src/core/worker/current-task.js';
import { retryDelay } from '../../src/core/worker/retry-policy.js';

const policy = (options: Record<string, unknown>): NormalizedRetries => normalizeRetries(options, 'retries');
const noJitter = (options: Record<string, unknown>): NormalizedRetries => policy({ jitter: false, ...options });
const never = (): number => {
  throw new Error('random() must not be called without jitter');
};

/** An app's own error class, derived from the library's base class. */
class AppError extends HeimdallError {
  constructor(message: string) {
    super('APP_ERROR', message);
  }
}

describe('retryDelay', () => {
  it("an app's own HeimdallError subclass in retries.on is retried; one of another class is not", () => {
    const p = noJitter({ max: 2, backoff: '10ms', on: [AppError] });
    expect(retryDelay(p, 0, new AppError('retry me'), never)).toBe(10);
    expect(retryDelay(p, 0, new Error('not mine'), never)).toBeUndefined();
  });

  it('no policy: no retry, whatever was thrown', () => {
    for (const err of [new Error('x'), 'a string', undefined, null, new TypeError('t')]) {
      expect(retryDelay(undefined, 0, err, never)).toBeUndefined();
    }
  });

  it('counts retries: the last allowed retry gets a delay, the next failure is final', () => {
    const p = noJitter({ max: 2, backoff: '1s' });
    expect(retryDelay(p, 0, new Error('x'), never)).toBe(1000);
    expect(retryDelay(p, 1, new Error('x'), never)).toBe(1000);
    expect(retryDelay(p, 2, new Error('x'), never)).toBeUndefined();
    expect(retryDelay(noJitter({ max: 0 }), 0, new Error('x'), never)).toBeUndefined();
  });

  it('exponential backoff doubles from its base and stops at its cap; the default is 1 s up to 10 min', () => {
    const p = noJitter({ max: 20, backoff: { type: 'exponential', base: '100ms', cap: '1s' } });
    expect([0, 1, 2, 3, 4, 5].map((n) => retryDelay(p, n, new Error('x'), never))).toEqual([100, 200, 400, 800, 1000, 1000]);
    const d = noJitter({ max: 20 });
    expect([0, 1, 9, 10, 19].map((n) => retryDelay(d, n, new Error('x'), never))).toEqual([1000, 2000, 512_000, 600_000, 600_000]);
  });

  it('jitter draws the delay uniformly from 0 to the computed one (inclusive), in whole ms', () => {
    const p = policy({ max: 5, backoff: '1s' });
    expect(retryDelay(p, 0, new Error('x'), () => 0)).toBe(0);
    expect(retryDelay(p, 0, new Error('x'), () => 0.5)).toBe(500);
    expect(retryDelay(p, 0, new Error('x'), () => 0.999_999_9)).toBe(1000);
    const e = policy({ max: 5, backoff: { type: 'exponential', base: '1s' } });
    expect(retryDelay(e, 3, new Error('x'), () => 0.25)).toBe(2000);
  });

  it('`on` retries only instances of the listed classes (subclasses included)', () => {
    class Transient extends Error {}
    class VeryTransient extends Transient {}
    const p = noJitter({ max: 3, backoff: '10ms', on: [Transient, RangeError] });
    expect(retryDelay(p, 0, new Transient('t'), never)).toBe(10);
    expect(retryDelay(p, 0, new VeryTransient('t'), never)).toBe(10);
    expect(retryDelay(p, 0, new RangeError('r'), never)).toBe(10);
    expect(retryDelay(p, 0, new Error('plain'), never)).toBeUndefined();
    expect(retryDelay(p, 0, 'a string', never)).toBeUndefined();
    // An error named like a listed class is not one.
    const lookalike = Object.assign(new Error('n'), { name: 'Transient' });
    expect(retryDelay(p, 0, lookalike, never)).toBeUndefined();
  });

  it('errors retrying cannot change are never retried, even when `on` lists them', () => {
    const p = noJitter({ max: 3, backoff: '10ms', on: [Error] });
    const finals = [
      new ConfigError('c'),
      new SerializationError('result', 'is a function'),
      new PayloadTooLargeError('T.t', 10, 5, 'result'),
      new NonRetryableError('n'),
      new TaskRevokedError('id', 'revoked'),
      new MalformedTaskError('m'),
    ];
    for (const err of finals) expect(retryDelay(p, 0, err, never), err.name).toBeUndefined();
    // A time limit is an ordinary failure: retried per the policy.
    expect(retryDelay(p, 0, new TimeLimitExceededError('T.t', 1000), never)).toBe(10);
  });

  it('retry(): skips `on`, uses its own countdown, and gets 3 retries with the default backoff on a task without a policy', () => {
    const p = noJitter({ max: 2, backoff: '1s', on: [RangeError] });
    expect(retryDelay(p, 0, new RetryRequest({ error: new Error('not a RangeError') }), never)).toBe(1000);
    expect(retryDelay(p, 0, new RetryRequest({ countdown: '5s' }), never)).toBe(5000);
    expect(retryDelay(p, 2, new RetryRequest({ countdown: '5s' }), never)).toBeUndefined();
    // No policy: up to 3, exponential from 1 s with jitter.
    expect(retryDelay(undefined, 0, new RetryRequest(), () => 0.5)).toBe(500);
    expect(retryDelay(undefined, 2, new RetryRequest(), () => 1 - Number.EPSILON)).toBe(4000);
    expect(retryDelay(undefined, 3, new RetryRequest(), () => 0.5)).toBeUndefined();
  });

  it('a thrown value that cannot be classified safely is not retried, and nothing throws', () => {
    const p = noJitter({ max: 3, backoff: '10ms' });
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    expect(retryDelay(p, 0, proxy, never)).toBeUndefined();
    class Hostile extends Error {
      static override [Symbol.hasInstance](): boolean {
        throw new Error('hasInstance exploded');
      }
    }
    const q = noJitter({ max: 3, backoff: '10ms', on: [Hostile] });
    expect(() => retryDelay(q, 0, new Error('x'), never)).not.toThrow();
    expect(retryDelay(q, 0, new Error('x'), never)).toBeUndefined();
  });
});
