import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { ConfigError, RedisServerNotFoundError } from '../core/errors.js';
import { toMillis, type Duration } from '../core/task/durations.js';

/** Options of `startRedis()`. */
export interface StartRedisOptions {
  /**
   * A Redis to use instead of starting one, e.g. `process.env.REDIS_URL`: when it is a non-empty
   * string, nothing is started, `started` is false and `stop()` does nothing. `undefined` or `''`
   * starts a private server. Default: `undefined`.
   */
  reuse?: string | undefined;
  /** The `redis-server` to run. Default: the first `redis-server` (`redis-server.exe` on Windows) on the PATH. */
  bin?: string;
  /** More `redis-server` arguments, e.g. `['--maxmemory', '64mb']`; they come last, so they win. Default: `[]`. */
  args?: readonly string[];
  /** How long the server may take to start answering: seconds or an `ms` string. Default: 10 s. */
  startTimeout?: Duration;
}

/** A Redis server for a test run, from `startRedis()`. */
export interface StartedRedis {
  /** `redis://127.0.0.1:<port>` (or the `reuse` URL as given). */
  readonly url: string;
  /** The TCP port (of the `reuse` URL when it names one; 6379 when it does not). */
  readonly port: number;
  /** True when this call started the server (and `stop()` stops it); false with `reuse`. */
  readonly started: boolean;
  /** Stops the server (SIGTERM, SIGKILL after 5 s) and deletes its temporary directory. Safe to call twice. */
  stop(): Promise<void>;
}

const INSTALL_HINT =
  'install Redis >= 7 (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis), ' +
  'pass { bin: "/path/to/redis-server" }, or point the tests at a running Redis with { reuse: process.env.REDIS_URL }';

/** The first executable `redis-server` on the PATH. */
function onPath(): string | undefined {
  const names = process.platform === 'win32' ? ['redis-server.exe', 'redis-server'] : ['redis-server'];
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    for (const name of names) {
      const candidate = join(dir, name);
      try {
        accessSync(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not here
      }
    }
  }
  return undefined;
}

/** A loopback port the OS says is free (it is released before this resolves). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

type Answer = 'ours' | 'not-ours' | 'noauth';

/**
 * Whether the server answering on `port` is the process `pid`: its `INFO server` names its
 * process id. Another server that took the port between the check for a free port and the bind
 * answers too, and must not pass for ours. `password`: sent first with AUTH (`--requirepass`).
 */
function answersAs(port: number, pid: number | undefined, password: string | undefined): Promise<Answer> {
  return new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let data = '';
    const done = (answer: Answer): void => {
      sock.destroy();
      resolve(answer);
    };
    sock.setTimeout(500);
    sock.on('connect', () => {
      // RESP arrays, so that a password with spaces or quotes goes through whole.
      const auth = password === undefined ? '' : `*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(password)}\r\n${password}\r\n`;
      sock.write(`${auth}*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n`);
    });
    sock.on('data', (d: Buffer) => {
      data += d.toString();
      if (password !== undefined && data.startsWith('+OK\r\n')) data = data.slice(5);
      if (data.startsWith('-NOAUTH') || data.startsWith('-WRONGPASS')) return done('noauth');
      if (data.startsWith('-')) return done('not-ours'); // loading, or not a server we can ask
      const m = /process_id:(\d+)\r\n/.exec(data);
      if (m) done(pid !== undefined && Number(m[1]) === pid ? 'ours' : 'not-ours');
    });
    sock.on('error', () => done('not-ours'));
    sock.on('timeout', () => done('not-ours'));
  });
}

/** The value of the last `--requirepass` in redis-server's arguments. */
function passwordIn(args: readonly string[]): string | undefined {
  let password: string | undefined;
  for (let i = 0; i + 1 < args.length; i++) if (args[i] === '--requirepass') password = args[i + 1];
  return password === '' ? undefined : password;
}

function portOf(url: string): number {
  try {
    const port = new URL(url).port;
    return port === '' ? 6379 : Number(port);
  } catch {
    throw new ConfigError(`startRedis: reuse must be a Redis URL such as redis://127.0.0.1:6379, got ${JSON.stringify(url)}`);
  }
}

/**
 * Starts a private `redis-server` for tests: on a free loopback port, with a temporary
 * directory, no RDB snapshots and no AOF. It runs `bin` or the `redis-server` on the PATH and
 * never installs anything: without one it rejects with a `RedisServerNotFoundError` naming the
 * install command. With `reuse` (e.g. `process.env.REDIS_URL`) it starts nothing and returns
 * that URL. Call `stop()` when done, e.g. as the teardown of a vitest `globalSetup`.
 */
