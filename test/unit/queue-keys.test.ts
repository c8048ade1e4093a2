import { describe, expect, it } from 'vitest';
import { ConfigError } from 'heimdall-tasks';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, hashArgs, QueueKeys, validateName } from '../../src/core/protocol/queue-keys.js';
import { argsToJson } from '../../src/core/task/serialization.js';

/** The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key. */
function hashTagOf(key: string): string {
  const open = key.indexOf('{');
  if (open === -1) return key;
  const close = key.indexOf('}', open + 1);
  if (close === -1 || close === open + 1) return key;
  return key.slice(open + 1, close);
}

function everyKey(k: QueueKeys, taskName: string, key: string): string[] {
  return [k.wait, k.delayed, k.active, k.task('ID1'), k.lock(taskName, key), k.rate(taskName, undefined), k.rate(taskName, key), k.done('ID1')];
}

describe('QueueKeys', () => {
  it('lays out every key under <prefix>:{<queue>}:', () => {
    const k = new QueueKeys('heimdall', 'default');
    expect(k.prefix).toBe('heimdall');
    expect(k.queue).toBe('default');
    expect(k.base).toBe('heimdall:{default}:');
    expect(k.wait).toBe('heimdall:{default}:wait');
    expect(k.delayed).toBe('heimdall:{default}:delayed');
    expect(k.active).toBe('heimdall:{default}:active');
    expect(k.task('abc123')).toBe('heimdall:{default}:t:abc123');
    expect(k.lock('ReportService.generateReport', '0f3a')).toBe('heimdall:{default}:lock:ReportService.generateReport:0f3a');
    expect(k.rate('Svc.download', undefined)).toBe('heimdall:{default}:rate:Svc.download');
    expect(k.rate('Svc.download', 'customer_10')).toBe('heimdall:{default}:rate:Svc.download:customer_10');
    expect(k.done('abc123')).toBe('heimdall:{default}:done:abc123');
  });

  it('uses the given prefix and queue', () => {
    const k = new QueueKeys('myapp', 'emails');
    expect(k.wait).toBe('myapp:{emails}:wait');
    expect(k.task('x')).toBe('myapp:{emails}:t:x');
  });

  it.each([
    ['heimdall', 'default', 'Svc.m', 'k'],
    ['app', 'emails-high', 'Mailer.send', 'user:42'],
    // Braces in a task name or key come after the queue's tag, so Redis still hashes on the queue.
    ['app', 'q1', 'Odd{name}', '{weird}key'],
  ])('puts every key of %s/%s in the hash slot of {queue}', (prefix, queue, taskName, key) => {
    const k = new QueueKeys(prefix, queue);
    for (const redisKey of everyKey(k, taskName, key)) {
      expect(redisKey.startsWith(`${prefix}:{${queue}}:`), redisKey).toBe(true);
      expect(hashTagOf(redisKey), redisKey).toBe(queue);
    }
  });

  it('gives different queues different tags and distinct keys', () => {
    const a = everyKey(new QueueKeys('p', 'a'), 'T.m', 'k');
    const b = everyKey(new QueueKeys('p', 'b'), 'T.m', 'k');
    expect(new Set([...a, ...b]).size).toBe(a.length + b.length);
  });

  it('keeps the rate bucket of a keyed and an unkeyed limit apart', () => {
    const k = new QueueKeys('p', 'q');
    expect(k.rate('T.m', 'x')).not.toBe(k.rate('T.m', undefined));
  });

  it('has the documented defaults', () => {
    expect(DEFAULT_PREFIX).toBe('heimdall');
    expect(DEFAULT_QUEUE).toBe('default');
  });
});

describe('validateName', () => {
  it.each(['default', 'emails-high', 'a:b', 'q.1_x', 'ünïcødé', 'x'.repeat(200)])('accepts %j and returns it', (name) => {
    expect(validateName(name, 'queue')).toBe(name);
  });

  it.each<[string, unknown]>([
    ['empty', ''],
    ['an opening brace', 'a{b'],
    ['a closing brace', 'a}b'],
    ['a hash tag', '{q}'],
    ['a space', 'my queue'],
    ['a tab', 'a\tb'],
    ['a newline', 'a\nb'],
    ['a NUL', 'a\u0000b'],
    ['DEL', 'a\u007fb'],
    ['a non-breaking space', 'a\u00a0b'],
    ['more than 200 characters', 'x'.repeat(201)],
    ['a number', 42],
    ['undefined', undefined],
    ['null', null],
  ])('rejects %s with a ConfigError naming the setting and the value', (_label, value) => {
    let caught: unknown;
    try {
      validateName(value, 'queue');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toBe(
      `queue must be a non-empty string of at most 200 characters without braces, spaces or control characters, got ${JSON.stringify(value)}`,
    );
  });
});

describe('hashArgs', () => {
  it('is the SHA-1 hex of the arguments JSON, the same on every call and in every process', () => {
    // Fixed values (from `printf '[42]' | sha1sum`): a lock key must not change between versions or processes.
    expect(hashArgs('[42]')).toBe('54c4411897d03f96b76a576023da0e47c3cbc468');
    expect(hashArgs('[]')).toBe('97d170e1550eee4afc0af065b78cda302a97674c');
    expect(hashArgs(argsToJson([42]))).toBe(hashArgs('[42]'));
    expect(hashArgs(argsToJson([42, undefined]))).toBe(hashArgs('[42]'));
  });

  it('tells different arguments apart', () => {
    expect(hashArgs(argsToJson([42]))).not.toBe(hashArgs(argsToJson([43])));
    expect(hashArgs(argsToJson(['42']))).not.toBe(hashArgs(argsToJson([42])));
    expect(hashArgs(argsToJson([1, 2]))).not.toBe(hashArgs(argsToJson([[1, 2]])));
  });
});
