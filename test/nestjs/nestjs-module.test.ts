// heimdall-tasks/nestjs in real Nest applications, in-process under vitest.
//
// Vitest compiles with esbuild, which does not emit `design:paramtypes`, so the providers here name
// their dependencies with @Inject(...) instead of relying on emitted metadata; the module's own
// providers are factories and need none. test/nestjs/consumers.test.ts compiles Nest apps with tsc
// and emitDecoratorMetadata, as users build them, and runs them against the built package.
import { Controller, Get, Inject, Injectable, Module, Param, Post, Scope, type INestApplication, type INestApplicationContext } from '@nestjs/common';
import { NestFactory, REQUEST } from '@nestjs/core';
import { Test } from '@nestjs/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { Dispatcher as CoreDispatcher, Task } from 'heimdall-tasks';
import { Dispatcher, HeimdallModule, InjectTasks, OnTaskEvent, type HeimdallTaskRequest, type TaskProxy, type WorkerEvents } from 'heimdall-tasks/nestjs';
import { HeimdallLifecycle } from '../../src/nestjs/heimdall-lifecycle.js';
import { gate, newPrefix, redisUrl, waitFor } from '../helpers.js';

@Injectable()
class Pricing {
  readonly ratePerUnit = 3;
}

const held = { gate: gate() };

@Injectable()
class Billing {
  constructor(@Inject(Pricing) private readonly pricing: Pricing) {}

  @Task()
  async invoice(units: number): Promise<{ total: number }> {
    return { total: units * this.pricing.ratePerUnit };
  }

  @Task()
  async refuse(reason: string): Promise<never> {
    throw new Error(`refused: ${reason}`);
  }

  @Task()
  async slow(units: number): Promise<number> {
    await held.gate.promise;
    return units * this.pricing.ratePerUnit;
  }
}

@Injectable()
class Shop {
  constructor(@InjectTasks(Billing) readonly billing: TaskProxy<Billing>) {}
}

@Injectable()
class Observer {
  readonly started: WorkerEvents['started'][0][] = [];
  readonly failed: WorkerEvents['failed'][0][] = [];

  @OnTaskEvent('started')
  onStarted(event: WorkerEvents['started'][0]): void {
    this.started.push(event);
  }

  @OnTaskEvent('failed')
  onFailed(event: WorkerEvents['failed'][0]): void {
    this.failed.push(event);
  }
}

let made = 0;

@Injectable({ scope: Scope.REQUEST })
class PerTask {
  private readonly serial = ++made;
  constructor(
    @Inject(REQUEST) private readonly request: HeimdallTaskRequest,
    @Inject(Pricing) private readonly pricing: Pricing,
  ) {}

  @Task()
  async whoAmI(): Promise<{ serial: number; taskId: string; rate: number }> {
    return { serial: this.serial, taskId: this.request.task.id, rate: this.pricing.ratePerUnit };
  }
}

let transientMade = 0;

@Injectable({ scope: Scope.TRANSIENT })
class Fresh {
  private readonly serial = ++transientMade;

  @Task()
  async serialOf(): Promise<number> {
    return this.serial;
  }
}

const open: INestApplicationContext[] = [];
afterEach(async () => {
  held.gate.open();
  held.gate = gate();
  await Promise.all(open.splice(0).map((app) => app.close()));
});

