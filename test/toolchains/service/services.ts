// The service every toolchain of test/toolchains compiles, in each decorator mode it supports.
// Each class is a case where a toolchain could change the runtime class name.
import { Task } from 'heimdall-tasks';

/** Records how a decorator is called: 3 arguments under legacy decorators, 2 under TC39. */
export const decoratorArity: number[] = [];
function Probe(...args: unknown[]): void {
  decoratorArity.push(args.length);
}

export class ReportService {
  @Probe
  @Task()
  async generate(customerId: number): Promise<number> {
    return customerId;
  }
}

/** A static field that holds an instance: esbuild renames the class to `_BillingService`. */
export class BillingService {
  static readonly shared = new BillingService();

  @Task({ unique: true })
  async invoice(orderId: number): Promise<string> {
    return `invoice ${orderId}`;
  }
}

/** Only a static method refers to the class. */
export class Ledger {
  static open(): Ledger {
    return new Ledger();
  }

  @Task()
  async post(amount: number): Promise<number> {
    return amount;
  }
}

// A class inside a namespace: its name is the class's own, without the namespace.
// eslint-disable-next-line @typescript-eslint/no-namespace
export namespace Accounts {
  export class Payouts {
    static readonly all: Payouts[] = [];

    @Task()
    async pay(): Promise<void> {
      Payouts.all.push(this);
    }
  }
}

/** Named with a leading underscore by its author, and referring to itself. */
export class _Internal {
  static readonly instance = new _Internal();

  @Task()
  async sweep(): Promise<void> {}
}

export class Named {
  static readonly default = new Named();

  @Task({ name: 'named.explicit' })
  async run(): Promise<void> {}
}

export const serviceClasses = [ReportService, BillingService, Ledger, Accounts.Payouts, _Internal, Named];
