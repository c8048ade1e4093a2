// Named limits (Limits.define, @Task({ limits })): the checks of their options, and their rules
// in inline mode (createTestApp({ inline: true }), src/core/inline/limits.ts), which the Redis
// scripts follow too (test/integration/named-limits.test.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, currentTask, Limits, Task, TaskFailedError, type LimitHandle, type TaskResult } from 'heimdall-tasks';
import { createTestApp, type InlineTestApp } from 'heimdall-tasks/testing';
import { configError, decorationError } from '../helpers.js';


describe('Limits.define', () => {
  it('returns a frozen handle; the same settings again give the same handle, other settings are a ConfigError', () => {
    const api = Limits.define('unit-api', [10, '2s']);
    expect(api).toEqual({ name: 'unit-api', limit: 10, periodMs: 2000, algorithm: 'window' });
    expect(Object.isFrozen(api)).toBe(true);
    expect(Limits.define('unit-api', [10, 2])).toBe(api);
    expect(Limits.get('unit-api')).toBe(api);
    expect(configError(() => Limits.define('unit-api', [11, 2])).message).toMatch(/already defined as \[10, 2000 ms\] \(window\)/);
    expect(configError(() => Limits.define('unit-api', [10, 2], { algorithm: 'gcra' })).message).toMatch(/already defined/);
    expect(Limits.define('unit-gcra', [1000, 1], { algorithm: 'gcra' }).algorithm).toBe('gcra');
  });

  it.each([
    ['a name with a brace (it would be a hash tag of its own)', () => Limits.define('a{b}', [1, 1]), /the name must be a non-empty string/],
    ['an empty name', () => Limits.define('', [1, 1]), /the name must be/],
    ['a rate that is not a pair', () => Limits.define('unit-x', [1] as unknown as [number, number]), /must be \[n, period\]/],
    ['n of 0', () => Limits.define('unit-x', [0, 1]), /n must be a whole number of units from 1/],
    ['a fractional n', () => Limits.define('unit-x', [1.5, 1]), /n must be a whole number/],
    ['a bad period', () => Limits.define('unit-x', [1, 'soon']), /period/],
    ['a period of 0', () => Limits.define('unit-x', [1, 0]), /period/],
    ['an unknown algorithm', () => Limits.define('unit-x', [1, 1], { algorithm: 'leaky' as 'gcra' }), /algorithm must be 'window' or 'gcra'/],
    ['an unknown option', () => Limits.define('unit-x', [1, 1], { concurrency: 2 } as never), /unknown option 'concurrency'/],
  ])('refuses %s with a ConfigError naming it', (_what, call, message) => {
    expect(configError(call).message).toMatch(message);
    expect(Limits.get('unit-x')).toBeUndefined();
  });
});