describe('Test.createTestingModule', () => {
  async function boot(prefix: string) {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix, worker: { concurrency: 4 } })],
      // Observer also behind an alias: its listeners must still be called once per event.
      providers: [Pricing, Billing, Shop, Observer, { provide: 'observer-alias', useExisting: Observer }, PerTask, Fresh],
    }).compile();
    open.push(moduleRef);
    await moduleRef.init();
    expect(moduleRef.get(HeimdallLifecycle).currentWorker?.queues).toEqual(['default']);
    return moduleRef;
  }

  it('runs a task on the container instance, with its injected dependency, through @InjectTasks and the Dispatcher', async () => {
    const app = await boot(newPrefix('nest'));
    const shop = app.get(Shop);
    const handle = await shop.billing.invoice.delay(5);
    expect(await handle.get({ timeout: 20 })).toEqual({ total: 15 });

    const dispatcher = app.get(Dispatcher);
    expect(dispatcher).toBeInstanceOf(CoreDispatcher);
    const again = await dispatcher.tasks(Billing).invoice.delay(7);
    expect(await again.get({ timeout: 20 })).toEqual({ total: 21 });
    expect(app.get(Observer).started.map((e) => e.id)).toEqual(expect.arrayContaining([handle.id, again.id]));
  });

  it('calls @OnTaskEvent methods with the worker event payloads', async () => {
    const app = await boot(newPrefix('nest-ev'));
    const handle = await app.get(Shop).billing.refuse.delay('no stock');
    await expect(handle.get({ timeout: 20 })).rejects.toThrow(/refused: no stock/);
    const observer = app.get(Observer);
    const failed = await waitFor(() => observer.failed.find((e) => e.id === handle.id), { what: 'the failed event' });
    expect(failed).toMatchObject({ name: 'Billing.refuse', args: ['no stock'], error: { message: 'refused: no stock' } });
    expect(observer.failed.filter((e) => e.id === handle.id)).toHaveLength(1);
  });

  it('resolves a fresh request-scoped or transient instance per task run, with REQUEST bound to the task', async () => {
    const app = await boot(newPrefix('nest-scope'));
    const dispatcher = app.get(Dispatcher);
    const [a, b] = await Promise.all([dispatcher.tasks(PerTask).whoAmI.delay(), dispatcher.tasks(PerTask).whoAmI.delay()]);
    const [ra, rb] = await Promise.all([a.get({ timeout: 20 }), b.get({ timeout: 20 })]);
    expect(ra.taskId).toBe(a.id);
    expect(rb.taskId).toBe(b.id);
    expect(ra.rate).toBe(3);
    expect(ra.serial).not.toBe(rb.serial);

    const [x, y] = await Promise.all([dispatcher.tasks(Fresh).serialOf.delay(), dispatcher.tasks(Fresh).serialOf.delay()]);
    expect(await x.get({ timeout: 20 })).not.toBe(await y.get({ timeout: 20 }));
  });

  it('starts no worker when no provider has @Task methods', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix: newPrefix('nest-none') })],
      providers: [Pricing],
    }).compile();
    moduleRef.useLogger(false);
    open.push(moduleRef);
    await moduleRef.init();
    expect(moduleRef.get(HeimdallLifecycle).currentWorker).toBeUndefined();
    expect(moduleRef.get(Dispatcher)).toBeInstanceOf(CoreDispatcher);
  });

  it('a worker that cannot start fails the bootstrap, and leaves no connection open', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix: newPrefix('nest-bad'), worker: { concurrency: -1 } })],
      providers: [Pricing, Billing],
    }).compile();
    moduleRef.useLogger(false);
    open.push(moduleRef);
    const dispatcher = moduleRef.get(Dispatcher);
    await expect(moduleRef.init()).rejects.toThrow(/concurrency/);
    expect(moduleRef.get(HeimdallLifecycle).currentWorker).toBeUndefined();
    // Closed, not left connecting or connected (a disconnect while connecting ends a moment later).
    await waitFor(() => dispatcher.client.status === 'end', { timeout: 5000, what: "the dispatcher's connection to end" });
  });

  it('closes the worker gracefully on shutdown, waiting for a running task, then the dispatcher', async () => {
    const prefix = newPrefix('nest-close');
    const app = await boot(prefix);
    const dispatcher = app.get(Dispatcher);
    const handle = await app.get(Shop).billing.slow.delay(2);
    const observer = app.get(Observer);
    await waitFor(() => observer.started.some((e) => e.id === handle.id), { what: 'the slow task to start' });

    let closed = false;
    const closing = app.close().then(() => (closed = true));
    open.splice(open.indexOf(app), 1);
    // Shutdown has begun: the module has let go of its worker, which is now waiting for the task.
    await waitFor(() => app.get(HeimdallLifecycle).currentWorker === undefined, { what: 'the shutdown to begin' });
    expect(closed).toBe(false);
    // The dispatcher closes last: while the worker waits for the task, providers can still dispatch.
    expect(dispatcher.client.status).toBe('ready');
    expect((await dispatcher.result(handle.id).status())).toBe('STARTED');
    held.gate.open();
    await closing;

    const reader = new CoreDispatcher({ connection: redisUrl(), prefix });
    try {
      const info = await reader.result<number>(handle.id).info();
      expect(info.state).toBe('SUCCESS');
      expect(info.result).toBe(6);
    } finally {
      await reader.close();
    }
    expect(dispatcher.client.status).toBe('end');
  });
});

