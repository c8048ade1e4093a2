/**
 * Hostile and broken input. First a table of bad things a caller can hand the library (task
 * options, call options, arguments, payload size, prefix and queue names, an ioredis
 * keyPrefix): each is refused at once with its own clear error and nothing reaches Redis.
 * Then a table of garbage written straight into every Redis structure a worker reads (wait
 * list, task records, unique locks, rate windows, delayed and active sets, wake-up markers,
 * the revoke channel): the worker neither crashes nor stalls, the task ends FAILURE with the
 * expected error where it has a record, the dead-letter list `<prefix>:{<queue>}:dead` says
 * why, and good tasks still run. Last, queue structures of the wrong type, which make every
 * fetch of that queue fail: the worker reports errors and keeps serving its other queues.
 */
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import * as api from 'heimdall-tasks';
import {
  ConfigError,
  Dispatcher,
  HeimdallError,
  NotATaskError,
  SerializationError,
  Task,
  TaskFailedError,
  Worker,
  currentTask,
  type TaskOptions,
} from 'heimdall-tasks';
import { gate, type Harness, nextEvent, redisNowMs, useHarness, waitFor } from '../helpers.js';

class HostileService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task({ unique: true })
  async once(n: number): Promise<number> {
    return n;
  }

  @Task({ rateLimit: [50, 60] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task()
  async echo(value: unknown): Promise<unknown> {
    return value;
  }
}

class OtherQueueService {
  @Task({ queue: 'other' })
  async ping(n: number): Promise<string> {
    return `pong ${n}`;
  }
}

class HeldService {
  readonly gate = gate();
  /** Ids of held tasks whose AbortSignal fired. */
  readonly aborted: string[] = [];

  @Task()
  async held(): Promise<string> {
    const { id, signal } = currentTask();
    signal.addEventListener('abort', () => this.aborted.push(id));
    await this.gate.promise;
    return 'done';
  }

  /** Ends only when its signal fires. */
  @Task()
  async untilRevoked(): Promise<void> {
    const { signal } = currentTask();
    await new Promise<void>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)));
  }
}

class NoTasks {
  async plain(): Promise<void> {}
}

