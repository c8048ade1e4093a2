/**
 * Concurrency permits in memory, for inline mode: the rules of permit-3.lua (read its header for
 * why). A running run's permit is given back at its end, so it needs no lease here; a permit
 * handed to a waiter lapses after HANDED_MS if the waiter never comes for it, as it would in Redis.
 */
import type { PermitScope } from '../protocol/permit-scripts.js';

/** How long a permit handed to a waiter stays its own, ms (a worker's default lease). */
export const HANDED_MS = 30_000;

interface ScopeState {
  scope: PermitScope;
  /** run -> when its permit lapses (Infinity while it runs). */
  holders: Map<string, number>;
  /** Waiters, first come first. */
  waiters: string[];
}

export class InlinePermits {
  private readonly scopes = new Map<string, ScopeState>();

  private state(scope: PermitScope, now: number): ScopeState {
    let s = this.scopes.get(scope.keys[0]);
    if (!s) {
      s = { scope, holders: new Map(), waiters: [] };
      this.scopes.set(scope.keys[0], s);
    }
    for (const [run, until] of s.holders) if (until <= now) s.holders.delete(run);
    return s;
  }

  /** Free permits go to the earliest waiters; returns their names. */
  private handOver(scope: PermitScope, s: ScopeState, now: number): string[] {
    const woken: string[] = [];
    while (s.holders.size < scope.n && s.waiters.length > 0) {
      const w = s.waiters.shift()!;
      s.holders.set(w, now + HANDED_MS);
      woken.push(w);
    }
    return woken;
  }

  /**
   * A permit of every scope for `run`, all or none: `{ held: true }`, or the waiter's place taken
   * in the first full scope (what it took of the others given back). `woken`: waiters handed a
   * permit meanwhile, for the caller to start.
   */
  acquire(scopes: readonly PermitScope[], run: string, now: number): { held: boolean; woken: string[] } {
    const woken: string[] = [];
    for (const scope of scopes) {
      const s = this.state(scope, now);
      if (!s.holders.has(run)) {
        woken.push(...this.handOver(scope, s, now).filter((w) => w !== run));
        if (!s.holders.has(run) && s.holders.size >= scope.n) {
          if (!s.waiters.includes(run)) s.waiters.push(run);
          // It waits here only: what it holds in the others goes to their waiters.
          woken.push(...this.release(scopes.filter((other) => other !== scope), run, now));
          return { held: false, woken };
        }
      }
      s.holders.set(run, Infinity);
      s.waiters = s.waiters.filter((w) => w !== run);
    }
    return { held: true, woken };
  }

  /** `run`'s permits lapse at `until` (ms) instead of at its end: it waits for a rate turn holding them. */
  keep(scopes: readonly PermitScope[], run: string, until: number): void {
    for (const scope of scopes) {
      const s = this.scopes.get(scope.keys[0]);
      if (s?.holders.has(run)) s.holders.set(run, until);
    }
  }

  /** Gives back `run`'s permits (and its places as a waiter); returns the waiters handed them. */
  release(scopes: readonly PermitScope[], run: string, now: number): string[] {
    const woken: string[] = [];
    for (const scope of scopes) {
      const s = this.state(scope, now);
      s.holders.delete(run);
      s.waiters = s.waiters.filter((w) => w !== run);
      woken.push(...this.handOver(scope, s, now));
    }
    return woken;
  }

  /** Gives back whatever the runs `matches` accepts hold or wait for, in every scope (a task that ended); returns the waiters handed permits. */
  releaseWhere(matches: (run: string) => boolean, now: number): string[] {
    const woken: string[] = [];
    for (const s of [...this.scopes.values()]) {
      for (const r of [...s.holders.keys(), ...s.waiters].filter(matches)) woken.push(...this.release([s.scope], r, now));
    }
    return woken;
  }
}
