#!/usr/bin/env node
// The `heimdall` command: inspect and steer a running system from a shell. Arguments are parsed
// with Node's own util.parseArgs (no dependency to keep up: the subcommands are a small fixed set).
// Exit codes: 0 done; 1 a failure (Redis unreachable, refused, no such task); 2 a usage error;
// 3 `status --wait` saw the task end FAILURE or REVOKED; 4 it had not ended at --timeout.
// Every read takes --json. docs/cli.md.
import { realpathSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Dispatcher } from '../core/producer/dispatcher.js';
import { Inspector } from '../core/inspect/inspector.js';
import { ConfigError, HeimdallError } from '../core/errors.js';
import { DEFAULT_PREFIX } from '../core/protocol/queue-keys.js';
import { createClient, planOfUrl, redisNowMs, type RedisClient } from '../core/protocol/connection.js';
import { toMillis } from '../core/task/durations.js';
import { VERSION } from '../core/version.js';
import { EXIT, ms, UsageError, type Io } from './shared.js';
import { workerCommand } from './worker-command.js';
import { ProgressBar } from './progress-bar.js';
import type { QueueEvent } from '../core/events/queue-events.js';
import { watchScreen } from './watch-screen.js';
import type { TaskResult } from '../core/producer/task-result.js';

export { EXIT };

const COMMON = `Options of every command:
  --url <url>        Redis URL: redis://, rediss://, redis+cluster://h:p,h:p,
                     redis+sentinel://h:p,h:p/<name> (default: $REDIS_URL, else
                     redis://localhost:6379)
  --prefix <prefix>  key prefix (default: $HEIMDALL_PREFIX, else 'heimdall')
  --json             print JSON instead of text
  -h, --help         this help`;

