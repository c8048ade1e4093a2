/**
 * Named limits in memory, for inline mode: the rules of limit-2.lua (read its header for why),
 * on `Date.now()`. One process holds every limit, so a run's limits are taken one after the other
 * with nothing in between: all or none is exact here without moving anything.
 */
import type { LimitHandle, ResolvedLimit } from '../task/limits.js';

/** A window limit: run name -> its entry (start, or reserved turn) and cost. */
type WindowState = { kind: 'window'; entries: Map<string, { at: number; cost: number }> };
/** A gcra limit: the TAT (ms) and the TAT each reservation left. */
type GcraState = { kind: 'gcra'; tat: number; reserved: Map<string, number> };

export class InlineLimits {
  private readonly states = new Map<string, WindowState | GcraState>();
  /** Runs of the take in progress that started on a gcra reservation (limit, run). */
  private readonly unpaid = new Set<string>();

  private state(def: LimitHandle): WindowState | GcraState {
    let s = this.states.get(def.name);
    if (!s) {
      s = def.algorithm === 'gcra' ? { kind: 'gcra', tat: 0, reserved: new Map() } : { kind: 'window', entries: new Map() };
      this.states.set(def.name, s);
    }
    return s;
  }

  /**
   * Takes every limit of a run at `now`: undefined when all have room (charged), else the ms until
   * the latest turn, every limit then holding the run's turn there (window) or nothing (gcra,
   * whose reservation is kept only where it gave the latest turn).
   */
  take(limits: readonly ResolvedLimit[], run: string, now: number): number | undefined {
    const delays = limits.map((l) => this.takeOne(l.def, run, l.cost, now));
    const latest = Math.max(0, ...delays.map((d) => d ?? 0));
    if (latest > 0) {
      limits.forEach((l, i) => {
        if (delays[i] !== latest) this.defer(l.def, run, l.cost, now + latest, now);
      });
    }
    this.unpaid.clear();
    return latest > 0 ? latest : undefined;
  }

  /** Corrects a run's charge (limit-2.lua 'cost'); false when its entry left the window. */
  correct(def: LimitHandle, run: string, charged: number, actual: number, now: number): boolean {
    const s = this.state(def);
    if (s.kind === 'window') {
      this.trim(s, def, now);
      const entry = s.entries.get(run);
      if (!entry) return false;
      entry.cost = actual;
      return true;
    }
    const unit = def.periodMs / def.limit;
    if (actual > charged) s.tat = Math.max(s.tat, now) + (actual - charged) * unit;
    else s.tat = Math.max(now, s.tat - (charged - actual) * unit);
    return true;
  }

  private trim(s: WindowState, def: LimitHandle, now: number): void {
    for (const [m, e] of s.entries) if (e.at <= now - def.periodMs) s.entries.delete(m);
  }

  /** One limit: undefined (charged now) or the ms until its turn. */
  private takeOne(def: LimitHandle, run: string, cost: number, now: number): number | undefined {
    const s = this.state(def);
    if (s.kind === 'window') {
      this.trim(s, def, now);
      let counted: { at: number; cost: number }[];
      if (s.entries.has(run)) {
        // Its turn came: only the window up to now counts.
        s.entries.delete(run);
        counted = [...s.entries.values()].filter((e) => e.at <= now);
      } else {
        counted = [...s.entries.values()];
      }
      counted.sort((a, b) => a.at - b.at);
      const busy = counted.reduce((sum, e) => sum + e.cost, 0);
      let at = now;
      if (busy + cost > def.limit) {
        let over = busy + cost - def.limit;
        for (const e of counted) {
          over -= e.cost;
          if (over <= 0) {
            at = e.at + def.periodMs;
            break;
          }
        }
      }
      s.entries.set(run, { at, cost });
      return at > now ? at - now : undefined;
    }
    const unit = def.periodMs / def.limit;
    const paid = s.reserved.get(run);
    if (paid !== undefined) {
      const turn = paid - def.periodMs;
      if (now < turn) return turn - now;
      s.reserved.delete(run);
      if (now <= paid - cost * unit + unit) {
        // Starts on the units it paid: nothing charged now, nothing for a defer to take back.
        this.unpaid.add(`${def.name}\u0000${run}`);
        return undefined;
      }
      if (s.tat === paid) s.tat = paid - cost * unit;
    }
    const after = Math.max(s.tat, now) + cost * unit;
    s.tat = after;
    if (after - def.periodMs <= now) return undefined;
    s.reserved.set(run, after);
    return after - def.periodMs - now;
  }

  /** limit-2.lua 'defer': the run's entry moves to its turn `at` (window); its charge is taken back when it is the last (gcra). */
  private defer(def: LimitHandle, run: string, cost: number, at: number, now: number): void {
    const s = this.state(def);
    if (s.kind === 'window') {
      const entry = s.entries.get(run);
      if (entry) entry.at = at;
      return;
    }
    const paid = s.reserved.get(run);
    s.reserved.delete(run);
    if (this.unpaid.delete(`${def.name}\u0000${run}`)) return;
    // In memory nothing came between the take and this: the TAT is still the one its charge left.
    if (paid === undefined || s.tat === paid) s.tat = Math.max(now, s.tat - cost * (def.periodMs / def.limit));
  }
}
