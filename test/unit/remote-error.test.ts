// toRemoteError describes whatever a task threw for the task's record: it must never throw,
// give strings only (so the record is always JSON), and keep every field within its bound.
// safeInstanceOf classifies thrown values for retries without ever throwing.
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { ConfigError, HeimdallError, NonRetryableError } from 'heimdall-tasks';
import {
  MAX_ERROR_MESSAGE_CHARS,
  MAX_ERROR_NAME_CHARS,
  MAX_TRACEBACK_CHARS,
  safeInstanceOf,
  toRemoteError,
} from '../../src/core/worker/remote-error.js';
import type { RemoteError } from '../../src/core/protocol/task-record.js';

class PoisonError extends Error {}

function revoked(target: object = new Error('behind a revoked proxy')): object {
  const { proxy, revoke } = Proxy.revocable(target, {});
  revoke();
  return proxy;
}

/** A Proxy every trap of which throws. */
function trapsThrow(target: object = new Error('behind hostile traps')): object {
  const boom = (): never => {
    throw new Error('trap exploded');
  };
  return new Proxy(target, {
    get: boom,
    getPrototypeOf: boom,
    has: boom,
    ownKeys: boom,
    getOwnPropertyDescriptor: boom,
    defineProperty: boom,
    set: boom,
  });
}

function withGetter(err: Error, key: string, thrown: unknown = new Error(`${key} getter exploded`)): Error {
  Object.defineProperty(err, key, {
    get(): never {
      throw thrown;
    },
  });
  return err;
}

function withValue(err: Error, key: string, value: unknown): Error {
  Object.defineProperty(err, key, { value, configurable: true, writable: true });
  return err;
}

function cyclic(): Record<string, unknown> {
  const o: Record<string, unknown> = { code: 'E_CYCLE' };
  o.self = o;
  return o;
}

/** The checks every description must pass, whatever was thrown. */
function describedSafely(thrown: unknown): RemoteError {
  let r: RemoteError | undefined;
  expect(() => (r = toRemoteError(thrown))).not.toThrow();
  const e = r!;
  expect(Object.keys(e).sort()).toEqual(['message', 'name', 'traceback']);
  expect(typeof e.name).toBe('string');
  expect(e.name).not.toBe('');
  expect(typeof e.message).toBe('string');
  expect(e.traceback === undefined || typeof e.traceback === 'string').toBe(true);
  expect(e.name.length).toBeLessThanOrEqual(MAX_ERROR_NAME_CHARS);
  expect(e.message.length).toBeLessThanOrEqual(MAX_ERROR_MESSAGE_CHARS);
  expect((e.traceback ?? '').length).toBeLessThanOrEqual(MAX_TRACEBACK_CHARS);
  // What the worker stores: it must encode and read back as it was.
  const json = JSON.stringify(e);
  expect(JSON.parse(json)).toEqual(e.traceback === undefined ? { name: e.name, message: e.message } : e);
  return e;
}

