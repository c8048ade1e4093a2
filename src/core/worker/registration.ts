import { hostname } from 'node:os';
import type { RedisClient } from '../protocol/connection.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import type { ScriptRunner } from '../protocol/script-runner.js';
import { heartbeat } from '../protocol/scripts.js';
import type { PingRequest, WorkerInfoJson } from '../protocol/worker-info.js';
import { VERSION } from '../version.js';
import type { Run } from './run.js';

/** At most this many running tasks are listed in a heartbeat. */
const MAX_LISTED_RUNS = 100;
/** Pings a worker remembers, so a worker on several queues answers each once. */
const REMEMBERED_PINGS = 64;

/** What a worker's registration reads of it. */
export interface RegisteredWorker {
  readonly id: string;
  readonly queues: readonly string[];
  readonly concurrency: number;
  /** The runs in flight. */
  runs(): Iterable<Run>;
}

/**
 * A worker's entry in the registry (heartbeat-3.lua, per queue it consumes): what it is and
 * runs, renewed every tick and removed when it closes, with its counters of ended tasks; and its
 * answers to pings on the queues' control channels.
 */
export class WorkerRegistration {
  private readonly host = hostname();
  private readonly startedAt = Date.now();
  private readonly pings: string[] = [];
  succeeded = 0;
  failed = 0;
  retried = 0;

  constructor(
    private readonly worker: RegisteredWorker,
    private readonly scripts: ScriptRunner,
    private readonly commands: RedisClient,
    private readonly prefix: string,
    /** Events older than this are trimmed at each renewal, ms (0: none). */
    private readonly eventsMaxAgeMs: number,
  ) {}

  /** Registers (or renews) the worker on each of `queues` for `validMs`. */
  async renew(queues: readonly QueueKeys[], validMs: number): Promise<void> {
    const json = JSON.stringify(this.info());
    await Promise.all(queues.map((k) => heartbeat(this.scripts, k, this.worker.id, validMs, json, this.eventsMaxAgeMs)));
  }

  /** Removes the worker's entries (it closes). */
  async remove(queues: readonly QueueKeys[]): Promise<void> {
    await Promise.all(queues.map((k) => heartbeat(this.scripts, k, this.worker.id, 0, '', 0)));
  }

  /** Answers a request on a control channel; anything that is not a ping of this prefix is ignored. */
  onControl(message: string): void {
    let request: Partial<PingRequest>;
    try {
      request = JSON.parse(message) as Partial<PingRequest>;
    } catch {
      return;
    }
    if (typeof request !== 'object' || request === null || request.op !== 'ping') return;
    const { nonce, reply } = request;
    // Only a reply channel of this prefix (not, say, a task's done channel).
    if (typeof nonce !== 'string' || typeof reply !== 'string' || !reply.startsWith(`${this.prefix}:{`) || !reply.includes('}:reply:')) return;
    if (this.pings.includes(nonce)) return;
    this.pings.push(nonce);
    if (this.pings.length > REMEMBERED_PINGS) this.pings.shift();
    const answer = { id: this.worker.id, host: this.host, pid: process.pid, queues: this.worker.queues, nonce };
    // SPUBLISH is routed to the shard of the reply channel's queue, where the pinging dispatcher listens.
    this.commands.spublish(reply, JSON.stringify(answer)).catch(() => undefined);
  }

  private info(): WorkerInfoJson {
    const running: WorkerInfoJson['running'] = [];
    for (const run of this.worker.runs()) {
      if (running.length >= MAX_LISTED_RUNS) break;
      running.push({ id: run.task.id, name: run.task.name, queue: run.runner.keys.queue, startedAt: run.startedAt ?? 0 });
    }
    return {
      id: this.worker.id,
      host: this.host,
      pid: process.pid,
      version: VERSION,
      queues: [...this.worker.queues],
      concurrency: this.worker.concurrency,
      startedAt: this.startedAt,
      heartbeatAt: Date.now(),
      running,
      succeeded: this.succeeded,
      failed: this.failed,
      retried: this.retried,
    };
  }
}
