// Conflict modes in inline mode (issue 13, point 5): the same scenario runs on a createTestApp()
// with a real Redis and worker and on an inline one, and the two transcripts (what each dispatch
// met, states, revoke reasons, results, the conflict events of the queue) must be equal.
import { describe, expect, it } from 'vitest';
import { currentTask, Task, type DispatchConflict, type QueueEvent, type TaskResult } from 'heimdall-tasks';
import { createTestApp, type TestAppBase } from 'heimdall-tasks/testing';
import { openTestConnection, waitFor } from '../helpers.js';

let release: (() => void) | undefined;
const ran: number[] = [];

class ConflictParity {
  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async replacing(key: string, n: number): Promise<number> {
    ran.push(n);
    if (n === 0) await new Promise<void>((resolve) => (release = resolve));
    return n;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'keepLast' })
  async latest(key: string, n: number): Promise<number> {
    ran.push(n);
    if (n === 0) await new Promise<void>((resolve) => (release = resolve));
    return n * currentTask().attempt;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: { debounce: { wait: '150ms', maxWait: '10s' } } })
  async debounced(key: string, n: number): Promise<number> {
    ran.push(n);
    return n;
  }
}

async function releaseRunning(): Promise<void> {
  const open = await waitFor(() => release, { what: 'the held task to start' });
  release = undefined;
  open();
}

/** Runs the scenario and writes down what a test could look at, with ids replaced by names. */
async function transcript(app: TestAppBase): Promise<string[]> {
  const out: string[] = [];
  const names = new Map<string, string>();
  const name = (r: TaskResult<unknown>, label: string): TaskResult<unknown> => {
    names.set(r.id, label);
    return r;
  };
  const label = (id: string | undefined): string => (id === undefined ? '-' : (names.get(id) ?? `?${id}`));
  const met = (c: DispatchConflict | undefined): string => {
    if (c === undefined) return 'none';
    if (c.outcome === 'duplicate') return `duplicate of ${label(c.holder)}`;
    if (c.outcome === 'replaced') return `replaced ${label(c.replaced)}`;
    return `waiting behind ${label(c.holder)}${c.replaced ? `, replaced ${label(c.replaced)}` : ''}`;
  };
  const state = async (r: TaskResult<unknown>): Promise<string> => {
    const info = await r.info();
    return `${label(r.id)} ${info.state}${info.revokeReason ? ` ${info.revokeReason}` : ''}`;
  };
  const since = Date.now() - 1000;
  const svc = app.tasks(ConflictParity);

  // replace: a queued holder is replaced; a running one is returned.
  const r1 = name(await svc.replacing.applyAsync(['r', 1], { countdown: 60 }), 'r1');
  const r2 = name(await svc.replacing.delay('r', 0), 'r2');
  out.push(`replace queued: ${met(r1.conflict)} / ${met(r2.conflict)}`);
  await waitFor(async () => (await r2.status()) === 'STARTED', { what: 'r2 to start' });
  const r3 = await svc.replacing.delay('r', 3);
  out.push(`replace running: ${met(r3.conflict)} same=${r3.id === r2.id}`);
  await releaseRunning();
  out.push(`replace results: ${await r2.get({ timeout: 10 })}; ${await state(r1)}; ${await state(r2)}`);

  // keepLast: one running, later calls replace the pending one, the last runs after it.
  const k0 = name(await svc.latest.delay('k', 0), 'k0');
  await waitFor(async () => (await k0.status()) === 'STARTED', { what: 'k0 to start' });
  const pending: TaskResult<number>[] = [];
  for (let n = 1; n <= 3; n++) pending.push(name(await svc.latest.delay('k', n), `k${n}`) as TaskResult<number>);
  out.push(`keepLast: ${pending.map((p) => met(p.conflict)).join(' / ')}`);
  await releaseRunning();
  out.push(`keepLast results: ${await k0.get({ timeout: 10 })}, ${await pending[2]!.get({ timeout: 10 })}`);
  out.push(`keepLast states: ${(await Promise.all([k0, ...pending].map(state))).join('; ')}`);

  // debounce: three quick calls make one run, with the last arguments.
  const d = [] as TaskResult<number>[];
  for (let n = 1; n <= 3; n++) d.push(name(await svc.debounced.delay('d', n), `d${n}`) as TaskResult<number>);
  out.push(`debounce: ${d.map((x) => met(x.conflict)).join(' / ')}`);
  out.push(`debounce result: ${await d[2]!.get({ timeout: 10 })}; ${(await Promise.all(d.map(state))).join('; ')}`);
  out.push(`ran: ${ran.join(',')}`);

  // The conflict events of the queue.
  const it = app.dispatcher.events({ since: new Date(since) });
  const seen: QueueEvent[] = [];
  const deadline = setTimeout(() => void it.return?.(), 5_000);
  try {
    for await (const e of it) {
      if (e.type === 'replaced' || e.type === 'waiting' || e.type === 'deduplicated') seen.push(e);
      if (seen.length >= 8) break;
    }
  } finally {
    clearTimeout(deadline);
  }
  for (const e of seen) {
    if (e.type === 'replaced') out.push(`event replaced ${label(e.id)} by ${label(e.by)} (${e.reason})`);
    else if (e.type === 'waiting') out.push(`event waiting ${label(e.id)} behind ${label(e.holder)}`);
    else if (e.type === 'deduplicated') out.push(`event deduplicated ${label(e.id)}`);
  }
  return out;
}

describe('inline mode follows the conflict modes as Redis does', () => {
  it('the same conflict scenario gives the same transcript with a real Redis and worker and inline', { timeout: 60_000 }, async () => {
    const results: string[][] = [];
    for (const inline of [false, true]) {
      ran.length = 0;
      release = undefined;
      const redis = openTestConnection();
      const app = await createTestApp({ services: [new ConflictParity()], connection: redis.connection, inline });
      try {
        results.push(await transcript(app));
      } finally {
        await app.close();
        await redis.close();
      }
    }
    const [withRedis, inline] = results;
    if (process.env.SHOW_TRANSCRIPT) console.log(withRedis!.join('\n'));
    expect(withRedis).toContain('keepLast: waiting behind k0 / waiting behind k0, replaced k1 / waiting behind k0, replaced k2');
    expect(withRedis!.filter((l) => l.startsWith('event '))).toHaveLength(8);
    expect(inline).toEqual(withRedis);
  });
});