const HELP: Record<string, string> = {
  main: `heimdall ${VERSION}: inspect and steer heimdall-tasks on Redis

Usage: heimdall <command> [options]

Commands:
  worker --app <module>                        run a worker with the configuration a module exports
  inspect [queues|workers|locks|limits|permits|dead]   what is in Redis (default: queues); --watch to follow it
  ping                                         which workers answer
  status <id>                                  a task's state, result or error, every attempt
  events [--queue <name>...] [--since <when>]  follow the queues' events (queued, started, ...)
  revoke <id> [--terminate]                    revoke a task from here
  locks release <key> --yes                    release a unique lock on purpose
  locks extend <key> <duration> --yes          give a unique lock a new lifetime from now
  dead retry|drop <queue> [--id <id>...] --yes run dead-lettered tasks again, or drop the letters
  purge <queue> [--delayed] --yes              revoke the tasks waiting in a queue

Run 'heimdall <command> --help' for a command's options.

${COMMON}`,
  worker: `Usage: heimdall worker --app <module> [--queues <a,b>] [--concurrency <n>] [--prefetch <n|auto>]
                       [--log-level <level>] [--shutdown-timeout <s>]

  Runs a Worker until SIGTERM or SIGINT. The module (a path from the current directory: .js,
  .mjs, .cjs, or .ts when heimdall runs through tsx) exports the options of new Worker():
    export default { services: [new Reports(db)], queues: ['reports'], concurrency: 5 };
  or a function (may be async) returning them, or a named export 'worker'. connection and
  prefix may be left out. The flags below, --url/REDIS_URL and --prefix/HEIMDALL_PREFIX win
  over the module's values.

  --app <module>          the module (required)
  --queues <a,b>          queues to consume, separated by commas
  --concurrency <n>       tasks run at once
  --prefetch <n|auto>     tasks reserved ahead of running them: auto (default) one, from a queue
                          whose tasks ran under 100 ms on average; n up to n; 0 none
  --log-level <level>     debug, info (default: a line per task), warn, error or silent
  --shutdown-timeout <s>  on the first signal, how long running tasks get to end before they
                          go back to their queue (default 25); a second signal (1 s or more
                          later) hands them back at once. Exit 0 once the worker has closed.

${COMMON}`,
  inspect: `Usage: heimdall inspect [queues|workers|locks|limits|permits|dead] [--queue <name>...] [--limit <n>]
                        [--watch [--interval <s>]]

  queues   counts per queue: waiting, delayed (retrying among them), running, dead, workers,
           oldest wait, runs ended per second over the last minute (failed among them)
  workers  the live workers: host, pid, queues, running tasks, counts (as each said at its
           last heartbeat, every third of its lease: up to that old)
  locks    unique locks with their holders and what is left of their lifetime
  limits   rate windows: starts in the period, when the next slot frees, tasks waiting on it;
           then the named rate limits (Limits.define): units used in the period, turns
  permits  concurrency permits: per scope (a concurrency limit and key, or a task), the runs
           holding one and when each lapses unless renewed, runs waiting
  dead     dead letters, newest first

  --queue <name>   a queue to look at (repeatable; default: every queue found, or 'default')
  --limit <n>      entries per queue for locks, limits and dead; scopes for permits (default 100)
  --watch          refresh until q or Ctrl-C: a live screen on a terminal; elsewhere a
                   timestamped block per refresh (with --json, a JSON line), until SIGINT/SIGTERM
  --interval <s>   seconds between refreshes with --watch (default 2, at least 0.1)

${COMMON}`,
  ping: `Usage: heimdall ping [--queue <name>...] [--timeout <ms>]

  Asks the workers of the queues to answer; exits 1 when none does.
  --queue <name>   a queue (repeatable; default: every queue found)
  --timeout <ms>   how long to wait for answers (default 1000)

${COMMON}`,
  status: `Usage: heimdall status <id> [--queue <name>] [--wait] [--timeout <s>]

  Prints the task's state, times, progress, result or error, and every attempt (worker, how
  it ended, its error and the backoff before the next).
  --queue <name>   its queue, for a custom id on a queue other than 'default'
  --wait           wait for it to end; exit 3 if it ends FAILURE or REVOKED. While it waits,
                   the task's progress is drawn on stderr: a bar on a terminal, else a line
                   per change
  --timeout <s>    with --wait, the longest wait in seconds (default: none); exit 4 when
                   the task has not ended by then
  An id with no task (a typo, forgotten, expired) exits 1.

${COMMON}`,
  locks: `Usage: heimdall locks release <key> --yes
       heimdall locks extend <key> <duration> --yes

  release  releases a unique lock (its whole key, as 'inspect locks --json' gives it), only if
           the task seen holding it still does: a lock another task took meanwhile is left
           alone. The holder keeps running; a holder that has not started takes the lock again
           at its start.
  extend   gives the lock <duration> from now ('2h', '30m', seconds), only if the task seen
           holding it still does
  --yes            required: the lock's protection changes

${COMMON}`,
  dead: `Usage: heimdall dead retry|drop <queue> [--id <id>...] --yes

  retry  runs dead-lettered tasks that ended FAILURE again, at the head of their queue
  drop   removes the letters (the tasks' records stay)
  --id <id>        only the letters of these task ids (repeatable; default: all, newest 1,000)
  --yes            required

${COMMON}`,
  purge: `Usage: heimdall purge <queue> [--delayed] --yes

  Empties the queue of its waiting tasks, as 'celery purge' does: each ends REVOKED with reason
  'purged' (its unique lock released; its record kept a day). Running tasks are left alone.
  --delayed        the tasks due later go too (countdown, eta, retries, rate-limit waits)
  --yes            required

${COMMON}`,
  events: `Usage: heimdall events [--queue <name>...] [--since <when>] [--id <id>...]

  Prints the events of the queues as they happen (a line each; with --json a JSON line each),
  until SIGINT or SIGTERM (exit 0).
  --queue <name>   a queue (repeatable; default: every queue found, or 'default')
  --since <when>   start earlier: a duration back from now (30s, 10m, 2h), an ISO time, or an
                   event's cursor (to resume after it); default: from now on
  --id <id>        only the events of these task ids (repeatable)
  The queues are those found when it starts; a queue that first appears later is not followed
  (name it with --queue).

${COMMON}`,
  revoke: `Usage: heimdall revoke <id> [--queue <name>] [--terminate]

  Revokes the task: queued or delayed, it never runs; running, its signal fires.
  --terminate      a running task ends REVOKED at once
  --queue <name>   its queue, for a custom id on a queue other than 'default'

${COMMON}`,
};

