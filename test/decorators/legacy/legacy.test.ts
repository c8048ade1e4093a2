import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { ConfigError, Task, TASK_METADATA, type TaskOptions } from 'heimdall-tasks';
import { discover, taskByName } from '../../../src/core/task/registry.js';
import { nextEvent, useHarness } from '../../helpers.js';

// Compiled with the root tsconfig: experimentalDecorators true (legacy, as NestJS apps use).
// test/decorators/tc39/tc39.test.ts runs the same scenarios under standard decorators.

/** Records how a decorator was called, to prove which decorator mode this file was compiled in. */
const calls: unknown[][] = [];
function Probe(...args: unknown[]): void {
  calls.push(args);
}

const reportOptions: TaskOptions = { unique: true, uniqueTimeout: '10m' };

class LegacyReports {
  constructor(private readonly host = 'https://legacy.test') {}

  @Probe
  @Task(reportOptions)
  async generateReport(customerId: number): Promise<{ url: string }> {
    return { url: `${this.host}/${customerId}` };
  }

  @Task({ name: 'legacy.renamed', queue: 'legacy-q' })
  async renamed(): Promise<void> {}

  @Task()
  async bare(): Promise<void> {}

  async plain(): Promise<void> {}
}

describe('@Task under legacy decorators (experimentalDecorators: true)', () => {
  it('was compiled as a legacy decorator: (target, propertyKey, descriptor)', () => {
    expect(calls).toHaveLength(1);
    const [args] = calls;
    expect(args).toHaveLength(3);
    const [target, key, descriptor] = args as [object, string, PropertyDescriptor];
    expect(target).toBe(LegacyReports.prototype);
    expect(key).toBe('generateReport');
    expect(descriptor.value).toBe(LegacyReports.prototype.generateReport);
  });

  it('stores the options given as metadata on the method function', () => {
    expect(Reflect.getMetadata(TASK_METADATA, LegacyReports.prototype.generateReport)).toBe(reportOptions);
    expect(Reflect.getMetadata('heimdall:task', LegacyReports.prototype.renamed)).toEqual({ name: 'legacy.renamed', queue: 'legacy-q' });
    expect(Reflect.getMetadata('heimdall:task', LegacyReports.prototype.bare)).toEqual({});
    expect(Reflect.getMetadata('heimdall:task', LegacyReports.prototype.plain)).toBeUndefined();
  });

  it('registers at class definition, before anything discovers the class', () => {
    // Nothing in this file has called discover() or tasks() on LegacyReports yet.
    const def = taskByName('LegacyReports.generateReport');
    expect(def?.owner).toBe(LegacyReports);
    expect(def?.options).toMatchObject({ unique: true, uniqueTimeoutMs: 600_000, queue: 'default' });
  });

  it("is discoverable and named 'Class.method', or by `name`", () => {
    const found = discover(LegacyReports);
    expect([...found.keys()].sort()).toEqual(['bare', 'generateReport', 'renamed']);
    expect(found.get('generateReport')?.name).toBe('LegacyReports.generateReport');
    expect(found.get('bare')?.name).toBe('LegacyReports.bare');
    expect(found.get('renamed')?.name).toBe('legacy.renamed');
    expect(found.get('renamed')?.options.queue).toBe('legacy-q');
    expect(taskByName('legacy.renamed')?.methodName).toBe('renamed');
    expect(taskByName('LegacyReports.renamed')).toBeUndefined();
  });

  it('throws ConfigError for bad options when the class is defined', () => {
    expect(() => {
      class LegacyBad {
        @Task({ rateLimit: [0, 60] })
        async m(): Promise<void> {}
      }
      void LegacyBad;
    }).toThrow(new ConfigError('@Task on LegacyBad.m: rateLimit: n must be a whole number of starts >= 1, got 0'));
    expect(() => {
      class LegacyBadStatic {
        @Task()
        static async m(): Promise<void> {}
      }
      void LegacyBadStatic;
    }).toThrow(ConfigError);
  });

  it('throws ConfigError at definition for a name collision, naming both', () => {
    expect(() => {
      class LegacyOther {
        @Task({ name: 'LegacyReports.bare' })
        async other(): Promise<void> {}
      }
      void LegacyOther;
    }).toThrow(/used twice: by LegacyReports\.bare and by LegacyOther\.other/);
  });

  it('names a self-referencing class as written, whatever esbuild renamed it to; `name` pins it', () => {
    // A class that refers to itself is renamed `_LegacyFactory` by esbuild without keepNames
    // (vite 7 and vitest force keepNames off), but keeps its name under tsc, swc and tsx: the
    // default name drops the underscores, so every toolchain gives `LegacyFactory.auto`
    // (test/toolchains.test.ts runs the same case under each of them).
    class LegacyFactory {
      @Task()
      async auto(): Promise<void> {}

      @Task({ name: 'legacy.factory-pinned' })
      async pinned(): Promise<void> {}

      static create(): LegacyFactory {
        return new LegacyFactory();
      }
    }
    const found = discover(LegacyFactory);
    expect(found.get('auto')?.name).toBe('LegacyFactory.auto');
    expect(['LegacyFactory', '_LegacyFactory']).toContain(LegacyFactory.name);
    expect(found.get('pinned')?.name).toBe('legacy.factory-pinned');
    expect(taskByName('legacy.factory-pinned')?.owner).toBe(LegacyFactory.create().constructor);
  });

  describe('end to end', () => {
    const fresh = useHarness('legacy');

    it('runs a task through a real Dispatcher and Worker', async () => {
      const h = fresh();
      const worker = h.worker({ services: [new LegacyReports('https://reports.legacy')] });
      await worker.start();
      const succeeded = nextEvent(worker, 'succeeded');
      const handle = await h.dispatcher().tasks(LegacyReports).generateReport.delay(42);
      expect(handle.name).toBe('LegacyReports.generateReport');
      expect(handle.duplicate).toBe(false);
      expect(await handle.get({ timeout: 10 })).toEqual({ url: 'https://reports.legacy/42' });
      const event = await succeeded;
      expect(event).toMatchObject({ id: handle.id, name: 'LegacyReports.generateReport', args: [42] });
      expect(await handle.status()).toBe('SUCCESS');
    });
  });
});
