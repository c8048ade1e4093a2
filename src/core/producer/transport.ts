import type { RedisClient } from '../protocol/connection.js';
import { closeClient, openClient, redisNowMs, type ConnectionOption, type OwnedClient } from '../protocol/connection.js';
import { ConfigError, isWrongType, redisCall } from '../errors.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import { ScriptRunner } from '../protocol/script-runner.js';
import { forget, revoke, type EnqueueOutcome } from '../protocol/scripts.js';
import type { TaskState } from '../protocol/task-record.js';
import { DEFAULT_FAILOVER_TIMEOUT_MS, Enqueuer } from './enqueuer.js';
import type { PreparedCall } from './prepare-call.js';
import { ResultWaiter, type Watch } from './result-waiter.js';
import type { ResultBackend } from './task-result.js';
import { randomBytes } from 'node:crypto';
import { decodeWorkerInfo, type PingReply, type PingRequest, type WorkerInfo } from '../protocol/worker-info.js';
import { EventStream } from '../events/event-stream.js';
import type { QueueEvent } from '../events/queue-events.js';

/** A unique lock as held now: the holding task's id, and ms until it lapses (null: no expiry). */
export interface HeldLock {
  holder: string;
  ttlMs: number | null;
}

/**
 * Where a Dispatcher's checked calls go and its TaskResults read from: Redis (RedisTransport),
 * or in-process runs (heimdall-tasks/testing's inline mode). Everything before it (option and
 * argument checks, ids, locks and rate keys: prepare-call.ts) and after it (reading the answer:
 * reply-codes.ts) is the Dispatcher's, the same for both.
 */
export interface DispatchTransport {
  /** What TaskResults of this dispatcher read and change their task through. */
  readonly results: ResultBackend;
  /** The Redis client, or a ConfigError's message when there is none (inline). */
  client(): RedisClient;
  /** Sends one checked call; resolves with the enqueue script's answer for it (reply-codes.ts). */
  send(call: PreparedCall): Promise<EnqueueOutcome>;
  /** The id holding a unique lock, or null. */
  /** The holder of a unique lock and its time left (ms; null: no expiry), or null when the lock is free. */
  lockOf(keys: QueueKeys, lockKey: string, what: string): Promise<HeldLock | null>;
  /** The live workers registered on these queues (heartbeat-3.lua), each once. */
  workers(queues: readonly QueueKeys[]): Promise<WorkerInfo[]>;
  /** Asks the workers of these queues to answer on a reply channel; resolves after `timeoutMs` with the answers. */
  ping(queues: readonly QueueKeys[], timeoutMs: number): Promise<PingReply[]>;
  /** The events of these queues from `since` (see EventsReadOptions), until the iterator is closed or the transport closes. */
  events(queues: readonly QueueKeys[], since: Date | number | string | undefined, signal: AbortSignal | undefined): AsyncIterableIterator<QueueEvent>;
  /** Sends what is still waiting, then lets go of what it holds. */
  close(): Promise<void>;
}

/** The Redis transport: one auto-pipelined connection, batched enqueues, and a subscriber opened by the first `get()`. */
export class RedisTransport implements DispatchTransport, ResultBackend {
  readonly results: ResultBackend = this;
  private readonly conn: OwnedClient;
  private readonly scripts: ScriptRunner;
  private readonly enqueuer: Enqueuer;
  private sub: OwnedClient | undefined;
  private waiter: ResultWaiter | undefined;
  private closed = false;
  private readonly streams = new Set<EventStream>();

  constructor(
    private readonly connection: ConnectionOption,
    private readonly clientName: string,
    /** The cap of the queues' event streams for what this transport writes (0: no events). */
    private readonly eventsCap: number,
    /** How long an enqueue refused between two masters is sent again, in ms (see Enqueuer). */
    failoverTimeoutMs: number = DEFAULT_FAILOVER_TIMEOUT_MS,
  ) {
    this.conn = openClient(connection, 'commands', clientName, {
      enableAutoPipelining: true,
      // Enqueue calls are batched by the enqueuer itself; each goes out at once, so Redis runs one
      // batch while the next is being built. TIME too: events() asks for it to know where "now" is
      // in the streams, and it must reach Redis before a task sent after the events() call.
      autoPipeliningIgnoredCommands: ['evalsha', 'time'],
    });
    this.scripts = new ScriptRunner(this.conn.client);
    this.enqueuer = new Enqueuer(this.scripts, () => this.conn.lastError, eventsCap, failoverTimeoutMs, this.conn.client.isCluster === true);
  }

  client(): RedisClient {
    return this.conn.client;
  }

  send(p: PreparedCall): Promise<EnqueueOutcome> {
    return this.enqueuer.send(p.keys, p.task, p.bytes, `sending ${p.name}`);
  }

