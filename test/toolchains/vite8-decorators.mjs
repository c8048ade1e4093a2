// The vitest config that docs/toolchains.md gives for vite 8 with standard (TC39) decorators,
// word for word from there (test/toolchains.test.ts checks that they agree).
// --- docs/toolchains.md: vite 8 ---
import { defineConfig } from 'vitest/config';
import { transform as esbuildTransform } from 'esbuild';

export default defineConfig({
  // Oxc, vite 8's TypeScript transform, leaves standard decorators in the code, and Node cannot
  // parse them: compile TypeScript with esbuild instead (npm i -D esbuild).
  oxc: false,
  plugins: [
    {
      name: 'esbuild-decorators',
      enforce: 'pre',
      async transform(code, id) {
        if (!/\.[cm]?tsx?($|\?)/.test(id)) return null;
        const loader = /\.[cm]?tsx($|\?)/.test(id) ? 'tsx' : 'ts';
        const out = await esbuildTransform(code, { loader, sourcefile: id, target: 'es2022', sourcemap: true });
        return { code: out.code, map: out.map };
      },
    },
  ],
  // With a globalSetup (docs/testing.md), it goes here as usual:
  // test: { globalSetup: ['test/global-setup.ts'] },
});
// --- end ---
