import { ConfigError } from '../errors.js';
import { describe, toMillis } from './durations.js';
import { validateName } from '../protocol/queue-keys.js';
import type { RateLimit } from './task-options.js';

/**
 * How a named limit counts.
 * - `'window'`: an exact rolling window: the costs of the runs started in any window of `period`
 *   add up to at most `n`, as charged at their start (a debt reported with `reportCost()` can take
 *   a window past `n`: later runs then wait until it leaves). One sorted-set entry per run started
 *   or waiting in the window.
 * - `'gcra'`: the generic cell rate algorithm, one number per limit whatever the rate: `n` per
 *   `period` in the long run, `n` at once after an idle spell, and never more than `2n` in any
 *   window of `period` (docs/guarantees.md, "Rate limits").
 */
export type LimitAlgorithm = 'window' | 'gcra';

/**
 * What a named limit bounds: a rate (`'window'` or `'gcra'`, made by `Limits.define(name, [n,
 * period])`), or how many runs hold it at once (`'concurrency'`, made by `Limits.define(name,
 * { concurrency: n })`).
 */
export type LimitKind = LimitAlgorithm | 'concurrency';

/** Options of {@link Limits.define} for a concurrency limit. */
export interface ConcurrencyLimitOptions {
  /**
   * At most this many runs hold the limit at once (per key, when a task's use gives one), across
   * every worker. Each run holds a permit, a lease renewed while it runs and given back at its
   * end: a killed worker's permits lapse within its lease. A whole number from 1 to 1e6.
   */
  concurrency: number;
}

/** Options of {@link Limits.define}. */
export interface LimitOptions {
  /** How the limit counts: `'window'` (exact rolling window) or `'gcra'`. Default: `'window'`. */
  algorithm?: LimitAlgorithm;
}

/** A named limit, as {@link Limits.define} returns it: pass it (or its name) in a task's `limits`. */
export interface LimitHandle {
  /** The limit's name, unique in the process (and on the Redis prefix: every worker defines it alike). */
  readonly name: string;
  /** Units (starts, or the costs they declare) allowed per period; for a concurrency limit, the runs allowed at once. */
  readonly limit: number;
  /** The period, ms (0 for a concurrency limit). */
  readonly periodMs: number;
  /** How it counts. */
  readonly algorithm: LimitKind;
}

/** The handle of a rate limit (`Limits.define(name, [n, period])`): its uses may take a `cost`. */
export interface RateLimitHandle extends LimitHandle {
  readonly algorithm: LimitAlgorithm;
}

/** The handle of a concurrency limit (`Limits.define(name, { concurrency })`): its uses may take a `key`. */
export interface ConcurrencyLimitHandle extends LimitHandle {
  readonly algorithm: 'concurrency';
}

/**
 * One limit a task uses: a limit's name or handle (cost 1 per run), or `{ limit, cost, key }`.
 * `cost` (rate limits): a whole number >= 1 or a function of the call's arguments, evaluated by
 * the worker before the run. `key` (concurrency limits): the limit then bounds the runs at once
 * per key (a string, or a function of the arguments); without it, across all of its runs.
 */
export type LimitUse<A extends readonly unknown[] = unknown[]> =
  | string
  | LimitHandle
  | { limit: string | RateLimitHandle; cost?: number | ((args: A) => number); key?: never }
  | { limit: string | ConcurrencyLimitHandle; key?: string | ((args: A) => string); cost?: never };

/** A limit use after validation at decoration. */
export interface NormalizedLimitUse {
  /** The limit's name. */
  name: string;
  /** The handle when the task was given one (its definition is then known without the registry). */
  handle: LimitHandle | undefined;
  /** A fixed cost, or a function of the arguments. */
  cost: number | ((args: readonly unknown[]) => number);
  /** True when the task gave a cost (so `reportCost()` without a limit name picks this one). */
  weighted: boolean;
  /** A concurrency limit's key, as a function of the arguments; undefined: one scope for the limit. */
  key: ((args: readonly unknown[]) => string) | undefined;
}

