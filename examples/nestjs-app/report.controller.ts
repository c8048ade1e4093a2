import { Controller, Get, Param, ParseIntPipe, Post } from '@nestjs/common';
import { Dispatcher, InjectTasks, type TaskProxy } from 'heimdall-tasks/nestjs';
import { ReportService } from './report.service.js';

@Controller('reports')
export class ReportController {
  constructor(
    @InjectTasks(ReportService) private readonly reports: TaskProxy<ReportService>,
    private readonly dispatcher: Dispatcher,
  ) {}

  @Post(':customerId')
  async start(@Param('customerId', ParseIntPipe) customerId: number): Promise<{ id: string; duplicate: boolean }> {
    const handle = await this.reports.generateReport.delay(customerId);
    return { id: handle.id, duplicate: handle.duplicate };
  }

  @Get(':id')
  async state(@Param('id') id: string): Promise<{ state: string; result: unknown; error: string | null }> {
    const info = await this.dispatcher.result(id).info();
    return { state: info.state, result: info.result ?? null, error: info.error ? `${info.error.name}: ${info.error.message}` : null };
  }
}
