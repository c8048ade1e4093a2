import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { createTestApp, type TestAppBase } from 'heimdall-tasks/testing';
import { BillingService, type Ledger } from '../src/billing-service.js';

// The same tests on a real Redis (the globalSetup's) and in inline mode (no Redis: tasks run in
// this process, with unique locks and rate limits kept in memory).
describe.each([
  { mode: 'redis', inline: false },
  { mode: 'inline', inline: true },
])('BillingService tasks ($mode)', ({ inline }) => {
  let app: TestAppBase;
  let recorded: [number, number][];

  beforeEach(async () => {
    recorded = [];
    const ledger: Ledger = {
      record: async (customerId, cents) => {
        recorded.push([customerId, cents]);
        return `inv-${customerId}-${recorded.length}`;
      },
    };
    // A dispatcher and a worker on a fresh key prefix, on the Redis of the globalSetup (or inline).
    app = await createTestApp({ connection: inject('redisUrl'), services: [new BillingService(ledger)], inline });
  });

  afterEach(async () => {
    // Closes both and deletes every key of this test's prefix (inline: lets running tasks end).
    await app.close();
  });

  it('invoices once per customer while one is queued, and runs the reminders queue too', async () => {
    const billing = app.tasks(BillingService);
    // Sent together, so the second finds the first's lock in either mode (inline, a task that is
    // sent alone may already be done when delay() resolves).
    const [first, again] = await Promise.all([billing.invoice.delay(7, 1999), billing.invoice.delay(7, 1999)]);
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(first.id);
    const declined = await billing.invoice.delay(8, 0);
    await billing.remind.delay(7);

    const { ran } = await app.drain();

    expect(ran.map((t) => `${t.name} ${t.state}`).sort()).toEqual([
      'billing.invoice FAILURE',
      'billing.invoice SUCCESS',
      'billing.reminder SUCCESS',
    ]);
    expect(ran.find((t) => t.id === first.id)?.result).toEqual({ invoiceId: 'inv-7-1', attempt: 1 });
    expect(ran.find((t) => t.id === declined.id)?.error?.name).toBe('CardDeclinedError');
    expect(recorded).toEqual([[7, 1999]]);
    expect(await first.get({ timeout: 5 })).toEqual({ invoiceId: 'inv-7-1', attempt: 1 });
  });

  it('gets a fresh prefix in every test', async () => {
    const billing = app.tasks(BillingService);
    // The lock of customer 7 from the test before is gone with its prefix.
    expect((await billing.invoice.delay(7, 500)).duplicate).toBe(false);
    expect((await app.drain()).ran).toHaveLength(1);
    expect(recorded).toEqual([[7, 500]]);
  });
});