/** A limit and a run's cost in it, ready for the worker to charge. */
export interface ResolvedLimit {
  def: LimitHandle;
  cost: number;
  /** Concurrency limits: the key of this run's scope (undefined: the limit's one scope). */
  key?: string;
}

// Shared through globalThis, as the current task's storage: an ESM and a CJS copy of the library
// in one process see one registry.
const REGISTRY_KEY = Symbol.for('heimdall-tasks.limits');

function registry(): Map<string, LimitHandle> {
  const g = globalThis as Record<symbol, Map<string, LimitHandle> | undefined>;
  let r = g[REGISTRY_KEY];
  if (!r) {
    r = new Map();
    g[REGISTRY_KEY] = r;
  }
  return r;
}

const OPTIONS = new Set(['algorithm']);

/** Registers a handle, or returns the one defined alike before; a ConfigError when the name is defined otherwise. */
function register(where: string, handle: LimitHandle): LimitHandle {
  const known = registry().get(handle.name);
  if (known) {
    if (known.limit === handle.limit && known.periodMs === handle.periodMs && known.algorithm === handle.algorithm) return known;
    const show = (h: LimitHandle): string => (h.algorithm === 'concurrency' ? `{ concurrency: ${h.limit} }` : `[${h.limit}, ${h.periodMs} ms] (${h.algorithm})`);
    throw new ConfigError(`${where}: limit '${handle.name}' is already defined as ${show(known)}; a name has one definition (every worker must count it alike)`);
  }
  const frozen = Object.freeze(handle);
  registry().set(handle.name, frozen);
  return frozen;
}

/** The type of {@link Limits}. */
export interface LimitsApi {
  /**
   * Defines the rate limit `name`: at most `n` units in any `period` (seconds, or an `ms`
   * string). A task counts 1 unit per run unless it gives a cost. Defining a name again with the
   * same settings returns the same handle (a module loaded twice); with other settings it is a
   * ConfigError, as are a bad name, `n` or period, or an unknown option.
   */
  define(name: string, rate: RateLimit, options?: LimitOptions): RateLimitHandle;
  /**
   * Defines the concurrency limit `name`: at most `concurrency` runs of the tasks that use it
   * hold it at once, across every worker (per key, for a use that gives one). Defined again: as
   * for a rate limit.
   */
  define(name: string, options: ConcurrencyLimitOptions): ConcurrencyLimitHandle;
  /** The limit defined under `name` in this process, or undefined. */
  get(name: string): LimitHandle | undefined;
}

/** Limits.define: see {@link LimitsApi}. */
function defineLimit(name: string, rate: RateLimit, options?: LimitOptions): RateLimitHandle;
function defineLimit(name: string, options: ConcurrencyLimitOptions): ConcurrencyLimitHandle;
function defineLimit(name: string, rate: RateLimit | ConcurrencyLimitOptions, options?: LimitOptions): LimitHandle {
  const where = `Limits.define(${JSON.stringify(name)})`;
  validateName(name, `${where}: the name`);
  if (typeof rate === 'object' && rate !== null && !Array.isArray(rate)) {
    const o = rate as unknown as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (k !== 'concurrency') throw new ConfigError(`${where}: unknown option '${k}' of a concurrency limit; known: concurrency`);
    }
    if (options !== undefined) throw new ConfigError(`${where}: a concurrency limit takes no third argument`);
    const n = o.concurrency;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 1e6) {
      throw new ConfigError(`${where}: concurrency must be a whole number of runs from 1 to 1e6, got ${describe(n)}`);
    }
    return register(where, { name, limit: n, periodMs: 0, algorithm: 'concurrency' });
  }
  if (!Array.isArray(rate) || rate.length !== 2) {
    throw new ConfigError(`${where}: the rate must be [n, period] such as [100, 60] (100 per minute), or { concurrency: n }, got ${describe(rate)}`);
  }
  const [limit, period] = rate as readonly [unknown, unknown];
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > 1e9) {
    throw new ConfigError(`${where}: n must be a whole number of units from 1 to 1e9, got ${describe(limit)}`);
  }
  const periodMs = Math.ceil(toMillis(period as RateLimit[1], `${where}: period`));
  if (periodMs < 1 || periodMs > 366 * 86_400_000) throw new ConfigError(`${where}: period must be from 1 ms to 366 days, got ${periodMs} ms`);
  if (options !== undefined && (typeof options !== 'object' || options === null || Array.isArray(options))) {
    throw new ConfigError(`${where}: options must be an object such as { algorithm: 'gcra' }, got ${describe(options)}`);
  }
  for (const k of Object.keys(options ?? {})) {
    if (!OPTIONS.has(k)) throw new ConfigError(`${where}: unknown option '${k}'; known: ${[...OPTIONS].join(', ')}`);
  }
  const algorithm = options?.algorithm ?? 'window';
  if (algorithm !== 'window' && algorithm !== 'gcra') {
    throw new ConfigError(`${where}: algorithm must be 'window' or 'gcra', got ${describe(algorithm)}`);
  }
  return register(where, { name, limit, periodMs, algorithm });
}

