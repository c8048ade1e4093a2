import { ConfigError } from '../errors.js';
import type { NormalizedTaskOptions } from './task-options.js';

/** A class whose instances carry task methods. */
export type Constructor<T extends object = object> = abstract new (...args: never[]) => T;

/** What the registry knows of one task. */
export interface TaskDefinition {
  /** Registry name, `Class.method` unless `name` was given. */
  readonly name: string;
  readonly className: string;
  readonly methodName: string;
  /** The class that declares the method. */
  readonly owner: Constructor;
  readonly options: NormalizedTaskOptions;
}

interface RegistryState {
  byName: Map<string, TaskDefinition>;
  /** class -> method name -> definition, filled once per class by `discover`. */
  byClass: WeakMap<object, Map<string, TaskDefinition>>;
  /** method function -> its validated options (set by the decorator). */
  options: WeakMap<object, NormalizedTaskOptions>;
}

// One registry per process even when both the ESM and the CommonJS build are loaded.
const REGISTRY_KEY = Symbol.for('heimdall-tasks.registry');

function state(): RegistryState {
  const g = globalThis as Record<symbol, RegistryState | undefined>;
  let s = g[REGISTRY_KEY];
  if (!s) {
    s = { byName: new Map(), byClass: new WeakMap(), options: new WeakMap() };
    g[REGISTRY_KEY] = s;
  }
  return s;
}

/** Records a decorated method's validated options on the function itself. */
export function markTaskMethod(method: object, options: NormalizedTaskOptions): void {
  state().options.set(method, options);
}

/** The validated options of a decorated method, or undefined. */
export function taskOptionsOf(method: unknown): NormalizedTaskOptions | undefined {
  return typeof method === 'function' ? state().options.get(method) : undefined;
}

/**
 * Adds a task to the registry. Re-registering the same `Class.method` (a module evaluated
 * twice, or another class of the same name, as in two namespaces) replaces it here: a worker
 * resolves names among the classes it serves first (ServiceDirectory.taskNamed), and one that
 * serves two classes claiming a name refuses to start. A name taken by another method is a
 * ConfigError naming both.
 */
export function registerTask(owner: Constructor, methodName: string, options: NormalizedTaskOptions): TaskDefinition {
  const className = defaultClassName(owner);
  const name = options.name ?? `${className}.${methodName}`;
  const s = state();
  const existing = s.byName.get(name);
  // The same class evaluated twice has the same runtime name; `_Report` and `Report` do not,
  // though both give tasks named Report.*: compared as written, they are two classes.
  if (existing && (existing.owner.name !== owner.name || existing.methodName !== methodName)) {
    throw new ConfigError(
      `task name '${name}' is used twice: by ${existing.owner.name}.${existing.methodName} and by ${owner.name}.${methodName}; give one of them another name`,
    );
  }
  const def: TaskDefinition = { name, className, methodName, owner, options };
  s.byName.set(name, def);
  let methods = s.byClass.get(owner);
  if (!methods) {
    methods = new Map();
    s.byClass.set(owner, methods);
  }
  methods.set(methodName, def);
  return def;
}

/**
 * The class part of a default task name: the class's `name` without leading underscores.
 * esbuild (vite 7 and vitest on it, esbuild bundles) renames a class that refers to itself to `_Class` (and
 * `_Class` to `__Class`), while tsc, swc, tsx and Oxc keep its name; dropping the underscores gives
 * every toolchain the same name (docs/decisions.md, "Default task names drop leading underscores").
 */
export function defaultClassName(owner: Constructor): string {
  const name = owner.name;
  if (!name) return '<anonymous class>';
  return name.replace(/^_+/, '') || name;
}

/**
 * A registered name that differs from `name` only by leading underscores on its class part, as a
 * toolchain's renaming (or an older heimdall that kept them) would make it, or undefined.
 */
export function underscoreTwin(name: string): string | undefined {
  const bare = name.replace(/^_+/, '');
  for (const other of state().byName.keys()) {
    if (other !== name && other.replace(/^_+/, '') === bare) return other;
  }
  return undefined;
}

/** Every task registered in this process so far. */
export function registeredTasks(): TaskDefinition[] {
  return [...state().byName.values()];
}

/** Looks a task up by registry name. */
export function taskByName(name: string): TaskDefinition | undefined {
  return state().byName.get(name);
}

/**
 * Finds the tasks of a class, walking its prototype chain once and caching the answer.
 * Legacy decorators register at class definition; standard (TC39) decorators cannot see the
 * class, so their methods are registered here, the first time the class is used.
 */
export function discover(cls: Constructor): Map<string, TaskDefinition> {
  const s = state();
  const found = new Map<string, TaskDefinition>();
  const chain: object[] = [];
  for (let c: unknown = cls; typeof c === 'function' && c !== Function.prototype; c = Object.getPrototypeOf(c)) {
    chain.push(c);
  }
  // Base classes first, so a subclass's override wins.
  for (const c of chain.reverse()) {
    const proto = (c as { prototype?: object }).prototype;
    if (!proto) continue;
    for (const methodName of Object.getOwnPropertyNames(proto)) {
      if (methodName === 'constructor') continue;
      const desc = Object.getOwnPropertyDescriptor(proto, methodName);
      const options = taskOptionsOf(desc?.value);
      if (!options) continue;
      const def = s.byClass.get(c)?.get(methodName) ?? registerTask(c as Constructor, methodName, options);
      found.set(methodName, def);
    }
  }
  return found;
}
