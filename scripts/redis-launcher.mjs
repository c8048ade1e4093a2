// Gives the tests and the demo a Redis: REDIS_URL when set; otherwise a private redis-server
// on a free loopback port with a temporary directory, stopped afterwards. When no
// redis-server is installed and this is a Debian-like machine where we are root, it installs
// Debian's package with apt-get and says so; otherwise it stops with one line of advice.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

const HOW_TO_INSTALL =
  'heimdall-tasks needs Redis >= 7: install redis-server (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) or set REDIS_URL=redis://host:port';

function findRedisServer() {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin', '/opt/homebrew/bin'];
  for (const dir of dirs) {
    if (dir && existsSync(join(dir, 'redis-server'))) return join(dir, 'redis-server');
  }
  return undefined;
}

function installWithApt(log) {
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!root || !existsSync('/etc/debian_version')) return false;
  log('heimdall-tasks: no redis-server found; installing Debian\'s redis-server with apt-get (one time)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env });
  execFileSync('apt-get', ['install', '-y', '-qq', 'redis-server'], { stdio: 'ignore', env });
  return true;
}

/** A free loopback port: the OS picks it, and it is free again once this resolves. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function ping(port) {
  return new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let data = '';
    sock.setTimeout(500);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      data += d;
      if (data.includes('\r\n')) {
        sock.destroy();
        resolve(data.startsWith('+PONG'));
      }
    });
    sock.on('error', () => resolve(false));
    sock.on('timeout', () => {
      sock.destroy();
      resolve(false);
    });
  });
}

/**
 * Returns { url, stop, started }. With REDIS_URL set it starts nothing.
 * Extra redis-server arguments (e.g. ['--appendonly', 'yes']) go in `args`.
 */
/**
 * The redis-server to run: on the PATH or in the usual places; when there is none and this is a
 * Debian-like machine where we are root, Debian's package is installed first. Throws with one
 * line of advice otherwise.
 */
export function redisServerBin({ log = (m) => console.error(m) } = {}) {
  let bin = findRedisServer();
  if (!bin && installWithApt(log)) bin = findRedisServer();
  if (!bin) {
    const err = new Error(HOW_TO_INSTALL);
    err.code = 'HEIMDALL_NO_REDIS';
    throw err;
  }
  return bin;
}

export async function startRedis({ log = (m) => console.error(m), args = [] } = {}) {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, stop: async () => {}, started: false };
  const bin = redisServerBin({ log });
  const dir = mkdtempSync(join(tmpdir(), 'heimdall-redis-'));
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = spawn(
      bin,
      ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', ...args],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let exited = false;
    child.on('exit', () => (exited = true));
    const deadline = Date.now() + 10_000;
    while (!exited && Date.now() < deadline) {
      if (await ping(port)) {
        const stop = async () => {
          if (!exited) {
            const gone = new Promise((r) => child.once('exit', r));
            child.kill('SIGTERM');
            await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
            if (!exited) child.kill('SIGKILL');
          }
          rmSync(dir, { recursive: true, force: true });
        };
        return { url: `redis://127.0.0.1:${port}`, stop, started: true, port, dir, bin };
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!exited) child.kill('SIGKILL');
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error('could not start redis-server on a free loopback port');
}
