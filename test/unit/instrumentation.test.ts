// The instrumentation seam without Redis: how hooks compose and detach, and that only the
// optional entries load their optional libraries.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { HookChain, type InstrumentationHooks, type RunOutcome, type SendInfo } from '../../src/core/instrumentation.js';
import type { TaskResult } from '../../src/core/producer/task-result.js';
import { producerContext, traceFields } from '../../src/otel/trace-context.js';
import { FIELDS } from '../../src/core/protocol/task-fields.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const INFO: SendInfo = { name: 'T.t', queue: 'default', id: 'id1' };
const RESULT = { id: 'id1', duplicate: false } as TaskResult<unknown>;

describe('HookChain', () => {
  it('has no send or run hook until one is attached, and none after it is detached', () => {
    const chain = new HookChain();
    expect(chain.send).toBeUndefined();
    expect(chain.run).toBeUndefined();
    const detach = chain.add({ send: (_i, send) => send(), run: (_i, run) => run(), recordFields: ['tp'] });
    expect(chain.send).toBeTypeOf('function');
    expect(chain.recordFields).toEqual(['tp']);
    detach();
    detach();
    expect(chain.send).toBeUndefined();
    expect(chain.run).toBeUndefined();
    expect(chain.recordFields).toEqual([]);
  });

  it('runs the first attached outermost, and hands the send the fields of every hook', async () => {
    const chain = new HookChain();
    const order: string[] = [];
    const hook = (label: string, fields: string[]): InstrumentationHooks => ({
      recordFields: ['c', label],
      send: async (_info, send) => {
        order.push(`${label} in`);
        const r = await send(fields);
        order.push(`${label} out`);
        return r;
      },
      run: async (_info, run) => {
        order.push(`${label} run`);
        return run();
      },
    });
    chain.add(hook('a', ['x', '1']));
    chain.add(hook('b', ['y', '2']));
    let sentFields: readonly string[] | undefined;
    await chain.send!(INFO, async (fields) => {
      sentFields = fields;
      return RESULT;
    });
    expect(sentFields).toEqual(['x', '1', 'y', '2']);
    const outcome: RunOutcome = { ok: true };
    expect(await chain.run!({ ...INFO, attempt: 1, record: {} }, async () => outcome)).toBe(outcome);
    expect(order).toEqual(['a in', 'b in', 'b out', 'a out', 'a run', 'b run']);
    expect(chain.recordFields).toEqual(['c', 'a', 'b']);
  });
});

describe('W3C trace context in the record', () => {
  it('writes tp (and ts) and reads them back; refuses what is not a traceparent', () => {
    const span = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: 1 };
    expect(traceFields(span)).toEqual([FIELDS.traceParent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01']);
    const read = producerContext('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'vendor=x');
    expect(read).toMatchObject({ ...span, isRemote: true });
    expect(read?.traceState?.get('vendor')).toBe('x');
    expect(traceFields(read!)).toEqual([FIELDS.traceParent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', FIELDS.traceState, 'vendor=x']);
    for (const bad of [undefined, '', 'garbage', 'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', '00-00000000000000000000000000000000-b7ad6b7169203331-01']) {
      expect(producerContext(bad, undefined), String(bad)).toBeUndefined();
    }
    expect(traceFields({ traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 })).toBeUndefined();
  });
});

describe('optional peer dependencies', () => {
  it('only src/prometheus imports prom-client and only src/otel imports @opentelemetry', () => {
    const files = (dir: string): string[] =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
    const offenders: string[] = [];
    for (const file of files(join(ROOT, 'src'))) {
      const rel = relative(ROOT, file);
      const text = readFileSync(file, 'utf8');
      if (/from 'prom-client'/.test(text) && !rel.startsWith('src/prometheus/')) offenders.push(`${rel}: prom-client`);
      if (/from '@opentelemetry\//.test(text) && !rel.startsWith('src/otel/')) offenders.push(`${rel}: @opentelemetry`);
    }
    expect(offenders).toEqual([]);
    // And the entries do use them (the check would pass vacuously otherwise).
    expect(readFileSync(join(ROOT, 'src/prometheus/heimdall-metrics.ts'), 'utf8')).toMatch(/from 'prom-client'/);
    expect(readFileSync(join(ROOT, 'src/otel/heimdall-tracing.ts'), 'utf8')).toMatch(/from '@opentelemetry\/api'/);
  });
});