describe('@Task({ limits })', () => {
  const small = Limits.define('unit-small', [5, 1]);

  it('accepts names, handles and { limit, cost } with a whole cost or a function', () => {
    class Fine {
      @Task({ limits: ['unit-not-yet-defined', small] })
      async a(): Promise<void> {}

      @Task<[tokens: number]>({ limits: [{ limit: 'unit-api2', cost: 3 }, { limit: small, cost: ([tokens]) => tokens }] })
      async b(tokens: number): Promise<number> {
        return tokens;
      }
    }
    void Fine;
  });

  it.each([
    ['not an array', 'unit-small', /limits must be a non-empty array/],
    ['an empty array', [], /limits must be a non-empty array/],
    ['an entry that names nothing', [42], /limits\[0\] must name a limit/],
    ['a name with a brace', ['x{y}'], /limits\[0\]: the limit's name must be/],
    ['a limit listed twice', ['unit-small', small], /limits\[1\]: limit 'unit-small' is listed twice/],
    ['an unknown key in an entry', [{ limit: 'unit-small', weight: 2 }], /limits\[0\]: unknown option 'weight'; known: limit, cost/],
    ['a cost of 0', [{ limit: 'unit-small', cost: 0 }], /limits\[0\]: cost must be a whole number >= 1/],
    ['a fractional cost', [{ limit: 'unit-small', cost: 1.5 }], /cost must be a whole number >= 1/],
    ['a cost over n of a defined limit (it could never start)', [{ limit: small, cost: 6 }], /cost 6 is more than limit 'unit-small' allows per period \(5\)/],
  ])('refuses %s at decoration', (_what, limits, message) => {
    expect(decorationError({ limits }).message).toMatch(message);
  });
});

// ------------------------------------------------------------------------------ inline mode

const starts: { task: string; at: number; cost: number }[] = [];
const shared = Limits.define('unit-inline-shared', [2, '300ms']);
const tokens = Limits.define('unit-inline-tokens', [100, '400ms']);
const slowB = Limits.define('unit-inline-b', [1, '400ms']);
const cheap = Limits.define('unit-inline-gcra', [2, '400ms'], { algorithm: 'gcra' });

class InlineLimited {
  @Task({ queue: 'inline-a', limits: [shared] })
  async a(): Promise<void> {
    starts.push({ task: 'a', at: Date.now(), cost: 1 });
  }

  @Task({ queue: 'inline-b', limits: ['unit-inline-shared'] })
  async b(): Promise<void> {
    starts.push({ task: 'b', at: Date.now(), cost: 1 });
  }

  @Task({ limits: [shared, slowB] })
  async both(): Promise<void> {
    starts.push({ task: 'both', at: Date.now(), cost: 1 });
  }

  @Task<[cost: number, actual: number]>({ limits: [{ limit: tokens, cost: ([cost]) => cost }] })
  async weighted(cost: number, actual: number): Promise<boolean> {
    starts.push({ task: 'weighted', at: Date.now(), cost });
    return actual === cost ? true : currentTask().reportCost(actual);
  }

  @Task<[cost: number, actual: number]>({ limits: [{ limit: cheap, cost: ([cost]) => cost }] })
  async gcra(cost: number, actual: number): Promise<void> {
    starts.push({ task: 'gcra', at: Date.now(), cost });
    if (actual !== cost) await currentTask().reportCost(actual, cheap);
  }

  @Task({ limits: ['unit-inline-never-defined'] })
  async undefinedLimit(): Promise<void> {}

  @Task<[cost: number]>({ limits: [{ limit: tokens, cost: ([cost]) => cost }] })
  async costly(_cost: number): Promise<void> {}

  @Task({ limits: [shared, tokens] })
  async ambiguous(which: string | undefined): Promise<boolean> {
    return currentTask().reportCost(1, which);
  }

  @Task()
  async unlimited(): Promise<boolean> {
    return currentTask().reportCost(1);
  }
}

/** Largest sum of costs started in any window [t, t + periodMs) that begins at a start. */
function maxInWindow(list: readonly { at: number; cost: number }[], periodMs: number): number {
  let max = 0;
  for (const s of list) max = Math.max(max, list.filter((o) => o.at >= s.at && o.at < s.at + periodMs).reduce((n, o) => n + o.cost, 0));
  return max;
}

/** A run's start as the limits counted it: inline, the record's start time is the time of the take. */
async function startedAt(r: TaskResult<unknown>): Promise<number> {
  return (await r.info()).startedAt!.getTime();
}

const apps: InlineTestApp[] = [];
async function app(): Promise<InlineTestApp> {
  const a = await createTestApp({ services: [new InlineLimited()], inline: true, queues: ['default', 'inline-a', 'inline-b'] });
  apps.push(a);
  return a;
}

afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
  starts.length = 0;
});

