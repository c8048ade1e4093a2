// The web entry: `POST /reports/:customerId` starts a report, `GET /reports/:id` gives its state.
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { WebModule } from './app.module.js';

const app = await NestFactory.create(WebModule, { logger: ['error', 'warn'] });
app.enableShutdownHooks();
await app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
console.log(`listening on http://127.0.0.1:${String((app.getHttpServer() as { address(): { port: number } }).address().port)}`);
