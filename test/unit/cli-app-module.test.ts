// How `heimdall worker --app` reads an app module (src/cli/app-module.ts), with the import
// replaced: the export conventions, and the message for a .ts module this Node cannot run.
import { describe, expect, it } from 'vitest';
import { loadWorkerApp } from '../../src/cli/app-module.js';
import { ROOT } from '../helpers.js';

const TS_APP = 'test/fixtures/cli/worker-app.ts';
const load = (exported: unknown, path = TS_APP) => loadWorkerApp(path, ROOT, async () => exported);

describe('loadWorkerApp', () => {
  it('takes the default export, a function (sync or async) returning the options, or a named export worker (which wins)', async () => {
    const options = { queues: ['q'] };
    expect(await load({ default: options })).toBe(options);
    expect(await load({ default: () => options })).toBe(options);
    expect(await load({ default: async () => options })).toBe(options);
    expect(await load({ default: { other: 1 }, worker: options })).toBe(options);
    // A CommonJS module's `module.exports = { worker }` arrives as its default.
    expect(await load({ default: { worker: () => options } }, 'test/fixtures/cli/hold.mjs')).toBe(options);
  });

  it('imports a CommonJS module whose module.exports is the function', async () => {
    expect(await loadWorkerApp('test/fixtures/cli/options-app.cjs', ROOT)).toEqual({ queues: ['from-cjs'], concurrency: 2 });
  });

  it('says what to export when the module exports no configuration', async () => {
    await expect(load({ something: 1 })).rejects.toThrow(/exports no worker configuration: 'export default \{ services: \[\.\.\.\] \}'.*got nothing$/);
    await expect(load({ default: 42 })).rejects.toThrow(/got number$/);
  });

  it('tells the user to run through tsx when Node cannot load a .ts module', async () => {
    const refuse = (code: string | undefined, make = () => new Error('Unknown file extension ".ts"')) =>
      loadWorkerApp(TS_APP, ROOT, async () => {
        throw Object.assign(make(), code === undefined ? {} : { code });
      });
    for (const attempt of [refuse('ERR_UNKNOWN_FILE_EXTENSION'), refuse(undefined, () => new SyntaxError('Invalid or unexpected token'))]) {
      await expect(attempt).rejects.toThrow(/this Node does not run TypeScript .* Run the command through tsx: 'node --import tsx node_modules\/\.bin\/heimdall worker --app test\/fixtures\/cli\/worker-app\.ts'/);
    }
    // A .ts module that loads and then throws is reported as itself.
    await expect(refuse(undefined, () => new TypeError('db is undefined'))).rejects.toThrow(/^loading test\/fixtures\/cli\/worker-app\.ts failed: TypeError: db is undefined/);
  });

  it('refuses other extensions as a usage error', async () => {
    await expect(load({}, 'app.json')).rejects.toThrow(/--app takes a \.js, \.mjs, \.cjs or \(through tsx\) \.ts module/);
  });
});
