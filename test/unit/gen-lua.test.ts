/**
 * scripts/gen-lua.mjs on scripts of its own, in a temporary directory: a `#!lua` shebang stays
 * the first line of the generated source (Redis reads script flags only there), whatever the
 * includes expand to, and a `#!` line anywhere else is refused; includes are resolved and
 * checked; a local named like a function of includes/keys.lua is refused at its file and line.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { render, renderKeys } from '../../scripts/gen-lua.mjs';

const made: string[] = [];
afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A scripts directory holding `files` (paths relative to it, e.g. 'includes/now.lua'). */
function scriptsDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'heimdall-gen-lua-'));
  made.push(dir);
  mkdirSync(join(dir, 'includes'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** The source and SHA the module generated for the script exported as `id`. */
function generated(ts: string, id: string): { source: string; sha: string } {
  const m = new RegExp(`export const ${id}: LuaScript = \\{\\n[^]*?sha: '([0-9a-f]{40})',\\n  source: ("(?:[^"\\\\]|\\\\.)*"),`).exec(ts);
  expect(m, `the module exports ${id}`).not.toBeNull();
  return { sha: m![1]!, source: JSON.parse(m![2]!) as string };
}

describe('gen-lua: shebangs', () => {
  it('keeps a #!lua line first, before the expanded includes, and hashes the source as written', () => {
    const dir = scriptsDir({
      'renew-1.lua': '#!lua flags=allow-oom\n-- @include "now"\nreturn nowMs()\n',
      'plain-0.lua': '-- @include "now"\nreturn 1\n',
      'includes/now.lua': 'local function nowMs() return 1 end\n',
    });
    const ts = render(dir);
    const renew = generated(ts, 'renew');
    expect(renew.source).toBe('#!lua flags=allow-oom\nlocal function nowMs() return 1 end\nreturn nowMs()\n');
    expect(renew.sha).toBe(createHash('sha1').update(renew.source).digest('hex'));
    expect(generated(ts, 'plain').source).toBe('local function nowMs() return 1 end\nreturn 1\n');
  });

  const refused: { what: string; files: Record<string, string>; error: RegExp }[] = [
    { what: 'a #! line after the first', files: { 'late-0.lua': '-- header\n#!lua flags=allow-oom\nreturn 1\n' }, error: /^late-0\.lua: a #! line is only read by Redis as the first line of a script$/ },
    {
      what: 'an include with a #! line',
      files: { 'uses-0.lua': '-- @include "flagged"\nreturn 1\n', 'includes/flagged.lua': '#!lua flags=allow-oom\nlocal x = 1\n' },
      error: /^includes\/flagged\.lua: an include cannot carry a #! line; put the shebang in the script$/,
    },
    { what: 'a shebang of another engine', files: { 'other-0.lua': '#!python\nreturn 1\n' }, error: /^other-0\.lua: a shebang must name the engine: #!lua \[flags=\.\.\.\]$/ },
  ];
  it.each(refused)('refuses $what', ({ files, error }) => {
    expect(() => render(scriptsDir(files))).toThrow(error);
  });
});

describe('gen-lua: includes', () => {
  it('puts each fragment in once, before the first fragment that needs it, its own includes first', () => {
    const dir = scriptsDir({
      'both-0.lua': '-- @include "lease"\n-- @include "now"\nreturn lease(nowMs())\n',
      'includes/now.lua': 'local function nowMs() return 1 end\n',
      'includes/lease.lua': '-- @include "now"\nlocal function lease(t) return t + nowMs() end\n',
    });
    expect(generated(render(dir), 'both').source).toBe(
      'local function nowMs() return 1 end\nlocal function lease(t) return t + nowMs() end\n\nreturn lease(nowMs())\n',
    );
  });

  const refused: { what: string; files: Record<string, string>; error: RegExp }[] = [
    {
      what: 'a cycle',
      files: { 'a-0.lua': '-- @include "x"\nreturn 1\n', 'includes/x.lua': '-- @include "y"\n', 'includes/y.lua': '-- @include "x"\n' },
      error: /^include cycle: x -> y -> x$/,
    },
    { what: 'an include with no file', files: { 'a-0.lua': '-- @include "gone"\nreturn 1\n' }, error: /includes "gone", which has no includes\/gone\.lua$/ },
    {
      what: 'a script that calls a fragment it does not include (it came in through another)',
      files: {
        'a-0.lua': '-- @include "lease"\nreturn lease(nowMs())\n',
        'includes/now.lua': 'local function nowMs() return 1 end\n',
        'includes/lease.lua': '-- @include "now"\nlocal function lease(t) return t end\n',
      },
      error: /^a-0\.lua uses nowMs of includes\/now\.lua without -- @include "now"$/,
    },
    {
      what: 'an include that names a constant of another without including it',
      files: {
        'a-0.lua': '-- @include "size"\n-- @include "limits"\nreturn size()\n',
        'includes/limits.lua': 'local MAX = 5\n',
        'includes/size.lua': 'local function size() return MAX end\n',
      },
      error: /^includes\/size\.lua uses MAX of includes\/limits\.lua without -- @include "limits"$/,
    },
  ];
  it.each(refused)('refuses $what', ({ files, error }) => {
    expect(() => render(scriptsDir(files))).toThrow(error);
  });

  it('a local variable that shares a fragment function\'s name is not a use of it', () => {
    const dir = scriptsDir({
      'a-0.lua': 'local lease = KEYS[1]\nreturn lease\n',
      'includes/lease.lua': 'local function lease(t) return t end\n',
    });
    expect(generated(render(dir), 'a').source).toBe('local lease = KEYS[1]\nreturn lease\n');
  });
});

describe('gen-lua: locals named like a key function', () => {
  const keys = 'local function waitKeyOf(base) return base .. "wait" end\nlocal function taskKeyOf(base, id) return base .. "t:" .. id end\n';

  it('accepts locals that hold keys under other names, and the names in comments and strings', () => {
    const dir = scriptsDir({
      'a-0.lua': [
        '-- @include "keys"',
        '-- local waitKeyOf = nothing: a comment',
        'local waitKey, id = KEYS[1], ARGV[1]',
        "local note = 'local taskKeyOf = 1'",
        'return redis.call("RPUSH", waitKey, taskKeyOf("b:", id))',
        '',
      ].join('\n'),
      'includes/keys.lua': keys,
    });
    expect(() => render(dir)).not.toThrow();
  });

  const refused: { what: string; files: Record<string, string>; error: RegExp }[] = [
    {
      what: 'a local variable of a script (one of several on its line)',
      files: { 'a-0.lua': '-- @include "keys"\nlocal id, taskKeyOf = ARGV[1], ARGV[2]\nreturn id\n' },
      error: /^a-0\.lua:2: the local taskKeyOf has the name of a function of includes\/keys\.lua, which it would hide; rename it$/,
    },
    {
      what: 'a parameter of an include, on the second line of its list',
      files: {
        'a-0.lua': '-- @include "move"\nreturn move(KEYS[1], ARGV[1])\n',
        'includes/move.lua': '-- Moves an id.\nlocal function move(setKey,\n                    waitKeyOf, id)\n  return redis.call("RPUSH", waitKeyOf, id)\nend\n',
      },
      error: /^includes\/move\.lua:3: the parameter waitKeyOf has the name of a function of includes\/keys\.lua, which it would hide; rename it$/,
    },
    {
      what: 'a parameter of an anonymous function',
      files: { 'a-0.lua': 'local f = function(taskKeyOf) return taskKeyOf end\nreturn f(1)\n' },
      error: /^a-0\.lua:1: the parameter taskKeyOf has the name/,
    },
    {
      what: 'a loop variable',
      files: { 'a-0.lua': 'for _, waitKeyOf in ipairs(KEYS) do redis.call("DEL", waitKeyOf) end\nreturn 1\n' },
      error: /^a-0\.lua:1: the loop variable waitKeyOf has the name/,
    },
    {
      what: 'a local function of the same name',
      files: { 'a-0.lua': 'local function taskKeyOf(id) return id end\nreturn taskKeyOf(1)\n' },
      error: /^a-0\.lua:1: the local function taskKeyOf has the name/,
    },
  ];
  it.each(refused)('refuses $what, naming its file and line', ({ files, error }) => {
    expect(() => render(scriptsDir({ 'includes/keys.lua': keys, ...files }))).toThrow(error);
  });

  it('names every clash, in file and line order', () => {
    const dir = scriptsDir({
      'includes/keys.lua': keys,
      'b-0.lua': 'local waitKeyOf = 1\nlocal taskKeyOf = 2\nreturn 1\n',
      'a-0.lua': 'local x = 1\nlocal taskKeyOf = 2\nreturn x\n',
    });
    expect(() => render(dir)).toThrow(/^a-0\.lua:2: .*\nb-0\.lua:1: .*waitKeyOf.*\nb-0\.lua:2: .*taskKeyOf.*$/);
  });

  it('holds for the repository\'s scripts: the generated key functions are named <name>KeyOf / <name>ChannelOf', () => {
    expect(renderKeys()).toMatch(/^local function taskKeyOf\(base, id\) return base \.\. 't:' \.\. id end$/m);
    for (const m of renderKeys().matchAll(/^local function (\w+)/gm)) expect(m[1]).toMatch(/(Key|Channel)Of$/);
    expect(() => render()).not.toThrow();
  });
});
