// `heimdall worker --app <module>`: runs a Worker with the configuration a module exports
// (app-module.ts), logs one line per task from the worker's events, and shuts down on SIGTERM or
// SIGINT: the first signal stops fetching and lets running tasks end within --shutdown-timeout,
// then hands the rest back to their queues; a second one (1 s or more later) hands them back at
// once. Exit 0 after that. docs/cli.md.
import type { RemoteError } from '../core/protocol/task-record.js';
import { Worker } from '../core/worker/worker.js';
import { onShutdownSignal } from '../core/worker/shutdown-signals.js';
import type { TaskEvent } from '../core/worker/worker-options.js';
import { loadWorkerApp } from './app-module.js';
import { EXIT, ms, UsageError, type Io } from './shared.js';

/** Log levels, most verbose first; a level prints its own lines and those of the levels after it. */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The flags of `heimdall worker`, as given (undefined: not given). */
export interface WorkerFlags {
  app: string | undefined;
  url: string | undefined;
  prefix: string | undefined;
  queues: string | undefined;
  concurrency: string | undefined;
  prefetch: string | undefined;
  logLevel: string | undefined;
  shutdownTimeout: string | undefined;
}

/** Default of --shutdown-timeout, in seconds: below Kubernetes' 30-s grace period. */
const DEFAULT_SHUTDOWN_TIMEOUT_S = 25;

/** Writes one timestamped line per log call at or above `level`. */
function logger(level: LogLevel, io: Io) {
  const min = LOG_LEVELS.indexOf(level);
  return (at: Exclude<LogLevel, 'silent'>, text: string): void => {
    if (LOG_LEVELS.indexOf(at) >= min) io.out(`${new Date().toISOString()} ${at.toUpperCase().padEnd(5)} ${text}`);
  };
}

function task(e: Pick<TaskEvent, 'id' | 'name'>): string {
  return `${e.name}[${e.id}]`;
}

function error(e: RemoteError): string {
  return `${e.name}: ${e.message.split('\n')[0]}`;
}

/** Runs the worker until a signal has shut it down; resolves with the exit code. */
export async function workerCommand(flags: WorkerFlags, positionals: readonly string[], io: Io): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`worker takes no arguments, got ${positionals.join(' ')}`);
  if (flags.app === undefined) throw new UsageError('worker needs --app <module>');
  const level = (flags.logLevel ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(flags.logLevel)}`);
  const concurrency = flags.concurrency === undefined ? undefined : Number(flags.concurrency);
  if (concurrency !== undefined && !(Number.isInteger(concurrency) && concurrency >= 1)) {
    throw new UsageError(`--concurrency must be a whole number >= 1, got ${JSON.stringify(flags.concurrency)}`);
  }
  const prefetch = flags.prefetch === undefined || flags.prefetch === 'auto' ? flags.prefetch : Number(flags.prefetch);
  if (typeof prefetch === 'number' && !(Number.isInteger(prefetch) && prefetch >= 0)) {
    throw new UsageError(`--prefetch must be 'auto' or a whole number >= 0, got ${JSON.stringify(flags.prefetch)}`);
  }
  const queues = flags.queues?.split(',').map((q) => q.trim());
  if (queues && queues.some((q) => q === '')) throw new UsageError(`--queues takes names separated by commas, got ${JSON.stringify(flags.queues)}`);
  const timeoutS = flags.shutdownTimeout === undefined ? DEFAULT_SHUTDOWN_TIMEOUT_S : Number(flags.shutdownTimeout);
  if (!(timeoutS >= 0 && Number.isFinite(timeoutS))) throw new UsageError(`--shutdown-timeout must be a number of seconds >= 0, got ${JSON.stringify(flags.shutdownTimeout)}`);

  const app = await loadWorkerApp(flags.app, process.cwd());
  const worker = new Worker({
    ...app,
    connection: flags.url ?? app.connection ?? 'redis://localhost:6379',
    ...(flags.prefix === undefined ? {} : { prefix: flags.prefix }),
    ...(queues === undefined ? {} : { queues }),
    ...(concurrency === undefined ? {} : { concurrency }),
    ...(prefetch === undefined ? {} : { prefetch }),
  });
  const log = logger(level, io);
  worker.on('started', (e) => log('info', `${'started'.padEnd(12)} ${task(e)} attempt ${e.attempt}`));
  worker.on('succeeded', (e) => log('info', `${'succeeded'.padEnd(12)} ${task(e)} in ${ms(e.runtimeMs)}`));
  worker.on('failed', (e) => log('warn', `${'failed'.padEnd(12)} ${task(e)} in ${ms(e.runtimeMs)}: ${error(e.error)}`));
  worker.on('retried', (e) => log('warn', `${'retried'.padEnd(12)} ${task(e)} in ${ms(e.runtimeMs)}: ${error(e.error)}; runs again in ${ms(e.delayMs)}`));
  worker.on('revoked', (e) => log('info', `${'revoked'.padEnd(12)} ${task(e)} (${e.reason})`));
  worker.on('rateLimited', (e) =>
    e.permit
      ? log('info', `${'waiting'.padEnd(12)} ${task(e)}: for a concurrency permit, runs when one is handed to it (asks again within ${ms(e.delayMs)})`)
      : log('info', `${'rate-limited'.padEnd(12)} ${task(e)}: over its rate limit, runs in ${ms(e.delayMs)}`),
  );
  worker.on('progress', (e) => log('debug', `${'progress'.padEnd(12)} ${task(e)} ${Math.round(e.value * 100)}%${e.message ? ` ${e.message}` : ''}`));
  // Always listened to: an 'error' event nobody listens to would end the process.
  worker.on('error', (err) => log('error', `worker error: ${err.message}`));

  try {
    await worker.start();
  } catch (err) {
    await worker.close();
    throw err;
  }
  log('info', `worker ${worker.id} started: queues ${worker.queues.join(', ')}; concurrency ${worker.concurrency}; prefetch ${String(prefetch ?? app.prefetch ?? 'auto')}; pid ${process.pid}`);
  return new Promise<number>((resolveExit) => {
    onShutdownSignal(
      async (signal) => {
        log(
          'info',
          `${signal}: stopping; ${worker.activeCount} running task(s) get ${timeoutS} s to end, then go back to their queue (signal again to hand them back now)`,
        );
        await worker.close({ timeout: timeoutS });
        log('info', `worker ${worker.id} stopped`);
        resolveExit(EXIT.ok);
      },
      {
        onRepeat: (signal) => {
          log('warn', `${signal} again: handing ${worker.activeCount} running task(s) back to their queue now`);
          void worker.close({ timeout: 0 });
        },
      },
    );
  });
}
