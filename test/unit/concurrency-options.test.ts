// Per-key concurrency (@Task({ concurrency }), Limits.define(name, { concurrency })): the checks
// of their options, and their rules in inline mode (createTestApp({ inline: true }),
// src/core/inline/permits.ts), which permit-3.lua follows on Redis
// (test/integration/concurrency-permits.test.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, Limits, Task, TaskFailedError } from 'heimdall-tasks';
import { createTestApp, type InlineTestApp } from 'heimdall-tasks/testing';
import { configError, decorationError, gate, waitFor, type Gate } from '../helpers.js';
import { parsePermitRun, permitRunName, permitScope } from '../../src/core/protocol/permit-scripts.js';


describe('concurrency options', () => {
  it('Limits.define(name, { concurrency }) gives a frozen handle of kind concurrency; defined otherwise is a ConfigError', () => {
    const gpu = Limits.define('unit-gpu', { concurrency: 4 });
    expect(gpu).toEqual({ name: 'unit-gpu', limit: 4, periodMs: 0, algorithm: 'concurrency' });
    expect(Object.isFrozen(gpu)).toBe(true);
    expect(Limits.define('unit-gpu', { concurrency: 4 })).toBe(gpu);
    expect(configError(() => Limits.define('unit-gpu', { concurrency: 5 })).message).toMatch(/already defined as \{ concurrency: 4 \}/);
    expect(configError(() => Limits.define('unit-gpu', [4, 1])).message).toMatch(/already defined as \{ concurrency: 4 \}/);
  });

  it.each([
    ['concurrency 0', () => Limits.define('unit-c', { concurrency: 0 }), /concurrency must be a whole number of runs from 1 to 1e6, got 0/],
    ['a fractional concurrency', () => Limits.define('unit-c', { concurrency: 1.5 }), /concurrency must be a whole number/],
    ['an unknown option', () => Limits.define('unit-c', { concurrency: 1, key: 'x' } as never), /unknown option 'key' of a concurrency limit; known: concurrency/],
    ['a third argument', () => (Limits.define as (...args: unknown[]) => unknown)('unit-c', { concurrency: 1 }, { algorithm: 'gcra' }), /takes no third argument/],
  ])('Limits.define refuses %s', (_what, call, message) => {
    expect(configError(call).message).toMatch(message);
    expect(Limits.get('unit-c')).toBeUndefined();
  });

  const rate = Limits.define('unit-c-rate', [5, 1]);
  const slots = Limits.define('unit-c-slots', { concurrency: 2 });

  it.each([
    ['concurrency 0', { concurrency: 0 }, /concurrency must be a whole number of runs from 1 to 1e6, or \{ limit, key \}, got 0/],
    ['concurrency a string', { concurrency: '2' }, /concurrency must be a whole number/],
    ['concurrency without limit', { concurrency: { key: 'k' } }, /concurrency\.limit must be a whole number of runs from 1 to 1e6, got undefined/],
    ['concurrency.limit 0', { concurrency: { limit: 0, key: 'k' } }, /concurrency\.limit must be a whole number of runs from 1 to 1e6, got 0/],
    ['a misspelt concurrency option', { concurrency: { limit: 1, keys: 'k' } }, /concurrency: unknown option 'keys'; known: limit, key/],
    ['an empty concurrency key', { concurrency: { limit: 1, key: '' } }, /concurrency: key must be a non-empty string or a function/],
    ['a cost on a concurrency limit', { limits: [{ limit: slots, cost: 2 }] }, /limit 'unit-c-slots' is a concurrency limit: a run holds one permit, it takes no cost/],
    ['a key on a rate limit', { limits: [{ limit: rate, key: 'k' }] }, /limit 'unit-c-rate' is a rate limit: key only applies to concurrency limits/],
    ['a key that is a number', { limits: [{ limit: slots, key: 3 }] }, /limits\[0\]: key must be a non-empty string or a function/],
  ])('@Task refuses %s at decoration', (_what, options, message) => {
    expect(decorationError(options).message).toMatch(message);
  });

  it('the types tell the two kinds of handle apart: a cost on a concurrency limit, a key on a rate limit, do not compile', () => {
    expect(() => {
      class Typed {
        // @ts-expect-error a concurrency limit's use takes no cost
        @Task({ limits: [{ limit: slots, cost: 2 }] })
        async a(): Promise<void> {}
      }
      void Typed;
    }).toThrow(ConfigError);
    expect(() => {
      class Typed {
        // @ts-expect-error a rate limit's use takes no key
        @Task({ limits: [{ limit: rate, key: 'k' }] })
        async a(): Promise<void> {}
      }
      void Typed;
    }).toThrow(ConfigError);
    expect(slots.algorithm).toBe('concurrency');
    expect(rate.algorithm).toBe('window');
  });

  it('a run name reads back whatever the queue and id hold', () => {
    for (const [queue, id] of [
      ['default', 'abc'],
      ['a|b', 'c|d'],
      ['q:1', '12|3|x'],
    ] as const) {
      expect(parsePermitRun(permitRunName(queue, id, 7))).toEqual({ queue, id, attempt: 7 });
    }
    expect(parsePermitRun('nothing')).toBeUndefined();
  });

  it('scopes: a limit with and without key, a task with and without key are four apart; the three keys of one scope share a slot', () => {
    const all = [
      permitScope('p', { limit: 'a' }, undefined, 1),
      permitScope('p', { limit: 'a' }, 'b', 1),
      permitScope('p', { task: 'a' }, undefined, 1),
      permitScope('p', { task: 'a' }, 'b', 1),
      permitScope('p', { task: 'a b' }, undefined, 1),
    ];
    expect(new Set(all.map((s) => s.keys[0])).size).toBe(5);
    const braces = permitScope('p', { task: 'T' }, 'x}y{z', 1);
    const tag = (k: string) => k.slice(k.indexOf('{') + 1, k.indexOf('}', k.indexOf('{')));
    expect(new Set(braces.keys.map(tag)).size).toBe(1);
  });
});