describe('toRemoteError', () => {
  const cases: [string, () => unknown, { name: string | RegExp; message: string | RegExp; traceback?: RegExp | 'none' }][] = [
    ['a thrown string', () => 'a thrown string', { name: 'Error', message: 'a thrown string', traceback: 'none' }],
    ['undefined', () => undefined, { name: 'Error', message: 'undefined (thrown, not an Error)', traceback: 'none' }],
    ['null', () => null, { name: 'Error', message: 'null (thrown, not an Error)', traceback: 'none' }],
    ['a number', () => 42, { name: 'Error', message: '42 (thrown, not an Error)' }],
    ['a BigInt', () => 10n, { name: 'Error', message: '10n (thrown, not an Error)' }],
    ['a symbol', () => Symbol('poison'), { name: 'Error', message: 'Symbol(poison) (thrown, not an Error)' }],
    ['a function', () => function poison() {}, { name: 'Error', message: /^\[Function: poison\] \(thrown, not an Error\)$/ }],
    ['a cyclic object', cyclic, { name: 'Error', message: /^<ref \*1> \{ code: 'E_CYCLE', self: \[Circular \*1\] \} \(thrown, not an Error\)$/ }],
    ['a plain object', () => ({ code: 'E42', detail: 'no' }), { name: 'Error', message: "{ code: 'E42', detail: 'no' } (thrown, not an Error)" }],
    ['a revoked Proxy', () => revoked(), { name: 'Error', message: 'a revoked Proxy (thrown, not an Error)', traceback: 'none' }],
    ['a revoked Proxy of a function', () => revoked(() => 1), { name: 'Error', message: 'a revoked Proxy (thrown, not an Error)' }],
    ['a Proxy whose traps all throw', () => trapsThrow(), { name: 'Error', message: /^a Proxy of Error: behind hostile traps\n[^]* \(thrown, not an Error\)$/ }],
    ['a Proxy of a plain object', () => new Proxy({ code: 1 }, {}), { name: 'Error', message: 'a Proxy of { code: 1 } (thrown, not an Error)' }],
    [
      'an object whose toString, toPrimitive and toStringTag throw',
      () => ({
        toString: (): never => {
          throw new Error('toString');
        },
        [Symbol.toPrimitive]: (): never => {
          throw new Error('toPrimitive');
        },
        get [Symbol.toStringTag](): never {
          throw new Error('toStringTag');
        },
      }),
      { name: 'Error', message: 'an object (thrown, not an Error)' },
    ],
    ['an Error', () => new TypeError('plain'), { name: 'TypeError', message: 'plain', traceback: /^TypeError: plain\n {4}at / }],
    ['a HeimdallError', () => new ConfigError('bad option'), { name: 'ConfigError', message: 'bad option', traceback: /^ConfigError: bad option\n/ }],
    ['an Error of another realm', () => runInNewContext('new RangeError("elsewhere")') as unknown, { name: 'RangeError', message: 'elsewhere' }],
    [
      'an Error whose message getter throws',
      () => withGetter(new PoisonError('original'), 'message'),
      // V8 builds the stack text on first read, from name and message: so it cannot be read either.
      {
        name: 'Error',
        message: '(the message could not be read: reading it threw Error: message getter exploded)',
        traceback: /^\(the stack could not be read: reading it threw Error: message getter exploded\)$/,
      },
    ],
    [
      'an Error whose name getter throws',
      () => withGetter(new PoisonError('original'), 'name'),
      { name: 'PoisonError', message: 'original', traceback: /^\(the stack could not be read: reading it threw Error: name getter exploded\)$/ },
    ],
    [
      'an Error whose stack getter throws',
      () => withGetter(new PoisonError('original'), 'stack'),
      { name: 'Error', message: 'original', traceback: /^\(the stack could not be read: reading it threw Error: stack getter exploded\)$/ },
    ],
    [
      'an Error whose name, message, stack and constructor getters all throw',
      // The stack first: V8 builds the stack text (reading name and message) when it is redefined.
      () => withGetter(withGetter(withGetter(withGetter(new PoisonError('original'), 'stack'), 'name'), 'message'), 'constructor'),
      { name: 'Error', message: /^\(the message could not be read: /, traceback: /^\(the stack could not be read: / },
    ],
    ['an Error with a cyclic message', () => withValue(new Error(), 'message', cyclic()), { name: 'Error', message: "<ref *1> { code: 'E_CYCLE', self: [Circular *1] }" }],
    ['an Error with a BigInt message', () => withValue(new Error(), 'message', 10n), { name: 'Error', message: '10n' }],
    ['an Error with a revoked Proxy as message', () => withValue(new Error(), 'message', revoked()), { name: 'Error', message: 'a revoked Proxy' }],
    ['an Error with a number as name', () => withValue(new PoisonError('x'), 'name', 42), { name: 'PoisonError', message: 'x' }],
    ['an Error with an undefined message', () => withValue(new Error(), 'message', undefined), { name: 'Error', message: '' }],
    [
      'an Error whose message getter throws a revoked Proxy',
      () => withGetter(new Error('x'), 'message', revoked()),
      { name: 'Error', message: '(the message could not be read: reading it threw a revoked Proxy)' },
    ],
    [
      'an Error whose message getter throws an Error whose message getter throws',
      () => withGetter(new Error('x'), 'message', withGetter(new Error('inner'), 'message')),
      { name: 'Error', message: /^\(the message could not be read: reading it threw Error: \(the message could not be read: reading it threw / },
    ],
    [
      'a Proxy of an Error whose traps throw except getPrototypeOf',
      () =>
        new Proxy(new TypeError('inside'), {
          get: (): never => {
            throw new Error('get trap exploded');
          },
        }),
      { name: 'Error', message: '(the message could not be read: reading it threw Error: get trap exploded)' },
    ],
  ];

  it.each(cases)('describes %s', (_label, make, expected) => {
    const e = describedSafely(make());
    expect(e.name).toEqual(typeof expected.name === 'string' ? expected.name : expect.stringMatching(expected.name));
    expect(e.message).toEqual(typeof expected.message === 'string' ? expected.message : expect.stringMatching(expected.message));
    if (expected.traceback === 'none') expect(e.traceback).toBeUndefined();
    else if (expected.traceback) expect(e.traceback).toMatch(expected.traceback);
  });

  it('cuts a huge name, message and stack to their bounds and says how much was cut', () => {
    const name = 'N'.repeat(1_000_000);
    const message = 'm'.repeat(1_000_000);
    const stack = 's'.repeat(1_000_000);
    const e = describedSafely(withValue(withValue(withValue(new Error(), 'name', name), 'message', message), 'stack', stack));
    for (const [field, max] of [
      ['name', MAX_ERROR_NAME_CHARS],
      ['message', MAX_ERROR_MESSAGE_CHARS],
      ['traceback', MAX_TRACEBACK_CHARS],
    ] as const) {
      const text = e[field]!;
      const m = /^(.*) \[(\d+) more characters cut\]$/s.exec(text);
      expect(m, `${field} is marked as cut`).not.toBeNull();
      // The kept head and the cut count add up to the original length.
      expect(m![1]!.length + Number(m![2])).toBe(1_000_000);
      expect(text.length).toBeLessThanOrEqual(max);
      expect(text.length).toBeGreaterThan(max - 40);
    }
  });

  it.each(['', 'a'])('cuts a huge thrown string, and never in the middle of a surrogate pair (lead %j)', (lead) => {
    const e = describedSafely(lead + '😀'.repeat(100_000));
    expect(e.message).toMatch(/ \[\d+ more characters cut\]$/);
    expect(e.message).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
    expect(e.message).not.toMatch(/(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/);
  });

  it('keeps short text as it is', () => {
    expect(toRemoteError(withValue(new Error('m'), 'stack', 'the stack'))).toEqual({ name: 'Error', message: 'm', traceback: 'the stack' });
  });
});

describe('safeInstanceOf', () => {
  class Hostile {
    static [Symbol.hasInstance](): boolean {
      throw new Error('hasInstance exploded');
    }
  }

  it.each<[string, unknown, unknown, boolean | undefined]>([
    ['an Error of its class', new TypeError('x'), TypeError, true],
    ['a branded error of its class', new ConfigError('x'), ConfigError, true],
    ['a branded error of the base class', new NonRetryableError('x'), HeimdallError, true],
    ['a branded error of another class', new ConfigError('x'), NonRetryableError, false],
    ['a primitive', 'x', Error, false],
    ['undefined', undefined, ConfigError, false],
    ['a revoked Proxy, against Error', revoked(), Error, undefined],
    ['a revoked Proxy, against a branded class', revoked(), ConfigError, undefined],
    ['a Proxy whose traps throw, against Error', trapsThrow(), Error, undefined],
    ['a Proxy whose traps throw, against a branded class', trapsThrow(), ConfigError, undefined],
    ['anything, against a class whose Symbol.hasInstance throws', new Error('x'), Hostile, undefined],
    ['anything, against a non-function', new Error('x'), 'Error', undefined],
    ['anything, against an arrow function (no prototype)', new Error('x'), () => undefined, undefined],
    ['anything, against a revoked Proxy', new Error('x'), revoked(() => undefined), undefined],
  ])('%s', (_label, value, cls, expected) => {
    expect(safeInstanceOf(value, cls)).toBe(expected);
  });
});
