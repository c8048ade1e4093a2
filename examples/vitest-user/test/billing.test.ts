import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { createTestApp, type TestApp } from 'heimdall-tasks/testing';
import { BillingService, type Ledger } from '../src/billing-service.js';

describe('BillingService tasks', () => {
  let app: TestApp;
  let recorded: [number, number][];

  beforeEach(async () => {
    recorded = [];
    const ledger: Ledger = {
      record: async (customerId, cents) => {
        recorded.push([customerId, cents]);
        return `inv-${customerId}-${recorded.length}`;
      },
    };
    // A dispatcher and a worker on a fresh key prefix, on the Redis of the globalSetup.
    app = await createTestApp({ connection: inject('redisUrl'), services: [new BillingService(ledger)] });
  });

  afterEach(async () => {
    // Closes both and deletes every key of this test's prefix.
    await app.close();
  });

  it('invoices once per customer while one is queued, and runs the reminders queue too', async () => {
    const billing = app.tasks(BillingService);
    const first = await billing.invoice.delay(7, 1999);
    const again = await billing.invoice.delay(7, 1999);
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