/**
 * Named limits: one limit any task of any queue can use, counted once for all of them, across
 * every worker, on the Redis clock. Define each in a module the worker process imports (the
 * worker is the authority on a task's limits: a run whose task names a limit its worker never
 * defined fails with a ConfigError); producers need not know it.
 */
export const Limits: LimitsApi = {
  define: defineLimit,

  /** The limit defined under `name` in this process, or undefined. */
  get(name: string): LimitHandle | undefined {
    return registry().get(name);
  },
};

function isHandle(value: unknown): value is LimitHandle {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.name === 'string' && typeof v.limit === 'number' && typeof v.periodMs === 'number' && typeof v.algorithm === 'string';
}

/** Checks a cost that is a number: a whole number >= 1, at most `n` of the limit when it is known. */
function checkCost(cost: unknown, limit: LimitHandle | undefined, where: string): number {
  if (typeof cost !== 'number' || !Number.isInteger(cost) || cost < 1) {
    throw new ConfigError(`${where}: cost must be a whole number >= 1 or a function (args) => number, got ${describe(cost)}`);
  }
  if (limit && cost > limit.limit) {
    throw new ConfigError(`${where}: cost ${cost} is more than limit '${limit.name}' allows per period (${limit.limit}): such a run could never start`);
  }
  return cost;
}

/** Checks a concurrency key option: a non-empty string or a function of the arguments. */
function checkKey(value: unknown, where: string): (args: readonly unknown[]) => string {
  if (typeof value === 'function') return value as (args: readonly unknown[]) => string;
  if (typeof value === 'string' && value !== '') return () => value;
  throw new ConfigError(`${where}: key must be a non-empty string or a function (args) => string, got ${describe(value)}`);
}

/** The ConfigError of a cost on a concurrency limit, or of a key on a rate limit; undefined when the use fits its limit. */
function misuse(use: NormalizedLimitUse, def: LimitHandle, where: string): ConfigError | undefined {
  if (def.algorithm === 'concurrency' && use.weighted) {
    return new ConfigError(`${where}: limit '${def.name}' is a concurrency limit: a run holds one permit, it takes no cost`);
  }
  if (def.algorithm !== 'concurrency' && use.key !== undefined) {
    return new ConfigError(`${where}: limit '${def.name}' is a rate limit: key only applies to concurrency limits (Limits.define(name, { concurrency: n }))`);
  }
  return undefined;
}

