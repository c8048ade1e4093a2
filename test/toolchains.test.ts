/**
 * The toolchain matrix (test/toolchains/): the same service, compiled by tsc 7 and 5, esbuild
 * (file by file and bundled), swc, tsx and vitest on vite 7 and on vite 8, each in legacy and in
 * standard (TC39) decorators, registers the same task names. vite 8 with standard decorators
 * fails unless configured as docs/toolchains.md says, and its fix is tested word for word.
 *
 * The toolchains are devDependencies of test/toolchains and test/toolchains/vite7, not of the
 * library. .ci/run installs them; a checkout where they are missing (or older than their lock
 * files) gets them here, two `npm ci` of about 10 s, before the first leg runs.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error: a plain .mjs module of the matrix, without types.
import * as matrix from './toolchains/run.mjs';

interface LegResult {
  failed?: boolean;
  output?: string;
  mode?: string;
  names?: string[];
  atDefinition?: string[];
  classNames?: string[];
}
const { EXPECTED_NAMES, INSTALL, LEGS, installed, runLeg } = matrix as {
  EXPECTED_NAMES: string[];
  INSTALL: string;
  LEGS: string[];
  installed: () => boolean;
  runLeg: (leg: string) => Promise<LegResult>;
};

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const UNFIXED_VITE8 = 'vitest-vite8 tc39';

beforeAll(() => {
  if (installed()) return;
  try {
    for (const prefix of ['test/toolchains', 'test/toolchains/vite7']) {
      execFileSync('npm', ['ci', '--prefix', prefix, '--no-audit', '--no-fund'], { cwd: ROOT, stdio: 'pipe' });
    }
  } catch (err) {
    throw new Error(`the toolchain matrix is not installed and installing it failed; run: ${INSTALL}\n${String(err)}`);
  }
}, 180_000);

describe('toolchain matrix: one service, the same task names', () => {
  it('runs vite 7 and vite 8', () => {
    const major = (dir: string) => JSON.parse(readFileSync(new URL(`./toolchains/${dir}node_modules/vite/package.json`, import.meta.url), 'utf8')).version.split('.')[0];
    expect([major('vite7/'), major('')]).toEqual(['7', '8']);
  });

  it.each(LEGS.filter((leg) => leg !== UNFIXED_VITE8))('%s', async (leg) => {
    const r = await runLeg(leg);
    expect(r.failed, r.output).toBeUndefined();
    // The leg really compiled in the mode it names (a tsconfig it did not see would change it).
    expect(r.mode).toBe(leg.endsWith('legacy') ? 'legacy' : 'tc39');
    expect(r.names).toEqual(EXPECTED_NAMES);
    // Legacy decorators register at class definition; standard ones when the class is first used.
    expect(r.atDefinition).toEqual(leg.endsWith('legacy') ? EXPECTED_NAMES : []);
  });

  it(`${UNFIXED_VITE8}: Oxc leaves standard decorators in the code and Node cannot parse them`, async () => {
    // When this fails, vite lowers decorators itself: update docs/toolchains.md and this leg.
    const r = await runLeg(UNFIXED_VITE8);
    expect(r.failed).toBe(true);
    expect(r.output).toContain('SyntaxError: Invalid or unexpected token');
  });

  it("docs/toolchains.md gives vite 8's config as the matrix runs it", () => {
    const file = readFileSync(new URL('./toolchains/vite8-decorators.mjs', import.meta.url), 'utf8');
    const snippet = /\/\/ --- docs\/toolchains\.md: vite 8 ---\n([\s\S]*?)\/\/ --- end ---/.exec(file)?.[1];
    expect(snippet).toBeTruthy();
    const docs = readFileSync(new URL('../docs/toolchains.md', import.meta.url), 'utf8');
    expect(docs).toContain(snippet!);
  });
});
