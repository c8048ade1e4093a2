import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  ConfigError,
  Dispatcher,
  NotATaskError,
  Task,
  TaskResult,
  type ApplyOptions,
  type TaskProxy,
  type TaskRef,
} from 'heimdall-tasks';
import { useHarness } from '../helpers.js';

// The type assertions below are checked by `tsc -p tsconfig.json` (part of `npm test`): an
// unused `@ts-expect-error` is itself an error, so each marked line must stay a compile error.

class ProxyReports {
  /** A plain property: never a task. */
  label = 'reports';

  @Task({ unique: true })
  async generateReport(customerId: number): Promise<{ url: string }> {
    return { url: `https://example.test/${customerId}` };
  }

  @Task()
  async notify(email: string, urgent?: boolean): Promise<void> {
    void email;
    void urgent;
  }

  /** A sync method: not a task either. */
  format(customerId: number): string {
    return `#${customerId}`;
  }

  /** Async but not decorated: typed like a task, NotATaskError at run time. */
  async undecorated(customerId: number): Promise<number> {
    return customerId;
  }
}

/** Never called: it exists for the type checker. */
async function compileOnly(dispatcher: Dispatcher): Promise<void> {
  const reports = dispatcher.tasks(ProxyReports);

  expectTypeOf(reports.generateReport.delay(42)).toEqualTypeOf<Promise<TaskResult<{ url: string }>>>();
  expectTypeOf(reports.generateReport.delay(42)).resolves.toEqualTypeOf<TaskResult<{ url: string }>>();
  // @ts-expect-error customerId is a number
  void reports.generateReport.delay('x');
  // @ts-expect-error one argument is required
  void reports.generateReport.delay();
  // @ts-expect-error one argument at most
  void reports.generateReport.delay(42, 43);

  expectTypeOf(reports.generateReport.applyAsync([42], { countdown: 10 })).resolves.toEqualTypeOf<TaskResult<{ url: string }>>();
  void reports.generateReport.applyAsync([42]);
  void reports.generateReport.applyAsync([42], { countdown: '10s', eta: new Date(), taskId: 'abc', queue: 'q' });
  // @ts-expect-error customerId is a number
  void reports.generateReport.applyAsync(['x']);
  // @ts-expect-error args is a tuple, not spread
  void reports.generateReport.applyAsync(42);
  // @ts-expect-error unknown call option
  void reports.generateReport.applyAsync([42], { countdwn: 10 });

  expectTypeOf(reports.generateReport.current(42)).toEqualTypeOf<Promise<TaskResult<{ url: string }> | null>>();
  // @ts-expect-error customerId is a number
  void reports.generateReport.current('x');

  const handle = await reports.generateReport.delay(42);
  expectTypeOf(handle.get()).resolves.toEqualTypeOf<{ url: string }>();
  expectTypeOf(handle.get({ timeout: 30 })).resolves.toEqualTypeOf<{ url: string }>();
  expectTypeOf(handle.id).toEqualTypeOf<string>();
  expectTypeOf(handle.duplicate).toEqualTypeOf<boolean>();
  const { url } = await handle.get({ timeout: 30 });
  expectTypeOf(url).toEqualTypeOf<string>();

  // Optional parameters stay optional; void results stay void.
  void reports.notify.delay('a@b.c');
  void reports.notify.delay('a@b.c', true);
  expectTypeOf(reports.notify.delay('a@b.c')).resolves.toEqualTypeOf<TaskResult<void>>();
  // @ts-expect-error urgent is a boolean
  void reports.notify.delay('a@b.c', 'yes');

  // @ts-expect-error a sync method is not on the proxy
  void reports.format.delay(1);
  // @ts-expect-error a property is not on the proxy
  void reports.label;
  // @ts-expect-error nor is a name the class does not have
  void reports.missing;

  // tasks() takes a class, not an instance.
  // @ts-expect-error an instance is not a constructor
  dispatcher.tasks(new ProxyReports());

  // send() is untyped by design; the result type can be named.
  expectTypeOf(dispatcher.send('ProxyReports.generateReport', [42])).resolves.toEqualTypeOf<TaskResult<unknown>>();
  expectTypeOf(dispatcher.send<{ url: string }>('ProxyReports.generateReport', [42])).resolves.toEqualTypeOf<
    TaskResult<{ url: string }>
  >();
}

describe('typed proxy (types)', () => {
  it('maps exactly the async methods to TaskRefs with their parameter and result types', () => {
    type Proxy = TaskProxy<ProxyReports>;
    expectTypeOf<keyof Proxy>().toEqualTypeOf<'generateReport' | 'notify' | 'undecorated'>();
    expectTypeOf<Proxy['generateReport']>().toEqualTypeOf<TaskRef<[customerId: number], { url: string }>>();
    expectTypeOf<Proxy['generateReport']['delay']>().parameters.toEqualTypeOf<[customerId: number]>();
    expectTypeOf<Proxy['generateReport']['applyAsync']>().parameters.toEqualTypeOf<
      [args: [customerId: number], options?: ApplyOptions]
    >();
    expectTypeOf<Proxy['notify']>().toEqualTypeOf<TaskRef<[email: string, urgent?: boolean], void>>();
    expectTypeOf<Proxy['undecorated']>().toEqualTypeOf<TaskRef<[customerId: number], number>>();
    expectTypeOf(compileOnly).toBeFunction();
  });
});

describe('typed proxy (run time)', () => {
  const fresh = useHarness('proxy');

  it('rejects delay, applyAsync and current of an undecorated async method with NotATaskError', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ProxyReports);
    await expect(reports.undecorated.delay(1)).rejects.toThrow(NotATaskError);
    await expect(reports.undecorated.delay(1)).rejects.toThrow(
      'ProxyReports.undecorated is not a task: decorate the method with @Task()',
    );
    await expect(reports.undecorated.applyAsync([1], { countdown: 5 })).rejects.toBeInstanceOf(NotATaskError);
    await expect(reports.undecorated.current(1)).rejects.toBeInstanceOf(NotATaskError);
    // Nothing reached Redis.
    expect(await h.admin.keys(`${h.prefix}:*`)).toEqual([]);
  });

  it('gives the same rejection for members that the types already forbid', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ProxyReports) as unknown as Record<string, TaskRef<unknown[], unknown>>;
    await expect(reports.format!.delay(1)).rejects.toThrow('ProxyReports.format is not a task');
    await expect(reports.label!.delay()).rejects.toBeInstanceOf(NotATaskError);
  });

  it('exposes the registry name, is not a thenable, and refuses current() of a task that is not unique', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ProxyReports);
    expect(reports.generateReport.name).toBe('ProxyReports.generateReport');
    expect(reports.notify.name).toBe('ProxyReports.notify');
    // `await dispatcher.tasks(X)` must not hang on a `then` that is a task ref.
    expect((reports as unknown as { then?: unknown }).then).toBeUndefined();
    await expect(reports.notify.current('a@b.c')).rejects.toThrow(
      new ConfigError('ProxyReports.notify is not unique, so no task holds a lock for it'),
    );
  });
});
