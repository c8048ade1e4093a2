// vite 8 with the config of docs/toolchains.md for standard decorators.
import { mergeConfig } from 'vitest/config';
import fixed from './vite8-decorators.mjs';

export default mergeConfig(fixed, { test: { include: ['service/names.test.ts'], globals: true, pool: 'forks' } });