describe('named limits in inline mode', () => {
  it('two tasks of two queues share one limit: never more than 2 starts in any 300 ms between them', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    let limited = 0;
    a.on('rateLimited', () => limited++);
    const sent = await Promise.all([...[1, 2, 3].map(() => t.a.delay()), ...[1, 2, 3].map(() => t.b.delay())]);
    await a.drain({ timeout: 10 });
    expect(await Promise.all(sent.map((r) => r.status()))).toEqual(sent.map(() => 'SUCCESS'));
    // The starts as the limit counted them (the record's start time is the time of the take).
    const counted = await Promise.all(sent.map(async (r) => ({ at: (await r.info()).startedAt!.getTime(), cost: 1 })));
    expect(maxInWindow(counted, 300)).toBe(2);
    expect(new Set(starts.map((s) => s.task))).toEqual(new Set(['a', 'b']));
    expect(limited).toBeGreaterThan(0);
  });

  it('all or none: a task that waits for B holds only its turn in A, so a task of A alone starts meanwhile', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    const first = await t.both.delay();
    await first.get({ timeout: 5 });
    // B is full for 400 ms; A has one unit left of 2.
    const waiting = await t.both.delay();
    expect(await waiting.status()).toBe('PENDING');
    const alone = await t.a.delay();
    await alone.get({ timeout: 5 });
    expect(starts.map((s) => s.task)).toEqual(['both', 'a']);
    await waiting.get({ timeout: 5 });
    expect((await startedAt(waiting)) - (await startedAt(first))).toBeGreaterThanOrEqual(400);
  });

  it('weighted costs never overrun [100, 400 ms]; a refund lets the next run start at once, a debt delays it', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    const sent = await Promise.all([30, 50, 30, 50, 30, 50].map((c) => t.weighted.delay(c, c)));
    await a.drain({ timeout: 10 });
    expect(await Promise.all(sent.map((r) => r.status()))).toEqual(sent.map(() => 'SUCCESS'));
    const counted = await Promise.all(sent.map(async (r, i) => ({ at: await startedAt(r), cost: [30, 50][i % 2]! })));
    expect(maxInWindow(counted, 400)).toBeLessThanOrEqual(100);
    expect(maxInWindow(counted, 400)).toBeGreaterThan(50);
    await new Promise((r) => setTimeout(r, 450));

    // Refund: 90 charged, 10 used; 80 more fit at once.
    const refunded = await t.weighted.delay(90, 10);
    expect(await refunded.get({ timeout: 5 })).toBe(true);
    const next = await t.weighted.delay(80, 80);
    await next.get({ timeout: 5 });
    expect((await startedAt(next)) - (await startedAt(refunded))).toBeLessThan(300);
    await new Promise((r) => setTimeout(r, 450));

    // Debt: 10 charged, 90 used; 20 more wait for the window.
    const indebted = await t.weighted.delay(10, 90);
    expect(await indebted.get({ timeout: 5 })).toBe(true);
    const after = await t.weighted.delay(20, 20);
    await after.get({ timeout: 5 });
    expect((await startedAt(after)) - (await startedAt(indebted))).toBeGreaterThanOrEqual(400);
  });

  it('gcra: n at once, then one per period/n; a refund gives the units back', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    const sent = await Promise.all([1, 2, 3, 4].map(() => t.gcra.delay(1, 1)));
    await a.drain({ timeout: 10 });
    expect(await Promise.all(sent.map((r) => r.status()))).toEqual(sent.map(() => 'SUCCESS'));
    const at = (await Promise.all(sent.map(startedAt))).sort((x, y) => x - y);
    expect(at[1]! - at[0]!).toBeLessThan(100);
    expect(at[2]! - at[0]!).toBeGreaterThanOrEqual(199);
    expect(at[3]! - at[2]!).toBeGreaterThanOrEqual(199);
    await new Promise((r) => setTimeout(r, 450));
    starts.length = 0;
    const refunded = await t.gcra.delay(2, 0);
    await refunded.get({ timeout: 5 });
    const next = await t.gcra.delay(2, 2);
    await next.get({ timeout: 5 });
    expect((await startedAt(next)) - (await startedAt(refunded))).toBeLessThan(100);
  });

  it('a limit the worker never defined, or a cost over n, fails the run with a ConfigError that says so', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    const undefinedErr = await (await t.undefinedLimit.delay()).get({ timeout: 5 }).catch((e: unknown) => e);
    expect(undefinedErr).toBeInstanceOf(TaskFailedError);
    expect(undefinedErr).toMatchObject({ remoteName: 'ConfigError' });
    expect((undefinedErr as TaskFailedError).remoteMessage).toMatch(/uses limit 'unit-inline-never-defined', which is not defined in this worker process: call Limits\.define/);
    const costlyErr = await (await t.costly.delay(101)).get({ timeout: 5 }).catch((e: unknown) => e);
    expect((costlyErr as TaskFailedError).remoteMessage).toMatch(/cost 101 is more than limit 'unit-inline-tokens' allows per period \(100\): such a run could never start \(returned by its cost function/);
  });

  it('reportCost() checks its arguments', async () => {
    const a = await app();
    const t = a.tasks(InlineLimited);
    const none = await (await t.unlimited.delay()).get({ timeout: 5 }).catch((e: unknown) => e);
    expect((none as TaskFailedError).remoteMessage).toMatch(/was charged in no named limit/);
    const unnamed = await (await t.ambiguous.delay(undefined)).get({ timeout: 5 }).catch((e: unknown) => e);
    expect((unnamed as TaskFailedError).remoteMessage).toMatch(/has several limits \('unit-inline-shared', 'unit-inline-tokens'\); name the one/);
    const wrong = await (await t.ambiguous.delay('unit-inline-b')).get({ timeout: 5 }).catch((e: unknown) => e);
    expect((wrong as TaskFailedError).remoteMessage).toMatch(/uses no limit "unit-inline-b"/);
    expect(await (await t.ambiguous.delay('unit-inline-tokens')).get({ timeout: 5 })).toBe(true);
    const bad = await (await t.weighted.delay(5, -1)).get({ timeout: 5 }).catch((e: unknown) => e);
    expect((bad as TaskFailedError).remoteMessage).toMatch(/actual must be a whole number of units from 0/);
  });
});

// Keeps the handle type in use for the docs' sake: a task may hold the handle in a constant.
export type { LimitHandle };
