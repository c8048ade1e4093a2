import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { ConfigError, Task, TASK_METADATA, type TaskOptions } from 'heimdall-tasks';
import { discover, taskByName } from '../../../src/core/task/registry.js';
import { nextEvent, useHarness } from '../../helpers.js';
// helpers.ts calls inject('redisUrl'), which global-setup.ts declares; this tsconfig only
// includes this folder, so bring that declaration in for `tsc -p test/decorators/tc39`.
import type {} from '../../global-setup.js';

// Compiled with test/decorators/tc39/tsconfig.json: experimentalDecorators false, so both tsc
// and vite's esbuild emit standard (TC39) decorators. ../legacy/legacy.test.ts has the same
// scenarios under legacy decorators.

/** Records how a decorator was called, to prove which decorator mode this file was compiled in. */
const calls: unknown[][] = [];
function Probe(...args: unknown[]): void {
  calls.push(args);
}

const reportOptions: TaskOptions = { unique: true, uniqueTimeout: '10m' };

class Tc39Reports {
  constructor(private readonly host = 'https://tc39.test') {}

  @Probe
  @Task(reportOptions)
  async generateReport(customerId: number): Promise<{ url: string }> {
    return { url: `${this.host}/${customerId}` };
  }

  @Task({ name: 'tc39.renamed', queue: 'tc39-q' })
  async renamed(): Promise<void> {}

  @Task()
  async bare(): Promise<void> {}

  async plain(): Promise<void> {}
}

