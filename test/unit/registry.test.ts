import { describe, expect, it } from 'vitest';
import { ConfigError, Task, Worker } from 'heimdall-tasks';
import { createTestApp } from 'heimdall-tasks/testing';
import { discover, taskByName, taskOptionsOf, underscoreTwin, type Constructor } from '../../src/core/task/registry.js';

// The registry is process-wide (on globalThis), so every class here has a name no other test uses.

describe('registry', () => {
  it("names a task 'ClassName.method' by default, at class definition", () => {
    class RegDefaultName {
      @Task()
      async generate(): Promise<void> {}
    }
    const def = taskByName('RegDefaultName.generate');
    expect(def).toBeDefined();
    expect(def!.name).toBe('RegDefaultName.generate');
    expect(def!.className).toBe('RegDefaultName');
    expect(def!.methodName).toBe('generate');
    expect(def!.owner).toBe(RegDefaultName);
    expect(def!.options.queue).toBe('default');
  });

  it('drops leading underscores from the class part of a default name, as toolchains add them', () => {
    // esbuild (vite 7, vitest, bundles) turns a self-referencing `RegSelfRef` into `_RegSelfRef`
    // and a self-referencing `_RegSelfRef` (as here, under this suite's vitest) into `__RegSelfRef`;
    // the names given to classes that tsc and swc leave alone are the same.
    class _RegSelfRef {
      static readonly shared = new _RegSelfRef();
      @Task()
      async run(): Promise<void> {}
    }
    class __RegOwnUnderscore {
      @Task()
      async run(): Promise<void> {}
    }
    class _RegOwnUnderscore {
      @Task()
      async other(): Promise<void> {}
    }
    expect(taskByName('RegSelfRef.run')?.owner).toBe(_RegSelfRef);
    expect(taskByName('RegSelfRef.run')?.className).toBe('RegSelfRef');
    expect(taskByName('_RegSelfRef.run')).toBeUndefined();
    expect(taskByName('RegOwnUnderscore.run')?.owner).toBe(__RegOwnUnderscore);
    expect(taskByName('RegOwnUnderscore.other')?.owner).toBe(_RegOwnUnderscore);
    // A class named only with underscores keeps its name; `name` is never changed.
    class __ {
      @Task()
      async run(): Promise<void> {}
      @Task({ name: '_reg.explicit' })
      async explicit(): Promise<void> {}
    }
    expect(taskByName('__.run')?.owner).toBe(__);
    expect(taskByName('_reg.explicit')?.owner).toBe(__);
  });

  it('finds the registered twin of a name that differs only by leading underscores', () => {
    class RegTwin {
      @Task()
      async run(): Promise<void> {}
      @Task({ name: '_RegTwinExplicit.run' })
      async explicit(): Promise<void> {}
    }
    expect(taskByName('RegTwin.run')?.owner).toBe(RegTwin);
    expect(underscoreTwin('_RegTwin.run')).toBe('RegTwin.run');
    expect(underscoreTwin('__RegTwin.run')).toBe('RegTwin.run');
    expect(underscoreTwin('RegTwinExplicit.run')).toBe('_RegTwinExplicit.run');
    expect(underscoreTwin('RegTwin.run')).toBeUndefined();
    expect(underscoreTwin('RegTwin.other')).toBeUndefined();
  });

  it('uses `name` instead of the default', () => {
    class RegNamed {
      @Task({ name: 'reg.named-task', queue: 'reg-q' })
      async run(): Promise<void> {}
    }
    expect(taskByName('RegNamed.run')).toBeUndefined();
    const def = taskByName('reg.named-task');
    expect(def?.owner).toBe(RegNamed);
    expect(def?.methodName).toBe('run');
    expect(def?.options.queue).toBe('reg-q');
  });

  it('rejects two methods of two classes with one explicit name, naming both', () => {
    class A {
      @Task({ name: 'reg.collide' })
      async m(): Promise<void> {}
    }
    void A;
    let caught: unknown;
    try {
      class B {
        @Task({ name: 'reg.collide' })
        async n(): Promise<void> {}
      }
      void B;
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toBe(
      "task name 'reg.collide' is used twice: by A.m and by B.n; give one of them another name",
    );
    // The first owner keeps the name.
    expect(taskByName('reg.collide')?.owner).toBe(A);
  });

  it("rejects an explicit name equal to another task's default name", () => {
    class RegHolder {
      @Task()
      async job(): Promise<void> {}
    }
    void RegHolder;
    expect(() => {
      class RegSquatter {
        @Task({ name: 'RegHolder.job' })
        async other(): Promise<void> {}
      }
      void RegSquatter;
    }).toThrow(/by RegHolder\.job and by RegSquatter\.other/);
  });

  it('rejects _Report and Report, whose default names are both Report.run: two classes, one name', () => {
    class Report {
      @Task()
      async run(): Promise<void> {}
    }
    void Report;
    expect(() => {
      class _Report {
        @Task()
        async run(): Promise<void> {}
      }
      void _Report;
    }).toThrow("task name 'Report.run' is used twice: by Report.run and by _Report.run; give one of them another name");
  });

  it('rejects two methods of one class with one name', () => {
    expect(() => {
      class RegSameClass {
        @Task({ name: 'reg.same-class' })
        async first(): Promise<void> {}

        @Task({ name: 'reg.same-class' })
        async second(): Promise<void> {}
      }
      void RegSameClass;
    }).toThrow("task name 'reg.same-class' is used twice: by RegSameClass.first and by RegSameClass.second");
  });

  it('lets a class be defined again (a module evaluated twice): the newer one replaces it', () => {
    function defineModule(result: string): Constructor {
      class RegReloaded {
        @Task()
        async run(): Promise<string> {
          return result;
        }

        @Task({ name: 'reg.reloaded-named' })
        async named(): Promise<void> {}
      }
      return RegReloaded;
    }
    const first = defineModule('first');
    let second: Constructor | undefined;
    expect(() => {
      second = defineModule('second');
    }).not.toThrow();
    expect(second).not.toBe(first);
    expect(taskByName('RegReloaded.run')?.owner).toBe(second);
    expect(taskByName('reg.reloaded-named')?.owner).toBe(second);
  });

  it('two different classes of one name (as in two namespaces): each runs its own task; one worker cannot serve both', async () => {
    // Two scopes, as two namespaces compile to, each with its own class RegReport.
    const billing = (() => {
      class RegReport {
        @Task()
        async run(): Promise<string> {
          return 'billing';
        }
      }
      return RegReport;
    })();
    const analytics = (() => {
      class RegReport {
        @Task()
        async run(): Promise<string> {
          return 'analytics';
        }
      }
      return RegReport;
    })();
    // A worker (here inline) that serves one of them runs that one's task, whichever registered last.
    for (const [cls, body] of [[billing, 'billing'], [analytics, 'analytics']] as const) {
      const app = await createTestApp({ services: [new cls()], inline: true });
      try {
        expect(await (await app.tasks(cls).run.delay()).get({ timeout: 5 })).toBe(body);
      } finally {
        await app.close();
      }
    }
    // One that serves both cannot tell which a message means.
    expect(() => new Worker({ connection: 'redis://127.0.0.1:1', services: [new billing(), new analytics()] })).toThrow(
      "task name 'RegReport.run' is claimed by two classes this worker serves, both named RegReport (in two namespaces or modules?): give the tasks of one of them an explicit @Task({ name })",
    );
  });

  it('discover() finds the tasks of a class and of its base classes, and nothing else', () => {
    class RegBase {
      @Task()
      async inherited(): Promise<void> {}

      @Task()
      async overridden(): Promise<string> {
        return 'base';
      }

      async plainBase(): Promise<void> {}
    }
    class RegChild extends RegBase {
      @Task()
      async own(): Promise<void> {}

      @Task({ queue: 'child-q' })
      override async overridden(): Promise<string> {
        return 'child';
      }

      async plainChild(): Promise<void> {}
    }
    const found = discover(RegChild);
    expect([...found.keys()].sort()).toEqual(['inherited', 'overridden', 'own']);
    expect(found.get('inherited')?.name).toBe('RegBase.inherited');
    expect(found.get('inherited')?.owner).toBe(RegBase);
    expect(found.get('own')?.name).toBe('RegChild.own');
    // The subclass's decorated override wins over the base's task.
    expect(found.get('overridden')?.name).toBe('RegChild.overridden');
    expect(found.get('overridden')?.options.queue).toBe('child-q');
    // The base class on its own still has its own task.
    expect(discover(RegBase).get('overridden')?.name).toBe('RegBase.overridden');
    expect([...discover(RegBase).keys()].sort()).toEqual(['inherited', 'overridden']);
  });

  it('discover() of a class with no tasks is empty', () => {
    class RegNothing {
      async m(): Promise<void> {}
    }
    expect(discover(RegNothing).size).toBe(0);
  });

  it('discover() returns the same definitions each time', () => {
    class RegStable {
      @Task()
      async m(): Promise<void> {}
    }
    const a = discover(RegStable).get('m');
    const b = discover(RegStable).get('m');
    expect(a).toBeDefined();
    expect(b).toBe(a);
    expect(taskByName('RegStable.m')).toBe(a);
  });

  it('records validated options on the method function', () => {
    class RegOptions {
      @Task({ unique: true, uniqueTimeout: 30 })
      async m(): Promise<void> {}
    }
    expect(taskOptionsOf(RegOptions.prototype.m)).toMatchObject({ unique: true, uniqueTimeoutMs: 30_000 });
    expect(taskOptionsOf(undefined)).toBeUndefined();
    expect(taskOptionsOf(() => 1)).toBeUndefined();
  });
});

describe('@Task goes on public instance methods only', () => {
  it('rejects a static method', () => {
    expect(() => {
      class RegStatic {
        @Task()
        static async m(): Promise<void> {}
      }
      void RegStatic;
    }).toThrow(new ConfigError('@Task on RegStatic.m: @Task goes on public instance methods only'));
  });

  it('rejects a getter', () => {
    expect(() => {
      class RegGetter {
        @Task()
        get value(): Promise<number> {
          return Promise.resolve(1);
        }
      }
      void RegGetter;
    }).toThrow(new ConfigError('@Task on RegGetter.value: @Task goes on public instance methods only'));
  });

  it('rejects a setter', () => {
    expect(() => {
      class RegSetter {
        @Task()
        set value(_v: number) {}
      }
      void RegSetter;
    }).toThrow(new ConfigError('@Task on RegSetter.value: @Task goes on public instance methods only'));
  });

  it('rejects a method named by a symbol', () => {
    const sym = Symbol('job');
    expect(() => {
      class RegSymbol {
        @Task()
        async [sym](): Promise<void> {}
      }
      void RegSymbol;
    }).toThrow(new ConfigError('@Task on RegSymbol.Symbol(job): @Task goes on public instance methods only'));
  });

  it('registers nothing for a rejected member', () => {
    expect(() => {
      class RegRejected {
        @Task()
        static async m(): Promise<void> {}
      }
      void RegRejected;
    }).toThrow(ConfigError);
    expect(taskByName('RegRejected.m')).toBeUndefined();
  });
});
