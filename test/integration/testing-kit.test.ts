// heimdall-tasks/testing: startRedis() runs a private redis-server (and never installs one),
// createTestApp() gives a test a dispatcher and a worker on a prefix of its own, drain() waits
// until everything has ended and reports it, close() leaves no key and no connection behind.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Task, TimeoutError } from 'heimdall-tasks';
import { createTestApp, RedisServerNotFoundError, startRedis, type TestApp, type TestAppOptions } from 'heimdall-tasks/testing';
import { clientNames, gate, redisUrl, ROOT, scanKeys, waitFor } from '../helpers.js';

const failures = new Map<string, number>();

class KitMailer {
  @Task({ queue: 'kit-emails' })
  async send(to: string): Promise<string> {
    return `sent to ${to}`;
  }
}

class KitService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task()
  async explode(why: string): Promise<never> {
    throw new RangeError(why);
  }

  /** Fails the first `times` runs for `key`, then succeeds. */
  @Task({ retries: { max: 3, backoff: '50ms', jitter: false } })
  async flaky(key: string, times: number): Promise<string> {
    const n = (failures.get(key) ?? 0) + 1;
    failures.set(key, n);
    if (n <= times) throw new Error(`failure ${n}`);
    return `ok after ${n}`;
  }

  @Task({ rateLimit: [1, '400ms'] })
  async limited(n: number): Promise<number> {
    return n;
  }

  /** Runs until the test opens `held`. */
  @Task()
  async hold(label: string): Promise<string> {
    await held.promise;
    return `released ${label}`;
  }
}

let held = gate();

