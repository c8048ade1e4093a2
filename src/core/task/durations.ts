import { types } from 'node:util';
import ms from 'ms';
import { ConfigError } from '../errors.js';

/**
 * A span of time: a number of **seconds** (as in Celery, so `60` is one minute), or a string
 * for the `ms` package such as `'1h'`, `'30s'` or `'500ms'`.
 */
export type Duration = number | string;

/** Converts a Duration to whole milliseconds; anything not a positive finite span is a ConfigError. */
export function toMillis(value: Duration, what: string): number {
  let millis: number | undefined;
  if (typeof value === 'number') {
    millis = value * 1000;
  } else if (typeof value === 'string' && /^\s*[-+]?(\d+\.?\d*|\.\d+)\s*$/.test(value)) {
    // ms('60') is 60 ms while the number 60 is a minute here: refuse the ambiguity.
    throw new ConfigError(
      `${what} is the string ${JSON.stringify(value)}: write a number of seconds (${value.trim()}) or give a unit ('${value.trim()}s', '${value.trim()}ms')`,
    );
  } else if (typeof value === 'string' && value.trim() !== '') {
    // ms() returns undefined for text it cannot read ('soon') and reads a bare number as ms.
    const parsed = ms(value as ms.StringValue) as number | undefined;
    millis = typeof parsed === 'number' ? parsed : undefined;
  }
  if (millis === undefined || !Number.isFinite(millis) || millis <= 0) {
    throw new ConfigError(
      `${what} must be a positive number of seconds or a duration string like '1h' or '500ms', got ${describe(value)}`,
    );
  }
  return Math.max(1, Math.round(millis));
}

/** As toMillis, but the number 0 is allowed and means none (countdowns, close timeouts). */
export function toMillisOrZero(value: Duration, what: string): number {
  return value === 0 ? 0 : toMillis(value, what);
}

// describe() shows at most this much of an array or a string, and arrays this many levels deep.
const MAX_SHOWN_ITEMS = 20;
const MAX_SHOWN_CHARS = 1000;
const MAX_SHOWN_DEPTH = 3;

/**
 * Short text for a bad value in an error message. Never throws: a revoked Proxy, an element
 * getter that throws and an array that holds itself are all shown as something.
 */
export function describe(value: unknown): string {
  try {
    return describeAt(value, 0);
  } catch {
    return 'an array that cannot be shown';
  }
}

function describeAt(value: unknown, depth: number): string {
  if (typeof value === 'string') {
    if (value.length <= MAX_SHOWN_CHARS) return JSON.stringify(value);
    return `${JSON.stringify(value.slice(0, MAX_SHOWN_CHARS))} ... (${value.length - MAX_SHOWN_CHARS} more characters)`;
  }
  if (typeof value === 'function') return isRevokedProxy(value) ? 'a revoked Proxy' : 'a function';
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'symbol') return String(value);
  if (value === null || typeof value !== 'object') return String(value);
  if (isRevokedProxy(value)) return 'a revoked Proxy';
  if (!Array.isArray(value)) return 'an object';
  if (depth >= MAX_SHOWN_DEPTH) return '[...]';
  const items: string[] = [];
  for (let i = 0; i < Math.min(value.length, MAX_SHOWN_ITEMS); i++) items.push(describeAt(value[i], depth + 1));
  if (value.length > MAX_SHOWN_ITEMS) items.push(`... (${value.length - MAX_SHOWN_ITEMS} more)`);
  return `[${items.join(', ')}]`;
}

/** True for a Proxy that was revoked, on which every operation throws. Runs no code of the value's. */
export function isRevokedProxy(value: unknown): boolean {
  if (!types.isProxy(value)) return false;
  try {
    // IsArray calls no trap; it throws only when the Proxy (or one it wraps) is revoked.
    Array.isArray(value);
    return false;
  } catch {
    return true;
  }
}
