// The documentation's TypeScript compiles, and its links lead somewhere.
//
// Code blocks. Every ```ts and ```typescript block of README.md and docs/*.md is typechecked
// with tsc as a user's code in this repo would be: the repo's tsconfig.json (strict), imports of
// 'heimdall-tasks' resolved to src/index.ts through its `paths`, once under legacy decorators
// (experimentalDecorators, as tsconfig.json sets) and once under standard TC39 decorators, the
// two modes @Task supports. The rule for blocks:
//   - A block is a module of its own: it imports what it uses and declares what it needs.
//   - A block whose first line is `// (continues the example above)` continues the block before
//     it on the same page: it is compiled together with the blocks before it, back to the
//     nearest block that does not start with that line.
//   - A block opened with ```ts nocheck is not compiled; say next to it why it cannot be.
//   - A block opened with ```ts legacy is compiled under legacy decorators only: NestJS code
//     (parameter decorators, which standard decorators do not have). A block continuing it is too.
// Blocks are written to files under .tmp/ (ignored by git, inside tsconfig.json's rootDir) and
// checked by one tsc run per decorator mode; each error is reported at its page and line. A
// canary file with a deliberate type error proves that a broken block would fail the test.
//
// Links. Every relative link and reference definition of those pages must name a file that
// exists, and an `#anchor` on a Markdown page must name one of its headings (GitHub's slugs).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CONTINUES = '// (continues the example above)';
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

const pages = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

interface Fence {
  page: string;
  /** 1-based line of the block's first line of code. */
  line: number;
  lang: string;
  info: string;
  code: string[];
}

