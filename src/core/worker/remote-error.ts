import { inspect, types } from 'node:util';
import { describe, isRevokedProxy } from '../task/durations.js';
import type { RemoteError } from '../protocol/task-record.js';

/** Longest error name stored for a task, in characters (UTF-16 code units). */
export const MAX_ERROR_NAME_CHARS = 200;
/** Longest error message stored for a task, in characters. */
export const MAX_ERROR_MESSAGE_CHARS = 8 * 1024;
/** Longest traceback stored for a task, in characters. */
export const MAX_TRACEBACK_CHARS = 32 * 1024;

// What a getter threw, quoted inside another description.
const MAX_NESTED_CHARS = 500;
// A getter may throw an error whose getter throws...: described this many levels down, no further.
const MAX_NESTING = 2;

// No custom inspect functions and no getters, so inspect runs little code of the value's own
// (it still reads an Error's stack and Symbol.toStringTag, hence the guard in show()).
// Proxies are shown by their target, without calling their traps. Its cost grows with the
// value's size, as the JSON check of a result does.
const INSPECT_OPTIONS = {
  depth: 2,
  customInspect: false,
  getters: false,
  showProxy: false,
  maxArrayLength: 20,
  maxStringLength: MAX_ERROR_MESSAGE_CHARS,
  breakLength: Infinity,
} as const;

/**
 * Describes whatever a task threw as the error stored in its record. It never throws: every
 * property of the value is read under a guard, a revoked Proxy is named as such, and values
 * that are not strings (a BigInt or cyclic message, a thrown object) are shown as text. Name,
 * message and traceback are cut to their bounds, with a note of how much was cut.
 */
export function toRemoteError(thrown: unknown): RemoteError {
  let raw: RemoteError;
  try {
    raw = describeThrown(thrown, 0);
  } catch {
    // Only the engine itself fails here (out of memory or stack); the value is not touched again.
    raw = { name: 'Error', message: 'a thrown value that could not be described', traceback: undefined };
  }
  return {
    name: cut(raw.name, MAX_ERROR_NAME_CHARS),
    message: cut(raw.message, MAX_ERROR_MESSAGE_CHARS),
    traceback: raw.traceback === undefined ? undefined : cut(raw.traceback, MAX_TRACEBACK_CHARS),
  };
}

/**
 * `value instanceof cls` without throwing: undefined when it cannot be answered (a revoked
 * Proxy, a Proxy trap or a `Symbol.hasInstance` that throws, a `cls` that is no class).
 */
export function safeInstanceOf(value: unknown, cls: unknown): boolean | undefined {
  if (typeof cls !== 'function') return undefined;
  try {
    return value instanceof (cls as abstract new (...args: never[]) => unknown);
  } catch {
    return undefined;
  }
}

function describeThrown(value: unknown, depth: number): RemoteError {
  if (typeof value === 'string') return { name: 'Error', message: value, traceback: undefined };
  if (isError(value)) return describeError(value, depth);
  return { name: 'Error', message: `${show(value)} (thrown, not an Error)`, traceback: undefined };
}

/** An Error of any realm, or an object whose prototype chain holds Error.prototype. */
function isError(value: unknown): value is object {
  return types.isNativeError(value) || (!isRevokedProxy(value) && safeInstanceOf(value, Error) === true);
}

function describeError(err: object, depth: number): RemoteError {
  const name = read(err, 'name');
  const message = read(err, 'message');
  const stack = read(err, 'stack');
  let text: string;
  if ('threw' in message) text = `(the message could not be read: reading it threw ${nested(message.threw, depth)})`;
  else if (typeof message.value === 'string') text = message.value;
  else text = message.value === undefined ? '' : show(message.value);
  let traceback: string | undefined;
  if ('threw' in stack) traceback = `(the stack could not be read: reading it threw ${nested(stack.threw, depth)})`;
  else if (typeof stack.value === 'string') traceback = stack.value;
  else traceback = stack.value === undefined || stack.value === null ? undefined : show(stack.value);
  return {
    // A name that cannot be read, or is no text, gives way to the error's class.
    name: 'value' in name && typeof name.value === 'string' && name.value !== '' ? name.value : (className(err) ?? 'Error'),
    message: text,
    traceback,
  };
}

/** What a getter threw, in one short line. */
function nested(value: unknown, depth: number): string {
  let text: string;
  if (typeof value === 'string') text = value;
  else if (!isError(value)) text = show(value);
  else if (depth + 1 >= MAX_NESTING) text = 'an Error (not described further)';
  else {
    const inner = describeError(value, depth + 1);
    text = `${inner.name}: ${inner.message}`;
  }
  return cut(text, MAX_NESTED_CHARS);
}

function read(obj: object, key: string): { value: unknown } | { threw: unknown } {
  try {
    return { value: (obj as Record<string, unknown>)[key] };
  } catch (err) {
    return { threw: err };
  }
}

function className(obj: object): string | undefined {
  try {
    const ctor = (obj as { constructor?: unknown }).constructor;
    const name = typeof ctor === 'function' ? (ctor as { name?: unknown }).name : undefined;
    return typeof name === 'string' && name !== '' ? name : undefined;
  } catch {
    return undefined;
  }
}

/** A value as text: util.inspect where it can (cycles, BigInt, Map...), else the short describe(). */
function show(value: unknown): string {
  if (isRevokedProxy(value)) return 'a revoked Proxy';
  if (typeof value === 'string') return value;
  // inspect shows a Proxy's target (it calls no trap); say that it is one.
  if (types.isProxy(value)) return `a Proxy of ${inspectOrDescribe(value)}`;
  return inspectOrDescribe(value);
}

function inspectOrDescribe(value: unknown): string {
  try {
    return inspect(value, INSPECT_OPTIONS);
  } catch {
    // inspect reads some properties itself (an Error's stack, Symbol.toStringTag), which may throw.
    return describe(value);
  }
}

/**
 * `text` cut to at most `max` characters, ending with a note of how many were cut. The cut
 * never splits a surrogate pair, so the text stays well-formed.
 */
function cut(text: string, max: number): string {
  if (text.length <= max) return text;
  // The note's count has at most as many digits as the whole length.
  let keep = max - ` [${text.length} more characters cut]`.length;
  const last = text.charCodeAt(keep - 1);
  if (last >= 0xd800 && last <= 0xdbff) keep--;
  return `${text.slice(0, keep)} [${text.length - keep} more characters cut]`;
}
