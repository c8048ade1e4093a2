import { Module } from '@nestjs/common';
import { HeimdallModule } from 'heimdall-tasks/nestjs';
import { ReportController } from './report.controller.js';
import { ReportService, ReportStore } from './report.service.js';

const connection = process.env.REDIS_URL ?? 'redis://localhost:6379';
const prefix = process.env.HEIMDALL_PREFIX ?? 'heimdall';

/** The web tier: dispatches and reports state, runs no task (`worker: false`). */
@Module({
  imports: [HeimdallModule.forRoot({ connection, prefix, worker: false })],
  controllers: [ReportController],
})
export class WebModule {}

/** The worker process: runs ReportService's tasks on the container's instance, with its ReportStore. */
@Module({
  imports: [HeimdallModule.forRoot({ connection, prefix, worker: { concurrency: 5 } })],
  providers: [ReportStore, ReportService],
})
export class WorkerModule {}
