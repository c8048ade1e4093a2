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

/** Options of {@link Limits.define}. */
export interface LimitOptions {
  /** How the limit counts: `'window'` (exact rolling window) or `'gcra'`. Default: `'window'`. */
  algorithm?: LimitAlgorithm;
}

/** A named limit, as {@link Limits.define} returns it: pass it (or its name) in a task's `limits`. */
export interface LimitHandle {
  /** The limit's name, unique in the process (and on the Redis prefix: every worker defines it alike). */
  readonly name: string;
  /** Units (starts, or the costs they declare) allowed per period. */
  readonly limit: number;
  /** The period, ms. */
  readonly periodMs: number;
  /** How it counts. */
  readonly algorithm: LimitAlgorithm;
}

/**
 * One limit a task uses: a limit's name or handle (cost 1 per run), or `{ limit, cost }` where
 * `cost` is a whole number >= 1 or a function of the call's arguments, evaluated by the worker
 * before the run.
 */
export type LimitUse<A extends readonly unknown[] = unknown[]> =
  | string
  | LimitHandle
  | { limit: string | LimitHandle; cost?: number | ((args: A) => number) };

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
}

/** A limit and a run's cost in it, ready for the worker to charge. */
export interface ResolvedLimit {
  def: LimitHandle;
  cost: number;
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

/**
 * Named limits: one limit any task of any queue can use, counted once for all of them, across
 * every worker, on the Redis clock. Define each in a module the worker process imports (the
 * worker is the authority on a task's limits: a run whose task names a limit its worker never
 * defined fails with a ConfigError); producers need not know it.
 */
export const Limits = {
  /**
   * Defines the limit `name`: at most `n` units in any `period` (seconds, or an `ms` string).
   * A task counts 1 unit per run unless it gives a cost. Defining a name again with the same
   * settings returns the same handle (a module loaded twice); with other settings it is a
   * ConfigError, as are a bad name, `n` or period, or an unknown option.
   */
  define(name: string, rate: RateLimit, options?: LimitOptions): LimitHandle {
    const where = `Limits.define(${JSON.stringify(name)})`;
    validateName(name, `${where}: the name`);
    if (!Array.isArray(rate) || rate.length !== 2) {
      throw new ConfigError(`${where}: the rate must be [n, period] such as [100, 60] (100 per minute), got ${describe(rate)}`);
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
    const known = registry().get(name);
    if (known) {
      if (known.limit === limit && known.periodMs === periodMs && known.algorithm === algorithm) return known;
      throw new ConfigError(
        `${where}: limit '${name}' is already defined as [${known.limit}, ${known.periodMs} ms] (${known.algorithm}); ` +
          `a name has one definition (every worker must count it alike)`,
      );
    }
    const handle: LimitHandle = Object.freeze({ name, limit, periodMs, algorithm });
    registry().set(name, handle);
    return handle;
  },

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

/** Validates a task's `limits` option; throws ConfigError naming the entry and what was wrong. */
export function normalizeLimits(value: unknown, where: string): NormalizedLimitUse[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(`${where} must be a non-empty array of limit names, handles or { limit, cost }, got ${describe(value)}`);
  }
  const out: NormalizedLimitUse[] = [];
  value.forEach((entry: unknown, i) => {
    const at = `${where}[${i}]`;
    let ref: unknown = entry;
    let cost: unknown = 1;
    let weighted = false;
    if (typeof entry === 'object' && entry !== null && !isHandle(entry)) {
      const o = entry as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (k !== 'limit' && k !== 'cost') throw new ConfigError(`${at}: unknown option '${k}'; known: limit, cost`);
      }
      ref = o.limit;
      if (o.cost !== undefined) {
        cost = o.cost;
        weighted = true;
      }
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
    out.push({
      name,
      handle,
      cost: typeof cost === 'function' ? (cost as (args: readonly unknown[]) => number) : checkCost(cost, known, at),
      weighted,
    });
  });
  return out;
}

/**
 * The limits of one run and its cost in each, for the worker to charge. Throws ConfigError for a
 * limit this process never defined, or a cost function that throws or returns anything but a
 * whole number from 1 to the limit's `n` (such a run could never start: it fails instead).
 */
export function resolveLimits(taskName: string, uses: readonly NormalizedLimitUse[], args: readonly unknown[]): ResolvedLimit[] {
  return uses.map((use) => {
    const def = use.handle ?? Limits.get(use.name);
    if (!def) {
      throw new ConfigError(
        `task ${taskName} uses limit '${use.name}', which is not defined in this worker process: ` +
          `call Limits.define('${use.name}', [n, period]) in a module the worker imports`,
      );
    }
    if (typeof use.cost === 'number') return { def, cost: checkCost(use.cost, def, `task ${taskName}: limit '${use.name}'`) };
    let cost: unknown;
    try {
      cost = use.cost(args);
    } catch (err) {
      throw new ConfigError(`task ${taskName}: the cost function of limit '${use.name}' threw: ${err instanceof Error ? err.message : String(err)}`);
    }
    try {
      return { def, cost: checkCost(cost, def, `task ${taskName}: limit '${use.name}'`) };
    } catch (err) {
      throw new ConfigError(`${(err as Error).message} (returned by its cost function for these arguments)`);
    }
  });
}
