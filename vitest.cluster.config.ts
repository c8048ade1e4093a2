// `npm run test:cluster`: the integration suite against a local Redis Cluster of three masters
// with a replica each (test/global-setup.ts starts it; Harness connects through ioredis Cluster
// clients), and the failover tests. Files that can only mean one server are left out, each for
// the reason given beside it.
import { redisProjectOnly } from './vitest.config.js';

process.env.HEIMDALL_TEST_TOPOLOGY = 'cluster';

/** What cannot run against the shared Cluster, and why. */
export const SINGLE_SERVER_ONLY: Record<string, string> = {
  'test/integration/acl-tls.test.ts': 'servers of its own with ACL users and TLS',
  'test/integration/acl-cluster.test.ts': 'a Cluster of its own with ACL users on every node (run by npm test)',
  // The CLI reaches a Cluster through --url redis+cluster://... (deployment-urls.test.ts, in npm
  // test); these tests hand it the harness's one-server URL.
  'test/integration/cli.test.ts': 'gives the CLI the one-server URL of the harness',
  'test/integration/cli-terminal.test.ts': 'gives the CLI the one-server URL of the harness',
  'test/integration/cli-worker.test.ts': 'gives the CLI the one-server URL of the harness',
  'test/integration/cluster-masters.test.ts': 'makes a Cluster of its own (run by npm test)',
  'test/integration/deployments.test.ts': 'starts deployments of its own (run by npm test)',
  'test/integration/deployment-urls.test.ts': 'starts deployments of its own (run by npm test)',
  'test/integration/reshard.test.ts': 'makes a Cluster of its own (run by npm test)',
  'test/integration/reshard-records-late.test.ts': 'makes a Cluster of its own (run by npm test)',
  'test/integration/failover-sentinel.test.ts': 'the Sentinel failover (npm run test:sentinel)',
  'test/integration/out-of-memory.test.ts': 'CONFIG SET maxmemory on a private server',
  'test/integration/redis-restart.test.ts': 'restarts a private server',
  'test/integration/run-token.test.ts': 'a stalling TCP proxy in front of one server',
  'test/integration/scripts.test.ts': 'MONITOR and INFO commandstats counts on a private server',
  'test/integration/seams.test.ts': 'private servers, MONITOR, a one-node Cluster of its own',
  'test/integration/stranded-ids.test.ts': 'refusals injected with ACL users of one server',
  'test/integration/testing-kit.test.ts': 'startRedis() and its private servers are the subject',
};

export default redisProjectOnly('cluster', { include: ['test/integration/**/*.test.ts'], exclude: Object.keys(SINGLE_SERVER_ONLY) });
