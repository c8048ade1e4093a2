import type { Cluster, Redis } from 'ioredis';

/** Deletes every key under `prefix`, so an example leaves the Redis it used as it found it. */
export async function deleteKeys(client: Redis | Cluster, prefix: string): Promise<void> {
  // A Cluster's keys live on its masters: each is scanned on its own.
  const nodes = client.isCluster ? (client as Cluster).nodes('master') : [client as Redis];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 500);
      for (const key of keys) await node.del(key);
      cursor = next;
    } while (cursor !== '0');
  }
}