  async lockOf(_keys: QueueKeys, lockKey: string, what: string): Promise<HeldLock | null> {
    // Sent together (no MULTI: the minimal ACL grants none); a lock that lapses between the two
    // answers -2 for its time left, and is free.
    const client = this.conn.client;
    const [holder, ttl] = await redisCall(what, () => Promise.all([client.get(lockKey), client.pttl(lockKey)]));
    if (holder === null || ttl === -2) return null;
    return { holder, ttlMs: ttl >= 0 ? ttl : null };
  }

  read(keys: QueueKeys, id: string, fields: readonly string[]): Promise<(string | null)[]> {
    return this.conn.client.hmget(keys.task(id), ...fields);
  }

  readAll(keys: QueueKeys, id: string): Promise<Record<string, string>> {
    return this.conn.client.hgetall(keys.task(id));
  }

  watch(keys: QueueKeys, id: string): Promise<Watch> {
    return this.subscriber().watch(keys.done(id));
  }

  /** The subscriber connection's waiter, opened on first use. */
  private subscriber(): ResultWaiter {
    if (this.closed) throw new ConfigError('this dispatcher is closed; create a new Dispatcher to wait for results');
    if (!this.waiter) {
      this.sub = openClient(this.connection, 'subscriber', this.clientName);
      this.waiter = new ResultWaiter(this.sub.client);
    }
    return this.waiter;
  }

  async revoke(keys: QueueKeys, id: string, terminate: boolean, expireMs: number): Promise<TaskState> {
    return (await revoke(this.scripts, keys, id, terminate, expireMs, 'revoked', this.eventsCap)).state;
  }

  forget(keys: QueueKeys, id: string): Promise<boolean> {
    return forget(this.scripts, keys, id);
  }

  async workers(queues: readonly QueueKeys[]): Promise<WorkerInfo[]> {
    const client = this.conn.client;
    const now = await redisNowMs(client);
    const byId = new Map<string, WorkerInfo>();
    await Promise.all(
      queues.map(async (k) => {
        let members: string[];
        try {
          members = await client.zrangebyscore(k.workers, `(${now}`, '+inf', 'WITHSCORES', 'LIMIT', 0, 1000);
        } catch (err) {
          // A key of the wrong type (not ours) hides that queue's workers, not every queue's.
          if (isWrongType(err)) return;
          throw err;
        }
        const ids: string[] = [];
        const until: number[] = [];
        for (let i = 0; i + 1 < members.length; i += 2) {
          ids.push(members[i]!);
          until.push(Number(members[i + 1]));
        }
        if (ids.length === 0) return;
        let infos: (string | null)[];
        try {
          infos = await client.hmget(k.workerInfo, ...ids);
        } catch (err) {
          if (isWrongType(err)) return;
          throw err;
        }
        infos.forEach((json, i) => {
          const info = decodeWorkerInfo(json, until[i]!, ids[i]);
          const known = info && byId.get(info.id);
          if (info && (!known || known.heartbeatAt < info.heartbeatAt)) byId.set(info.id, info);
        });
      }),
    );
    return [...byId.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  async ping(queues: readonly QueueKeys[], timeoutMs: number): Promise<PingReply[]> {
    if (queues.length === 0) return [];
    const nonce = randomBytes(8).toString('hex');
    const channel = queues[0]!.reply(nonce);
    const replies = new Map<string, PingReply>();
    const began = performance.now();
    const stop = await this.subscriber().listen(channel, (message) => {
      try {
        const r = JSON.parse(message) as Partial<PingReply> & { nonce?: string };
        if (r.nonce !== nonce || typeof r.id !== 'string' || replies.has(r.id)) return;
        replies.set(r.id, {
          id: r.id,
          host: String(r.host ?? ''),
          pid: Number(r.pid ?? 0),
          queues: Array.isArray(r.queues) ? r.queues.map(String) : [],
          latencyMs: Math.round((performance.now() - began) * 10) / 10,
        });
      } catch {
        // not an answer of ours
      }
    });
    try {
      const request: PingRequest = { op: 'ping', nonce, reply: channel };
      await Promise.all(queues.map((k) => this.conn.client.spublish(k.control, JSON.stringify(request))));
      await new Promise((resolve) => setTimeout(resolve, timeoutMs));
    } finally {
      stop();
    }
    return [...replies.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  events(queues: readonly QueueKeys[], since: Date | number | string | undefined, signal: AbortSignal | undefined): AsyncIterableIterator<QueueEvent> {
    if (this.closed) throw new ConfigError('this dispatcher is closed');
    const prefix = queues[0]?.prefix ?? '';
    const stream = new EventStream(this.connection, prefix, queues.map((k) => k.queue), since, () => redisNowMs(this.conn.client), signal, `${this.clientName}:events`, (s) => this.streams.delete(s));
    this.streams.add(stream);
    return stream;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.streams].map((s) => s.close()));
    // Tasks already handed to delay() are sent before the connection closes (while Redis is
    // unreachable that takes as long as the client's retries).
    await this.enqueuer.drain();
    await Promise.all([closeClient(this.conn), closeClient(this.sub)]);
  }
}
