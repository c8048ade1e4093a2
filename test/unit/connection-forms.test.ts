import { describe, expect, it } from 'vitest';
import type { Cluster, Redis } from 'ioredis';
import { ConfigError } from 'heimdall-tasks';
import { createClient, planOfUrl } from '../../src/core/protocol/connection.js';

// The connection forms users write (docs/deployments.md), read without connecting: a client is
// made with lazyConnect and its options are checked, then it is dropped.
function made(connection: Parameters<typeof createClient>[0]): Redis | Cluster {
  return createClient(connection, { lazyConnect: true, connectionName: 'heimdall:t:commands' });
}

/** The nodes a Cluster was made with (private in ioredis's types). */
function startupNodes(c: Cluster): unknown {
  return (c as unknown as { startupNodes: unknown }).startupNodes;
}

describe('connection forms', () => {
  it('reads redis+cluster:// as a Cluster from its nodes, with credentials for every node', () => {
    const c = made('redis+cluster://app:s%3Acret@127.0.0.1:7000,127.0.0.1:7001,[::1]:7002') as Cluster;
    expect(c.isCluster).toBe(true);
    expect(startupNodes(c)).toEqual([
      { host: '127.0.0.1', port: 7000 },
      { host: '127.0.0.1', port: 7001 },
      { host: '::1', port: 7002 },
    ]);
    expect(c.options.redisOptions).toMatchObject({ username: 'app', password: 's:cret', connectionName: 'heimdall:t:commands' });
    c.disconnect();
  });

  it('keeps a password with colons whole, as redis:// does', () => {
    const c = made('redis+cluster://u:pa:ss@127.0.0.1:7000') as Cluster;
    expect(c.options.redisOptions).toMatchObject({ username: 'u', password: 'pa:ss' });
    c.disconnect();
    const r = made('redis+sentinel://:only-pass@127.0.0.1:26379/m') as Redis;
    expect(r.options.password).toBe('only-pass');
    expect(r.options.username).toBeFalsy();
    r.disconnect();
  });

  it('reads rediss+cluster:// with TLS for the nodes', () => {
    const c = made('rediss+cluster://10.0.0.1:6380') as Cluster;
    expect(c.options.redisOptions?.tls).toEqual({});
    c.disconnect();
  });

  it('reads { cluster, clusterOptions }, node URLs and host/port alike', () => {
    const c = made({
      cluster: ['redis://10.0.0.1:7000', '10.0.0.2:7001', { host: '10.0.0.3', port: 7002 }],
      clusterOptions: { redisOptions: { password: 'x' }, scaleReads: 'master' },
    }) as Cluster;
    expect(startupNodes(c)).toEqual([
      { host: '10.0.0.1', port: 7000 },
      { host: '10.0.0.2', port: 7001 },
      { host: '10.0.0.3', port: 7002 },
    ]);
    expect(c.options.redisOptions).toMatchObject({ password: 'x', connectionName: 'heimdall:t:commands' });
    c.disconnect();
  });

  it('reads redis+sentinel:// as Sentinel options naming the master, and follows promotions', () => {
    const r = made('redis+sentinel://u:p@127.0.0.1:26379,127.0.0.1:26380/mymaster?db=2&sentinelPassword=sp') as Redis;
    expect(r.options).toMatchObject({
      sentinels: [
        { host: '127.0.0.1', port: 26379 },
        { host: '127.0.0.1', port: 26380 },
      ],
      name: 'mymaster',
      username: 'u',
      password: 'p',
      db: 2,
      sentinelPassword: 'sp',
      failoverDetector: true,
    });
    r.disconnect();
  });

  it("lets a connection's own settings win over the caller's options (a blocking connection waits through outages), but not the name the caller gave", () => {
    const blocking = { lazyConnect: true, maxRetriesPerRequest: null, connectionName: 'heimdall:t:blocking' };
    const r = createClient({ host: '127.0.0.1', maxRetriesPerRequest: 1, connectionName: 'mine' }, blocking) as Redis;
    expect(r.options).toMatchObject({ maxRetriesPerRequest: null, connectionName: 'mine' });
    r.disconnect();
    const c = createClient({ cluster: ['127.0.0.1:7000'], clusterOptions: { redisOptions: { maxRetriesPerRequest: 1 } } }, blocking) as Cluster;
    expect(c.options.redisOptions).toMatchObject({ maxRetriesPerRequest: null, connectionName: 'heimdall:t:blocking' });
    c.disconnect();
  });

  it('refuses what is not a connection, saying what is', () => {
    expect(() => planOfUrl('redis+sentinel://127.0.0.1:26379')).toThrow(/names no master/);
    expect(() => planOfUrl('redis+cluster:///x')).toThrow(/names no host/);
    expect(() => planOfUrl('http://127.0.0.1:6379')).toThrow(ConfigError);
    expect(() => made({ cluster: [] })).toThrow(/at least one node/);
    expect(() => made({ cluster: [42 as unknown as string] })).toThrow(/42/);
    expect(() => made({ cluster: ['127.0.0.1:7000'], clusterOptions: { keyPrefix: 'app:' } })).toThrow(/keyPrefix/);
  });
});