/** The fenced blocks of a page, and its lines outside them (code blocks replaced by empty lines). */
function parse(page: string): { fences: Fence[]; prose: string[] } {
  const lines = readFileSync(join(ROOT, page), 'utf8').split('\n');
  const fences: Fence[] = [];
  const prose: string[] = [];
  let open: Fence | undefined;
  lines.forEach((text, i) => {
    if (open) {
      if (/^```\s*$/.test(text)) {
        fences.push(open);
        open = undefined;
      } else open.code.push(text);
      prose.push('');
      return;
    }
    const start = /^```(\S*)\s*(.*)$/.exec(text);
    if (start) {
      open = { page, line: i + 2, lang: (start[1] ?? '').toLowerCase(), info: start[2] ?? '', code: [] };
      prose.push('');
    } else prose.push(text);
  });
  if (open) throw new Error(`${page}:${open.line - 1}: a code block is never closed`);
  return { fences, prose };
}

const parsed = new Map(pages.map((p) => [p, parse(p)]));

/** One file for tsc: a block, preceded by the blocks it continues. */
interface Unit {
  name: string;
  file: string;
  /** For each line of the file, the page and line it comes from. */
  origin: { page: string; line: number }[];
  text: string;
  /** Compiled under legacy decorators only (```ts legacy). */
  legacyOnly: boolean;
}

const units: Unit[] = [];
const skipped: Fence[] = [];
for (const [page, { fences }] of parsed) {
  let chain: Fence[] = [];
  for (const fence of fences) {
    if (fence.lang !== 'ts' && fence.lang !== 'typescript') continue;
    if (/\bnocheck\b/.test(fence.info)) {
      skipped.push(fence);
      continue;
    }
    const continues = fence.code[0]?.trim() === CONTINUES;
    if (continues && chain.length === 0) throw new Error(`${page}:${fence.line}: "${CONTINUES}" but no TypeScript block before it on the page`);
    chain = continues ? [...chain, fence] : [fence];
    const origin: Unit['origin'] = [];
    const text: string[] = [];
    for (const f of chain) {
      f.code.forEach((l, i) => {
        text.push(l);
        origin.push({ page: f.page, line: f.line + i });
      });
      text.push('');
      origin.push({ page: f.page, line: f.line + f.code.length });
    }
    // A module even when the block imports nothing, so top-level names do not meet across files.
    text.push('export {};');
    const name = `${page}:${fence.line}`;
    const file = `${page.replace(/[^A-Za-z0-9]+/g, '-')}-L${fence.line}.ts`;
    const legacyOnly = chain.some((f) => /\blegacy\b/.test(f.info));
    units.push({ name, file, origin, text: text.join('\n') + '\n', legacyOnly });
  }
}

const CANARY = 'canary.ts';
const MODES = [
  { name: 'legacy decorators (experimentalDecorators)', experimentalDecorators: true },
  { name: 'standard TC39 decorators', experimentalDecorators: false },
] as const;

interface Diagnostic {
  file: string;
  line: number;
  message: string;
}

let dir = '';
const results = new Map<string, Diagnostic[]>();

beforeAll(() => {
  mkdirSync(join(ROOT, '.tmp'), { recursive: true });
  dir = mkdtempSync(join(ROOT, '.tmp', 'docs-code-'));
  for (const u of units) writeFileSync(join(dir, u.file), u.text);
  writeFileSync(join(dir, CANARY), "const n: number = 'not a number';\nexport { n };\n");
  for (const mode of MODES) {
    const config = join(dir, `tsconfig.${mode.experimentalDecorators ? 'legacy' : 'standard'}.json`);
    writeFileSync(
      config,
      JSON.stringify({
        extends: join(ROOT, 'tsconfig.json'),
        compilerOptions: { noEmit: true, experimentalDecorators: mode.experimentalDecorators },
        include: [],
        files: [...units.filter((u) => mode.experimentalDecorators || !u.legacyOnly).map((u) => u.file), CANARY],
      }),
    );
    const run = spawnSync(process.execPath, [TSC, '-p', config, '--pretty', 'false'], { cwd: ROOT, encoding: 'utf8' });
    if (run.error) throw run.error;
    const diagnostics: Diagnostic[] = [];
    for (const text of `${run.stdout}\n${run.stderr}`.split('\n')) {
      const m = /^(.+?)\((\d+),\d+\): error (TS\d+: .*)$/.exec(text);
      if (m) diagnostics.push({ file: resolve(ROOT, m[1]!), line: Number(m[2]), message: m[3]! });
      else if (/^\s+\S/.test(text) && diagnostics.length > 0) diagnostics[diagnostics.length - 1]!.message += `\n${text}`;
      else if (/error TS\d+/.test(text)) diagnostics.push({ file: '', line: 0, message: text });
    }
    results.set(mode.name, diagnostics);
  }
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Errors tsc reported in a unit's file, at the page and line they come from. */
function errorsOf(mode: string, unit: Unit): string[] {
  const file = join(dir, unit.file);
  return (results.get(mode) ?? [])
    .filter((d) => d.file === file)
    .map((d) => {
      const at = unit.origin[d.line - 1];
      return `${at ? `${at.page}:${at.line}` : `${unit.file}:${d.line}`}: ${d.message}`;
    });
}

describe('TypeScript blocks of README.md and docs/*.md', () => {
  it('are found, and a block that does not compile is caught', () => {
    expect(units.length, 'TypeScript blocks found').toBeGreaterThan(0);
    expect(parsed.get('README.md')?.fences.some((f) => f.lang === 'ts'), 'the Quickstart block').toBe(true);
    for (const mode of MODES) {
      const all = results.get(mode.name) ?? [];
      expect(all.filter((d) => d.file === join(dir, CANARY)).length, `${mode.name}: the canary's type error`).toBe(1);
      const elsewhere = all.filter((d) => d.file !== join(dir, CANARY) && !units.some((u) => d.file === join(dir, u.file)));
      expect(elsewhere.map((d) => `${relative(ROOT, d.file) || '(tsc)'}:${d.line}: ${d.message}`), `${mode.name}: errors outside the blocks`).toEqual([]);
    }
  });

  it('that are not checked say so on purpose', () => {
    for (const f of skipped) expect(f.info, `${f.page}:${f.line - 1}`).toMatch(/nocheck/);
  });

  for (const mode of MODES) {
    describe(mode.name, () => {
      const checked = units.filter((u) => mode.experimentalDecorators || !u.legacyOnly);
      it.each(checked.map((u) => [u.name, u] as const))('%s compiles', (_name, unit) => {
        expect(errorsOf(mode.name, unit)).toEqual([]);
      });
    });
  }
});

/** GitHub's anchors for the headings of a page (outside code blocks), duplicates numbered. */
function anchorsOf(prose: string[]): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  for (const line of prose) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const text = m[1]!.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
    const base = text
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

describe('links of README.md and docs/*.md', () => {
  it.each(pages)('%s: relative links name files and headings that exist', (page) => {
    const { prose } = parsed.get(page)!;
    const broken: string[] = [];
    const defined = new Set(prose.flatMap((l) => /^\s*\[([^\]]+)\]:\s*\S/.exec(l)?.[1]?.toLowerCase() ?? []));
    prose.forEach((raw, i) => {
      // A reference-style link ([text][label]) needs its definition on the page.
      for (const m of raw.matchAll(/\]\[([^\]]+)\]/g)) {
        if (!defined.has(m[1]!.toLowerCase())) broken.push(`${page}:${i + 1}: [${m[1]}]: no definition on the page`);
      }
      const text = raw.replace(/`[^`]*`/g, '');
      const targets = [
        ...[...text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!),
        ...[...text.matchAll(/^\s*\[[^\]]+\]:\s*(\S+)/g)].map((m) => m[1]!),
      ];
      for (const target of targets) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
        const [path = '', anchor] = target.split('#');
        const file = path === '' ? join(ROOT, page) : resolve(ROOT, dirname(page), decodeURI(path));
        const at = `${page}:${i + 1}: ${target}`;
        if (!existsSync(file)) {
          broken.push(`${at}: no such file`);
          continue;
        }
        if (anchor === undefined || !file.endsWith('.md')) continue;
        const rel = relative(ROOT, file);
        const headings = anchorsOf(parsed.get(rel)?.prose ?? parse(rel).prose);
        if (!headings.has(anchor)) broken.push(`${at}: no heading with this anchor`);
      }
    });
    expect(broken).toEqual([]);
  });
});