// ------------------------------------------------------------------------------ inline mode

const log: { task: string; key: string; edge: 'start' | 'end'; id: string }[] = [];
const gates = new Map<string, Gate>();
const shared = Limits.define('unit-inline-slots', { concurrency: 1 });
const inlineRate = Limits.define('unit-inline-rate', [1, 2]);

class InlinePermitted {
  @Task<[key: string]>({ concurrency: { limit: 1, key: ([key]) => key } })
  async perKey(key: string): Promise<void> {
    log.push({ task: 'perKey', key, edge: 'start', id: '' });
    await gates.get(key)?.promise;
    log.push({ task: 'perKey', key, edge: 'end', id: '' });
  }

  @Task({ queue: 'inline-a', limits: [shared] })
  async a(tag: string): Promise<void> {
    log.push({ task: 'a', key: tag, edge: 'start', id: '' });
    await gates.get(tag)?.promise;
    log.push({ task: 'a', key: tag, edge: 'end', id: '' });
  }

  @Task({ queue: 'inline-b', limits: ['unit-inline-slots'] })
  async b(tag: string): Promise<void> {
    log.push({ task: 'b', key: tag, edge: 'start', id: '' });
    await gates.get(tag)?.promise;
    log.push({ task: 'b', key: tag, edge: 'end', id: '' });
  }

  /** One at a time, and one start per 2 s (permits first, then the rate limit). */
  @Task({ queue: 'inline-a', concurrency: 1, limits: [inlineRate] })
  async rated(tag: string): Promise<void> {
    log.push({ task: 'rated', key: tag, edge: 'start', id: String(Date.now()) });
    await gates.get(tag)?.promise;
    log.push({ task: 'rated', key: tag, edge: 'end', id: String(Date.now()) });
  }

  @Task<[key: string]>({ concurrency: { limit: 1, key: () => '' } })
  async badKey(_key: string): Promise<void> {}
}

/** The most runs open at once in `entries` (start +1, end -1, in the order logged). */
function maxOpen(entries: readonly { edge: 'start' | 'end' }[]): number {
  let open = 0;
  let max = 0;
  for (const e of entries) max = Math.max(max, (open += e.edge === 'start' ? 1 : -1));
  return max;
}

const apps: InlineTestApp[] = [];
async function app(): Promise<InlineTestApp> {
  const a = await createTestApp({ services: [new InlinePermitted()], inline: true, queues: ['default', 'inline-a', 'inline-b'] });
  apps.push(a);
  return a;
}

afterEach(async () => {
  for (const g of gates.values()) g.open();
  gates.clear();
  await Promise.all(apps.splice(0).map((a) => a.close()));
  log.length = 0;
});