/** Validates a task's `limits` option; throws ConfigError naming the entry and what was wrong. */
export function normalizeLimits(value: unknown, where: string): NormalizedLimitUse[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(`${where} must be a non-empty array of limit names, handles or { limit, cost, key }, got ${describe(value)}`);
  }
  const out: NormalizedLimitUse[] = [];
  value.forEach((entry: unknown, i) => {
    const at = `${where}[${i}]`;
    let ref: unknown = entry;
    let cost: unknown = 1;
    let weighted = false;
    let key: ((args: readonly unknown[]) => string) | undefined;
    if (typeof entry === 'object' && entry !== null && !isHandle(entry)) {
      const o = entry as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (k !== 'limit' && k !== 'cost' && k !== 'key') throw new ConfigError(`${at}: unknown option '${k}'; known: limit, cost, key`);
      }
      ref = o.limit;
      if (o.cost !== undefined) {
        cost = o.cost;
        weighted = true;
      }
      if (o.key !== undefined) key = checkKey(o.key, at);
    }
    let name: string;
    let handle: LimitHandle | undefined;
    if (typeof ref === 'string' && ref !== '') {
      name = ref;
      validateName(name, `${at}: the limit's name`);
    } else if (isHandle(ref)) {
      handle = ref;
      name = ref.name;
    } else {
      throw new ConfigError(`${at} must name a limit (a string, or the handle of Limits.define), got ${describe(ref)}`);
    }
    if (out.some((u) => u.name === name)) throw new ConfigError(`${at}: limit '${name}' is listed twice`);
    const known = handle ?? Limits.get(name);
    const use: NormalizedLimitUse = {
      name,
      handle,
      cost: typeof cost === 'function' ? (cost as (args: readonly unknown[]) => number) : 1,
      weighted,
      key,
    };
    const wrong = known ? misuse(use, known, at) : undefined;
    if (wrong) throw wrong;
    if (typeof cost !== 'function') use.cost = known?.algorithm === 'concurrency' ? 1 : checkCost(cost, known, at);
    out.push(use);
  });
  return out;
}

/**
 * The limits of one run and its cost (or key) in each, for the worker to take. Throws
 * ConfigError for a limit this process never defined, a cost or key the limit's kind does not
 * take, or a cost or key function that throws or returns what cannot be used (a cost outside 1
 * to the limit's `n`, a key that is not a non-empty string): such a run could never start, so it
 * fails instead.
 */
export function resolveLimits(taskName: string, uses: readonly NormalizedLimitUse[], args: readonly unknown[]): ResolvedLimit[] {
  return uses.map((use) => {
    const def = use.handle ?? Limits.get(use.name);
    if (!def) {
      throw new ConfigError(
        `task ${taskName} uses limit '${use.name}', which is not defined in this worker process: ` +
          `call Limits.define('${use.name}', ...) in a module the worker imports`,
      );
    }
    const where = `task ${taskName}: limit '${use.name}'`;
    const wrong = misuse(use, def, where);
    if (wrong) throw wrong;
    if (def.algorithm === 'concurrency') return { def, cost: 1, key: use.key === undefined ? undefined : concurrencyKey(use.key, args, where) };
    if (typeof use.cost === 'number') return { def, cost: checkCost(use.cost, def, where) };
    let cost: unknown;
    try {
      cost = use.cost(args);
    } catch (err) {
      throw new ConfigError(`task ${taskName}: the cost function of limit '${use.name}' threw: ${err instanceof Error ? err.message : String(err)}`);
    }
    try {
      return { def, cost: checkCost(cost, def, where) };
    } catch (err) {
      throw new ConfigError(`${(err as Error).message} (returned by its cost function for these arguments)`);
    }
  });
}

/** A concurrency key for these arguments: a ConfigError when its function throws or returns anything but a non-empty string. */
export function concurrencyKey(key: (args: readonly unknown[]) => string, args: readonly unknown[], where: string): string {
  let value: unknown;
  try {
    value = key(args);
  } catch (err) {
    throw new ConfigError(`${where}: the concurrency key function threw: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (typeof value !== 'string' || value === '') throw new ConfigError(`${where}: the concurrency key function must return a non-empty string, got ${describe(value)}`);
  return value;
}