/** Runs one command line (argv without node and the script); resolves with the exit code. */
export async function run(argv: readonly string[], io: Io): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'help' && rest[0] !== undefined && HELP[rest[0]] !== undefined && rest[0] !== 'main') {
    io.out(HELP[rest[0]]!);
    return EXIT.ok;
  }
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    io.out(HELP.main!);
    return command === undefined ? EXIT.usage : EXIT.ok;
  }
  if (command === '--version' || command === '-v') {
    io.out(VERSION);
    return EXIT.ok;
  }
  const help = HELP[command];
  if (help === undefined || command === 'main') {
    io.err(`heimdall: unknown command '${command}'; run 'heimdall --help'`);
    return EXIT.usage;
  }
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(rest);
  } catch (err) {
    io.err(`heimdall ${command}: ${(err as Error).message}\n\n${help}`);
    return EXIT.usage;
  }
  if (parsed.values.help) {
    io.out(help);
    return EXIT.ok;
  }
  if (command === 'worker') return runWorker(parsed, io, help);
  const url = parsed.values.url ?? io.env.REDIS_URL ?? 'redis://localhost:6379';
  const prefix = parsed.values.prefix ?? io.env.HEIMDALL_PREFIX ?? DEFAULT_PREFIX;
  const print = (text: string, json: unknown): void => io.out(parsed.values.json ? JSON.stringify(json, null, 2) : text);
  let client: RedisClient | undefined;
  try {
    checkUrl(url, parsed.values.url === undefined ? 'REDIS_URL' : '--url');
    // ioredis reads the URL (IPv6 hosts, passwords, TLS, the database). It fails fast when Redis
    // cannot be reached, and a command unanswered for 10 s (a server that accepts the connection
    // but never replies) fails too, rather than wait for ever. A --watch keeps reconnecting (every
    // 2 s at most), so it outlives a Redis restart: meanwhile its readings fail and say so.
    const watching = command === 'inspect' && parsed.values.watch === true;
    const retryStrategy = (times: number): number | null => (watching ? Math.min(times * 200, 2000) : times > 2 ? null : 200);
    client = createClient(url, { maxRetriesPerRequest: 1, retryStrategy, connectTimeout: 5000, commandTimeout: 10_000 });
    client.on('error', () => undefined);
    const target: Target = { connection: client, prefix };
    switch (command) {
      case 'inspect':
        return await inspect(parsed, target, print, io);
      case 'ping':
        return await ping(parsed, target, print, io);
      case 'status':
        return await status(parsed, target, print, io);
      case 'revoke':
        return await revoke(parsed, target, print, io);
      case 'locks':
        return await locks(parsed, target, print, io);
      case 'dead':
        return await dead(parsed, target, print);
      case 'purge':
        return await purgeQueue(parsed, target, print);
      case 'events':
        return await followEvents(parsed, target, io);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`heimdall ${command}: ${err.message}\n\n${help}`);
      return EXIT.usage;
    }
    io.err(`heimdall ${command}: ${err instanceof HeimdallError || err instanceof Error ? err.message : String(err)}`);
    return EXIT.failure;
  } finally {
    client?.disconnect();
  }
  return EXIT.usage;
}

/** `heimdall worker`: no client of its own; the Worker opens its connections. */
async function runWorker(parsed: Parsed, io: Io, help: string): Promise<number> {
  const v = parsed.values;
  // --url and REDIS_URL win over the module's connection, as --prefix and HEIMDALL_PREFIX over its prefix.
  const url = v.url ?? io.env.REDIS_URL;
  try {
    if (url !== undefined) checkUrl(url, v.url === undefined ? 'REDIS_URL' : '--url');
    return await workerCommand(
      {
        app: v.app,
        url,
        prefix: v.prefix ?? io.env.HEIMDALL_PREFIX,
        queues: v.queues,
        concurrency: v.concurrency,
        prefetch: v.prefetch,
        logLevel: v['log-level'],
        shutdownTimeout: v['shutdown-timeout'],
      },
      parsed.positionals,
      io,
    );
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`heimdall worker: ${err.message}\n\n${help}`);
      return EXIT.usage;
    }
    io.err(`heimdall worker: ${err instanceof Error ? err.message : String(err)}`);
    return EXIT.failure;
  }
}

function parse(args: readonly string[]) {
  return parseArgs({
    args: [...args],
    allowPositionals: true,
    strict: true,
    options: {
      url: { type: 'string' },
      prefix: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      queue: { type: 'string', multiple: true },
      limit: { type: 'string' },
      timeout: { type: 'string' },
      wait: { type: 'boolean' },
      terminate: { type: 'boolean' },
      yes: { type: 'boolean' },
      id: { type: 'string', multiple: true },
      app: { type: 'string' },
      queues: { type: 'string' },
      concurrency: { type: 'string' },
      prefetch: { type: 'string' },
      'log-level': { type: 'string' },
      'shutdown-timeout': { type: 'string' },
      delayed: { type: 'boolean' },
      watch: { type: 'boolean' },
      interval: { type: 'string' },
      since: { type: 'string' },
    },
  });
}

