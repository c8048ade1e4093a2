import { Inject } from '@nestjs/common';
import { ConfigError } from '../core/errors.js';
import type { Constructor } from '../core/task/registry.js';

// One token per class, and one table per process even when the ESM and CommonJS builds are both loaded.
const TOKENS_KEY = Symbol.for('heimdall-tasks.nestjs.task-tokens');

/** The classes named by `@InjectTasks` so far, with their injection tokens. */
export function taskTokens(): Map<Constructor, symbol> {
  const g = globalThis as Record<symbol, Map<Constructor, symbol> | undefined>;
  let tokens = g[TOKENS_KEY];
  if (!tokens) {
    tokens = new Map();
    g[TOKENS_KEY] = tokens;
  }
  return tokens;
}

/** The injection token of `dispatcher.tasks(cls)`; the same token for one class every time. */
export function getTasksToken(cls: Constructor): symbol {
  const tokens = taskTokens();
  let token = tokens.get(cls);
  if (!token) {
    token = Symbol(`heimdall:tasks:${cls.name}`);
    tokens.set(cls, token);
  }
  return token;
}

/**
 * Injects the typed task handles of one class, `dispatcher.tasks(cls)` of the module's Dispatcher,
 * into a constructor parameter or a property:
 *
 * @example
 * constructor(@InjectTasks(ReportService) private readonly reports: TaskProxy<ReportService>) {}
 * // ...
 * await this.reports.generateReport.delay(42);
 *
 * The module provides the handles of every class named by an `@InjectTasks` that ran before the
 * application was created (decorators run when their file is imported, so that is all of them).
 */
export function InjectTasks<T extends object>(cls: Constructor<T>): PropertyDecorator & ParameterDecorator {
  if (typeof cls !== 'function') throw new ConfigError(`@InjectTasks() takes a class with @Task methods, got ${typeof cls}`);
  return Inject(getTasksToken(cls));
}
