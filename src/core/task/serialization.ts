import { isRevokedProxy } from './durations.js';
import { SerializationError } from '../errors.js';
import { toRemoteError } from '../worker/remote-error.js';

/**
 * Strict JSON: a value is accepted only if `JSON.parse(JSON.stringify(value))` gives it back
 * as it was. Everything else is rejected with the path of the offending value, so a task never
 * receives a Date turned into a string or a Map turned into `{}`.
 */
export function toJson(value: unknown, root: string): string {
  // The quick pass builds no paths; only a value it rejects (or that throws on it, such as a
  // getter) is walked again to say where.
  if (!quickPass(value)) check(value, root, new Set());
  return JSON.stringify(value);
}

function quickPass(value: unknown): boolean {
  try {
    return plain(value, 0);
  } catch {
    return false;
  }
}

// Deeper than this, the quick pass leaves the value to check(), which also finds cycles.
const MAX_QUICK_DEPTH = 100;

/** True when check() would accept the value (false may also mean "too deep to tell here"). */
function plain(value: unknown, depth: number): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object':
      break;
    default:
      return false;
  }
  if (value === null) return true;
  if (depth >= MAX_QUICK_DEPTH) return false;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (!(i in value) || !plain(value[i], depth + 1)) return false;
    }
    return true;
  }
  const proto: unknown = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  if (Object.getOwnPropertySymbols(value).length > 0) return false;
  for (const key in value) {
    if (!Object.prototype.hasOwnProperty.call(value, key)) continue;
    const child = (value as Record<string, unknown>)[key];
    if (child !== undefined && !plain(child, depth + 1)) return false;
  }
  return true;
}

/** Serializes task arguments. Trailing `undefined` arguments (omitted optionals) are dropped. */
export function argsToJson(args: readonly unknown[]): string {
  let end = args.length;
  while (end > 0 && args[end - 1] === undefined) end--;
  return toJson(end === args.length ? args : args.slice(0, end), 'args');
}

function pathOf(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${parent}.${key}` : `${parent}[${JSON.stringify(key)}]`;
}

/** A property of a value being checked; a getter (or Proxy trap) that throws is a SerializationError at its path. */
function read(obj: object, key: string | number, path: string): unknown {
  try {
    return (obj as Record<string | number, unknown>)[key];
  } catch (err) {
    const e = toRemoteError(err);
    throw new SerializationError(pathOf(path, key), `could not be read: reading it threw ${e.name}: ${e.message}`);
  }
}

/** Name of the class of an instance, for the message; a throwing getter gives a generic one. */
function classOf(obj: object): { kind: string; hint: string } {
  try {
    const kind = (obj as { constructor?: { name?: string } }).constructor?.name || 'class instance';
    const hint =
      obj instanceof Date ? ' (pass date.toISOString() or a timestamp)' : obj instanceof Map ? ' (pass Object.fromEntries(map))' : obj instanceof Set ? ' (pass [...set])' : '';
    return { kind: String(kind), hint };
  } catch {
    return { kind: 'class instance', hint: '' };
  }
}

function check(value: unknown, path: string, seen: Set<object>): void {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new SerializationError(path, `is ${value}, which JSON turns into null`);
      return;
    case 'undefined':
      throw new SerializationError(path, 'is undefined, which JSON drops or turns into null');
    case 'bigint':
      throw new SerializationError(path, 'is a BigInt, which JSON cannot encode; pass it as a string');
    case 'symbol':
      throw new SerializationError(path, 'is a symbol, which JSON cannot encode');
    case 'function':
      throw new SerializationError(path, 'is a function, which JSON cannot encode');
    default:
      break;
  }
  if (value === null) return;
  const obj = value as object;
  if (isRevokedProxy(obj)) throw new SerializationError(path, 'is a revoked Proxy, which cannot be read');
  if (seen.has(obj)) throw new SerializationError(path, 'refers back to one of its parents (a cycle)');
  if (Array.isArray(obj)) {
    seen.add(obj);
    for (let i = 0; i < obj.length; i++) {
      if (!(i in obj)) throw new SerializationError(pathOf(path, i), 'is a hole in a sparse array');
      check(read(obj, i, path), pathOf(path, i), seen);
    }
    seen.delete(obj);
    return;
  }
  const proto: unknown = Object.getPrototypeOf(obj);
  if (proto !== Object.prototype && proto !== null) {
    const { kind, hint } = classOf(obj);
    throw new SerializationError(path, `is ${/^[AEIO]/.test(kind) ? 'an' : 'a'} ${kind}, which JSON would not bring back as it was${hint}`);
  }
  if (Object.getOwnPropertySymbols(obj).length > 0) {
    throw new SerializationError(path, 'has symbol keys, which JSON drops');
  }
  seen.add(obj);
  for (const key of Object.keys(obj)) {
    const child = read(obj, key, path);
    // An undefined property is simply absent after a round trip, which reads the same.
    if (child === undefined) continue;
    check(child, pathOf(path, key), seen);
  }
  seen.delete(obj);
}

/**
 * JSON with object keys sorted at every depth, so `{a, b}` and `{b, a}` hash alike. Used for
 * the default unique key; the input has already passed the strict check.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
    const sorted: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) sorted[k] = (v as Record<string, unknown>)[k];
    return sorted;
  });
}
