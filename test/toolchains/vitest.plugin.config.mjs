// vite 8 with standard decorators and heimdall-tasks/vite's plugin (docs/toolchains.md).
import { defineConfig } from 'vitest/config';
import { decorators } from 'heimdall-tasks/vite';

export default defineConfig({ plugins: [decorators()], test: { include: ['service/names.test.ts'], globals: true, pool: 'forks' } });
