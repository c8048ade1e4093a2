// The worker entry: no HTTP server, the worker starts with the application context and closes
// gracefully on SIGTERM or SIGINT.
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { WorkerModule } from './app.module.js';

const app = await NestFactory.createApplicationContext(WorkerModule, { logger: ['error', 'warn'] });
app.enableShutdownHooks();
console.log('worker ready');
