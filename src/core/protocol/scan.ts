import type { Cluster } from 'ioredis';
import type { RedisClient } from './connection.js';

/** `text` with the characters SCAN's MATCH reads as a pattern escaped. */
export function escapeGlob(text: string): string {
  return text.replace(/[\\*?[\]]/g, (c) => `\\${c}`);
}

/** Calls `each` with every batch of keys matching `pattern` (SCAN), on every master of a Cluster. */
export async function scanKeys(client: RedisClient, pattern: string, each: (node: RedisClient, keys: string[]) => Promise<void> | void): Promise<void> {
  const nodes = (client as { isCluster?: unknown }).isCluster === true ? (client as Cluster).nodes('master') : [client];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      await each(node, keys);
      cursor = next;
    } while (cursor !== '0');
  }
}