/** A resource closed at shutdown the way TypeORM closes its connection (onApplicationShutdown). */
@Injectable()
class Database {
  open = true;
  closedAt: 'beforeApplicationShutdown' | 'onApplicationShutdown' | undefined;
  constructor(@Inject('db-closes-in') private readonly closesIn: 'beforeApplicationShutdown' | 'onApplicationShutdown') {}
  beforeApplicationShutdown(): void {
    if (this.closesIn === 'beforeApplicationShutdown') this.close();
  }
  onApplicationShutdown(): void {
    if (this.closesIn === 'onApplicationShutdown') this.close();
  }
  private close(): void {
    this.open = false;
    this.closedAt = this.closesIn;
  }
}

@Injectable()
class Ledger {
  constructor(@Inject(Database) private readonly db: Database) {}

  @Task()
  async post(): Promise<string> {
    await held.gate.promise;
    if (!this.db.open) throw new Error('db closed while the task ran');
    return 'posted';
  }

  @Task({ queue: 'nest-ledger-audit' })
  async audit(): Promise<string> {
    return 'audited';
  }
}

@Injectable()
class PerRunByToken {
  @Task()
  async token(): Promise<string> {
    return 'resolved by its token';
  }
}

describe('shutdown order, queues and tokens', () => {
  it.each(['beforeApplicationShutdown', 'onApplicationShutdown'] as const)(
    'a running task ends before a provider closes what it uses in %s',
    async (closesIn) => {
      const prefix = newPrefix('nest-order');
      const moduleRef = await Test.createTestingModule({
        imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix })],
        providers: [{ provide: 'db-closes-in', useValue: closesIn }, Database, Ledger],
      }).compile();
      await moduleRef.init();
      const handle = await moduleRef.get(Dispatcher).tasks(Ledger).post.delay();
      await waitFor(async () => (await handle.status()) === 'STARTED', { what: 'the task to start' });
      const db = moduleRef.get(Database);
      const closing = moduleRef.close();
      // Whichever comes first: the database closing, or the worker being let go (it then waits for the task).
      await waitFor(() => !db.open || moduleRef.get(HeimdallLifecycle).currentWorker === undefined, { what: 'the shutdown to begin' });
      held.gate.open();
      await closing;
      expect(db.closedAt).toBe(closesIn);
      const reader = new CoreDispatcher({ connection: redisUrl(), prefix });
      try {
        expect(await reader.result(handle.id).info()).toMatchObject({ state: 'SUCCESS', result: 'posted' });
      } finally {
        await reader.close();
      }
    },
  );

  it('the worker consumes every queue the providers name; a scoped provider under a string token is resolved by it', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix: newPrefix('nest-queues') })],
      providers: [{ provide: 'db-closes-in', useValue: 'onApplicationShutdown' }, Database, Ledger, { provide: 'PER_RUN', useClass: PerRunByToken, scope: Scope.REQUEST }],
    }).compile();
    open.push(moduleRef);
    await moduleRef.init();
    expect(moduleRef.get(HeimdallLifecycle).currentWorker?.queues).toEqual(['default', 'nest-ledger-audit']);
    const dispatcher = moduleRef.get(Dispatcher);
    expect(await (await dispatcher.tasks(Ledger).audit.delay()).get({ timeout: 20 })).toBe('audited');
    expect(await (await dispatcher.tasks(PerRunByToken).token.delay()).get({ timeout: 20 })).toBe('resolved by its token');
  });
});

@Injectable()
class EarlyBird {
  sent: Promise<unknown> | undefined;
  constructor(@InjectTasks(Billing) private readonly billing: TaskProxy<Billing>) {}

