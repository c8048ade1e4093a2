/**
 * Poison-proof execution. A worker in a child process (test/fixtures/worker-process.ts with the
 * poison kit, concurrency 2 and maxPayloadBytes 1024) runs one task per kind of poison: thrown values that
 * break naive description or classification (a string, undefined, null, a cyclic object, Errors
 * whose message, name or stack getter throws, Errors with a cyclic or BigInt message, a revoked
 * Proxy) and return values that cannot be stored (BigInt, a cycle, a function, a Map, a symbol,
 * NaN, an object whose getter throws, a string over maxPayloadBytes). Every one must end
 * FAILURE after one attempt with a description of what happened, the process must live on
 * without an unhandled rejection, and a normal task sent afterwards must still run. Run twice:
 * with Node's default behaviour (an unhandled rejection kills the process) and in an app that
 * keeps the process alive after one (where a task whose end was lost would stay STARTED and
 * hold one of the two slots for ever). Then, in this process, the two guards behind that: a
 * listener that throws a revoked Proxy, and a fault inside the worker's own code at a task's end.
 */
import { describe, expect, it, vi } from 'vitest';
import { ConfigError, Task, type TaskResult, type TaskState } from 'heimdall-tasks';
import { recordEvents, useHarness, waitFor } from '../helpers.js';
import { POISON_MAX_PAYLOAD_BYTES } from '../fixtures/poison/services.js';
import { assertAlive, startWorkerProcess, type Proc } from '../fixtures/worker-processes.js';

// Fault injection for the last test: the retry policy, which classifies a failure after the
// task threw, throws itself while `fault.on` is set.
const fault = vi.hoisted(() => ({ on: false, calls: 0 }));
vi.mock('../../src/core/worker/retry-policy.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/core/worker/retry-policy.js')>();
  return {
    ...real,
    retryDelay: (...args: Parameters<typeof real.retryDelay>) => {
      if (!fault.on) return real.retryDelay(...args);
      fault.calls++;
      throw new Error('a fault in the worker');
    },
  };
});

const notAnError = (shown: string): string => `${shown} (thrown, not an Error)`;
const unreadable = (what: string): string => `(the ${what} could not be read: reading it threw Error: ${what} getter exploded)`;
const serialization = (problem: string): string =>
  `${problem}; task arguments and results must be plain JSON (numbers, strings, booleans, null, arrays and plain objects)`;

/** Each PoisonService method, and the error its task must end with. */
// `traceback`: what it must be; 'none' for a thrown value that has no stack; any string when not given.
const KINDS: Record<string, { name: string; message: string | RegExp; traceback?: string | RegExp | 'none' }> = {
  throwString: { name: 'Error', message: 'a thrown string', traceback: 'none' },
  throwUndefined: { name: 'Error', message: notAnError('undefined'), traceback: 'none' },
  throwNull: { name: 'Error', message: notAnError('null'), traceback: 'none' },
  throwCyclicObject: { name: 'Error', message: notAnError("<ref *1> { code: 'E_CYCLE', self: [Circular *1] }"), traceback: 'none' },
  // V8 builds the stack text on first read, from name and message: so it cannot be read either.
  throwMessageGetter: { name: 'Error', message: unreadable('message'), traceback: unreadable('stack').replace('stack getter', 'message getter') },
  // The name cannot be read: the error's class names it instead.
  throwNameGetter: { name: 'PoisonError', message: 'the name getter of this error throws', traceback: unreadable('stack').replace('stack getter', 'name getter') },
  throwStackGetter: { name: 'Error', message: 'the stack getter of this error throws', traceback: unreadable('stack') },
  throwCyclicMessage: { name: 'Error', message: "<ref *1> { code: 'E_CYCLE', self: [Circular *1] }" },
  throwBigIntMessage: { name: 'Error', message: '10n' },
  throwRevokedProxy: { name: 'Error', message: notAnError('a revoked Proxy'), traceback: 'none' },
  returnBigInt: { name: 'SerializationError', message: serialization('result is a BigInt, which JSON cannot encode; pass it as a string') },
  returnCycle: { name: 'SerializationError', message: serialization('result.self refers back to one of its parents (a cycle)') },
  returnFunction: { name: 'SerializationError', message: serialization('result is a function, which JSON cannot encode') },
  returnMap: {
    name: 'SerializationError',
    message: serialization('result is a Map, which JSON would not bring back as it was (pass Object.fromEntries(map))'),
  },
  returnSymbol: { name: 'SerializationError', message: serialization('result is a symbol, which JSON cannot encode') },
  returnNaN: { name: 'SerializationError', message: serialization('result is NaN, which JSON turns into null') },
  returnThrowingGetter: {
    name: 'SerializationError',
    message: serialization('result.boom could not be read: reading it threw Error: getter exploded'),
  },
  returnHugeString: {
    name: 'PayloadTooLargeError',
    message: `the result of PoisonService.returnHugeString is ${POISON_MAX_PAYLOAD_BYTES + 2} bytes as JSON, over the worker's maxPayloadBytes (${POISON_MAX_PAYLOAD_BYTES}); store large data elsewhere and return a reference, or raise maxPayloadBytes`,
  },
};

