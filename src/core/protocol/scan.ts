import { once } from 'node:events';
import type { Cluster } from 'ioredis';
import type { RedisClient } from './connection.js';

/** `text` with the characters SCAN's MATCH reads as a pattern escaped. */
export function escapeGlob(text: string): string {
  return text.replace(/[\\*?[\]]/g, (c) => `\\${c}`);
}

/**
 * Calls `each` with every batch of keys matching `pattern` (SCAN ... COUNT 1000), on every master
 * of a Cluster (once the client knows them all: a Cluster client that is not ready yet knows
 * none, or only its seed). `each` returning false stops the walk.
 */
export async function scanKeys(
  client: RedisClient,
  pattern: string,
  each: (node: RedisClient, keys: string[]) => Promise<boolean | void> | boolean | void,
): Promise<void> {
  let nodes: RedisClient[] = [client];
  if ((client as { isCluster?: unknown }).isCluster === true) {
    const cluster = client as Cluster;
    if (cluster.status !== 'ready') await Promise.race([once(cluster, 'ready'), once(cluster, 'end').then(() => Promise.reject(new Error('the Cluster connection ended')))]);
    nodes = cluster.nodes('master');
  }
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      if ((await each(node, keys)) === false) return;
      cursor = next;
    } while (cursor !== '0');
  }
}
