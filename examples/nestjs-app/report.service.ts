import { Injectable } from '@nestjs/common';
import { Task } from 'heimdall-tasks';

/** Where finished reports go; a stand-in for object storage, injected into ReportService. */
@Injectable()
export class ReportStore {
  readonly baseUrl = process.env.REPORTS_URL ?? 'https://reports.example.com';

  async save(customerId: number, rows: number): Promise<string> {
    return `${this.baseUrl}/customer-${customerId}-${rows}-rows.pdf`;
  }
}

@Injectable()
export class ReportService {
  constructor(private readonly store: ReportStore) {}

  /** One report per customer at a time: a second request while one is queued or running gets that one. */
  @Task({ unique: true, uniqueTimeout: '10m' })
  async generateReport(customerId: number): Promise<{ url: string }> {
    const rows = customerId * 100;
    return { url: await this.store.save(customerId, rows) };
  }
}
