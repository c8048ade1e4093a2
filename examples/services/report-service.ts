// The services of the quickstart, written as an application would write them: plain classes
// whose async methods carry @Task. Nothing here knows about Redis; the Worker runs them.
import { Task } from 'heimdall-tasks';

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What a payment gateway might throw. Its name, message and stack travel back to the caller. */
export class PaymentDeclinedError extends Error {
  override name = 'PaymentDeclinedError';
}

function callGateway(customerId: number, amountCents: number): never {
  throw new PaymentDeclinedError(`card of customer ${customerId} was declined for ${(amountCents / 100).toFixed(2)} EUR`);
}

export class ReportService {
  /** Expensive: one report per customer at a time, however often the button is pressed. */
  @Task({ unique: true, uniqueTimeout: '1h' })
  async generateReport(customerId: number): Promise<{ url: string; pages: number }> {
    await pause(300); // pretend to render a PDF
    return { url: `https://reports.example.com/customer-${customerId}.pdf`, pages: 12 };
  }

  /** The remote API allows 2 calls per second, counted across every worker together. */
  @Task({ rateLimit: [2, 1] })
  async downloadFromAmazon(customerId: number): Promise<number> {
    await pause(20);
    return customerId;
  }

  /** Fails, to show what a caller learns about a failure. */
  @Task()
  async chargeCard(customerId: number, amountCents: number): Promise<{ receipt: string }> {
    await pause(10);
    callGateway(customerId, amountCents);
  }
}
