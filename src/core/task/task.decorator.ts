import 'reflect-metadata';
import { ConfigError } from '../errors.js';
import { markTaskMethod, registerTask, type Constructor } from './registry.js';
import { normalizeTaskOptions, type TaskOptions } from './task-options.js';

/** Metadata key under which `@Task` stores its options on the method (readable by Nest's `Reflector`). */
export const TASK_METADATA = 'heimdall:task';

type LegacyArgs = [target: object, propertyKey: string | symbol, descriptor: PropertyDescriptor];
type StandardArgs = [value: unknown, context: ClassMethodDecoratorContext];

function isStandard(args: unknown[]): args is StandardArgs {
  const ctx = args[1];
  return args.length === 2 && typeof ctx === 'object' && ctx !== null && 'kind' in ctx;
}

/**
 * Marks an async method of a service class as a task. Works under `experimentalDecorators`
 * (legacy, as NestJS uses) and under standard TC39 decorators. Options are checked here: a bad
 * option throws `ConfigError` when the class is defined.
 *
 * @example
 * class ReportService {
 *   @Task({ unique: true, uniqueTimeout: '1h' })
 *   async generateReport(customerId: number) { ... }
 * }
 */
export function Task<A extends readonly unknown[] = unknown[]>(options?: TaskOptions<A>) {
  function decorate(value: unknown, context: ClassMethodDecoratorContext): void;
  function decorate(target: object, propertyKey: string | symbol, descriptor: PropertyDescriptor): void;
  function decorate(...args: unknown[]): void {
    if (isStandard(args)) {
      const [value, context] = args;
      const where = `@Task on ${String(context.name)}`;
      if (context.kind !== 'method' || context.static || context.private || typeof context.name !== 'string') {
        throw new ConfigError(`${where}: @Task goes on public instance methods only`);
      }
      const normalized = normalizeTaskOptions(options, where);
      store(value as object, options, normalized);
      // The class is not visible to a standard method decorator: `discover()` registers it on first use.
      return;
    }
    const [target, propertyKey, descriptor] = args as LegacyArgs;
    const where = `@Task on ${describeOwner(target)}.${String(propertyKey)}`;
    if (typeof target === 'function' || typeof propertyKey !== 'string' || typeof descriptor?.value !== 'function') {
      throw new ConfigError(`${where}: @Task goes on public instance methods only`);
    }
    const normalized = normalizeTaskOptions(options, where);
    store(descriptor.value as object, options, normalized);
    registerTask((target as { constructor: Constructor }).constructor, propertyKey, normalized);
  }
  return decorate;
}

function store(method: object, raw: unknown, normalized: ReturnType<typeof normalizeTaskOptions>): void {
  Reflect.defineMetadata(TASK_METADATA, raw ?? {}, method);
  markTaskMethod(method, normalized);
}

function describeOwner(target: object): string {
  if (typeof target === 'function') return target.name;
  return (target as { constructor?: { name?: string } }).constructor?.name ?? '<class>';
}
