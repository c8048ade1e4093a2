// Reading the benchmarks' sizes from the environment.

/** The whole number >= 1 in environment variable `name`, or `def` when it is unset or empty. */
export function int(name, def) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a whole number >= 1, got '${raw}'`);
  return n;
}
