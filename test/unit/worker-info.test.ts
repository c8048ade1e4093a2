// decodeWorkerInfo: what workers() makes of a registry entry, damaged ones included.
import { describe, expect, it } from 'vitest';
import { decodeWorkerInfo } from '../../src/core/protocol/worker-info.js';

describe('decodeWorkerInfo', () => {
  it('reads an entry, with dates and defaults', () => {
    const info = decodeWorkerInfo(JSON.stringify({ id: 'w1', host: 'h', pid: 7, version: '0.1.0', queues: ['default'], concurrency: 4, startedAt: 1000, heartbeatAt: 2000, running: [{ id: 't', name: 'S.m', queue: 'default', startedAt: 1500 }], succeeded: 3, failed: 1, retried: 2 }), 5000, 'w1');
    expect(info).toEqual({ id: 'w1', host: 'h', pid: 7, version: '0.1.0', queues: ['default'], concurrency: 4, startedAt: new Date(1000), heartbeatAt: new Date(2000), running: [{ id: 't', name: 'S.m', queue: 'default', startedAt: new Date(1500) }], succeeded: 3, failed: 1, retried: 2, validUntil: new Date(5000) });
  });

  it('refuses what is not an entry of that member: not JSON, no id, another id', () => {
    expect(decodeWorkerInfo('not json', 1)).toBeUndefined();
    expect(decodeWorkerInfo('{"host":"h"}', 1)).toBeUndefined();
    expect(decodeWorkerInfo('{"id":"other"}', 1, 'w1')).toBeUndefined();
    expect(decodeWorkerInfo(null, 1)).toBeUndefined();
    expect(decodeWorkerInfo('{"id":"w1","running":[null,{"id":5},{"id":"t"}],"queues":[1,"q"]}', 1, 'w1')).toMatchObject({ running: [{ id: 't' }], queues: ['q'] });
  });
});
