import { ReplyError } from 'ioredis';
import { describe, expect, it, vi } from 'vitest';
import {
  AlreadyQueuedError,
  ConfigError,
  HeimdallError,
  LeaseLostError,
  MalformedTaskError,
  NonRetryableError,
  NotATaskError,
  PartialDispatchError,
  PayloadTooLargeError,
  RedisOutOfMemoryError,
  RedisRefusedError,
  RedisUnavailableError,
  RunawayTaskError,
  SerializationError,
  StaleRunError,
  TaskFailedError,
  TaskRevokedError,
  TimeLimitExceededError,
  TimeoutError,
  UnexpectedReplyError,
  UnknownTaskError,
  WorkerFaultError,
  WorkerShutdownError,
  type TaskResult,
} from 'heimdall-tasks';
import { fromRedis, isBetweenMasters, outOfMemory } from '../../src/core/errors.js';

/** What Redis answers a write it refuses while over maxmemory under noeviction. */
const OOM_TEXT = "OOM command not allowed when used memory > 'maxmemory'. script: 41f6c1cbe2cca4f8777c0a4870ec7620b471b146, on @user_script:26.";
/** A stand-in handle: PartialDispatchError only holds handles. */
const handle = (id: string): TaskResult<number> => ({ id }) as unknown as TaskResult<number>;

const BRAND = Symbol.for('heimdall-tasks.error');

const cases = [
  { cls: ConfigError, code: 'HEIMDALL_CONFIG', make: () => new ConfigError('bad option') },
  { cls: SerializationError, code: 'HEIMDALL_SERIALIZATION', make: () => new SerializationError('args[0]', 'is NaN') },
  { cls: AlreadyQueuedError, code: 'HEIMDALL_ALREADY_QUEUED', make: () => new AlreadyQueuedError('S.m', 'ID1', 12.34) },
  {
    cls: TaskFailedError,
    code: 'HEIMDALL_TASK_FAILED',
    make: () => new TaskFailedError('ID2', { name: 'TypeError', message: 'boom', traceback: 'TypeError: boom\n    at x' }),
  },
  { cls: TaskRevokedError, code: 'HEIMDALL_TASK_REVOKED', make: () => new TaskRevokedError('ID3', 'duplicate') },
  { cls: TimeoutError, code: 'HEIMDALL_TIMEOUT', make: () => new TimeoutError('too slow') },
  { cls: NotATaskError, code: 'HEIMDALL_NOT_A_TASK', make: () => new NotATaskError('S.plain') },
  {
    cls: RedisOutOfMemoryError,
    code: 'HEIMDALL_REDIS_OOM',
    make: () => new RedisOutOfMemoryError('sending 50 tasks', { cause: new ReplyError(OOM_TEXT) }),
  },
  {
    cls: PartialDispatchError,
    code: 'HEIMDALL_PARTIAL_DISPATCH',
    make: () => new PartialDispatchError('S.m', [handle('A'), undefined], [undefined, new ConfigError('no')]),
  },
  { cls: NonRetryableError, code: 'HEIMDALL_NON_RETRYABLE', make: () => new NonRetryableError('give up') },
  { cls: TimeLimitExceededError, code: 'HEIMDALL_TIME_LIMIT', make: () => new TimeLimitExceededError('ID4', 1000) },
  { cls: PayloadTooLargeError, code: 'HEIMDALL_PAYLOAD_TOO_LARGE', make: () => new PayloadTooLargeError('S.m', 10, 5) },
  { cls: RedisUnavailableError, code: 'HEIMDALL_REDIS_UNAVAILABLE', make: () => new RedisUnavailableError('sending S.m') },
  { cls: StaleRunError, code: 'HEIMDALL_STALE_RUN', make: () => new StaleRunError('ID5', 'S.m', 'PENDING', 'end') },
  { cls: MalformedTaskError, code: 'HEIMDALL_MALFORMED_TASK', make: () => new MalformedTaskError('bad args') },
  { cls: UnknownTaskError, code: 'HEIMDALL_UNKNOWN_TASK', make: () => new UnknownTaskError('no task named X') },
  { cls: LeaseLostError, code: 'HEIMDALL_LEASE_LOST', make: () => new LeaseLostError('ID6') },
  { cls: WorkerShutdownError, code: 'HEIMDALL_WORKER_SHUTDOWN', make: () => new WorkerShutdownError('W1') },
  { cls: RedisRefusedError, code: 'HEIMDALL_REDIS_REFUSED', make: () => new RedisRefusedError('NOPERM') },
  { cls: UnexpectedReplyError, code: 'HEIMDALL_UNEXPECTED_REPLY', make: () => new UnexpectedReplyError('what?') },
  { cls: WorkerFaultError, code: 'HEIMDALL_WORKER_FAULT', make: () => new WorkerFaultError('a listener threw') },
  { cls: RunawayTaskError, code: 'HEIMDALL_RUNAWAY_TASK', make: () => new RunawayTaskError('ID7', 'S.m') },
] as const;

