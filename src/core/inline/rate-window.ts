/**
 * A rate window in memory, for inline mode: the same rule as includes/rate-window.lua (read that
 * header for why). Entries map `<id>:<attempt>` to the time of a start, or of a turn reserved
 * for a task that found the window full.
 */
export type RateWindow = Map<string, number>;

/**
 * Counts a start of `member` at `now`, or reserves its turn. Returns undefined when it starts, or
 * the delay in ms until its reserved turn.
 */
export function admitRate(window: RateWindow, member: string, limit: number, periodMs: number, now: number): number | undefined {
  for (const [m, at] of window) if (at <= now - periodMs) window.delete(m);
  let counted: number[];
  if (window.has(member)) {
    // Its turn came: only the window up to now counts; later entries are turns behind it.
    window.delete(member);
    counted = [...window.values()].filter((at) => at <= now);
  } else {
    counted = [...window.values()];
  }
  if (counted.length < limit) {
    window.set(member, now);
    return undefined;
  }
  counted.sort((a, b) => a - b);
  const at = counted[counted.length - limit]! + periodMs;
  window.set(member, at);
  return at - now;
}