describe('concurrency in inline mode', () => {
  it('one at a time per key; a waiter starts when the permit is given back, first come first', async () => {
    const a = await app();
    const t = a.tasks(InlinePermitted);
    gates.set('x', gate());
    const sent = await Promise.all([t.perKey.delay('x'), t.perKey.delay('x'), t.perKey.delay('y'), t.perKey.delay('x')]);
    // x's first and y run; the other two x wait.
    await waitFor(() => log.filter((e) => e.edge === 'end').length === 1, { what: "y's run to end" });
    expect(log.filter((e) => e.key === 'x' && e.edge === 'start')).toHaveLength(1);
    expect(await Promise.all(sent.map((r) => r.status()))).toEqual(['STARTED', 'PENDING', 'SUCCESS', 'PENDING']);
    gates.get('x')!.open();
    await a.drain({ timeout: 5 });
    expect(await Promise.all(sent.map((r) => r.status()))).toEqual(sent.map(() => 'SUCCESS'));
    expect(maxOpen(log.filter((e) => e.key === 'x'))).toBe(1);
  });

  it('a concurrency limit shared by two queues: one at a time between them; a revoked waiter gives its place up', async () => {
    const a = await app();
    const t = a.tasks(InlinePermitted);
    gates.set('first', gate());
    const first = await t.a.delay('first');
    const revoked = await t.b.delay('revoked');
    const last = await t.b.delay('last');
    expect(await revoked.status()).toBe('PENDING');
    await revoked.revoke();
    gates.get('first')!.open();
    await a.drain({ timeout: 5 });
    expect([await first.status(), await revoked.status(), await last.status()]).toEqual(['SUCCESS', 'REVOKED', 'SUCCESS']);
    expect(log.filter((e) => e.edge === 'start').map((e) => e.key)).toEqual(['first', 'last']);
    expect(maxOpen(log)).toBe(1);
  });

  it('permits before rate limits: waiters for the permit hold no rate turn; the one handed it waits for its turn holding it', { timeout: 20_000 }, async () => {
    const a = await app();
    const t = a.tasks(InlinePermitted);
    const waits: { id: string; permit: boolean; delayMs: number }[] = [];
    a.on('rateLimited', (e) => waits.push({ id: e.id, permit: e.permit === true, delayMs: e.delayMs }));
    gates.set('r1', gate());
    const r1 = await t.rated.delay('r1');
    const r2 = await t.rated.delay('r2');
    const r3 = await t.rated.delay('r3');
    // Both wait for the permit first (the rate limit first would have given them turns).
    await waitFor(() => waits.length >= 2, { what: 'r2 and r3 to wait' });
    expect(waits).toEqual([
      { id: r2.id, permit: true, delayMs: 0 },
      { id: r3.id, permit: true, delayMs: 0 },
    ]);
    gates.get('r1')!.open();
    // r1's permit goes to r2, which waits for its rate turn, up to 2 s after r1's start.
    await waitFor(() => waits.length >= 3, { what: 'r2 to wait for its rate turn' });
    expect(waits[2]).toMatchObject({ id: r2.id, permit: false });
    await a.drain({ timeout: 10 });
    expect([await r1.status(), await r2.status(), await r3.status()]).toEqual(['SUCCESS', 'SUCCESS', 'SUCCESS']);
    const startsAt = log.filter((e) => e.task === 'rated' && e.edge === 'start').map((e) => [e.key, Number(e.id)] as const);
    expect(startsAt.map(([k]) => k)).toEqual(['r1', 'r2', 'r3']);
    expect(startsAt[1]![1] - startsAt[0]![1]).toBeGreaterThanOrEqual(1900);
    expect(startsAt[2]![1] - startsAt[1]![1]).toBeGreaterThanOrEqual(1900);
    // r2 never waited for the permit again: it kept it through its turn.
    expect(waits.filter((e) => e.id === r2.id).map((e) => e.permit)).toEqual([true, false]);
    expect(maxOpen(log.filter((e) => e.task === 'rated'))).toBe(1);
  });

  it('a key function that returns an empty key fails the run with a ConfigError', async () => {
    const a = await app();
    const r = await a.tasks(InlinePermitted).badKey.delay('k');
    await expect(r.get({ timeout: 5 })).rejects.toThrow(TaskFailedError);
    await expect(r.get({ timeout: 5 })).rejects.toThrow(/concurrency key function must return a non-empty string/);
  });
});
