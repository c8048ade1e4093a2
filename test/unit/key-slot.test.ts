/**
 * The slot-discipline checker's own arithmetic (test/slot-checker.ts): Redis Cluster's key
 * slot, and the parsing of MONITOR lines. Cross-checked against `cluster-key-slot`, the
 * implementation ioredis routes Cluster commands with, and against values CLUSTER KEYSLOT gives.
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { crc16, keySlot, kindOf, parseArgs } from '../slot-checker.js';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';

// ioredis's own dependency, without types of its own: (key: string | Buffer) => slot.
const clusterKeySlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string | Buffer) => number;

describe('keySlot', () => {
  it('CRC16/XMODEM of "123456789" is 0x31C3 (the check value of the Cluster spec)', () => {
    expect(crc16(Buffer.from('123456789'))).toBe(0x31c3);
  });

  it('gives the slots CLUSTER KEYSLOT gives', () => {
    // From a Redis 7.0 cluster (and the Cluster specification's examples).
    expect(keySlot('foo')).toBe(12182);
    expect(keySlot('bar')).toBe(5061);
    expect(keySlot('hello')).toBe(866);
    expect(keySlot('somekey')).toBe(11058);
    expect(keySlot('{user1000}.following')).toBe(keySlot('user1000'));
    expect(keySlot('{user1000}.followers')).toBe(keySlot('{user1000}.following'));
  });

  it('follows the hash-tag rule: the first {...} with something inside, else the whole key', () => {
    expect(keySlot('a{tag}b')).toBe(keySlot('tag'));
    expect(keySlot('{}tag')).toBe(crc16(Buffer.from('{}tag')) & 16383); // empty tag: whole key
    expect(keySlot('{}{tag}')).toBe(crc16(Buffer.from('{}{tag}')) & 16383); // only the first { counts
    expect(keySlot('x{a}{b}')).toBe(keySlot('a'));
    expect(keySlot('x{{a}}')).toBe(keySlot('{a')); // from the first { to the first } after it
    expect(keySlot('x{abc')).toBe(crc16(Buffer.from('x{abc')) & 16383); // no closing brace
  });

  it('agrees with cluster-key-slot on queue keys of every shape the tests use, and on random keys', () => {
    const names = ['default', 'a:b', 'reports.v2', 'émails', '队列', '🚀', 'x'.repeat(200)];
    for (const queue of names) {
      const k = new QueueKeys('heimdall', queue);
      for (const key of [k.wait, k.task('id-1'), k.lock('T.m', 'k'), k.rate('T.m', undefined), k.events]) {
        expect(keySlot(key), key).toBe(clusterKeySlot(key));
        expect(keySlot(key), key).toBe(keySlot(k.wait));
      }
    }
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
    for (let n = 0; n < 2000; n++) {
      const bytes = Buffer.from(Array.from({ length: rnd() % 24 }, () => '{}ab:é'.charCodeAt(rnd() % 6) & 0xff));
      expect(keySlot(bytes), bytes.toString('hex')).toBe(clusterKeySlot(bytes));
    }
  });
});

describe('the MONITOR line parser', () => {
  it('undoes Redis escapes, byte for byte, as UTF-8', () => {
    expect(parseArgs('"hset" "a:{q}:t:1" "f" "\\xc3\\xa9\\"x y"')).toEqual(['hset', 'a:{q}:t:1', 'f', 'é"x y']);
    expect(parseArgs('"a\\\\b" "\\n\\r\\t" "" "\\" \\""')).toEqual(['a\\b', '\n\r\t', '', '" "']);
    expect(parseArgs('"\\xf0\\x9f\\x9a\\x80"')).toEqual(['🚀']);
  });
});

describe('kindOf', () => {
  it('names a key by its KEY_NAMES suffix under the base, and a key elsewhere as outside', () => {
    const k = new QueueKeys('p', 'q');
    expect(kindOf(k.task('1'), k.base)).toBe('t:');
    expect(kindOf(k.lock('T.m', 'x'), k.base)).toBe('lock:');
    expect(kindOf(k.workerInfo, k.base)).toBe('worker-info');
    expect(kindOf(k.wait, k.base)).toBe('wait');
    expect(kindOf('p:{q}:nope', k.base)).toBe('other nope');
    expect(kindOf('p:{r}:wait', k.base)).toBe('outside p:{r}:wait');
  });
});
