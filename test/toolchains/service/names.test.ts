// Entry point of the vitest runs. No import of 'vitest': this file is run by the vitest of
// ../vite7 and of .. alike, so it uses the globals (`test`).
import { report } from './probe.js';

declare const test: (name: string, fn: () => void) => void;

test('writes the registered task names', () => {
  report();
});
