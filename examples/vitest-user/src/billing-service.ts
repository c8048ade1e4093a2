import { Task, currentTask } from 'heimdall-tasks';

/** Where invoices are recorded: a real app would inject a database here. */
export interface Ledger {
  record(customerId: number, cents: number): Promise<string>;
}

export class CardDeclinedError extends Error {
  override name = 'CardDeclinedError';
}

export class BillingService {
  constructor(private readonly ledger: Ledger) {}

  /** One invoice per customer at a time. */
  @Task({ name: 'billing.invoice', unique: true, key: ([customerId]) => String(customerId) })
  async invoice(customerId: number, cents: number): Promise<{ invoiceId: string; attempt: number }> {
    if (cents <= 0) throw new CardDeclinedError(`nothing to charge for customer ${customerId}`);
    const invoiceId = await this.ledger.record(customerId, cents);
    return { invoiceId, attempt: currentTask().attempt };
  }

  @Task({ name: 'billing.reminder', queue: 'emails' })
  async remind(customerId: number): Promise<string> {
    return `reminded customer ${customerId}`;
  }
}