  /** Dispatches before the application has bootstrapped. */
  onModuleInit(): void {
    this.sent = this.billing.invoice.delay(2);
  }
}

@Injectable()
class Grumpy {
  @OnTaskEvent('succeeded')
  onSucceeded(_event: WorkerEvents['succeeded'][0]): void {
    throw new Error('a listener that throws');
  }

  @OnTaskEvent('started')
  async onStarted(_event: WorkerEvents['started'][0]): Promise<void> {
    throw new Error('a listener that rejects');
  }
}

describe('@OnTaskEvent listeners that throw', () => {
  it('change nothing for the task, and the other listeners are still called', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix: newPrefix('nest-grumpy') })],
      providers: [Pricing, Billing, Grumpy, Observer],
    }).compile();
    open.push(moduleRef);
    await moduleRef.init();
    const handle = await moduleRef.get(Dispatcher).tasks(Billing).invoice.delay(3);
    expect(await handle.get({ timeout: 20 })).toEqual({ total: 9 });
    expect(await handle.status()).toBe('SUCCESS');
    await waitFor(() => moduleRef.get(Observer).started.some((e) => e.id === handle.id), { what: 'the other listener' });
    // The worker goes on: a second task runs too.
    expect(await (await moduleRef.get(Dispatcher).tasks(Billing).invoice.delay(4)).get({ timeout: 20 })).toEqual({ total: 12 });
  });
});

@Injectable()
class LastWords {
  sent: string | undefined;
  constructor(@InjectTasks(Billing) private readonly billing: TaskProxy<Billing>) {}

  /** Dispatches during shutdown, after the worker (or the inline engine) has stopped. */
  async onApplicationShutdown(): Promise<void> {
    this.sent = (await this.billing.invoice.delay(1)).id;
  }
}

describe('HeimdallModule.forRoot({ inline: true })', () => {
  it('runs the tasks on the container providers in this process, without Redis: dependencies, events, scopes, early dispatches', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ inline: true })],
      providers: [Pricing, Billing, Shop, Observer, PerTask, EarlyBird],
    }).compile();
    open.push(moduleRef);
    await moduleRef.init();
    const dispatcher = moduleRef.get(Dispatcher);
    expect(dispatcher).toBeInstanceOf(CoreDispatcher);
    expect(() => dispatcher.client).toThrow(/no Redis client/);
    expect(moduleRef.get(HeimdallLifecycle).currentWorker).toBeUndefined();

    const early = (await moduleRef.get(EarlyBird).sent) as Awaited<ReturnType<TaskProxy<Billing>['invoice']['delay']>>;
    expect(await early.get({ timeout: 5 })).toEqual({ total: 6 });
    const handle = await moduleRef.get(Shop).billing.invoice.delay(5);
    expect(await handle.get({ timeout: 5 })).toEqual({ total: 15 });
    expect((await handle.info()).worker).toBe('inline');

    const refused = await moduleRef.get(Shop).billing.refuse.delay('no stock');
    await expect(refused.get({ timeout: 5 })).rejects.toThrow(/refused: no stock/);
    const observer = moduleRef.get(Observer);
    await waitFor(() => observer.failed.find((e) => e.id === refused.id), { what: 'the failed event' });
    expect(observer.started.map((e) => e.id)).toEqual(expect.arrayContaining([early.id, handle.id, refused.id]));

    const [a, b] = await Promise.all([dispatcher.tasks(PerTask).whoAmI.delay(), dispatcher.tasks(PerTask).whoAmI.delay()]);
    const [ra, rb] = await Promise.all([a.get({ timeout: 5 }), b.get({ timeout: 5 })]);
    expect(ra.taskId).toBe(a.id);
    expect(ra.serial).not.toBe(rb.serial);
  });

  it('shutdown waits for a running inline task, then closes the dispatcher; providers can dispatch until then', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [HeimdallModule.forRoot({ inline: true, worker: { closeTimeout: 10 } })],
      providers: [Pricing, Billing, LastWords],
    }).compile();
    await moduleRef.init();
    const dispatcher = moduleRef.get(Dispatcher);
    const slow = await dispatcher.tasks(Billing).slow.delay(4);
    await waitFor(async () => (await slow.status()) === 'STARTED', { what: 'the slow task to start' });
    const closing = moduleRef.close();
    held.gate.open();
    await closing;
    expect(await slow.status()).toBe('SUCCESS');
    // Sent in onApplicationShutdown: accepted, and left PENDING (nothing runs any more), as with Redis.
    const last = moduleRef.get(LastWords).sent;
    expect(last).toBeDefined();
    await expect(dispatcher.tasks(Billing).invoice.delay(1)).rejects.toThrow(/closed/);
  });
});