describe('error classes', () => {
  it.each(cases)('$code: stable code, class name, instanceof', ({ cls, code, make }) => {
    const err = make();
    expect(err.code).toBe(code);
    expect(cls.CODE).toBe(code);
    expect(err.name).toBe(cls.name);
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(HeimdallError);
    expect(err).toBeInstanceOf(Error);
    expect(err.stack).toContain(cls.name);
    for (const other of cases) {
      if (other.cls !== cls) expect(err instanceof other.cls, `${code} instanceof ${other.cls.name}`).toBe(false);
    }
  });

  it('has one code per class', () => {
    expect(new Set(cases.map((c) => c.code)).size).toBe(cases.length);
  });

  it('keeps the brand non-enumerable', () => {
    const err = new ConfigError('x');
    expect(Object.prototype.propertyIsEnumerable.call(err, BRAND)).toBe(false);
    expect((err as unknown as Record<symbol, unknown>)[BRAND]).toBe('HEIMDALL_CONFIG');
  });

  it('carries the fields of each kind', () => {
    const queued = new AlreadyQueuedError('ReportService.generateReport', 'ID1', 12.34);
    expect(queued.likelyCulprit).toBe('ID1');
    expect(queued.expiresIn).toBe(12.34);
    expect(queued.message).toBe('ReportService.generateReport is already queued or running as task ID1; its lock lapses in 12.3 s');

    const failed = new TaskFailedError('ID2', { name: 'TypeError', message: 'boom', traceback: 'TypeError: boom\n    at x' });
    expect(failed.taskId).toBe('ID2');
    expect(failed.remoteName).toBe('TypeError');
    expect(failed.remoteMessage).toBe('boom');
    expect(failed.traceback).toBe('TypeError: boom\n    at x');
    expect(failed.message).toBe('task ID2 failed: TypeError: boom');

    const revoked = new TaskRevokedError('ID3', 'duplicate');
    expect(revoked.taskId).toBe('ID3');
    expect(revoked.reason).toBe('duplicate');
    expect(revoked.message).toBe('task ID3 was revoked (duplicate)');

    const ser = new SerializationError('args[0].when', 'is a Date');
    expect(ser.path).toBe('args[0].when');
    expect(ser.message.startsWith('args[0].when is a Date; ')).toBe(true);

    expect(new NotATaskError('S.plain').message).toBe('S.plain is not a task: decorate the method with @Task()');
  });

  it('RedisOutOfMemoryError says what was refused, that nothing of it was written, and what to do; Redis\'s reply is its cause', () => {
    const reply = new ReplyError(OOM_TEXT);
    const err = new RedisOutOfMemoryError('sending ReportService.generateReport', { cause: reply });
    expect(err.message).toBe(
      'sending ReportService.generateReport: Redis is out of memory (used memory is over maxmemory) and refused to write, ' +
        'so nothing of this call was written; free memory in Redis (delete keys you do not need, shorten resultExpires) ' +
        'or raise its maxmemory, then try again',
    );
    expect(err.cause).toBe(reply);
  });

  it('outOfMemory turns only Redis\'s OOM replies into RedisOutOfMemoryError', () => {
    for (const text of [OOM_TEXT, "OOM allow-oom flag is not set on the script, can not run it when used memory > 'maxmemory'"]) {
      const reply = new ReplyError(text);
      const err = outOfMemory(reply, 'the finish script');
      expect(err).toBeInstanceOf(RedisOutOfMemoryError);
      expect((err as RedisOutOfMemoryError).message.startsWith('the finish script: Redis is out of memory')).toBe(true);
      expect((err as RedisOutOfMemoryError).cause).toBe(reply);
    }
    // Another reply, a task's own error with the same words, and a non-error pass through as they are.
    const others: unknown[] = [new ReplyError('WRONGTYPE Operation against a key holding the wrong kind of value'), new Error(OOM_TEXT), OOM_TEXT];
    for (const other of others) expect(outOfMemory(other, 'x')).toBe(other);
  });

  it('PartialDispatchError holds a handle or an error per entry, the counts, and names the first entry not sent', () => {
    const duplicate = new AlreadyQueuedError('S.m', 'HOLDER', 12);
    const oom = new RedisOutOfMemoryError('sending 2 tasks', { cause: new ReplyError(OOM_TEXT) });
    const results = [handle('A'), undefined, handle('C'), undefined];
    const errors = [undefined, duplicate, undefined, oom];
    const err = new PartialDispatchError<number>('S.m', results, errors);
    expect(err.results).toBe(results);
    expect(err.errors).toBe(errors);
    expect(err.sent).toBe(2);
    expect(err.failed).toBe(2);
    expect(err.message).toBe(
      'delayMany of S.m: 2 of 4 tasks were sent and 2 were not; the first not sent, argsList[1], failed with ' +
        `AlreadyQueuedError: ${duplicate.message}. ` +
        "The error's results hold the handles of the tasks sent, its errors the error of each entry not sent",
    );
    const one = new PartialDispatchError<number>('S.m', [undefined, handle('B')], ['a string reason', undefined]);
    expect([one.sent, one.failed]).toEqual([1, 1]);
    expect(one.message.startsWith('delayMany of S.m: 1 of 2 tasks were sent and 1 was not; the first not sent, argsList[0], failed with a string reason.')).toBe(true);
  });

  it('HeimdallError takes a cause', () => {
    const cause = new Error('root');
    const err = new HeimdallError('HEIMDALL_CUSTOM', 'wrapped', { cause });
    expect(err.cause).toBe(cause);
    expect(err.code).toBe('HEIMDALL_CUSTOM');
    expect(err).toBeInstanceOf(HeimdallError);
    expect(err instanceof ConfigError).toBe(false);
  });
});