describe('@Task under standard decorators (experimentalDecorators: false)', () => {
  it('was compiled as a standard decorator: (value, context) with kind "method"', () => {
    expect(calls).toHaveLength(1);
    const [args] = calls;
    expect(args).toHaveLength(2);
    const [value, context] = args as [unknown, ClassMethodDecoratorContext];
    expect(typeof value).toBe('function');
    expect(context.kind).toBe('method');
    expect(context.name).toBe('generateReport');
    expect(context.static).toBe(false);
    expect(context.private).toBe(false);
    // @Task returned nothing, so the class keeps the method it was given.
    expect(Tc39Reports.prototype.generateReport).toBe(value);
  });

  it('stores the options given as metadata on the method function', () => {
    expect(Reflect.getMetadata(TASK_METADATA, Tc39Reports.prototype.generateReport)).toBe(reportOptions);
    expect(Reflect.getMetadata('heimdall:task', Tc39Reports.prototype.renamed)).toEqual({ name: 'tc39.renamed', queue: 'tc39-q' });
    expect(Reflect.getMetadata('heimdall:task', Tc39Reports.prototype.bare)).toEqual({});
    expect(Reflect.getMetadata('heimdall:task', Tc39Reports.prototype.plain)).toBeUndefined();
  });

  it('registers on first use: unknown by name until the class is discovered', () => {
    // A standard method decorator cannot see its class, so the registry learns of it in discover().
    expect(taskByName('Tc39Reports.generateReport')).toBeUndefined();
    expect(taskByName('tc39.renamed')).toBeUndefined();
    const found = discover(Tc39Reports);
    expect(found.get('generateReport')?.owner).toBe(Tc39Reports);
    expect(taskByName('Tc39Reports.generateReport')).toBe(found.get('generateReport'));
    expect(taskByName('Tc39Reports.generateReport')?.options).toMatchObject({ unique: true, uniqueTimeoutMs: 600_000, queue: 'default' });
  });

  it("is discoverable and named 'Class.method', or by `name`", () => {
    const found = discover(Tc39Reports);
    expect([...found.keys()].sort()).toEqual(['bare', 'generateReport', 'renamed']);
    expect(found.get('generateReport')?.name).toBe('Tc39Reports.generateReport');
    expect(found.get('bare')?.name).toBe('Tc39Reports.bare');
    expect(found.get('renamed')?.name).toBe('tc39.renamed');
    expect(found.get('renamed')?.options.queue).toBe('tc39-q');
    expect(taskByName('tc39.renamed')?.methodName).toBe('renamed');
    expect(taskByName('Tc39Reports.renamed')).toBeUndefined();
  });

  it('finds inherited tasks', () => {
    class Tc39Child extends Tc39Reports {
      @Task()
      async extra(): Promise<void> {}
    }
    const found = discover(Tc39Child);
    expect([...found.keys()].sort()).toEqual(['bare', 'extra', 'generateReport', 'renamed']);
    expect(found.get('extra')?.name).toBe('Tc39Child.extra');
    expect(found.get('generateReport')?.owner).toBe(Tc39Reports);
  });

  it('throws ConfigError for bad options when the class is defined', () => {
    expect(() => {
      class Tc39Bad {
        @Task({ rateLimit: [0, 60] })
        async m(): Promise<void> {}
      }
      void Tc39Bad;
    }).toThrow(new ConfigError('@Task on m: rateLimit: n must be a whole number of starts >= 1, got 0'));
    expect(() => {
      class Tc39BadStatic {
        @Task()
        static async m(): Promise<void> {}
      }
      void Tc39BadStatic;
    }).toThrow(new ConfigError('@Task on m: @Task goes on public instance methods only'));
    expect(() => {
      class Tc39BadGetter {
        // @ts-expect-error standard decorators type-check the member kind: a getter is not a method
        @Task()
        get value(): Promise<number> {
          return Promise.resolve(1);
        }
      }
      void Tc39BadGetter;
    }).toThrow(new ConfigError('@Task on value: @Task goes on public instance methods only'));
    expect(() => {
      class Tc39BadPrivate {
        @Task()
        async #hidden(): Promise<void> {}

        run(): Promise<void> {
          return this.#hidden();
        }
      }
      void Tc39BadPrivate;
    }).toThrow(new ConfigError('@Task on #hidden: @Task goes on public instance methods only'));
  });

  it('throws ConfigError for a name collision when the second class is discovered, naming both', () => {
    class Tc39Other {
      @Task({ name: 'Tc39Reports.bare' })
      async other(): Promise<void> {}
    }
    discover(Tc39Reports);
    expect(() => discover(Tc39Other)).toThrow(
      new ConfigError(
        "task name 'Tc39Reports.bare' is used twice: by Tc39Reports.bare and by Tc39Other.other; give one of them another name",
      ),
    );
  });

  it('names a self-referencing class as written, whatever esbuild renamed it to; `name` pins it', () => {
    // A class that refers to itself is renamed `_Tc39Factory` by esbuild without keepNames
    // (vite 7 and vitest force keepNames off), but keeps its name under tsc, swc and tsx: the
    // default name drops the underscores, so every toolchain gives `Tc39Factory.auto`
    // (test/toolchains.test.ts runs the same case under each of them).
    class Tc39Factory {
      @Task()
      async auto(): Promise<void> {}

      @Task({ name: 'tc39.factory-pinned' })
      async pinned(): Promise<void> {}

      static create(): Tc39Factory {
        return new Tc39Factory();
      }
    }
    const found = discover(Tc39Factory);
    expect(found.get('auto')?.name).toBe('Tc39Factory.auto');
    expect(['Tc39Factory', '_Tc39Factory']).toContain(Tc39Factory.name);
    expect(found.get('pinned')?.name).toBe('tc39.factory-pinned');
    expect(taskByName('tc39.factory-pinned')?.owner).toBe(Tc39Factory.create().constructor);
  });

  describe('end to end', () => {
    const fresh = useHarness('tc39');

    it('runs a task through a real Dispatcher and Worker', async () => {
      const h = fresh();
      const worker = h.worker({ services: [new Tc39Reports('https://reports.tc39')] });
      await worker.start();
      const succeeded = nextEvent(worker, 'succeeded');
      const handle = await h.dispatcher().tasks(Tc39Reports).generateReport.delay(42);
      expect(handle.name).toBe('Tc39Reports.generateReport');
      expect(handle.duplicate).toBe(false);
      expect(await handle.get({ timeout: 10 })).toEqual({ url: 'https://reports.tc39/42' });
      const event = await succeeded;
      expect(event).toMatchObject({ id: handle.id, name: 'Tc39Reports.generateReport', args: [42] });
      expect(await handle.status()).toBe('SUCCESS');
    });
  });
});