/** Waits until every task has ended, failing at once if the worker process dies; names the laggards at the deadline. */
async function allEnded(proc: Proc, handles: Record<string, TaskResult<unknown>>): Promise<void> {
  const states = async (): Promise<[string, TaskState][]> =>
    Promise.all(Object.entries(handles).map(async ([kind, r]) => [kind, await r.status()] as [string, TaskState]));
  try {
    await waitFor(
      async () => {
        assertAlive([proc]);
        return (await states()).every(([, s]) => s === 'SUCCESS' || s === 'FAILURE' || s === 'REVOKED');
      },
      { timeout: 30_000, interval: 50, what: 'every poison task to end' },
    );
  } catch (err) {
    assertAlive([proc]);
    const open = (await states()).filter(([, s]) => s !== 'SUCCESS' && s !== 'FAILURE' && s !== 'REVOKED');
    throw new Error(`${(err as Error).message}; not ended: ${open.map(([k, s]) => `${k} ${s}`).join(', ')}`);
  }
}

/** The expectation for a stored traceback (see KINDS). */
function traceback(want: string | RegExp | undefined): unknown {
  if (want === 'none') return undefined;
  if (want === undefined) return expect.any(String);
  return typeof want === 'string' ? want : expect.stringMatching(want);
}

describe('poison-proof execution (a worker process with concurrency 2)', () => {
  const fresh = useHarness('poison');

  it.each([
    ['with Node’s default unhandled-rejection behaviour', false],
    ['in an app that keeps the process alive after an unhandled rejection', true],
  ])('%s: every kind of poison ends FAILURE with a description, and the worker goes on', { timeout: 120_000 }, async (_mode, keepAlive) => {
    const h = fresh();
    const proc = await startWorkerProcess(h, { services: ['poison'], concurrency: 2, maxPayloadBytes: POISON_MAX_PAYLOAD_BYTES, keepAlive });
    const d = h.dispatcher();

    const handles: Record<string, TaskResult<unknown>> = {};
    const sent = await Promise.all(Object.keys(KINDS).map((kind) => d.send(`PoisonService.${kind}`, [])));
    Object.keys(KINDS).forEach((kind, i) => (handles[kind] = sent[i]!));
    await allEnded(proc, handles);

    const seen: Record<string, unknown> = {};
    const expected: Record<string, unknown> = {};
    for (const [kind, want] of Object.entries(KINDS)) {
      const info = await handles[kind]!.info();
      seen[kind] = { state: info.state, attempts: info.attempts, result: info.result, error: info.error };
      expected[kind] = {
        state: 'FAILURE',
        attempts: 1,
        result: undefined,
        error: {
          name: want.name,
          message: typeof want.message === 'string' ? want.message : expect.stringMatching(want.message),
          traceback: traceback(want.traceback),
        },
      };
    }
    // One comparison, so a failure shows every kind side by side.
    expect(seen).toEqual(expected);

    // Not wedged: both slots are free, and a normal task runs.
    const normal = await d.send('PoisonService.normal', []);
    expect(await normal.get({ timeout: 15 })).toBe('ok');
    expect((await normal.info()).attempts).toBe(1);

    assertAlive([proc]);
    // No unhandled rejection reached the app, and the worker reported no trouble of its own.
    expect(proc.lines).toEqual([]);
    proc.child.kill('SIGTERM');
    const exit = await proc.exit;
    expect(exit.code, exit.stderr).toBe(0);
  });
});

class InProcessService {
  @Task()
  async fails(): Promise<void> {
    throw new Error('the task failed');
  }

  @Task()
  async succeeds(n: number): Promise<number> {
    return n;
  }

  @Task()
  async echo(value: string): Promise<string> {
    return value;
  }

  @Task()
  async repeat(n: number): Promise<string> {
    return 'y'.repeat(n);
  }
}

function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

