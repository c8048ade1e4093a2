import { describe, expect, it } from 'vitest';
import { ConfigError, Task, type RateLimit } from 'heimdall-tasks';
import { normalizeRateLimit, normalizeTaskOptions } from '../../src/core/task/task-options.js';
import { decorationError } from '../helpers.js';

const KNOWN_LIST = 'name, queue, unique, uniqueTimeout, uniqueRaises, uniqueWaitForExpiry, key, rateLimit, resultExpires, retries, timeLimit, maxRecoveries';
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
    ['key a string', { unique: true, key: 'customer' }, 'key must be a function (args) => string, got "customer"'],
    ['key without unique or rateLimit', { key: () => 'k' }, 'key is used by unique and rateLimit; set one of them'],
    ['queue with braces', { queue: 'a{b}' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "a{b}"'],
    ['queue with a space', { queue: 'my queue' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "my queue"'],
    ['queue ""', { queue: '' }, 'queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got ""'],
    ['name ""', { name: '' }, 'name must be a non-empty string, got ""'],
    ['name of spaces', { name: '   ' }, 'name must be a non-empty string, got "   "'],
    ['name 42', { name: 42 }, 'name must be a non-empty string, got 42'],
    ['resultExpires -5', { resultExpires: -5 }, `resultExpires ${DURATION_HINT}, got -5`],
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
    expect(() => {
      class KeyText {
        // @ts-expect-error key is a function of the arguments
        @Task({ unique: true, key: 'customer' })
        async m(id: number): Promise<number> {
          return id;
        }
      }
      void KeyText;
    }).toThrow(/key must be a function/);
  });

  it('accepts good options without throwing', () => {
    expect(() => {
      class Good {
        @Task()
        async a(): Promise<void> {}

        @Task({ unique: true, uniqueTimeout: '500ms', uniqueRaises: true, uniqueWaitForExpiry: false })
        async b(id: number): Promise<number> {
          return id;
        }

        @Task({ rateLimit: [2, 60], queue: 'emails' })
        async c(): Promise<void> {}

        @Task<[number]>({ rateLimit: ([id]) => (id === 10 ? [1, 30] : [2, 30]), key: ([id]) => `customer_${id}` })
        async d(id: number): Promise<number> {
          return id;
        }
      }
      void Good;
    }).not.toThrow();
  });
});

describe('normalizeTaskOptions', () => {
  it('applies the defaults', () => {
    const expected = {
      name: undefined,
      queue: 'default',
      unique: false,
      uniqueTimeoutMs: 3_600_000,
      uniqueRaises: false,
      uniqueWaitForExpiry: false,
      key: undefined,
      rateLimit: undefined,
      resultExpiresMs: undefined,
    };
    expect(normalizeTaskOptions(undefined, 'w')).toEqual(expected);
    expect(normalizeTaskOptions({}, 'w')).toEqual(expected);
  });

  it('converts durations to milliseconds and rate limits to { limit, periodMs }', () => {
    const o = normalizeTaskOptions(
      { name: 'reports.generate', queue: 'reports', unique: true, uniqueTimeout: '500ms', uniqueRaises: true, uniqueWaitForExpiry: true, rateLimit: [2, 60], resultExpires: 10 },
      'w',
    );
    expect(o).toEqual({
      name: 'reports.generate',
      queue: 'reports',
      unique: true,
      uniqueTimeoutMs: 500,
      uniqueRaises: true,
      uniqueWaitForExpiry: true,
      key: undefined,
      rateLimit: { limit: 2, periodMs: 60_000 },
      resultExpiresMs: 10_000,
    });
  });

  it.each<[RateLimit, { limit: number; periodMs: number }]>([
    [[2, 60], { limit: 2, periodMs: 60_000 }],
    [[1, '500ms'], { limit: 1, periodMs: 500 }],
    [[3, 2], { limit: 3, periodMs: 2000 }],
    [[10, '1h'], { limit: 10, periodMs: 3_600_000 }],
    [[1, 0.25], { limit: 1, periodMs: 250 }],
  ])('reads rateLimit %j', (rateLimit, expected) => {
    expect(normalizeTaskOptions({ rateLimit }, 'w').rateLimit).toEqual(expected);
  });

  it('uniqueTimeout takes seconds or ms strings', () => {
    expect(normalizeTaskOptions({ unique: true, uniqueTimeout: 90 }, 'w').uniqueTimeoutMs).toBe(90_000);
    expect(normalizeTaskOptions({ unique: true, uniqueTimeout: '2 days' }, 'w').uniqueTimeoutMs).toBe(172_800_000);
    expect(normalizeTaskOptions({ unique: true }, 'w').uniqueTimeoutMs).toBe(3_600_000);
  });

  it('keeps key and a dynamic rateLimit as the functions given (they run at dispatch)', () => {
    const key = ([id]: readonly unknown[]): string => `c${String(id)}`;
    const rateLimit = (): RateLimit => [1, 30];
    const o = normalizeTaskOptions({ key, rateLimit }, 'w');
    expect(o.key).toBe(key);
    expect(o.rateLimit).toBe(rateLimit);
    expect(normalizeTaskOptions({ unique: true, key }, 'w').key).toBe(key);
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