type Parsed = ReturnType<typeof parse>;
type Target = { connection: RedisClient; prefix: string };
type Print = (text: string, json: unknown) => void;

/** Refuses what is not a Redis URL ioredis would read right, as a usage error. */
function checkUrl(url: string, from: string): void {
  if (/^rediss?\+(cluster|sentinel):\/\//.test(url)) {
    try {
      planOfUrl(url);
    } catch (err) {
      throw new UsageError(`${from}: ${err instanceof Error ? err.message : String(err)}`);
    }
    return;
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`${from} must be a Redis URL such as redis://localhost:6379, got ${JSON.stringify(url)}`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new UsageError(`${from} must start with redis://, rediss://, redis+cluster:// or redis+sentinel://, got ${JSON.stringify(url)}`);
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) throw new UsageError(`${from}: the database after the host must be a number, got ${JSON.stringify(db)}`);
  try {
    decodeURIComponent(u.username);
    decodeURIComponent(u.password);
  } catch {
    throw new UsageError(`${from}: the user or password is not valid percent-encoding`);
  }
}

function positiveInt(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a whole number >= 1, got ${JSON.stringify(value)}`);
  return n;
}

async function queuesOf(parsed: Parsed, inspector: Inspector): Promise<string[]> {
  return parsed.values.queue && parsed.values.queue.length > 0 ? parsed.values.queue : inspector.queueNames();
}

/** A listing: `empty` when there are no items, else a table of `header` and a row per item. */
function listing<T>(items: readonly T[], empty: string, header: readonly string[], row: (item: T) => readonly string[]): string {
  return items.length === 0 ? empty : table([header, ...items.map(row)]);
}

function table(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

async function inspect(parsed: Parsed, target: Target, print: Print, io: Io): Promise<number> {
  const what = parsed.positionals[0] ?? 'queues';
  if (parsed.positionals.length > 1 || !['queues', 'workers', 'locks', 'limits', 'permits', 'dead'].includes(what)) {
    throw new UsageError(`inspect takes one of queues, workers, locks, limits, permits, dead; got ${parsed.positionals.join(' ')}`);
  }
  const limit = positiveInt(parsed.values.limit, 'limit', 100);
  const inspector = new Inspector(target);
  const dispatcher = what === 'workers' ? new Dispatcher(target) : undefined;
  // One reading: the text and the JSON of what is asked for.
  const snapshot = async (): Promise<[string, unknown]> => {
    const queues = await queuesOf(parsed, inspector);
    if (what === 'queues') {
      const stats = await inspector.queues(queues);
      return [
        table([
          ['QUEUE', 'WAITING', 'DELAYED', 'RETRYING', 'RUNNING', 'DEAD', 'WORKERS', 'OLDEST WAIT', 'TASKS/S', 'ERRORS/S'],
          ...stats.map((q) => [
            q.queue,
            String(q.waiting),
            String(q.delayed),
            String(q.retrying),
            String(q.running),
            String(q.dead),
            String(q.workers),
            ms(q.oldestWaitingMs),
            String(q.tasksPerSecond.m1),
            String(q.errorsPerSecond.m1),
          ]),
        ]),
        stats,
      ];
    } else if (what === 'workers') {
      const workers = await dispatcher!.workers({ queues });
      return [
        listing(workers, 'no live workers', ['WORKER', 'HOST', 'PID', 'QUEUES', 'RUNNING', 'SUCCEEDED', 'FAILED', 'VERSION'], (w) => [
          w.id,
          w.host,
          String(w.pid),
          w.queues.join(','),
          `${w.running.length}/${w.concurrency}`,
          String(w.succeeded),
          String(w.failed),
          w.version,
        ]),
        workers,
      ];
    } else if (what === 'locks') {
      const locks = (await Promise.all(queues.map((q) => inspector.locks(q, { limit })))).flat();
      return [
        listing(locks, 'no unique locks held', ['QUEUE', 'TASK', 'KEY', 'HOLDER', 'STATE', 'LAPSES IN'], (l) => [
          l.queue,
          l.task,
          l.lockKey,
          l.holder,
          l.holderState ?? '(no record)',
          ms(l.ttlMs),
        ]),
        locks,
      ];
    } else if (what === 'limits') {
      const [windows, named] = await Promise.all([
        Promise.all(queues.map((q) => inspector.rateWindows(q, { limit }))).then((w) => w.flat()),
        inspector.namedLimits({ limit }),
      ]);
      const perTask = listing(windows, 'no rate windows in use', ['QUEUE', 'TASK', 'WINDOW', 'STARTS', 'TURNS', 'NEXT SLOT', 'WAITING'], (w) => [
        w.queue,
        w.task ?? '?',
        w.key.slice(w.key.indexOf('}:rate:') + 7),
        `${w.starts}/${w.limit ?? '?'} per ${ms(w.periodMs)}`,
        String(w.turns),
        w.nextFreeInMs === undefined ? '?' : w.nextFreeInMs === 0 ? 'free now' : `in ${ms(w.nextFreeInMs)}`,
        String(w.waiting),
      ]);
      const shared =
        named.length === 0
          ? ''
          : '\n\n' +
            listing(named, '', ['NAMED LIMIT', 'ALGORITHM', 'USED', 'TURNS'], (l) => [
              l.name,
              l.algorithm,
              `${l.algorithm === 'gcra' && l.limit === undefined ? '?' : l.used}/${l.limit ?? '?'}${l.periodMs === undefined ? '' : ` per ${ms(l.periodMs)}`}`,
              String(l.turns),
            ]);
      return [perTask + shared, { windows, named }];
    } else if (what === 'permits') {
      const scopes = await inspector.permits({ limit });
      return [
        listing(scopes, 'no concurrency permits in use', ['SCOPE', 'KEY', 'HELD', 'HOLDERS', 'WAITING'], (p) => [
          'limit' in p.of ? `limit ${p.of.limit}` : `task ${p.of.task}`,
          p.scopeKey ?? '-',
          `${p.holders.length}/${p.limit ?? '?'}`,
          p.holders.map((x) => `${x.id} (lapses in ${ms(x.lapsesInMs)})`).join(', ') || '-',
          String(p.waiting),
        ]),
        scopes,
      ];
    } else {
      const letters = (await Promise.all(queues.map((q) => inspector.deadLetters(q, { limit })))).flat();
      return [
        listing(letters, 'no dead letters', ['QUEUE', 'AT', 'TASK', 'REASON'], (d) => [d.queue, d.at.toISOString(), d.id, d.reason]),
        letters.map(({ raw: _raw, ...rest }) => rest),
      ];
    }
  };
  try {
    if (parsed.values.watch) {
      const interval = parsed.values.interval === undefined ? 2 : Number(parsed.values.interval);
      if (!(interval >= 0.1 && Number.isFinite(interval))) throw new UsageError(`--interval must be a number of seconds >= 0.1, got ${JSON.stringify(parsed.values.interval)}`);
      return await watchScreen(`heimdall inspect ${what}`, snapshot, { intervalMs: interval * 1000, json: parsed.values.json === true, io });
    }
    const [text, json] = await snapshot();
    print(text, json);
    return EXIT.ok;
  } finally {
    await inspector.close();
    await dispatcher?.close();
  }
}

async function ping(parsed: Parsed, target: Target, print: Print, io: Io): Promise<number> {
  if (parsed.positionals.length > 0) throw new UsageError(`ping takes no arguments, got ${parsed.positionals.join(' ')}`);
  const timeout = positiveInt(parsed.values.timeout, 'timeout', 1000);
  const inspector = new Inspector(target);
  const dispatcher = new Dispatcher(target);
  try {
    const queues = await queuesOf(parsed, inspector);
    const replies = await dispatcher.ping({ queues, timeout: `${timeout}ms` });
    print(replies.map((r) => `${r.id}: pong in ${r.latencyMs} ms (pid ${r.pid} on ${r.host}; ${r.queues.join(', ')})`).join('\n') || 'no worker answered', replies);
    if (replies.length === 0) io.err(`heimdall ping: no worker of ${queues.join(', ')} answered within ${timeout} ms`);
    return replies.length > 0 ? EXIT.ok : EXIT.failure;
  } finally {
    await inspector.close();
    await dispatcher.close();
  }
}

function idOf(parsed: Parsed, command: string): string {
  const [id, ...more] = parsed.positionals;
  if (id === undefined || more.length > 0) throw new UsageError(`${command} takes one task id`);
  return id;
}

/** A TaskResult for the command's id, or a 'no such task' failure (a typo must not read as PENDING). */
async function known(parsed: Parsed, dispatcher: Dispatcher, command: string, io: Io) {
  const id = idOf(parsed, command);
  const handle = dispatcher.result(id, parsed.values.queue?.[0] === undefined ? {} : { queue: parsed.values.queue[0] });
  if ((await handle.info()).name === undefined) {
    io.err(`heimdall ${command}: no task ${id} on queue '${handle.queue}' (never sent, forgotten or expired; a custom id on another queue needs --queue)`);
    return undefined;
  }
  return handle;
}

async function status(parsed: Parsed, target: Target, print: Print, io: Io): Promise<number> {
  const timeout = parsed.values.timeout === undefined ? undefined : Number(parsed.values.timeout);
  if (timeout !== undefined && !(timeout > 0)) throw new UsageError(`--timeout must be a number of seconds > 0, got ${JSON.stringify(parsed.values.timeout)}`);
  const dispatcher = new Dispatcher(target);
  try {
    const handle = await known(parsed, dispatcher, 'status', io);
    if (!handle) return EXIT.failure;
    let timedOut = false;
    if (parsed.values.wait) {
      const watching = watchProgress(handle, io);
      await handle.get(timeout === undefined ? {} : { timeout }).catch((err: unknown) => {
        if (err instanceof Error && err.name === 'TimeoutError') timedOut = true;
      });
      await watching.stop();
    }
    const info = await handle.info();
    const lines = [
      `task     ${info.id}${info.name ? ` (${info.name})` : ''}`,
      `state    ${info.state}${info.revokeReason ? ` (${info.revokeReason})` : ''}`,
      `attempts ${info.attempts}${info.worker ? `, last on ${info.worker}` : ''}`,
    ];
    if (info.progress) lines.push(`progress ${Math.round(info.progress.value * 100)}%${info.progress.message ? ` ${info.progress.message}` : ''}`);
    if (info.createdAt) lines.push(`created  ${info.createdAt.toISOString()}`);
    if (info.startedAt) lines.push(`started  ${info.startedAt.toISOString()}`);
    if (info.finishedAt) lines.push(`finished ${info.finishedAt.toISOString()}`);
    if (info.state === 'SUCCESS') lines.push(`result   ${JSON.stringify(info.result)}`);
    if (info.error) lines.push(`error    ${info.error.name}: ${info.error.message}`, ...(info.error.traceback ? [info.error.traceback] : []));
    if (info.history.length > 0) {
      lines.push('', table([
        ['ATTEMPT', 'WORKER', 'STARTED', 'RAN', 'ENDED', 'ERROR', 'BACKOFF'],
        ...info.history.map((a) => [
          String(a.attempt),
          a.worker ?? '-',
          a.startedAt?.toISOString() ?? '-',
          a.startedAt && a.finishedAt ? ms(a.finishedAt.getTime() - a.startedAt.getTime()) : '-',
          a.outcome,
          a.error ? `${a.error.name}: ${a.error.message}` : '-',
          ms(a.backoffMs),
        ]),
      ]));
    }
    print(lines.join('\n'), info);
    if (parsed.values.wait && (info.state === 'FAILURE' || info.state === 'REVOKED')) return EXIT.taskDidNotSucceed;
    if (timedOut) {
      io.err(`heimdall status: task ${info.id} had not ended after ${timeout} s (it is ${info.state})`);
      return EXIT.stillRunning;
    }
    return EXIT.ok;
  } finally {
    await dispatcher.close();
  }
}

/** How often `status --wait` reads the task's progress, in ms (a task stores it at most every 250 ms). */
const PROGRESS_POLL_MS = 200;

/** Draws the task's progress on stderr until stop() (which draws the last one first). */
function watchProgress(handle: TaskResult<unknown>, io: Io): { stop(): Promise<void> } {
  const bar = new ProgressBar((text) => io.stderr.write(text), io.stderr.isTTY === true, io.stderr.columns || 80);
  let stopped = false;
  let wake: (() => void) | undefined;
  const draw = async (): Promise<void> => {
    const p = (await handle.info()).progress;
    if (p) bar.update(p);
  };
  const loop = (async () => {
    while (!stopped) {
      await draw().catch(() => undefined); // a failed read: the next one may work; get() reports what matters
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, PROGRESS_POLL_MS).unref();
      });
    }
  })();
  return {
    async stop() {
      stopped = true;
      wake?.();
      await loop;
      await draw().catch(() => undefined);
      bar.end();
    },
  };
}

async function revoke(parsed: Parsed, target: Target, print: Print, io: Io): Promise<number> {
  const dispatcher = new Dispatcher(target);
  try {
    const handle = await known(parsed, dispatcher, 'revoke', io);
    if (!handle) return EXIT.failure;
    const state = await handle.revoke({ terminate: parsed.values.terminate === true });
    print(`${handle.id}: ${state}`, { id: handle.id, state });
    return EXIT.ok;
  } finally {
    await dispatcher.close();
  }
}

function confirmed(parsed: Parsed, what: string): void {
  if (parsed.values.yes !== true) throw new UsageError(`${what} changes Redis: add --yes`);
}

async function locks(parsed: Parsed, target: Target, print: Print, io: Io): Promise<number> {
  const [action, key, ...more] = parsed.positionals;
  const duration = action === 'extend' ? more.shift() : undefined;
  if ((action !== 'release' && action !== 'extend') || key === undefined || more.length > 0 || (action === 'extend' && duration === undefined)) {
    throw new UsageError('locks takes: release <key> | extend <key> <duration>');
  }
  confirmed(parsed, `locks ${action}`);
  const inspector = new Inspector(target);
  try {
    // The holder seen now; released only if it still holds the lock when the script runs.
    const holder = await target.connection.get(key);
    if (holder === null) {
      io.err(`heimdall locks: no lock ${key} (it ended, lapsed or was released)`);
      return EXIT.failure;
    }
    if (action === 'extend') {
      let lifetime: number | string = duration!;
      if (/^\d+(?:\.\d+)?$/.test(lifetime)) lifetime = Number(lifetime);
      const x = await inspector.extendLock(key, holder, lifetime).catch((err: unknown) => {
        throw err instanceof ConfigError ? new UsageError(err.message) : err;
      });
      print(x.extended ? `extended ${key} (held by ${holder}) for ${ms(x.ttlMs)}` : `not extended: ${x.reason === 'gone' ? 'the lock is gone' : `now held by ${x.holder}`}`, { key, holder, ...x });
      return x.extended ? EXIT.ok : EXIT.failure;
    }
    const r = await inspector.releaseLock(key, holder);
    print(r.released ? `released ${key} (held by ${holder})` : `not released: ${r.reason === 'gone' ? 'the lock is gone' : `now held by ${r.holder}`}`, { key, holder, ...r });
    return r.released ? EXIT.ok : EXIT.failure;
  } finally {
    await inspector.close();
  }
}

async function dead(parsed: Parsed, target: Target, print: Print): Promise<number> {
  const [action, queue, ...more] = parsed.positionals;
  if ((action !== 'retry' && action !== 'drop') || queue === undefined || more.length > 0) throw new UsageError('dead takes: retry|drop <queue>');
  confirmed(parsed, `dead ${action}`);
  const inspector = new Inspector(target);
  try {
    const ids = parsed.values.id;
    const letters = ids && ids.length > 0 ? (await inspector.deadLetters(queue, { limit: 1000 })).filter((l) => ids.includes(l.id)) : 'all';
    const r = action === 'retry' ? await inspector.retryDead(queue, letters) : await inspector.dropDead(queue, letters);
    print(
      [`${action === 'retry' ? 'retried' : 'dropped'} ${r.done}`, ...r.skipped.map((k) => `skipped ${k.id}: ${k.reason === 'gone' ? 'gone' : `not FAILURE (${k.state ?? 'no record'})`}`)].join('\n'),
      r,
    );
    return EXIT.ok;
  } finally {
    await inspector.close();
  }
}

async function purgeQueue(parsed: Parsed, target: Target, print: Print): Promise<number> {
  const [queue, ...more] = parsed.positionals;
  if (queue === undefined || more.length > 0) throw new UsageError('purge takes one queue name');
  confirmed(parsed, 'purge');
  const delayed = parsed.values.delayed === true;
  const inspector = new Inspector(target);
  try {
    const purged = await inspector.purge(queue, { delayed });
    // Tasks waiting on a rate window, a retry or a countdown are in the delayed set: say how many stay.
    const [after] = delayed ? [undefined] : await inspector.queues([queue]);
    const left = after?.delayed ?? 0;
    print(
      `purged ${purged} task(s) of queue '${queue}' (${delayed ? 'waiting and delayed' : left > 0 ? `waiting; ${left} delayed left: add --delayed to purge them too` : 'waiting; none delayed'})`,
      { queue, purged, delayed, ...(delayed ? {} : { delayedLeft: left }) },
    );
    return EXIT.ok;
  } finally {
    await inspector.close();
  }
}

/** `--since`: a duration back from now on the Redis clock ('30s', '10m', '2h'), an ISO time, or an event's cursor. */
async function sinceOf(value: string | undefined, client: RedisClient): Promise<Date | string | undefined> {
  if (value === undefined) return undefined;
  // A duration with a unit, read as every other duration is ('30s', '10m', '2h', '1d').
  if (/^\d+(?:\.\d+)?\s*[a-z]+$/i.test(value)) {
    let back: number;
    try {
      back = toMillis(value, '--since');
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    return new Date((await redisNowMs(client)) - back);
  }
  if (/^\d+-\d+\/\d+$/.test(value)) return value;
  const at = new Date(value);
  if (Number.isNaN(at.getTime())) throw new UsageError(`--since takes a duration back from now (30s, 10m, 2h), an ISO time or an event's cursor, got ${JSON.stringify(value)}`);
  return at;
}

