/**
 * A task name that differs from a registered one only by leading underscores (a producer built by
 * a tool that renamed the class, as esbuild renames a self-referencing class to `_Class`) ends
 * UnknownTaskError with a message that says so and how to fix it. Other unknown names get no hint.
 */
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { useHarness, waitFor } from '../helpers.js';

class HintInvoices {
  static readonly shared = new HintInvoices();

  @Task()
  async issue(): Promise<void> {}
}

describe('the UnknownTaskError of a renamed class', () => {
  const fresh = useHarness('renamed-hint');

  it("names the registered twin and the fix; an unrelated name gets no hint", async () => {
    const h = fresh();
    const worker = h.worker({ services: [HintInvoices.shared], unknownTaskGrace: 0 });
    await worker.start();
    const dispatcher = h.dispatcher();
    const renamed = await dispatcher.send('_HintInvoices.issue', []);
    const unrelated = await dispatcher.send('HintNobody.issue', []);
    for (const r of [renamed, unrelated]) {
      await waitFor(async () => (await r.status()) === 'FAILURE', { timeout: 10_000, what: `task ${r.id} to end FAILURE` });
    }
    const [a, b] = await Promise.all([renamed.info(), unrelated.info()]);
    expect(a.error?.name).toBe('UnknownTaskError');
    expect(a.error?.message).toContain("no task named '_HintInvoices.issue'");
    expect(a.error?.message).toContain(
      "This worker runs 'HintInvoices.issue', which differs only by leading underscores: a build tool renamed the class",
    );
    expect(a.error?.message).toContain("@Task({ name: 'HintInvoices.issue' })");
    expect(b.error?.name).toBe('UnknownTaskError');
    expect(b.error?.message).toContain("no task named 'HintNobody.issue'");
    expect(b.error?.message).not.toContain('leading underscores');
  });
});
