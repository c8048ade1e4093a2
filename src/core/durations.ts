import ms from 'ms';
import { ConfigError } from './errors.js';

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

/** Short text for a bad value in an error message. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `[${value.map(describe).join(', ')}]`;
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'symbol') return value.toString();
  if (value !== null && typeof value === 'object') return 'an object';
  return String(value);
}
