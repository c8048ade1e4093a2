// `npm run test:sentinel`: a subset of the integration suite through ioredis Sentinel options
// (`{ sentinels, name }`, the master found by asking three sentinels; test/global-setup.ts starts
// a master, a replica and the sentinels), and the Sentinel failover test. A Sentinel setup is one
// master to its clients, so the whole suite would repeat `npm test`; the subset covers every
// connection the library opens (commands, blocking fetches, Pub/Sub of results, revokes and
// pings, the events reader, the Inspector) and the main task paths.
import { redisProjectOnly } from './vitest.config.js';

process.env.HEIMDALL_TEST_TOPOLOGY = 'sentinel';

export const SENTINEL_FILES = [
  'test/integration/smoke.test.ts',
  'test/integration/typed-proxy.test.ts',
  'test/integration/results.test.ts',
  'test/integration/unique.test.ts',
  'test/integration/delays.test.ts',
  'test/integration/retries.test.ts',
  'test/integration/events.test.ts',
  'test/integration/inspector.test.ts',
  'test/integration/worker-registry.test.ts',
  'test/integration/failover-sentinel.test.ts',
];

export default redisProjectOnly('sentinel', { include: SENTINEL_FILES });