describe('a producer-only HTTP app and a worker-only app on one prefix', () => {
  @Controller('invoices')
  class InvoiceController {
    constructor(
      @InjectTasks(Billing) private readonly billing: TaskProxy<Billing>,
      @Inject(Dispatcher) private readonly dispatcher: Dispatcher,
    ) {}

    @Post(':units')
    async create(@Param('units') units: string): Promise<{ id: string }> {
      const handle = await this.billing.invoice.delay(Number(units));
      return { id: handle.id };
    }

    @Get(':id')
    async read(@Param('id') id: string): Promise<{ state: string; result: unknown }> {
      const info = await this.dispatcher.result(id).info();
      return { state: info.state, result: info.result ?? null };
    }
  }

  it('dispatches from a real HTTP request; the worker-only app runs the task with its injected dependency', async () => {
    const prefix = newPrefix('nest-http');

    @Module({ imports: [HeimdallModule.forRoot({ connection: redisUrl(), prefix, worker: false })], controllers: [InvoiceController] })
    class WebModule {}

    class Settings {
      constructor(readonly prefix: string) {}
    }
    @Module({ providers: [{ provide: Settings, useValue: new Settings(prefix) }], exports: [Settings] })
    class SettingsModule {}

    @Module({
      imports: [
        HeimdallModule.forRootAsync({
          imports: [SettingsModule],
          inject: [Settings],
          useFactory: async (settings: Settings) => ({ connection: redisUrl(), prefix: settings.prefix, worker: { concurrency: 2 } }),
        }),
      ],
      providers: [Pricing, Billing],
    })
    class WorkerModule {}

    const web: INestApplication = await NestFactory.create(WebModule, { logger: false });
    open.push(web);
    await web.listen(0, '127.0.0.1');
    const base = (await web.getUrl()).replace('[::1]', '127.0.0.1');
    expect(web.get(HeimdallLifecycle).currentWorker).toBeUndefined();

    const created = await fetch(`${base}/invoices/4`, { method: 'POST' });
    expect(created.status).toBe(201);
    const { id } = (await created.json()) as { id: string };
    // No worker anywhere yet: the web tier only produces.
    expect(await (await fetch(`${base}/invoices/${id}`)).json()).toEqual({ state: 'PENDING', result: null });

    const worker = await NestFactory.createApplicationContext(WorkerModule, { logger: false });
    open.push(worker);
    const done = await waitFor(
      async () => {
        const body = (await (await fetch(`${base}/invoices/${id}`)).json()) as { state: string; result: unknown };
        return body.state === 'SUCCESS' ? body : undefined;
      },
      { what: 'the invoice task to succeed', timeout: 20_000 },
    );
    expect(done.result).toEqual({ total: 12 });
  });
});

describe('types', () => {
  it('@InjectTasks handles and @OnTaskEvent listeners are checked at compile time', () => {
    // Compiled by `tsc -p .` (npm run typecheck); never called.
    const compileOnly = (shop: Shop): void => {
      void shop.billing.invoice.delay(5);
      // @ts-expect-error: invoice takes a number
      void shop.billing.invoice.delay('five');
      // @ts-expect-error: Billing has no task named audit
      void shop.billing.audit;
    };
    class WrongListener {
      // @ts-expect-error: a 'failed' listener receives the failed event's payload, not a number
      @OnTaskEvent('failed')
      onFailed(_count: number): void {}
    }
    expect(typeof compileOnly).toBe('function');
    expect(typeof WrongListener).toBe('function');
  });
});