/** Decorates a fresh class with `options`, as a user's module would when it is loaded. */
function decorateWith(options: unknown): () => unknown {
  return () => {
    class BadOptions {
      @Task(options as TaskOptions)
      async run(): Promise<void> {}
    }
    return BadOptions;
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Bad input from callers.

interface CallerCase {
  what: string;
  act: (h: Harness) => unknown;
  /** Expected error: its class name, its code, and its message. */
  name: string;
  code: string;
  message: RegExp;
  /** Extra properties the error must carry. */
  props?: Record<string, unknown>;
}

const big = 'x'.repeat(2000);

const callerCases: CallerCase[] = [
  // @Task options, checked when the class is defined.
  {
    what: '@Task: an unknown option',
    act: () => decorateWith({ retry: 3 })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /BadOptions\.run: unknown option 'retry'; known options are name, queue, unique/,
  },
  {
    what: '@Task: uniqueTimeout that is not a duration',
    act: () => decorateWith({ unique: true, uniqueTimeout: 'soon' })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /uniqueTimeout must be a positive number of seconds or a duration string like '1h' or '500ms', got "soon"/,
  },
  {
    what: '@Task: rateLimit of 0 starts',
    act: () => decorateWith({ rateLimit: [0, 60] })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /rateLimit: n must be a whole number of starts >= 1, got 0/,
  },
  {
    what: '@Task: negative retries.max',
    act: () => decorateWith({ retries: { max: -1 } })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /retries\.max must be a whole number of retries >= 0, got -1/,
  },
  {
    what: '@Task: timeLimit 0',
    act: () => decorateWith({ timeLimit: 0 })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /timeLimit must be a positive number of seconds/,
  },
  {
    what: '@Task: a queue name with a space',
    act: () => decorateWith({ queue: 'night jobs' })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "night jobs"/,
  },
  {
    what: '@Task: fractional maxRecoveries',
    act: () => decorateWith({ maxRecoveries: 1.5 })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /maxRecoveries must be a whole number >= 0, got 1\.5/,
  },
  {
    what: '@Task: uniqueRaises without unique',
    act: () => decorateWith({ uniqueRaises: true })(),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /uniqueRaises only applies to unique tasks; add unique: true/,
  },
  // Per-call options.
  {
    what: 'call: an unknown option',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { priority: 1 } as never),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /unknown call option 'priority'; known: countdown, eta, taskId, queue, expires, timeLimit/,
  },
  {
    what: 'call: a negative countdown',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { countdown: -5 }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /countdown must be a positive number of seconds or a duration string like '1h' or '500ms', got -5/,
  },
  {
    what: "call: countdown '10', which could mean seconds or ms",
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { countdown: '10' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /countdown is the string "10": write a number of seconds \(10\) or give a unit \('10s', '10ms'\)/,
  },
  {
    what: 'call: eta that is a word',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { eta: 'tomorrow' as never }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /eta must be a Date or epoch milliseconds, got "tomorrow"/,
  },
  {
    what: 'call: eta an Invalid Date',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { eta: new Date('not a date') }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /eta must be a Date or epoch milliseconds, got an object/,
  },
  {
    what: 'call: expires that is a word',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { expires: 'never' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /expires must be a positive number of seconds or a duration string like '1h' or '500ms', got "never"/,
  },
  {
    what: 'call: expires of -1 s',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { expires: -1 }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /expires must be a positive number of seconds .* got -1/,
  },
  {
    what: 'call: taskId with a space',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { taskId: 'invoice 7' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /taskId must be a non-empty string without spaces or braces, got "invoice 7"/,
  },
  {
    what: 'call: taskId with braces (a hash tag)',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { taskId: '{other}x' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /taskId must be a non-empty string without spaces or braces, got "\{other\}x"/,
  },
  {
    what: 'call: empty taskId',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { taskId: '' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /taskId must be a non-empty string without spaces or braces, got ""/,
  },
  {
    what: 'call: taskId a number',
    act: (h) => h.dispatcher().tasks(HostileService).add.applyAsync([1, 2], { taskId: 42 as never }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /taskId must be a non-empty string without spaces or braces, got 42/,
  },
  {
    what: 'call: a queue name with braces',
    act: (h) => h.dispatcher().send('HostileService.add', [1, 2], { queue: 'a{b}' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /queue must be a non-empty string .* got "a\{b\}"/,
  },
  {
    what: 'call: a queue name with a tab',
    act: (h) => h.dispatcher().send('HostileService.add', [1, 2], { queue: 'a\tb' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /queue must be a non-empty string .* got "a\\tb"/,
  },
  // Arguments.
  {
    what: 'args: a Date nested in an object',
    act: (h) => h.dispatcher().tasks(HostileService).echo.delay({ when: new Date(0) }),
    name: 'SerializationError',
    code: 'HEIMDALL_SERIALIZATION',
    message: /^args\[0\]\.when is a Date, which JSON would not bring back as it was \(pass date\.toISOString\(\) or a timestamp\)/,
    props: { path: 'args[0].when' },
  },
  {
    what: 'args: a BigInt',
    act: (h) => h.dispatcher().tasks(HostileService).echo.delay({ ids: [1, 2n] }),
    name: 'SerializationError',
    code: 'HEIMDALL_SERIALIZATION',
    message: /^args\[0\]\.ids\[1\] is a BigInt, which JSON cannot encode; pass it as a string/,
    props: { path: 'args[0].ids[1]' },
  },
  {
    what: 'args: a cycle',
    act: (h) => {
      const node: Record<string, unknown> = { name: 'a' };
      node.self = node;
      return h.dispatcher().tasks(HostileService).echo.delay(node);
    },
    name: 'SerializationError',
    code: 'HEIMDALL_SERIALIZATION',
    message: /^args\[0\]\.self refers back to one of its parents \(a cycle\)/,
    props: { path: 'args[0].self' },
  },
  {
    what: 'args: a function under a key that is not an identifier',
    act: (h) => h.dispatcher().tasks(HostileService).echo.delay({ 'on-done': () => 1 }),
    name: 'SerializationError',
    code: 'HEIMDALL_SERIALIZATION',
    message: /^args\[0\]\["on-done"\] is a function, which JSON cannot encode/,
    props: { path: 'args[0]["on-done"]' },
  },
  {
    what: 'args: not an array (send)',
    act: (h) => h.dispatcher().send('HostileService.add', 'one, two' as never),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /arguments of HostileService\.add must be an array, got "one, two"/,
  },
  // Payload size: bytes of the JSON, not characters.
  {
    what: 'payload: 2004 bytes over a 1024-byte cap',
    act: (h) => h.dispatcher({ maxPayloadBytes: 1024 }).tasks(HostileService).echo.delay(big),
    name: 'PayloadTooLargeError',
    code: 'HEIMDALL_PAYLOAD_TOO_LARGE',
    message: /^arguments of HostileService\.echo are 2004 bytes as JSON, over maxPayloadBytes \(1024\); store large data elsewhere and pass a reference, or raise maxPayloadBytes$/,
    props: { bytes: 2004, limit: 1024 },
  },
  {
    what: 'payload: 600 two-byte characters (1204 bytes) over a 1024-byte cap',
    act: (h) => h.dispatcher({ maxPayloadBytes: 1024 }).tasks(HostileService).echo.delay('é'.repeat(600)),
    name: 'PayloadTooLargeError',
    code: 'HEIMDALL_PAYLOAD_TOO_LARGE',
    message: /are 1204 bytes as JSON, over maxPayloadBytes \(1024\)/,
    props: { bytes: 1204, limit: 1024 },
  },
  {
    what: 'payload: the default cap of 512 KiB',
    act: (h) => h.dispatcher().tasks(HostileService).echo.delay('y'.repeat(512 * 1024)),
    name: 'PayloadTooLargeError',
    code: 'HEIMDALL_PAYLOAD_TOO_LARGE',
    message: /are 524292 bytes as JSON, over maxPayloadBytes \(524288\)/,
    props: { bytes: 524292, limit: 524288 },
  },
  {
    what: 'payload: maxPayloadBytes 0',
    act: (h) => h.dispatcher({ maxPayloadBytes: 0 }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /maxPayloadBytes must be a whole number of bytes >= 1, got 0/,
  },
  // Prefix and queue names.
  {
    what: 'prefix with braces',
    act: (h) => new Dispatcher({ connection: h.url, prefix: 'app{1}' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^prefix must be a non-empty string of at most 200 characters without braces, spaces or control characters, got "app\{1\}"$/,
  },
  {
    what: 'prefix with a control character',
    act: (h) => new Dispatcher({ connection: h.url, prefix: 'app\u0001' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^prefix must be .* got "app\\u0001"$/,
  },
  {
    what: 'prefix with a newline (Worker)',
    act: (h) => new Worker({ connection: h.url, prefix: 'app\nFLUSHALL' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^prefix must be .* got "app\\nFLUSHALL"$/,
  },
  {
    what: 'prefix with a space',
    act: (h) => new Dispatcher({ connection: h.url, prefix: 'my app' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^prefix must be .* got "my app"$/,
  },
  {
    what: 'empty prefix',
    act: (h) => new Dispatcher({ connection: h.url, prefix: '' }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^prefix must be .* got ""$/,
  },
  {
    what: 'Worker queue with braces',
    act: (h) => new Worker({ connection: h.url, prefix: h.prefix, queues: ['default', 'bad}q'] }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^queue must be .* got "bad\}q"$/,
  },
  {
    what: 'ioredis keyPrefix on the Dispatcher connection',
    act: () => new Dispatcher({ connection: { host: '127.0.0.1', port: 1, keyPrefix: 'app:', lazyConnect: true } }),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /the connection sets ioredis keyPrefix 'app:', which heimdall-tasks cannot use; pass prefix: 'app' to the Dispatcher and Worker instead/,
  },
  {
    what: 'ioredis keyPrefix on a client passed to a Worker',
    act: async (h) => {
      const client = new Redis(h.url, { keyPrefix: 'app:', lazyConnect: true });
      try {
        await new Worker({ connection: client, prefix: h.prefix, services: [new HostileService()] }).start();
      } finally {
        client.disconnect();
      }
    },
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /ioredis keyPrefix 'app:'.*pass prefix: 'app'/,
  },
  // Names and methods.
  {
    what: 'send() without a task name',
    act: (h) => h.dispatcher().send(''),
    name: 'ConfigError',
    code: 'HEIMDALL_CONFIG',
    message: /^send\(\) needs a task name$/,
  },
  {
    what: 'a method without @Task',
    act: (h) => (h.dispatcher().tasks(NoTasks) as unknown as Record<string, { delay(): Promise<unknown> }>).plain!.delay(),
    name: 'NotATaskError',
    code: 'HEIMDALL_NOT_A_TASK',
    message: /^NoTasks\.plain is not a task: decorate the method with @Task\(\)$/,
  },
];

describe('bad input from callers is refused at once, with a clear error, and nothing reaches Redis', () => {
  const fresh = useHarness('hostile');

  it(`the table has at least 20 cases (${callerCases.length})`, () => {
    expect(callerCases.length).toBeGreaterThanOrEqual(20);
  });

  it.each(callerCases)('$what', async ({ act, name, code, message, props }) => {
    const h = fresh();
    let caught: unknown;
    try {
      await act(h);
    } catch (err) {
      caught = err;
    }
    expect(caught, 'the call must throw').toBeInstanceOf(HeimdallError);
    const err = caught as HeimdallError & Record<string, unknown>;
    expect(err.name).toBe(name);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    if (props) expect(err).toMatchObject(props);
    // Nothing was written: no record, no wait list, no lock.
    expect(await h.keys()).toEqual([]);
  });

  it('the error classes of these cases are exported and match by instanceof', () => {
    const exported = api as unknown as Record<string, unknown>;
    expect(new ConfigError('x')).toBeInstanceOf(HeimdallError);
    expect(typeof SerializationError).toBe('function');
    expect(typeof NotATaskError).toBe('function');
    // The issue names PayloadTooLargeError and RedisUnavailableError as errors users catch.
    expect(Object.keys(api)).toContain('PayloadTooLargeError');
    expect(Object.keys(api)).toContain('RedisUnavailableError');
    expect(typeof exported.PayloadTooLargeError).toBe('function');
  });

  it('a payload of exactly maxPayloadBytes is accepted, and the worker still runs good tasks after all of the above', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new HostileService()] });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    await worker.start();
    const d = h.dispatcher({ maxPayloadBytes: 1024 });
    const hostile = d.tasks(HostileService);
    // ["x...x"] is the string's length plus 4 bytes.
    const exact = 'z'.repeat(1020);
    await expect(hostile.echo.delay(`${exact}!`)).rejects.toMatchObject({ code: 'HEIMDALL_PAYLOAD_TOO_LARGE', bytes: 1025 });
    expect(await (await hostile.echo.delay(exact)).get({ timeout: 10 })).toBe(exact);
    const sums = await Promise.all([1, 2, 3, 4, 5].map(async (n) => (await hostile.add.delay(n, n)).get({ timeout: 10 })));
    expect(sums).toEqual([2, 4, 6, 8, 10]);
    expect(await (await hostile.once.delay(9)).get({ timeout: 10 })).toBe(9);
    expect(errors).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// 2. Garbage in the Redis structures a worker reads.

interface Planted {
  /** Id of the task the garbage belongs to, if any. */
  id: string;
  /** Keys whose content the case checks afterwards. */
  extra?: Record<string, string>;
}

interface GarbageCase {
  what: string;
  /** Writes the garbage (before the worker starts); returns the task id it concerns. */
  plant: (h: Harness, d: Dispatcher) => Promise<Planted>;
  /** Final state and stored error; undefined when there is no record to end. */
  failure?: { name: 'MalformedTaskError' | 'UnknownTaskError'; message: string | RegExp; attempts: number };
  /** Reason in the dead-letter list; undefined when none is expected. */
  dead?: string | RegExp;
  /** Further checks once the case has settled. */
  after?: (h: Harness, p: Planted) => Promise<void>;
}

/** Sends a real task and returns its id, so garbage lands in a record the worker would run. */
async function queued(d: Dispatcher, which: 'add' | 'once' | 'limited', n = 1): Promise<string> {
  const t = d.tasks(HostileService);
  const r = which === 'add' ? await t.add.delay(n, n) : which === 'once' ? await t.once.delay(n) : await t.limited.delay(n);
  return r.id;
}

const NO_RECORD = 'the wait list names a task with no record';

const garbageCases: GarbageCase[] = [
  {
    what: 'a wait-list id with no record',
    plant: async (h) => {
      await h.admin.lpush(h.queueKey('wait'), 'ghost-1');
      return { id: 'ghost-1' };
    },
    dead: NO_RECORD,
    after: async (h) => expect(await h.admin.exists(h.taskKey('ghost-1'))).toBe(0),
  },
  {
    what: 'a record that is a string, not a hash',
    plant: async (h) => {
      await h.admin.set(h.taskKey('stringy'), 'hello');
      await h.admin.lpush(h.queueKey('wait'), 'stringy');
      return { id: 'stringy' };
    },
    dead: 'its record is not a hash',
    after: async (h) => expect(await h.admin.get(h.taskKey('stringy'))).toBe('hello'),
  },
  {
    what: "a record with message version v='2'",
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hset(h.taskKey(id), 'v', '2');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'message version 2 is not one this worker reads (1)', attempts: 0 },
    dead: 'message version 2 is not one this worker reads (1)',
  },
  {
    what: 'a record with no message version (an older producer)',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hdel(h.taskKey(id), 'v');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the record has no message version (field v); this worker reads version 1', attempts: 0 },
    dead: 'the record has no message version (field v); this worker reads version 1',
  },
  {
    what: 'a record whose expiry (ex) is not a number',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hset(h.taskKey(id), 'ex', 'tomorrow');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the expiry (field ex) is not a number', attempts: 0 },
    dead: 'the expiry (field ex) is not a number',
  },
  {
    what: 'a record whose time limit (tl) is not a number',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hset(h.taskKey(id), 'tl', 'a while');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the time limit (field tl) is not a number >= 0', attempts: 0 },
    dead: 'the time limit (field tl) is not a number >= 0',
  },
  {
    what: 'a record with no task name',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hdel(h.taskKey(id), 'n');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the record lacks a task name or arguments', attempts: 0 },
    dead: 'the record lacks a task name or arguments',
  },
  {
    what: 'a record with no arguments',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hdel(h.taskKey(id), 'a');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the record lacks a task name or arguments', attempts: 0 },
    dead: 'the record lacks a task name or arguments',
  },
  {
    what: 'arguments that are not JSON',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hset(h.taskKey(id), 'a', '[1, 2');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: "the task's arguments are not a JSON array: [1, 2", attempts: 1 },
    dead: "the task's arguments are not a JSON array: [1, 2",
  },
  {
    what: 'arguments that are JSON but not an array',
    plant: async (h, d) => {
      const id = await queued(d, 'add');
      await h.admin.hset(h.taskKey(id), 'a', '{"a":1,"b":2}');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: `the task's arguments are not a JSON array: {"a":1,"b":2}`, attempts: 1 },
    dead: `the task's arguments are not a JSON array: {"a":1,"b":2}`,
  },
  {
    what: 'a task name no worker knows',
    plant: async (h, d) => ({ id: (await d.send('Nowhere.toBeFound', [1])).id }),
    // unknownTaskGrace 0: failed at its first start, which is taken back (it never ran).
    failure: { name: 'UnknownTaskError', message: /^no task named 'Nowhere\.toBeFound' is run by worker \S+ \(no class registered there declares it\).*: import the module/, attempts: 0 },
    dead: /^no task named 'Nowhere\.toBeFound' is run by worker /,
  },
  {
    what: 'a unique lock lifetime that is not a number',
    plant: async (h, d) => {
      const id = await queued(d, 'once', 11);
      const lk = (await h.recordLock(id))!;
      await h.admin.hset(h.taskKey(id), 'lt', 'forever');
      return { id, extra: { lk } };
    },
    failure: { name: 'MalformedTaskError', message: 'the unique lock lifetime is not a positive whole number', attempts: 0 },
    dead: 'the unique lock lifetime is not a positive whole number',
    // The lock it took at enqueue is released at its end.
    after: async (h, p) => expect(await h.admin.exists(p.extra!.lk!)).toBe(0),
  },
  {
    what: 'a unique lock lifetime of 1.5 ms (SET PX takes whole ms)',
    plant: async (h, d) => {
      const id = await queued(d, 'once', 14);
      await h.admin.hset(h.taskKey(id), 'lt', '1.5');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the unique lock lifetime is not a positive whole number', attempts: 0 },
    dead: 'the unique lock lifetime is not a positive whole number',
  },
  {
    what: 'a unique lock lifetime of 1e19 ms, past what SET PX takes (the command fails, the queue goes on)',
    plant: async (h, d) => {
      const id = await queued(d, 'once', 15);
      await h.admin.hset(h.taskKey(id), 'lt', '1e19');
      await h.admin.del((await h.recordLock(id))!);
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'a command on its keys failed: ERR value is not an integer or out of range', attempts: 0 },
    dead: 'a command on its keys failed: ERR value is not an integer or out of range',
  },
  {
    what: 'a negative unique lock lifetime',
    plant: async (h, d) => {
      const id = await queued(d, 'once', 12);
      await h.admin.hset(h.taskKey(id), 'lt', '-5');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the unique lock lifetime is not a positive whole number', attempts: 0 },
    dead: 'the unique lock lifetime is not a positive whole number',
  },
  {
    what: 'a unique lock key of the wrong type (a list)',
    plant: async (h, d) => {
      const id = await queued(d, 'once', 13);
      const lk = (await h.recordLock(id))!;
      await h.admin.del(lk);
      await h.admin.rpush(lk, 'not', 'a', 'lock');
      return { id, extra: { lk } };
    },
    failure: { name: 'MalformedTaskError', message: 'its unique lock key holds a value of the wrong type', attempts: 0 },
    dead: 'its unique lock key holds a value of the wrong type',
    // Not ours to delete: the list is left as it was.
    after: async (h, p) => expect(await h.admin.lrange(p.extra!.lk!, 0, -1)).toEqual(['not', 'a', 'lock']),
  },
  {
    what: 'a rate window key of the wrong type (a string)',
    plant: async (h, d) => {
      const id = await queued(d, 'limited', 1);
      const rk = (await h.admin.hget(h.taskKey(id), 'rk'))!;
      await h.admin.set(rk, 'garbage');
      return { id, extra: { rk } };
    },
    failure: { name: 'MalformedTaskError', message: 'its rate window key holds a value of the wrong type', attempts: 0 },
    dead: 'its rate window key holds a value of the wrong type',
    after: async (h, p) => expect(await h.admin.get(p.extra!.rk!)).toBe('garbage'),
  },
  {
    what: 'a rate limit of 0 starts (rn)',
    plant: async (h, d) => {
      const id = await queued(d, 'limited', 2);
      await h.admin.hset(h.taskKey(id), 'rn', '0');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the rate limit is not [whole n >= 1, whole period > 0]', attempts: 0 },
    dead: 'the rate limit is not [whole n >= 1, whole period > 0]',
  },
  {
    what: 'a rate period of half a millisecond (rp; PEXPIRE takes whole ms)',
    plant: async (h, d) => {
      const id = await queued(d, 'limited', 4);
      await h.admin.hset(h.taskKey(id), 'rp', '0.5');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the rate limit is not [whole n >= 1, whole period > 0]', attempts: 0 },
    dead: 'the rate limit is not [whole n >= 1, whole period > 0]',
  },
  {
    what: 'a rate period that is not a number (rp)',
    plant: async (h, d) => {
      const id = await queued(d, 'limited', 3);
      await h.admin.hset(h.taskKey(id), 'rp', 'a minute');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the rate limit is not [whole n >= 1, whole period > 0]', attempts: 0 },
    dead: 'the rate limit is not [whole n >= 1, whole period > 0]',
  },
  {
    what: 'a rate bucket (rk) with no limit fields at all',
    plant: async (h, d) => {
      const id = await queued(d, 'limited', 4);
      await h.admin.hdel(h.taskKey(id), 'rn', 'rp');
      return { id };
    },
    failure: { name: 'MalformedTaskError', message: 'the rate limit is not [whole n >= 1, whole period > 0]', attempts: 0 },
    dead: 'the rate limit is not [whole n >= 1, whole period > 0]',
  },
  {
    what: 'a delayed-set member with no record',
    plant: async (h) => {
      await h.admin.zadd(h.queueKey('delayed'), 1, 'ghost-delayed');
      return { id: 'ghost-delayed' };
    },
    dead: NO_RECORD,
    after: async (h) => expect(await h.admin.zcard(h.queueKey('delayed'))).toBe(0),
  },
  {
    what: 'an active-set member with no record and a lapsed lease',
    plant: async (h) => {
      await h.admin.zadd(h.queueKey('active'), 1, 'ghost-active');
      return { id: 'ghost-active' };
    },
    // A started task always has a record; one without is garbage (or evicted) and is kept for inspection.
    dead: /no record/,
    after: async (h) => {
      expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
      expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([]);
    },
  },
  {
    what: 'an active-set member whose record is a string, with a lapsed lease',
    plant: async (h) => {
      await h.admin.set(h.taskKey('ghost-string-active'), 'x');
      await h.admin.zadd(h.queueKey('active'), 1, 'ghost-string-active');
      return { id: 'ghost-string-active' };
    },
    dead: /not a hash/,
    after: async (h) => expect(await h.admin.zcard(h.queueKey('active'))).toBe(0),
  },
  {
    what: "300 empty '' wake-up markers",
    plant: async (h) => {
      await h.admin.lpush(h.queueKey('wait'), ...Array.from({ length: 300 }, () => ''));
      return { id: '' };
    },
    after: async (h) => {
      await waitFor(async () => (await h.admin.llen(h.queueKey('wait'))) === 0, { what: 'the markers to be skipped' });
      expect(await h.deadLetters()).toEqual([]);
    },
  },
  {
    what: 'a wait list of 500 ids with no record',
    plant: async (h) => {
      await h.admin.rpush(h.queueKey('wait'), ...Array.from({ length: 500 }, (_, i) => `ghost-${i}`));
      return { id: 'ghost-0' };
    },
    dead: NO_RECORD,
    after: async (h) => {
      await waitFor(async () => (await h.admin.llen(h.queueKey('dead'))) === 500, { what: '500 dead letters' });
      const dead = await h.deadLetters();
      expect(new Set(dead.map((e) => e.id))).toEqual(new Set(Array.from({ length: 500 }, (_, i) => `ghost-${i}`)));
      expect(dead.filter((e) => e.reason !== NO_RECORD)).toEqual([]);
      expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    },
  },
];

describe('garbage in Redis never stops a worker', () => {
  const fresh = useHarness('garbage');

  it(`the table has at least 20 cases (${garbageCases.length})`, () => {
    expect(garbageCases.length).toBeGreaterThanOrEqual(20);
  });

  it.each(garbageCases)('$what', async ({ plant, failure, dead, after }) => {
    const h = fresh();
    const d = h.dispatcher();
    const before = await redisNowMs(h.admin);
    const planted = await plant(h, d);
    const worker = h.worker({ services: [new HostileService()], leaseDuration: '1s', unknownTaskGrace: 0 });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    const failed: { id: string; name: string }[] = [];
    worker.on('failed', (e) => failed.push({ id: e.id, name: e.error.name }));
    await worker.start();

    if (failure) {
      const handle = d.result(planted.id);
      const err = await handle.get({ timeout: 10 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TaskFailedError);
      const tf = err as TaskFailedError;
      expect(tf.remoteName).toBe(failure.name);
      if (typeof failure.message === 'string') expect(tf.remoteMessage).toBe(failure.message);
      else expect(tf.remoteMessage).toMatch(failure.message);
      const info = await handle.info();
      expect(info.state).toBe('FAILURE');
      expect(info.attempts).toBe(failure.attempts);
      // A task the worker started (attempts 1) is reported as failed, and so is one whose name it
      // does not run (its start taken back); one refused at fetch never reached the worker.
      const reported = failure.attempts === 1 || failure.name === 'UnknownTaskError';
      expect(failed).toEqual(reported ? [{ id: planted.id, name: failure.name }] : []);
      // Its record expires like any ended task's.
      expect(await h.admin.pttl(h.taskKey(planted.id))).toBeGreaterThan(0);
    }
    if (dead) {
      const entry = await waitFor(async () => (await h.deadLetters()).find((e) => e.id === planted.id), {
        timeout: 5_000,
        what: `a dead letter for ${planted.id}`,
      });
      if (typeof dead === 'string') expect(entry.reason).toBe(dead);
      else expect(entry.reason).toMatch(dead);
      expect(entry.at).toBeGreaterThanOrEqual(before);
      expect(entry.at).toBeLessThanOrEqual(await redisNowMs(h.admin));
    }
    if (after) await after(h, planted);

    // The worker is neither crashed nor stalled: a good task runs at once.
    const good = await d.tasks(HostileService).add.delay(20, 22);
    expect(await good.get({ timeout: 10 })).toBe(42);
    expect(errors).toEqual([]);
    expect(worker.activeCount).toBe(0);
  });

  it('all of the garbage at once, between 30 good tasks: every good task runs once, every bad one is dead-lettered', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const hostile = d.tasks(HostileService);
    const good: api.TaskResult<number>[] = [];
    const expectedDead: string[] = [];
    const planted: string[] = [];
    let n = 0;
    for (const c of garbageCases) {
      // The cases that inspect the whole dead list or wait list, and the active-set ones (which
      // concern recovery, not the wait list), are covered one by one above.
      if (/500 ids|wake-up markers|active-set/.test(c.what)) continue;
      good.push(await hostile.add.delay(n, 1));
      const p = await c.plant(h, d);
      planted.push(p.id);
      if (c.dead) expectedDead.push(p.id);
      n++;
    }
    // A marker and a burst of ghosts in the middle of it.
    await h.admin.lpush(h.queueKey('wait'), '', '', '');
    await h.admin.lpush(h.queueKey('wait'), ...Array.from({ length: 100 }, (_, i) => `burst-${i}`));
    for (let i = 0; i < 10; i++) good.push(await hostile.add.delay(100 + i, 1));

    const worker = h.worker({ services: [new HostileService()], concurrency: 3, leaseDuration: '1s', unknownTaskGrace: 0 });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    const succeeded = new Map<string, number>();
    worker.on('succeeded', (e) => succeeded.set(e.id, (succeeded.get(e.id) ?? 0) + 1));
    await worker.start();

    const sums = await Promise.all(good.map((r) => r.get({ timeout: 20 })));
    expect(sums).toEqual([...Array.from({ length: n }, (_, i) => i + 1), ...Array.from({ length: 10 }, (_, i) => 101 + i)]);
    // Every good task, by id, succeeded exactly once. The event comes once the worker has read
    // Redis's answer to the call that stored the end, which may be after get() saw the result.
    await waitFor(() => good.every((r) => succeeded.has(r.id)), { timeout: 10_000, what: 'a succeeded event for every good task' });
    expect(Object.fromEntries(succeeded)).toEqual(Object.fromEntries(good.map((r) => [r.id, 1])));
    const dead = await waitFor(
      async () => {
        const list = await h.deadLetters();
        return list.length >= expectedDead.length + 100 ? list : undefined;
      },
      { what: 'every dead letter' },
    );
    expect(new Set(dead.map((e) => e.id))).toEqual(new Set([...expectedDead, ...Array.from({ length: 100 }, (_, i) => `burst-${i}`)]));
    expect(dead.length).toBe(expectedDead.length + 100);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
    expect(errors).toEqual([]);
    console.log(
      `[figures] ${planted.length} garbage tasks + 3 markers + 100 ghost ids among ${n + 10} good tasks: ` +
        `${succeeded.size} good ran once each, ${dead.length} dead letters, 0 worker errors`,
    );
  });

  it('garbage on the revoke channel does not disturb a running task', async () => {
    const h = fresh();
    const service = new HeldService();
    const worker = h.worker({ services: [service] });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    await worker.start();
    const d = h.dispatcher();
    const held = d.tasks(HeldService);
    const startedIds = new Set<string>();
    worker.on('started', (e) => startedIds.add(e.id));
    const handle = await held.held.delay();
    const witness = await held.untilRevoked.delay();
    await waitFor(() => startedIds.size === 2, { what: 'both tasks to start' });
    const channel = h.queueKey('revoke');
    const garbage = ['', ' ', 'garbage', 'nobody-runs-this 1', `${handle.id}x 1`, `x${handle.id} 1`, '\u0000\u0001', 'x'.repeat(10_000)];
    for (const message of garbage) expect(await h.admin.spublish(channel, message)).toBe(1);
    // A real revoke on the same channel after the garbage: once it has taken effect, the worker
    // has read every message before it.
    expect(await witness.revoke()).toBe('STARTED');
    await expect(witness.get({ timeout: 10 })).rejects.toMatchObject({ code: 'HEIMDALL_TASK_REVOKED' });
    expect(service.aborted).toEqual([]);
    service.gate.open();
    expect(await handle.get({ timeout: 10 })).toBe('done');
    expect(errors).toEqual([]);
  });

  it("a record replaced by garbage while its task runs: the worker reports it, drops the lease and carries on", async () => {
    const h = fresh();
    const service = new HeldService();
    const worker = h.worker({ services: [service, new HostileService()] });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    await worker.start();
    const d = h.dispatcher();
    const started = nextEvent(worker, 'started');
    const handle = await d.tasks(HeldService).held.delay();
    await started;
    await h.admin.del(h.taskKey(handle.id));
    await h.admin.set(h.taskKey(handle.id), 'overwritten');
    const reported = new Promise<Error>((resolve) => worker.once('error', resolve));
    service.gate.open();
    expect((await reported).message).toMatch(new RegExp(`task ${handle.id} \\(HeldService\\.held\\): this run is no longer the task's current run, so its end was not stored; its record is gone or unreadable`));
    expect(await reported).toMatchObject({ code: 'HEIMDALL_STALE_RUN', state: undefined });
    expect(await h.admin.zscore(h.queueKey('active'), handle.id)).toBeNull();
    expect(await h.admin.get(h.taskKey(handle.id))).toBe('overwritten');
    expect(await (await d.tasks(HostileService).add.delay(1, 1)).get({ timeout: 10 })).toBe(2);
    expect(errors).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------------------------
// 3. Queue structures of the wrong type: every fetch of that queue fails.

const wrongTypeCases = [
  { structure: 'wait list', suffix: 'wait', dispatchFails: true },
  { structure: 'delayed set', suffix: 'delayed', dispatchFails: false },
  { structure: 'active set', suffix: 'active', dispatchFails: false },
] as const;

describe('a queue structure of the wrong type', () => {
  const fresh = useHarness('wrongtype');

  it('baseline, nothing broken: a worker of queues [default, other] serves other while default is empty', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new HostileService(), new OtherQueueService()], queues: ['default', 'other'] });
    await worker.start();
    const d = h.dispatcher();
    expect(await (await d.tasks(OtherQueueService).ping.delay(1)).get({ timeout: 5 })).toBe('pong 1');
    expect(await (await d.tasks(HostileService).add.delay(1, 1)).get({ timeout: 10 })).toBe(2);
  });

  it.each(wrongTypeCases)(
    'the $structure as a string: errors are reported, the worker keeps serving its other queue, and resumes once repaired',
    async ({ suffix, dispatchFails }) => {
      const h = fresh();
      const key = h.queueKey(suffix);
      await h.admin.set(key, 'not a list or a zset');
      const worker = h.worker({ services: [new HostileService(), new OtherQueueService()], queues: ['default', 'other'] });
      const errors: Error[] = [];
      worker.on('error', (e) => errors.push(e));
      await worker.start();
      const d = h.dispatcher();

      // The broken queue reports (and backs off), more than once.
      await waitFor(() => errors.length >= 2, { what: 'two error events' });
      for (const e of errors) expect(e.message).toMatch(/WRONGTYPE Operation against a key holding the wrong kind of value/);

      // The other queue of the same worker is served.
      const pings = await Promise.all([1, 2, 3].map(async (n) => (await d.tasks(OtherQueueService).ping.delay(n)).get({ timeout: 5 })));
      expect(pings).toEqual(['pong 1', 'pong 2', 'pong 3']);

      // A dispatch to the broken queue: a clear Redis error when it needs the broken key.
      const adding = d.tasks(HostileService).add.delay(1, 2);
      if (dispatchFails) {
        await expect(adding).rejects.toThrow(/WRONGTYPE/);
        expect(await h.admin.get(key)).toBe('not a list or a zset');
      }

      // Repaired: the queue resumes by itself (the back-off is at most 5 s).
      await h.admin.del(key);
      const handle = dispatchFails ? await d.tasks(HostileService).add.delay(1, 2) : await adding;
      expect(await handle.get({ timeout: 15 })).toBe(3);
      const reported = errors.length;
      expect(await (await d.tasks(HostileService).add.delay(2, 2)).get({ timeout: 10 })).toBe(4);
      expect(errors.length).toBe(reported);
      const began = Date.now();
      await worker.close();
      console.log(`[figures] ${suffix} of the wrong type: ${reported} error events before repair; close() took ${Date.now() - began} ms`);
    },
  );
});
