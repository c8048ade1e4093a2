/**
 * A rate window in memory, for inline mode: the same rule as includes/rate-window.lua (read that
 * header for why). Entries map `<id>:<attempt>` (a start) or `~<id>:<attempt>` (a turn) to their
 * time; a Map keeps the order entries were added, which stands in for the sorted set's order of
 * equal scores.
 */
export type RateWindow = Map<string, number>;

/**
 * Counts a start of `member` at `now`, or gives it a turn (or keeps the one it has). Returns
 * undefined when it starts, or the delay in ms until its slot.
 */
export function admitRate(window: RateWindow, member: string, limit: number, periodMs: number, now: number): number | undefined {
  for (const [m, at] of window) if (at <= now - periodMs) window.delete(m);
  const turnMember = `~${member}`;
  const turn = window.get(turnMember);
  const sorted = [...window.entries()].sort((a, b) => a[1] - b[1]);
  let counted: number[];
  if (turn !== undefined) {
    // Starts up to now and the turns ahead of its own; not the turns behind it.
    const mine = sorted.findIndex(([m]) => m === turnMember);
    counted = [
      ...sorted.slice(0, mine).map(([, at]) => at),
      ...sorted.slice(mine + 1).filter(([m, at]) => !m.startsWith('~') && at <= now).map(([, at]) => at),
    ];
    if (counted.length >= limit) return counted[counted.length - limit]! + periodMs - now;
    window.delete(turnMember);
  } else {
    counted = sorted.map(([, at]) => at);
    if (counted.length >= limit) {
      const at = counted[counted.length - limit]! + periodMs;
      window.set(turnMember, at);
      return at - now;
    }
  }
  window.set(member, now);
  return undefined;
}
