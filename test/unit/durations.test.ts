import { describe, expect, it } from 'vitest';
import { ConfigError } from 'heimdall-tasks';
import { describe as describeValue, toMillis } from '../../src/core/task/durations.js';

describe('toMillis', () => {
  it.each([
    [2, 2000],
    [0.5, 500],
    [60, 60_000],
    [1.25, 1250],
    [3600, 3_600_000],
  ])('reads the number %s as seconds: %s ms', (seconds, millis) => {
    expect(toMillis(seconds, 'x')).toBe(millis);
  });

  it('rounds to whole milliseconds and never returns 0 for a positive span', () => {
    expect(toMillis(0.0015, 'x')).toBe(2);
    expect(toMillis(0.0001, 'x')).toBe(1);
  });

  it.each([
    ['1h', 3_600_000],
    ['500ms', 500],
    ['30s', 30_000],
    ['1.5s', 1500],
    ['2 days', 172_800_000],
    ['1m', 60_000],
  ])('reads the ms string %j', (text, millis) => {
    expect(toMillis(text, 'x')).toBe(millis);
  });

  it('refuses a bare numeric string, which ms would read as milliseconds while a number means seconds', () => {
    expect(() => toMillis('60', 'x')).toThrow(ConfigError);
    expect(() => toMillis(' 1.5 ', 'x')).toThrow(/write a number of seconds \(1\.5\) or give a unit/);
    expect(toMillis(60, 'x')).toBe(60_000);
  });

  it.each<[string, unknown, string]>([
    ['zero', 0, '0'],
    ['a negative number', -1, '-1'],
    ['NaN', NaN, 'NaN'],
    ['Infinity', Infinity, 'Infinity'],
    ['-Infinity', -Infinity, '-Infinity'],
    ['a number whose milliseconds overflow', Number.MAX_VALUE, String(Number.MAX_VALUE)],
    ['unreadable text', 'soon', '"soon"'],
    ['the empty string', '', '""'],
    ['blank text', '   ', '"   "'],
    ['a zero string', '0s', '"0s"'],
    ['a negative string', '-1h', '"-1h"'],
    ['an object', { seconds: 5 }, 'an object'],
    ['an array', [5], '[5]'],
    ['null', null, 'null'],
    ['undefined', undefined, 'undefined'],
    ['a boolean', true, 'true'],
  ])('rejects %s with a ConfigError naming the option and the value', (_label, value, shown) => {
    let caught: unknown;
    try {
      toMillis(value as never, 'uniqueTimeout');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toBe(
      `uniqueTimeout must be a positive number of seconds or a duration string like '1h' or '500ms', got ${shown}`,
    );
  });
});

describe('describe (values in error messages)', () => {
  it.each<[unknown, string]>([
    ['x', '"x"'],
    [() => 1, 'a function'],
    [[1, 'a'], '[1, "a"]'],
    [10n, '10n'],
    [Symbol('s'), 'Symbol(s)'],
    [{ a: 1 }, 'an object'],
    [null, 'null'],
    [undefined, 'undefined'],
    [1.5, '1.5'],
  ])('shows %s as %s', (value, shown) => {
    expect(describeValue(value)).toBe(shown);
  });
});

describe('describe never throws', () => {
  const { proxy: revoked, revoke } = Proxy.revocable({}, {});
  revoke();
  const cyclic: unknown[] = [1];
  cyclic.push(cyclic);
  const getter: unknown[] = [1];
  Object.defineProperty(getter, 1, {
    get(): never {
      throw new Error('element getter exploded');
    },
    enumerable: true,
  });

  it.each<[string, unknown, string | RegExp]>([
    ['a revoked Proxy', revoked, 'a revoked Proxy'],
    ['an array holding a revoked Proxy', [1, revoked], '[1, a revoked Proxy]'],
    ['an array that holds itself', cyclic, '[1, [1, [1, [...]]]]'],
    ['an array whose element getter throws', getter, 'an array that cannot be shown'],
    ['a long array', Array.from({ length: 1000 }, (_, i) => i), /^\[0, 1, .*, 19, \.\.\. \(980 more\)\]$/],
    ['a long string', 'x'.repeat(5000), /^"x{1000}" \.\.\. \(4000 more characters\)$/],
  ])('shows %s', (_label, value, shown) => {
    let text: string | undefined;
    expect(() => (text = describeValue(value))).not.toThrow();
    if (typeof shown === 'string') expect(text).toBe(shown);
    else expect(text).toMatch(shown);
  });
});
