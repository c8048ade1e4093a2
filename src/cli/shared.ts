// What the subcommands of `heimdall` share: the exit codes, the usage error, where output goes,
// and how durations are shown.

/** Exit codes scripts can rely on. */
export const EXIT = { ok: 0, failure: 1, usage: 2, taskDidNotSucceed: 3, stillRunning: 4 } as const;

/** A mistake in the command line: printed with the command's help, exit 2. */
export class UsageError extends Error {}

/** Where a command writes, and the environment it reads (a test passes its own). */
export interface Io {
  /** A line on stdout (newline added). */
  out: (text: string) => void;
  /** A line on stderr (newline added). */
  err: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** The streams themselves, for what draws in place (the progress bar, inspect --watch). */
  stdin: NodeJS.ReadStream;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

/** A duration in ms for people: '850 ms', '1.2 ms', '12.5 s', '3 min'; '-' for none. */
export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined) return '-';
  return value < 1000 ? `${Number.isInteger(value) ? value : value.toFixed(1)} ms` : value < 120_000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value / 60_000)} min`;
}