export async function startRedis(options: StartRedisOptions = {}): Promise<StartedRedis> {
  if (typeof options.reuse === 'string' && options.reuse !== '') {
    const url = options.reuse;
    return { url, port: portOf(url), started: false, stop: async () => undefined };
  }
  const bin = options.bin ?? onPath();
  if (bin === undefined) throw new RedisServerNotFoundError(`startRedis: no redis-server on the PATH; ${INSTALL_HINT}`);
  const startMs = options.startTimeout === undefined ? 10_000 : toMillis(options.startTimeout, 'startTimeout');
  const dir = mkdtempSync(join(tmpdir(), 'heimdall-test-redis-'));
  const password = passwordIn(options.args ?? []);
  let lastError = '';
  // A port found free can be taken before redis-server binds it: try a few.
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', ...(options.args ?? [])];
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (d: Buffer): void => {
      if (output.length < 8192) output += d.toString();
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let settled = false;
    const failed = await new Promise<Error | undefined>((resolve) => {
      child.once('error', (err) => resolve(err));
      void exited.then(() => resolve(new Error(output.trim() || `redis-server exited with ${String(child.exitCode ?? child.signalCode)}`)));
      void (async () => {
        const deadline = Date.now() + startMs;
        while (!settled && child.exitCode === null && child.signalCode === null && Date.now() < deadline) {
          const answer = await answersAs(port, child.pid, password);
          if (answer === 'ours') return resolve(undefined);
          if (answer === 'noauth') {
            return resolve(new NoAuth(`redis-server on port ${port} asks for a password startRedis does not know; pass it in args as ['--requirepass', '<password>']`));
          }
          await new Promise((r) => setTimeout(r, 25));
        }
        resolve(new Error(`redis-server did not answer on port ${port} within ${startMs} ms`));
      })();
    }).finally(() => (settled = true));
    if (failed === undefined) {
      // The server's output is no longer needed; reading it keeps its pipes from filling.
      child.stdout.resume();
      child.stderr.resume();
      const guard = guardian(child.pid!, dir);
      const auth = password === undefined ? '' : `:${encodeURIComponent(password)}@`;
      return { url: `redis://${auth}127.0.0.1:${port}`, port, started: true, stop: stopper(child, exited, dir, guard) };
    }
    if (failed instanceof NoAuth) {
      await kill(child, exited);
      rmSync(dir, { recursive: true, force: true });
      throw new ConfigError(`startRedis: ${failed.message}`);
    }
    if ((failed as NodeJS.ErrnoException).code === 'ENOENT') {
      rmSync(dir, { recursive: true, force: true });
      throw new RedisServerNotFoundError(`startRedis: cannot run ${bin} (not found); ${INSTALL_HINT}`);
    }
    lastError = failed.message;
    await kill(child, exited);
  }
  rmSync(dir, { recursive: true, force: true });
  throw new ConfigError(`startRedis: could not start ${bin} on a free loopback port: ${lastError}`);
}

async function kill(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), 5000)));
  const tooLate = await Promise.race([exited.then(() => false), late]);
  clearTimeout(timer);
  if (tooLate) {
    child.kill('SIGKILL');
    await exited;
  }
}

function stopper(child: ChildProcess, exited: Promise<void>, dir: string, guard: ChildProcess): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () =>
    (stopping ??= (async () => {
      await kill(child, exited);
      rmSync(dir, { recursive: true, force: true });
      guard.kill('SIGKILL');
    })());
}

class NoAuth extends Error {}

// The guardian: a small Node process holding the read end of a pipe from this process. When this
// process ends in any way (a test runner killed with SIGKILL, a cancelled CI job), the pipe
// closes, and the guardian stops the server and deletes its directory, so no redis-server is
// left running on its own. argv: the server's pid, its directory.
const GUARDIAN = `
const pid = Number(process.argv[1]);
const dir = process.argv[2];
const alive = () => { try { process.kill(pid, 0); return true; } catch { return false; } };
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  try { process.kill(pid, 'SIGTERM'); } catch {}
  const started = Date.now();
  const timer = setInterval(() => {
    if (alive() && Date.now() - started < 5000) return;
    if (alive()) { try { process.kill(pid, 'SIGKILL'); } catch {} }
    clearInterval(timer);
    try { require('node:fs').rmSync(dir, { recursive: true, force: true }); } catch {}
    process.exit(0);
  }, 50);
};
process.stdin.on('data', () => {});
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.on('error', stop);
`;

/** Starts the guardian of the server `pid`; it keeps neither this process alive nor its exit waiting. */
function guardian(pid: number, dir: string): ChildProcess {
  // NODE_OPTIONS cleared: a loader of the test run (tsx, a coverage hook) has no business here.
  const guard = spawn(process.execPath, ['-e', GUARDIAN, String(pid), dir], { stdio: ['pipe', 'ignore', 'ignore'], env: { ...process.env, NODE_OPTIONS: '' } });
  guard.on('error', () => undefined);
  guard.unref();
  (guard.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  return guard;
}
