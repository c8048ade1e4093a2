// The commands the worker writes itself (EncodedCommand: EVALSHA, BLMOVE) is byte for byte what ioredis's own
// command writes for the same script call, and keeps what ioredis reads from a command: its
// arguments (numbers as text) and, for a Cluster, its keys and slot.
import { Command } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { EncodedCommand, evalshaArgs } from '../../src/core/protocol/script-runner.js';

function ioredisBytes(sha: string, keys: readonly string[], args: readonly (string | number)[]): Buffer {
  const written: unknown = new Command('evalsha', [sha, keys.length, ...keys, ...args]).toWritable(undefined as never);
  return Buffer.isBuffer(written) ? written : Buffer.from(written as string);
}

const SHA = 'a'.repeat(40);

describe('EncodedCommand', () => {
  const cases: [string, string[], (string | number)[]][] = [
    ['no keys, no arguments', [], []],
    ['keys and plain arguments', ['p:{q}:wait', 'p:{q}:active'], ['p:{q}', 'worker-1', 30000, 0, -2, 1.5]],
    ['empty strings and text of every width', ['p:{q}:t:é'], ['', 'ü', '€uro', '😀 emoji', 'x'.repeat(5000), '{"a":"ß"}']],
    ['many items (two-digit counts and lengths)', Array.from({ length: 12 }, (_, i) => `p:{q}:t:${i}`), Array.from({ length: 120 }, (_, i) => (i % 3 === 0 ? i * 1000 : `v${'y'.repeat(i)}`))],
  ];
  for (const [what, keys, args] of cases) {
    it(`writes what ioredis writes: ${what}`, () => {
      const mine = new EncodedCommand('evalsha', evalshaArgs(SHA, keys, args), undefined).toWritable();
      expect(Buffer.isBuffer(mine)).toBe(true);
      expect(mine.equals(ioredisBytes(SHA, keys, args))).toBe(true);
    });
  }

  it('writes what ioredis writes: BLMOVE, and keeps its blocking timeout', () => {
    const args = ['p:{q}:wait', 'p:{q}:wait', 'RIGHT', 'RIGHT', '5'];
    const mine = new EncodedCommand('blmove', args, undefined);
    expect(mine.toWritable().equals(Buffer.from(new Command('blmove', args).toWritable(undefined as never) as string))).toBe(true);
    expect(mine.extractBlockingTimeout()).toBe(new Command('blmove', args).extractBlockingTimeout());
  });

  it('keeps the arguments, keys and slot ioredis reads from a command', () => {
    const keys = ['p:{q}:wait', 'p:{q}:active'];
    const cmd = new EncodedCommand('evalsha', evalshaArgs(SHA, keys, ['x', 7]), undefined);
    expect(cmd.name).toBe('evalsha');
    expect(cmd.args).toEqual([SHA, '2', ...keys, 'x', '7']);
    expect(cmd.getKeys()).toEqual(keys);
    expect(cmd.getSlot()).toBe(new Command('evalsha', [SHA, 2, ...keys, 'x', 7]).getSlot());
  });
});
