import { describe, expect, it } from 'vitest';
import { ConfigError, Task, type RateLimit } from 'heimdall-tasks';
import { normalizeRateLimit, normalizeTaskOptions } from '../../src/core/task/task-options.js';
import { decorationError } from '../helpers.js';

const KNOWN_LIST = 'name, queue, unique, uniqueTimeout, uniqueRaises, uniqueWaitForExpiry, onConflict, key, uniqueKey, rateKey, rateLimit, limits, concurrency, resultExpires, retries, timeLimit, maxRecoveries';
const DURATION_HINT = `must be a positive number of seconds or a duration string like '1h' or '500ms'`;

describe('@Task rejects bad options when the class is defined', () => {
  it('throws ConfigError out of the class definition itself', () => {
    expect(() => {
      class Early {
        @Task({ unique: true, uniqueTimeout: 'soon' })
        async m(): Promise<void> {}
      }
      void Early;
    }).toThrow(ConfigError);
  });

  it.each<[label: string, options: unknown, message: string]>([
    ['uniqueTimeout "soon"', { unique: true, uniqueTimeout: 'soon' }, `uniqueTimeout ${DURATION_HINT}, got "soon"`],
    ['uniqueTimeout 0', { unique: true, uniqueTimeout: 0 }, `uniqueTimeout ${DURATION_HINT}, got 0`],
    ['uniqueTimeout 11 years', { unique: true, uniqueTimeout: 11 * 365 * 24 * 3600 }, 'uniqueTimeout must be at most 10 years (315360000000 ms), got 346896000000 ms'],
    ['uniqueTimeout 1e13 s (1e16 ms)', { unique: true, uniqueTimeout: 1e13 }, 'uniqueTimeout must be at most 10 years (315360000000 ms), got 10000000000000000 ms'],
    ['rateLimit [0, 60]', { rateLimit: [0, 60] }, 'rateLimit: n must be a whole number of starts >= 1, got 0'],
    ['rateLimit [1.5, 60]', { rateLimit: [1.5, 60] }, 'rateLimit: n must be a whole number of starts >= 1, got 1.5'],
    ['rateLimit ["2", 60]', { rateLimit: ['2', 60] }, 'rateLimit: n must be a whole number of starts >= 1, got "2"'],
    ['rateLimit [2, -1]', { rateLimit: [2, -1] }, `rateLimit: period ${DURATION_HINT}, got -1`],
    ['rateLimit [2, "often"]', { rateLimit: [2, 'often'] }, `rateLimit: period ${DURATION_HINT}, got "often"`],
    ['rateLimit "x"', { rateLimit: 'x' }, 'rateLimit must be [n, period] such as [2, 60] (2 per minute), got "x"'],
    ['rateLimit [2]', { rateLimit: [2] }, 'rateLimit must be [n, period] such as [2, 60] (2 per minute), got [2]'],
    ['rateLimit [2, 60, 1]', { rateLimit: [2, 60, 1] }, 'rateLimit must be [n, period] such as [2, 60] (2 per minute), got [2, 60, 1]'],
    ['a misspelt option', { unique: true, uniqeTimeout: '1h' }, `unknown option 'uniqeTimeout'; known options are ${KNOWN_LIST}`],
    ['uniqueRaises without unique', { uniqueRaises: true }, 'uniqueRaises only applies to unique tasks; add unique: true'],
    ['uniqueWaitForExpiry without unique', { uniqueWaitForExpiry: true }, 'uniqueWaitForExpiry only applies to unique tasks; add unique: true'],
    ['uniqueTimeout without unique', { uniqueTimeout: '1h' }, 'uniqueTimeout only applies to unique tasks; add unique: true'],
    ['uniqueTimeout with unique: false', { unique: false, uniqueTimeout: '1h' }, 'uniqueTimeout only applies to unique tasks; add unique: true'],
    ['unique "yes"', { unique: 'yes' }, 'unique must be true or false, got "yes"'],
    ['uniqueRaises 1', { unique: true, uniqueRaises: 1 }, 'uniqueRaises must be true or false, got 1'],
    ['debounce as long as uniqueTimeout', { unique: true, uniqueTimeout: 2, onConflict: { debounce: { wait: 1, maxWait: 2 } } }, "uniqueTimeout (2000 ms) must be longer than debounce's maxWait (2000 ms): the lock is taken at the send, and the task waits that long before it runs"],
    ['key 42', { unique: true, key: 42 }, 'key must be a non-empty string or a function (args) => string, got 42'],
    ['key ""', { unique: true, key: '' }, 'key must be a non-empty string or a function (args) => string, got ""'],
    ['uniqueKey without unique', { rateLimit: [1, 1], uniqueKey: 'k' }, 'uniqueKey only applies to unique tasks; add unique: true'],
    ['rateKey without rateLimit', { unique: true, rateKey: 'k' }, 'rateKey only applies with rateLimit; set rateLimit'],
    ['uniqueKey a number', { unique: true, uniqueKey: 7 }, 'uniqueKey must be a non-empty string or a function (args) => string, got 7'],
    ['key beside uniqueKey and rateKey', { unique: true, rateLimit: [1, 1], key: 'k', uniqueKey: 'u', rateKey: 'r' }, 'key is not used: uniqueKey and rateKey are given; drop it'],
    ['key beside uniqueKey, no rateLimit', { unique: true, key: 'k', uniqueKey: 'u' }, 'key is not used: uniqueKey is given; drop it'],
    ['key beside rateKey, not unique', { rateLimit: [1, 1], key: 'k', rateKey: 'r' }, 'key is not used: rateKey is given; drop it'],
    ['key without unique or rateLimit', { key: () => 'k' }, 'key is used by unique and rateLimit; set one of them'],
    ['queue with braces', { queue: 'a{b}' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "a{b}"'],
    ['queue with a space', { queue: 'my queue' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "my queue"'],
    ['queue ""', { queue: '' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got ""'],
    ['name ""', { name: '' }, 'name must be a non-empty string, got ""'],
    ['name of spaces', { name: '   ' }, 'name must be a non-empty string, got "   "'],
    ['name 42', { name: 42 }, 'name must be a non-empty string, got 42'],
    ['resultExpires -5', { resultExpires: -5 }, `resultExpires ${DURATION_HINT}, got -5`],
    ['onConflict without unique', { onConflict: 'replace' }, 'onConflict only applies to unique tasks; add unique: true'],
    ['onConflict with uniqueRaises', { unique: true, uniqueRaises: true, onConflict: 'raise' }, "uniqueRaises is the older spelling of onConflict: 'raise'; give one of them"],
    ['onConflict "latest"', { unique: true, onConflict: 'latest' }, `onConflict must be 'return', 'raise', 'replace', 'keepLast' or { debounce: { wait, maxWait? } }, got "latest"`],
    ['onConflict { debounce: 1 }', { unique: true, onConflict: { debounce: 1 } }, `onConflict must be 'return', 'raise', 'replace', 'keepLast' or { debounce: { wait, maxWait? } }, got an object`],
    ['onConflict { throttle }', { unique: true, onConflict: { throttle: { wait: 1 } } }, `onConflict must be 'return', 'raise', 'replace', 'keepLast' or { debounce: { wait, maxWait? } }, got an object`],
    ['debounce without wait', { unique: true, onConflict: { debounce: {} } }, 'onConflict.debounce.wait is required (seconds or an ms string)'],
    ['debounce wait "soon"', { unique: true, onConflict: { debounce: { wait: 'soon' } } }, `onConflict.debounce.wait ${DURATION_HINT}, got "soon"`],
    ['debounce maxWait 0', { unique: true, onConflict: { debounce: { wait: 1, maxWait: 0 } } }, `onConflict.debounce.maxWait ${DURATION_HINT}, got 0`],
    ['debounce maxWait below wait', { unique: true, onConflict: { debounce: { wait: 5, maxWait: 2 } } }, 'onConflict.debounce.maxWait (2000 ms) must be at least wait (5000 ms)'],
    ['debounce misspelt', { unique: true, onConflict: { debounce: { wait: 1, maxwait: 2 } } }, "onConflict.debounce: unknown option 'maxwait'; known: wait, maxWait"],
    ['options a string', 'unique', 'options must be an object, got "unique"'],
    ['options an array', [{ unique: true }], 'options must be an object, got [an object]'],
    ['options null', null, 'options must be an object, got null'],
  ])('%s', (_label, options, message) => {
    const err = decorationError(options);
    expect(err.code).toBe('HEIMDALL_CONFIG');
    expect(err.message).toBe(`@Task on Options.m: ${message}`);
  });

  it('rejects bad options that the types already reject', () => {
    expect(() => {
      class Typed {
        // @ts-expect-error rateLimit is a pair or a function
        @Task({ rateLimit: 'x' })
        async m(): Promise<void> {}
      }
      void Typed;
    }).toThrow(ConfigError);
    expect(() => {
      class Typo {
        // @ts-expect-error misspelt option
        @Task({ unique: true, uniqeTimeout: '1h' })
        async m(): Promise<void> {}
      }
      void Typo;
    }).toThrow(/unknown option 'uniqeTimeout'/);
  });

  it('onConflict: return by default, raise for uniqueRaises, debounce times in ms (maxWait 0: none)', () => {
    expect(normalizeTaskOptions({ unique: true }, 'w').onConflict).toEqual({ kind: 'return' });
    expect(normalizeTaskOptions({ unique: true, uniqueRaises: true }, 'w')).toMatchObject({ onConflict: { kind: 'raise' }, uniqueRaises: true });
    expect(normalizeTaskOptions({ unique: true, onConflict: 'raise' }, 'w')).toMatchObject({ onConflict: { kind: 'raise' }, uniqueRaises: true });
    expect(normalizeTaskOptions({ unique: true, uniqueRaises: false, onConflict: 'keepLast' }, 'w')).toMatchObject({ onConflict: { kind: 'keepLast' } });
    expect(normalizeTaskOptions({ unique: true, onConflict: 'replace' }, 'w').uniqueRaises).toBe(false);
    expect(normalizeTaskOptions({ unique: true, onConflict: { debounce: { wait: 2 } } }, 'w').onConflict).toEqual({ kind: 'debounce', waitMs: 2000, maxWaitMs: 0 });
    expect(normalizeTaskOptions({ unique: true, onConflict: { debounce: { wait: '500ms', maxWait: '1m' } } }, 'w').onConflict).toEqual({
      kind: 'debounce',
      waitMs: 500,
      maxWaitMs: 60_000,
    });
  });

  it('uniqueTimeout takes seconds or ms strings', () => {
    expect(normalizeTaskOptions({ unique: true, uniqueTimeout: 90 }, 'w').uniqueTimeoutMs).toBe(90_000);
    expect(normalizeTaskOptions({ unique: true, uniqueTimeout: '2 days' }, 'w').uniqueTimeoutMs).toBe(172_800_000);
    expect(normalizeTaskOptions({ unique: true }, 'w').uniqueTimeoutMs).toBe(3_600_000);
  });

  it('keeps key functions and a dynamic rateLimit as given (they run at dispatch); a string key is the same for every call', () => {
    const key = ([id]: readonly unknown[]): string => `c${String(id)}`;
    const rateLimit = (): RateLimit => [1, 30];
    const o = normalizeTaskOptions({ key, rateLimit }, 'w');
    expect(o.rateKey).toBe(key);
    expect(o.uniqueKey).toBeUndefined();
    expect(o.rateLimit).toBe(rateLimit);
    expect(normalizeTaskOptions({ unique: true, key }, 'w').uniqueKey).toBe(key);
    const text = normalizeTaskOptions({ unique: true, rateLimit: [1, 1], key: 'MyTaskKey' }, 'w');
    expect([text.uniqueKey!([1]), text.uniqueKey!([2]), text.rateKey!([3])]).toEqual(['MyTaskKey', 'MyTaskKey', 'MyTaskKey']);
    // uniqueKey and rateKey each win over key for their own use.
    const split = normalizeTaskOptions({ unique: true, rateLimit: [1, 1], key: 'both', uniqueKey: ([id]: readonly unknown[]) => `u${String(id)}` }, 'w');
    expect([split.uniqueKey!([5]), split.rateKey!([5])]).toEqual(['u5', 'both']);
  });

  it('prefixes every message with where the options came from', () => {
    expect(() => normalizeTaskOptions({ rateLimit: [0, 1] }, '@Task on Svc.m')).toThrow(
      new ConfigError('@Task on Svc.m: rateLimit: n must be a whole number of starts >= 1, got 0'),
    );
  });
});

describe('normalizeRateLimit (also used on the result of a dynamic rateLimit at dispatch)', () => {
  it('accepts a pair and rejects anything else', () => {
    expect(normalizeRateLimit([5, '10s'], 'rateLimit')).toEqual({ limit: 5, periodMs: 10_000 });
    expect(() => normalizeRateLimit(undefined, 'rateLimit of T.m')).toThrow(
      'rateLimit of T.m must be [n, period] such as [2, 60] (2 per minute), got undefined',
    );
    expect(() => normalizeRateLimit([-1, 60], 'rateLimit')).toThrow(ConfigError);
    expect(() => normalizeRateLimit([Infinity, 60], 'rateLimit')).toThrow(ConfigError);
    expect(() => normalizeRateLimit([1, 0], 'rateLimit')).toThrow(ConfigError);
  });
});