/** True when something accepts TCP connections on the loopback port. */
async function answers(url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

describe('startRedis', () => {
  it('starts a private redis-server on a free loopback port, without persistence, and stop() ends it', async () => {
    const redis = await startRedis();
    try {
      expect(redis.started).toBe(true);
      expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
      const client = new Redis(redis.url);
      try {
        expect(await client.ping()).toBe('PONG');
        expect(await client.config('GET', 'save')).toEqual(['save', '']);
        expect(await client.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
        expect(await client.config('GET', 'dir')).toEqual(['dir', expect.stringMatching(/heimdall-test-redis-/)]);
      } finally {
        await client.quit();
      }
    } finally {
      await redis.stop();
    }
    expect(await answers(redis.url)).toBe(false);
    await redis.stop(); // twice is fine
  });

  it('passes extra arguments to redis-server; a server that cannot start is an error with its output', async () => {
    const redis = await startRedis({ args: ['--maxmemory', '12mb'] });
    try {
      const client = new Redis(redis.url);
      try {
        expect(await client.config('GET', 'maxmemory')).toEqual(['maxmemory', String(12 * 1024 * 1024)]);
      } finally {
        await client.quit();
      }
    } finally {
      await redis.stop();
    }
    const err = await startRedis({ args: ['--no-such-option', 'x'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/could not start .*redis-server.*no-such-option/is);
  });

  it('with --requirepass: authenticates its own check and gives a URL with the password', async () => {
    const redis = await startRedis({ args: ['--requirepass', 's3cret w/ space'] });
    try {
      expect(redis.url).toBe(`redis://:${encodeURIComponent('s3cret w/ space')}@127.0.0.1:${redis.port}`);
      const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
      try {
        await client.connect();
        expect(await client.ping()).toBe('PONG');
      } finally {
        client.disconnect();
      }
    } finally {
      await redis.stop();
    }
  });

  it('a server whose starter is killed with SIGKILL is stopped by its guardian, not left running', async () => {
    const script = [
      `const { startRedis } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'src/testing/start-redis.ts')).href)});`,
      'const redis = await startRedis();',
      'console.log(`PORT ${redis.port}`);',
      'setInterval(() => undefined, 1000);',
    ].join('\n');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const port = Number((await waitFor(() => /PORT (\d+)/.exec(out), { what: 'the child to start redis', timeout: 30_000 }))[1]);
    const url = `redis://127.0.0.1:${port}`;
    expect(await answers(url)).toBe(true);
    child.kill('SIGKILL');
    await waitFor(async () => !(await answers(url)), { what: 'the orphaned redis-server to be stopped', timeout: 15_000 });
  });

  it('reuses a given URL (e.g. REDIS_URL) and starts nothing', async () => {
    const url = redisUrl();
    const redis = await startRedis({ reuse: url });
    expect(redis).toMatchObject({ url, started: false });
    await redis.stop();
    expect(await answers(url)).toBe(true);
  });

  it('without redis-server on the PATH: a RedisServerNotFoundError naming the install commands, nothing installed', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent-heimdall-dir';
    try {
      const err = await startRedis().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RedisServerNotFoundError);
      expect((err as RedisServerNotFoundError).code).toBe('HEIMDALL_REDIS_SERVER_NOT_FOUND');
      expect((err as Error).message).toContain('apt-get install redis-server');
      expect((err as Error).message).toContain('brew install redis');
      const missing = await startRedis({ bin: '/nonexistent-heimdall-dir/redis-server' }).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(RedisServerNotFoundError);
    } finally {
      process.env.PATH = path;
    }
  });
});

describe('createTestApp', () => {
  const apps: TestApp[] = [];
  const app = async (options: Partial<TestAppOptions> & { inline?: false } = {}): Promise<TestApp> => {
    const a = await createTestApp({ services: [new KitService(), new KitMailer()], connection: redisUrl(), ...options });
    apps.push(a);
    return a;
  };
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.close()));
  });

  it('drain() waits for every queue (retries and rate-limit reschedules too) and reports what ran', async () => {
    const a = await app();
    expect(a.prefix).toMatch(/^heimdall-test-[0-9a-f]{16}$/);
    expect([...a.queues].sort()).toEqual(['default', 'kit-emails']);
    const svc = a.tasks(KitService);
    const added = await svc.add.delay(2, 3);
    const exploded = await svc.explode.delay('no');
    const flaky = await svc.flaky.delay(a.prefix, 2);
    const limited = await Promise.all([svc.limited.delay(1), svc.limited.delay(2)]);
    const later = await svc.add.applyAsync([10, 20], { countdown: '300ms' });
    const mail = await a.tasks(KitMailer).send.delay('ada@example.com');

    const { ran, delayed } = await a.drain();
    expect(delayed).toEqual([]);
    const byId = new Map(ran.map((t) => [t.id, t]));
    expect(ran).toHaveLength(7);
    expect(byId.get(added.id)).toEqual({ id: added.id, name: 'KitService.add', queue: 'default', args: [2, 3], state: 'SUCCESS', result: 5, attempts: 1 });
    expect(byId.get(exploded.id)).toMatchObject({ state: 'FAILURE', error: { name: 'RangeError', message: 'no' }, attempts: 1 });
    expect(byId.get(flaky.id)).toMatchObject({ state: 'SUCCESS', result: 'ok after 3', attempts: 3 });
    for (const l of limited) expect(byId.get(l.id)).toMatchObject({ state: 'SUCCESS', name: 'KitService.limited' });
    expect(byId.get(later.id)).toMatchObject({ state: 'SUCCESS', result: 30 });
    expect(byId.get(mail.id)).toMatchObject({ queue: 'kit-emails', state: 'SUCCESS', result: 'sent to ada@example.com' });
    // What drain() reports agrees with Redis.
    expect(await added.status()).toBe('SUCCESS');
    expect(await later.status()).toBe('SUCCESS');

    // The next drain reports only what ended since.
    const again = await svc.add.delay(1, 1);
    expect((await a.drain()).ran.map((t) => t.id)).toEqual([again.id]);
    expect((await a.drain()).ran).toEqual([]);
  });

  it('drain() stays pending while a task runs, and resolves with it once its end is stored', async () => {
    held = gate();
    const a = await app();
    const handle = await a.tasks(KitService).hold.delay('x');
    await waitFor(async () => (await handle.status()) === 'STARTED', { timeout: 10_000, what: 'the held task to start' });
    // Counts drain's looks at Redis (one MULTI per queue per look) on the app's own connection.
    const multi = vi.spyOn(a.dispatcher.client, 'multi');
    let settled = false;
    const draining = a.drain({ timeout: 20 }).finally(() => (settled = true));
    await waitFor(() => multi.mock.calls.length >= 2 * a.queues.length, { timeout: 10_000, what: 'drain() to look at Redis twice' });
    expect(settled).toBe(false);
    held.open();
    const report = await draining;
    multi.mockRestore();
    expect(report.ran.map((t) => [t.id, t.state, t.result])).toEqual([[handle.id, 'SUCCESS', 'released x']]);
  });

  it("delayed tasks past the deadline: 'wait' rejects at once naming them, 'leave' resolves and lists them", async () => {
    const a = await app();
    const svc = a.tasks(KitService);
    const far = await svc.add.applyAsync([1, 2], { countdown: 3600 });
    const now = await svc.add.delay(3, 4);

    const began = Date.now();
    const err = await a.drain({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toContain(`KitService.add ${far.id}`);
    expect(Date.now() - began).toBeLessThan(4000);

    const report = await a.drain({ delayed: 'leave' });
    expect(report.ran.map((t) => t.id)).toEqual([now.id]);
    expect(report.delayed).toEqual([{ id: far.id, queue: 'default', dueInMs: expect.any(Number) }]);
    expect(report.delayed[0]!.dueInMs).toBeGreaterThan(3_500_000);
    expect(await far.status()).toBe('PENDING');
  });

  it('drain() times out naming what is left when no worker runs the tasks', async () => {
    const a = await app({ start: false });
    await a.tasks(KitService).add.delay(1, 1);
    const err = await a.drain({ timeout: '300ms' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toMatch(/queue default: 1 waiting.*is the worker started\?/);
    await a.worker.start();
    expect((await a.drain()).ran).toHaveLength(1);
  });

  it('drain() does not resolve while a task waits in a queue the worker does not consume; it names the queue', async () => {
    const a = await app();
    const stray = await a.tasks(KitService).add.applyAsync([2, 2], { queue: 'kit-elsewhere' });
    const err = await a.drain({ timeout: '400ms' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toContain('queue kit-elsewhere: 1 waiting');
    expect((err as Error).message).toContain("does not consume 'kit-elsewhere'");
    expect(await stray.status()).toBe('PENDING');
  });

  it("drain() and close() with Redis gone reject within their timeouts, in heimdall's terms", async () => {
    const a = await app({ connection: 'redis://127.0.0.1:1', start: false });
    const began = Date.now();
    const err = await a.drain({ timeout: '500ms' }).catch((e: unknown) => e);
    expect(Date.now() - began).toBeLessThan(5_000);
    expect((err as Error).name).toMatch(/TimeoutError|RedisUnavailableError/);
    apps.splice(apps.indexOf(a), 1);
    // close() too: its key deletion is bounded by its timeout (at least 1 s).
    const closing = Date.now();
    const closeErr = await a.close({ timeout: 0 }).catch((e: unknown) => e);
    expect(Date.now() - closing).toBeLessThan(5_000);
    expect((closeErr as Error).name).toMatch(/TimeoutError|RedisUnavailableError/);
  });

  it('prints what the worker reports when the test does not listen for errors, and stays quiet when it does', async () => {
    const printed: unknown[][] = [];
    const spy = vi.spyOn(console, 'error').mockImplementation((...args: unknown[]) => void printed.push(args));
    try {
      const a = await app();
      a.on('started', () => {
        throw new Error('a listener that throws');
      });
      await a.tasks(KitService).add.delay(1, 1);
      await a.drain();
      await waitFor(() => printed.some((p) => String(p[1]).includes('a listener that throws')), { what: 'the printed error' });
      printed.length = 0;
      const heard: Error[] = [];
      a.on('error', (e) => heard.push(e));
      await a.tasks(KitService).add.delay(2, 2);
      await a.drain();
      await waitFor(() => heard.some((e) => e.message.includes('a listener that throws')), { what: 'the heard error' });
      expect(printed.filter((p) => String(p[1]).includes('a listener that throws'))).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });

  it('each app has its own prefix; close() deletes its keys and closes its connections', async () => {
    const a = await app();
    const b = await app();
    expect(a.prefix).not.toBe(b.prefix);
    await a.tasks(KitService).add.delay(1, 2);
    await a.tasks(KitMailer).send.delay('x@example.com');
    await a.drain();
    const admin = new Redis(redisUrl());
    try {
      expect((await scanKeys(admin, `${a.prefix}:*`)).length).toBeGreaterThan(0);
      // b holds only its worker's declaration of the task names and its registry entry, nothing of a's tasks.
      expect((await scanKeys(admin, `${b.prefix}:*`)).filter((k) => !/}:(names|workers|worker-info)$/.test(k))).toEqual([]);
      expect((await clientNames(admin, `heimdall:${a.prefix}:`)).length).toBeGreaterThan(0);
      await a.close();
      await a.close();
      expect(await scanKeys(admin, `${a.prefix}:*`)).toEqual([]);
      // Redis drops a closed connection from CLIENT LIST a moment after the client has quit.
      await waitFor(async () => (await clientNames(admin, `heimdall:${a.prefix}:`)).length === 0, { timeout: 3000, what: "a's connections to be gone" });
      // The other app goes on.
      const h = await b.tasks(KitService).add.delay(4, 4);
      expect(await h.get({ timeout: 10 })).toBe(8);
    } finally {
      await admin.quit();
    }
  });

  it("close() deletes only its own prefix's keys: not those of a longer prefix, nor those a glob in its prefix would match", async () => {
    const base = `kit-close-${Math.random().toString(36).slice(2, 10)}`;
    const admin = new Redis(redisUrl());
    const others = [`${base}:ci:{default}:t:keep`, `${base}-prod:{default}:t:keep`, `${base}x:{default}:t:keep`];
    try {
      await Promise.all(others.map((k) => admin.set(k, '1')));
      for (const prefix of [base, `${base}*`, `${base}?`]) {
        const a = await app({ prefix });
        await a.tasks(KitService).add.delay(1, 1);
        await a.drain();
        await a.close();
        expect((await scanKeys(admin, `${base}*`)).sort()).toEqual([...others].sort());
      }
    } finally {
      await admin.del(...others);
      await admin.quit();
    }
  });

  it('needs a Redis: no connection and no REDIS_URL is a ConfigError that says so', async () => {
    const env = process.env.REDIS_URL;
    delete process.env.REDIS_URL;
    try {
      await expect(createTestApp({ services: [] })).rejects.toThrow(/pass \{ connection \}.*or set REDIS_URL/);
    } finally {
      if (env !== undefined) process.env.REDIS_URL = env;
    }
  });
});
