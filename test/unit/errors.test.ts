import { describe, expect, it, vi } from 'vitest';
import {
  AlreadyQueuedError,
  ConfigError,
  HeimdallError,
  NotATaskError,
  SerializationError,
  TaskFailedError,
  TaskRevokedError,
  TimeoutError,
} from 'heimdall-tasks';

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

  it('HeimdallError takes a cause', () => {
    const cause = new Error('root');
    const err = new HeimdallError('HEIMDALL_CUSTOM', 'wrapped', { cause });
    expect(err.cause).toBe(cause);
    expect(err.code).toBe('HEIMDALL_CUSTOM');
    expect(err).toBeInstanceOf(HeimdallError);
    expect(err instanceof ConfigError).toBe(false);
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
