import type { Redis } from 'ioredis';
import type { QueueKeys } from './queue-keys.js';
import type { ScriptRunner } from './script-runner.js';
import { fetch as fetchScript, finish as finishScript } from '../redis-scripts/scripts.generated.js';

/** A started task as the fetch script hands it over. */
export interface StartedTask {
  id: string;
  name: string;
  argsJson: string;
  attempt: number;
}

/** A task's end, waiting to be written by the next finish call. */
export interface Finish {
  id: string;
  state: 'SUCCESS' | 'FAILURE';
  /** 'r' (result), 'e' (error) or '' (no value). */
  field: 'r' | 'e' | '';
  value: string;
  expireMs: number;
  /** Called once the end is stored (stale: this worker no longer held the task). */
  stored(stale: boolean): void;
}

/** What a runner needs from its worker. */
export interface RunnerHost {
  readonly workerId: string;
  readonly leaseMs: number;
  readonly resultExpiresMs: number;
  /** False once close() began: fetch nothing more. */
  accepting(): boolean;
  /** Free slots not yet promised to a fetch in flight. */
  freeSlots(): number;
  reserve(n: number): void;
  launch(runner: QueueRunner, task: StartedTask): void;
  rateLimited(queue: string, id: string, name: string, argsJson: string, delayMs: number): void;
  revoked(queue: string, id: string, name: string, argsJson: string, reason: string): void;
  reportError(err: unknown): void;
}

type Reply = [(string | number)[], (string | number)[], (string | number)[], number, number, string[]?];

// An idle runner blocks on the wait list at most this long, a safety net for wake-ups that
// come from nowhere it can see (a rate-limited task rescheduled by a worker that then died).
const BLOCK_SECONDS = 5;
const MAX_FINISHES_PER_CALL = 500;

/**
 * Drives one queue for one worker. All script calls of the queue go through one loop, one at
 * a time: finishes that pile up while a call is in flight travel together in the next one,
 * with a fetch for the slots they free. When the queue is empty the runner blocks on its own
 * connection (BLMOVE of the wait list onto itself, which moves nothing) and sets a timer for
 * the earliest delayed task, so an idle worker costs Redis nothing between events.
 */
export class QueueRunner {
  /** Ids of the tasks of this queue that this worker runs now. */
  readonly running = new Set<string>();
  private pending: Finish[] = [];
  private idle = false;
  private blocking = false;
  private wake: (() => void) | undefined;
  private dueTimer: NodeJS.Timeout | undefined;
  private loopDone: Promise<void> | undefined;
  private readonly fixedArgs: (string | number)[];

  constructor(
    private readonly host: RunnerHost,
    readonly keys: QueueKeys,
    private readonly scripts: ScriptRunner,
    private readonly blocker: Redis,
  ) {
    this.fixedArgs = [keys.base, host.workerId, host.leaseMs];
  }

  start(): void {
    this.loopDone = this.loop();
  }

  /** Queues a task's end for the next call and wakes the loop. */
  finished(f: Finish): void {
    this.running.delete(f.id);
    this.pending.push(f);
    this.poke();
  }

  /** Wakes the loop to re-evaluate (slot freed, close began). */
  poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Resolves when the loop has stored every finish and no task of this queue runs. */
  async stop(): Promise<void> {
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.poke();
    await this.loopDone;
  }

  private async loop(): Promise<void> {
    let failures = 0;
    for (;;) {
      const fin = this.pending.splice(0, MAX_FINISHES_PER_CALL);
      const want = !this.idle && this.host.accepting() ? this.host.freeSlots() : 0;
      if (fin.length === 0 && want === 0) {
        if (!this.host.accepting() && this.running.size === 0 && this.pending.length === 0) return;
        if (this.idle && this.host.accepting()) this.block();
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      this.host.reserve(want);
      let reply: Reply;
      try {
        const seed = Math.floor(Math.random() * 2 ** 31);
        const common = [...this.fixedArgs, want, seed, this.host.resultExpiresMs];
        const keys = [this.keys.wait, this.keys.delayed, this.keys.active];
        if (fin.length === 0) {
          reply = await this.scripts.run<Reply>(fetchScript, keys, common);
        } else {
          const flat: (string | number)[] = [fin.length];
          for (const f of fin) flat.push(f.id, f.state, f.field, f.value, f.expireMs);
          reply = await this.scripts.run<Reply>(finishScript, keys, [...common, ...flat]);
        }
        failures = 0;
      } catch (err) {
        this.host.reserve(-want);
        this.pending.unshift(...fin);
        this.host.reportError(err);
        failures++;
        // Back off while Redis is unreachable; the loop resumes by itself.
        await new Promise((r) => setTimeout(r, Math.min(5000, 50 * 2 ** failures)));
        continue;
      }
      this.host.reserve(-want);
      const [started, limited, revoked, nextDelay, more, stale] = reply;
      const staleSet = new Set(stale ?? []);
      for (const f of fin) f.stored(staleSet.has(f.id));
      for (let i = 0; i < started.length; i += 4) {
        const task: StartedTask = {
          id: String(started[i]),
          name: String(started[i + 1]),
          argsJson: String(started[i + 2]),
          attempt: Number(started[i + 3]),
        };
        this.running.add(task.id);
        this.host.launch(this, task);
      }
      for (let i = 0; i < limited.length; i += 4) {
        this.host.rateLimited(this.keys.queue, String(limited[i]), String(limited[i + 1]), String(limited[i + 2]), Number(limited[i + 3]));
      }
      for (let i = 0; i < revoked.length; i += 4) {
        this.host.revoked(this.keys.queue, String(revoked[i]), String(revoked[i + 1]), String(revoked[i + 2]), String(revoked[i + 3]));
      }
      if (want > 0) {
        this.idle = more === 0 && started.length / 4 < want;
        this.scheduleDue(nextDelay);
      }
    }
  }

  /** Wakes the loop when the earliest delayed task is due. */
  private scheduleDue(delayMs: number): void {
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.dueTimer = undefined;
    if (delayMs < 0 || !this.host.accepting()) return;
    this.dueTimer = setTimeout(() => {
      this.dueTimer = undefined;
      this.idle = false;
      this.poke();
    }, delayMs + 1);
    this.dueTimer.unref();
  }

  /** Blocks until the wait list has an entry (or the safety timeout), then wakes the loop. */
  private block(): void {
    if (this.blocking) return;
    this.blocking = true;
    this.blocker
      .blmove(this.keys.wait, this.keys.wait, 'RIGHT', 'RIGHT', BLOCK_SECONDS)
      .catch(async (err: unknown) => {
        if (!this.host.accepting()) return;
        this.host.reportError(err);
        await new Promise((r) => setTimeout(r, 1000));
      })
      .finally(() => {
        this.blocking = false;
        this.idle = false;
        this.poke();
      });
  }
}
