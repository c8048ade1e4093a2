// What a worker says of itself in the registry (heartbeat-3.lua stores it as JSON, per queue) and
// in its answer to a ping; the Dispatcher reads both. docs/architecture.md, "Worker registry".

/** A task a worker runs, as its last heartbeat saw it. */
export interface RunningTask {
  /** The task's id. */
  id: string;
  /** Its registry name. */
  name: string;
  /** The queue it came from. */
  queue: string;
  /** When this run started (the worker's clock). */
  startedAt: Date;
}

/** A live worker, as it last described itself (every third of its lease). */
export interface WorkerInfo {
  /** The worker's id (its `name` option, or `<host>:<pid>:<random>`). */
  id: string;
  /** The host name of its machine. */
  host: string;
  /** Its process id. */
  pid: number;
  /** The heimdall-tasks version it runs. */
  version: string;
  /** The queues it consumes. */
  queues: string[];
  /** Tasks it runs at once at most. */
  concurrency: number;
  /** When it started (the worker's clock). */
  startedAt: Date;
  /** When it sent this (the worker's clock). */
  heartbeatAt: Date;
  /** The tasks it ran at that moment (at most 100 listed). */
  running: RunningTask[];
  /** Tasks it ran to SUCCESS since it started. */
  succeeded: number;
  /** Tasks it ended FAILURE since it started. */
  failed: number;
  /** Runs of its that ended in a retry since it started. */
  retried: number;
  /** Until when the registration holds unless renewed (the Redis clock); a worker that stops heartbeating disappears then. */
  validUntil: Date;
}

/** A worker's answer to `dispatcher.ping()`. */
export interface PingReply {
  /** The worker's id. */
  id: string;
  /** The host name of its machine. */
  host: string;
  /** Its process id. */
  pid: number;
  /** The queues it consumes. */
  queues: string[];
  /** Milliseconds from the ping to this answer, on the pinging process's clock. */
  latencyMs: number;
}

/** The JSON form of a WorkerInfo, as stored (dates as epoch ms; no validUntil, which is the registry's score). */
export interface WorkerInfoJson {
  id: string;
  host: string;
  pid: number;
  version: string;
  queues: string[];
  concurrency: number;
  startedAt: number;
  heartbeatAt: number;
  running: { id: string; name: string; queue: string; startedAt: number }[];
  succeeded: number;
  failed: number;
  retried: number;
}

/** Reads a stored WorkerInfo; undefined for something that is not one (another writer, a damaged field). */
export function decodeWorkerInfo(json: string | null | undefined, validUntilMs: number, memberId?: string): WorkerInfo | undefined {
  if (!json) return undefined;
  let v: Partial<WorkerInfoJson>;
  try {
    v = JSON.parse(json) as Partial<WorkerInfoJson>;
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || typeof v.id !== 'string' || (memberId !== undefined && v.id !== memberId)) return undefined;
  const num = (n: unknown): number => (typeof n === 'number' && Number.isFinite(n) ? n : 0);
  return {
    id: v.id,
    host: typeof v.host === 'string' ? v.host : '',
    pid: num(v.pid),
    version: typeof v.version === 'string' ? v.version : '',
    queues: Array.isArray(v.queues) ? v.queues.filter((q): q is string => typeof q === 'string') : [],
    concurrency: num(v.concurrency),
    startedAt: new Date(num(v.startedAt)),
    heartbeatAt: new Date(num(v.heartbeatAt)),
    running: Array.isArray(v.running)
      ? v.running
          .filter((r) => typeof r === 'object' && r !== null && typeof r.id === 'string')
          .map((r) => ({ id: r.id, name: String(r.name ?? ''), queue: String(r.queue ?? ''), startedAt: new Date(num(r.startedAt)) }))
      : [],
    succeeded: num(v.succeeded),
    failed: num(v.failed),
    retried: num(v.retried),
    validUntil: new Date(validUntilMs),
  };
}

/** The message a ping sends on the control channels: the worker answers on `reply`. */
export interface PingRequest {
  op: 'ping';
  nonce: string;
  reply: string;
}