describe('poison-proof execution (guards inside the worker)', () => {
  const fresh = useHarness('poison-guards');

  it('a listener that throws a revoked Proxy is reported as an error event; the results are stored and the worker goes on', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const worker = h.worker({ services: [new InProcessService()], concurrency: 1 });
    const ev = recordEvents(worker);
    worker.on('succeeded', () => {
      throw revokedProxy();
    });
    await worker.start();
    const handles = await Promise.all([1, 2, 3].map((n) => d.tasks(InProcessService).succeeds.delay(n)));
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 15 })))).toEqual([1, 2, 3]);
    await waitFor(() => ev.errors.length >= 3, { timeout: 5000, what: 'three error events' });
    expect(ev.errors.map((e) => e.message)).toEqual([1, 2, 3].map(() => 'a revoked Proxy (thrown, not an Error)'));
    expect(ev.succeeded.map((e) => e.result)).toEqual([1, 2, 3]);
  });

  it('listeners of started and revoked that throw a Proxy whose traps throw: the task still succeeds, the expired one is revoked, the worker goes on', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const worker = h.worker({ services: [new InProcessService()], concurrency: 1 });
    const ev = recordEvents(worker);
    const trap = (): never => {
      throw new Error('trap');
    };
    const hostile = (): Error => new Proxy(new Error('x'), { get: trap, getOwnPropertyDescriptor: trap, has: trap });
    worker.on('started', () => {
      throw hostile();
    });
    worker.on('revoked', () => {
      throw hostile();
    });
    await worker.start();
    const ref = d.tasks(InProcessService);
    // Due in 200 ms but expired after 50 ms: the fetch that finds it due ends it REVOKED expired.
    const expired = await ref.succeeds.applyAsync([0], { countdown: '200ms', expires: '50ms' });
    const ok = await ref.succeeds.delay(5);
    expect(await ok.get({ timeout: 15 })).toBe(5);
    await waitFor(async () => (await expired.status()) === 'REVOKED', { timeout: 10_000, what: `task ${expired.id} to end REVOKED` });
    await waitFor(() => ev.revoked.length === 1 && ev.succeeded.length === 1 && ev.errors.length >= 2, { timeout: 5000, what: 'the revoked and succeeded events and two error events' });
    expect(ev.succeeded.map((e) => e.result)).toEqual([5]);
    // The worker still runs tasks.
    expect(await (await ref.succeeds.delay(6)).get({ timeout: 15 })).toBe(6);
  });

  it('a fault in the worker while it ends a task: the task still ends FAILURE, its slot is freed, and an error event names it', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const worker = h.worker({ services: [new InProcessService()], concurrency: 1 });
    const ev = recordEvents(worker);
    // Fault injection: no input reaches this path, so a bug is played by the method that
    // classifies a failure for retries throwing after the task did.
    fault.on = true;
    try {
      await worker.start();
      const ref = d.tasks(InProcessService);
      const failed = await ref.fails.delay();
      const next = await ref.succeeds.delay(7);
      // With one slot, the second task only runs once the first one's slot is free.
      expect(await next.get({ timeout: 15 })).toBe(7);
      await waitFor(async () => (await failed.status()) === 'FAILURE', { timeout: 5000, what: `task ${failed.id} to end FAILURE` });
      const info = await failed.info();
      expect({ state: info.state, attempts: info.attempts, name: info.error?.name, message: info.error?.message }).toEqual({
        state: 'FAILURE',
        attempts: 1,
        name: 'Error',
        message: 'a fault in the worker',
      });
      expect(ev.errors.map((e) => e.message)).toEqual([
        `task ${failed.id} (InProcessService.fails) failed inside the worker: Error: a fault in the worker`,
      ]);
      await waitFor(() => ev.failed.length === 1, { timeout: 5000, what: 'the failed event' });
      expect(ev.failed.map((e) => [e.id, e.error.message])).toEqual([[failed.id, 'a fault in the worker']]);
      expect(fault.calls).toBe(1);
    } finally {
      fault.on = false;
    }
  });

  it('maxPayloadBytes bounds a stored result in bytes of its JSON; the default is 512 KiB', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const small = h.worker({ services: [new InProcessService()], maxPayloadBytes: 1024 });
    await small.start();
    const ref = d.tasks(InProcessService);
    // 600 two-byte characters: 1202 bytes of JSON, though only 602 characters.
    const over = await ref.echo.delay('é'.repeat(600));
    // 1022 characters and two quotes: exactly the limit.
    const at = await ref.echo.delay('x'.repeat(1022));
    expect(await at.get({ timeout: 15 })).toBe('x'.repeat(1022));
    await waitFor(async () => (await over.status()) === 'FAILURE', { timeout: 15_000, what: `task ${over.id} to end FAILURE` });
    const info = await over.info();
    expect([info.attempts, info.error?.name, info.error?.message]).toEqual([
      1,
      'PayloadTooLargeError',
      "the result of InProcessService.echo is 1202 bytes as JSON, over the worker's maxPayloadBytes (1024); store large data elsewhere and return a reference, or raise maxPayloadBytes",
    ]);
    await small.close();

    const byDefault = h.worker({ services: [new InProcessService()] });
    await byDefault.start();
    const fits = await ref.repeat.delay(512 * 1024 - 2);
    const tooBig = await ref.repeat.delay(512 * 1024 - 1);
    expect((await fits.get({ timeout: 15 })).length).toBe(512 * 1024 - 2);
    await waitFor(async () => (await tooBig.status()) === 'FAILURE', { timeout: 15_000, what: `task ${tooBig.id} to end FAILURE` });
    expect((await tooBig.info()).error?.message).toMatch(/^the result of InProcessService\.repeat is 524289 bytes as JSON, over the worker's maxPayloadBytes \(524288\)/);
  });

  it.each([0, 1.5, -1, '1k'])('maxPayloadBytes %j is a ConfigError', (value) => {
    const h = fresh();
    expect(() => h.worker({ maxPayloadBytes: value as number })).toThrow(ConfigError);
    expect(() => h.worker({ maxPayloadBytes: value as number })).toThrow(`maxPayloadBytes must be a whole number of bytes >= 1, got ${typeof value === 'string' ? JSON.stringify(value) : value}`);
  });
});