/** One event as a line: time, queue, type, task, and what the event carries. */
function eventLine(e: QueueEvent): string {
  const detail = ((): string => {
    switch (e.type) {
      case 'started':
        return `on ${e.worker}, attempt ${e.attempt}`;
      case 'progress':
        return `${Math.round(e.value * 100)}%${e.message ? ` ${e.message}` : ''}`;
      case 'succeeded':
        return `${e.worker ? `on ${e.worker}` : ''}${e.runtimeMs !== undefined ? ` in ${ms(e.runtimeMs)}` : ''}`.trim();
      case 'failed':
        return `${e.error.name}: ${e.error.message}`;
      case 'retried':
        return `${e.error.name}: ${e.error.message}; again in ${ms(e.delayMs)}`;
      case 'revoked':
      case 'dead-lettered':
        return e.reason;
      case 'rate-limited':
        return `waits ${ms(e.delayMs)}`;
      case 'recovered':
        return e.worker ? `lost by ${e.worker}` : '';
      case 'handed-back':
        return e.delayMs !== undefined ? `due in ${ms(e.delayMs)}` : '';
      case 'queued':
        return `${e.dueAt !== undefined ? `due ${new Date(e.dueAt).toISOString()}` : ''}${e.origin ? ` (from the ${e.origin}s)` : ''}`.trim();
      case 'lock-released':
        return e.lockKey;
      case 'lock-extended':
        return `${e.lockKey} for ${ms(e.ttlMs)}`;
      case 'deduplicated':
        return 'holds the lock; nothing sent';
      case 'replaced':
        return `${e.reason} by ${e.by}`;
      case 'waiting':
        return `waits for ${e.holder}`;
    }
  })();
  return `${new Date(e.at).toISOString()} ${e.queue} ${e.type.padEnd(13)} ${e.name ?? '?'} ${e.id}${detail ? `  ${detail}` : ''}`;
}