describe("instanceof an app's own subclasses", () => {
  class AppError extends HeimdallError {
    constructor(message: string) {
      super('APP_ERROR', message);
    }
  }
  class AppConfigError extends ConfigError {}
  class CodedAppError extends HeimdallError {
    static readonly CODE = 'APP_CODED';
    constructor() {
      super(CodedAppError.CODE, 'coded');
    }
  }

  it('an app subclass of HeimdallError is an instance of itself and of HeimdallError, not of the library classes', () => {
    const err = new AppError('mine');
    expect(err instanceof AppError).toBe(true);
    expect(err instanceof HeimdallError).toBe(true);
    expect(err instanceof ConfigError).toBe(false);
    expect(new CodedAppError() instanceof CodedAppError).toBe(true);
    expect(new AppError('x') instanceof CodedAppError).toBe(false);
  });

  it('a subclass of a library class matches its own instances, and a plain instance of the library class is not one of it', () => {
    expect(new AppConfigError('x') instanceof AppConfigError).toBe(true);
    expect(new AppConfigError('x') instanceof ConfigError).toBe(true);
    expect(new ConfigError('x') instanceof AppConfigError).toBe(false);
    // A branded error from another copy of the package is a ConfigError, not the app's subclass.
    expect({ [BRAND]: 'HEIMDALL_CONFIG' } instanceof AppConfigError).toBe(false);
  });
});

describe('instanceof across two copies of the package', () => {
  it('answers from the brand: an object branded with a code is an instance of that class', () => {
    // What an error thrown by another copy (the CJS build, another version) looks like here.
    const foreign = Object.assign(new Error('from the other copy'), { [BRAND]: 'HEIMDALL_ALREADY_QUEUED' });
    expect(foreign instanceof AlreadyQueuedError).toBe(true);
    expect(foreign instanceof HeimdallError).toBe(true);
    expect(foreign instanceof ConfigError).toBe(false);

    const bare = { [BRAND]: 'HEIMDALL_TIMEOUT' };
    expect(bare instanceof TimeoutError).toBe(true);
    expect(bare instanceof HeimdallError).toBe(true);
  });

  it('HeimdallError matches every branded error, whatever its code', () => {
    for (const { code } of cases) expect({ [BRAND]: code } instanceof HeimdallError).toBe(true);
    expect({ [BRAND]: 'HEIMDALL_FROM_A_LATER_VERSION' } instanceof HeimdallError).toBe(true);
  });

  it('does not match unbranded or wrongly branded values', () => {
    for (const value of [new Error('x'), { code: 'HEIMDALL_CONFIG' }, { [BRAND]: 42 }, { [Symbol('heimdall-tasks.error')]: 'HEIMDALL_CONFIG' }, null, undefined, 'HEIMDALL_CONFIG']) {
      expect(value instanceof HeimdallError).toBe(false);
      expect(value instanceof ConfigError).toBe(false);
    }
  });

  it('holds for a real second copy of the errors module', async () => {
    vi.resetModules();
    const copy = await import('../../src/core/errors.js');
    vi.resetModules();
    expect(copy.ConfigError).not.toBe(ConfigError);

    const theirs = new copy.ConfigError('x');
    expect(theirs).toBeInstanceOf(ConfigError);
    expect(theirs).toBeInstanceOf(HeimdallError);
    expect(theirs instanceof TimeoutError).toBe(false);

    const ours = new SerializationError('args[0]', 'is NaN');
    expect(ours).toBeInstanceOf(copy.SerializationError);
    expect(ours).toBeInstanceOf(copy.HeimdallError);
    expect(ours instanceof copy.ConfigError).toBe(false);
  });
});

describe('fromRedis', () => {
  it('reads a Redis Cluster between masters as unavailable, not refused', () => {
    // What ioredis's Cluster rejects with while a shard's master is down or being replaced.
    for (const message of [
      'Too many Cluster redirections. Last error: ReplyError: MOVED 8965 127.0.0.1:35451',
      'Too many Cluster redirections. Last error: Error: Connection is closed.',
    ]) {
      expect(fromRedis(new Error(message), 'sending Slow.work')).toBeInstanceOf(RedisUnavailableError);
    }
    for (const message of [
      'CLUSTERDOWN The cluster is down',
      'TRYAGAIN Multiple keys request during rehashing of slot',
      'MASTERDOWN Link with MASTER is down',
      "READONLY You can't write against a read only replica.",
      'ERR Script attempted to access a non local key in a cluster node script: 3f2a, on @user_script:140.',
    ]) {
      const err = fromRedis(new ReplyError(message), 'sending Slow.work');
      expect(err).toBeInstanceOf(RedisUnavailableError);
      expect((err as RedisUnavailableError).cause).toBeInstanceOf(ReplyError);
    }
    // Refusals stay refusals.
    expect(fromRedis(new ReplyError('NOPERM this user has no permissions'), 'x')).toBeInstanceOf(RedisRefusedError);
    expect(fromRedis(new ReplyError('MOVED 1 127.0.0.1:1'), 'x')).toBeInstanceOf(RedisRefusedError);
  });

  it('sends again, within failoverTimeout, only what Redis refused between masters', () => {
    expect(isBetweenMasters(new ReplyError('TRYAGAIN Multiple keys request during rehashing of slot'), false)).toBe(true);
    expect(isBetweenMasters(new ReplyError("READONLY You can't write against a read only replica."), false)).toBe(true);
    // A lost node connection is a failover on a Cluster; on one server it is the client closing.
    expect(isBetweenMasters(new Error('Connection is closed.'), true)).toBe(true);
    expect(isBetweenMasters(new Error('Connection is closed.'), false)).toBe(false);
    expect(isBetweenMasters(new ReplyError('NOPERM this user has no permissions'), true)).toBe(false);
    expect(isBetweenMasters(new ReplyError('OOM command not allowed when used memory > maxmemory'), true)).toBe(false);
    expect(isBetweenMasters('TRYAGAIN', true)).toBe(false);
  });
});