/** `heimdall events`: the queues' events as they happen, until SIGINT or SIGTERM. */
async function followEvents(parsed: Parsed, target: Target, io: Io): Promise<number> {
  if (parsed.positionals.length > 0) throw new UsageError(`events takes no arguments, got ${parsed.positionals.join(' ')}`);
  const since = await sinceOf(parsed.values.since, target.connection);
  const ids = parsed.values.id === undefined ? undefined : new Set(parsed.values.id);
  const inspector = new Inspector(target);
  const dispatcher = new Dispatcher(target);
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const queues = await queuesOf(parsed, inspector);
    io.err(`following the events of ${queues.join(', ')}${since === undefined ? '' : ` since ${since instanceof Date ? since.toISOString() : since}`}; Ctrl-C to stop`);
    for await (const e of dispatcher.events({ queues, ...(since === undefined ? {} : { since }), signal: stop.signal })) {
      if (ids && !ids.has(e.id)) continue;
      io.out(parsed.values.json ? JSON.stringify(e) : eventLine(e));
    }
    return EXIT.ok;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await dispatcher.close();
    await inspector.close();
  }
}

// Run when executed (not when imported by a test), also through a link of another name.
function invokedPath(): string {
  const given = process.argv[1] ?? '';
  try {
    return realpathSync(given);
  } catch {
    return given;
  }
}
if (/(?:^|[\\/])cli[\\/]main\.(?:ts|js)$/.test(invokedPath())) {
  run(process.argv.slice(2), { out: (t) => console.log(t), err: (t) => console.error(t), env: process.env, stdin: process.stdin, stdout: process.stdout, stderr: process.stderr }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(`heimdall: ${String(err)}`);
      process.exitCode = EXIT.failure;
    },
  );
}
