/**
 * The field letters the Lua scripts read and write on task records are those of FIELDS
 * (src/core/protocol/task-fields.ts), and every letter of FIELDS is used by a script or
 * documented in docs/protocol.md. No Redis: the scripts are read as text.
 *
 * What is scanned: src/redis-scripts/*.lua and includes/*.lua as written (before the includes are
 * expanded, so a finding has its file and line), comments taken out and string literals kept.
 * A field name counts when it is a whole string literal in one of three places:
 *   1. the arguments of redis.call / redis.pcall of HGET, HMGET, HSET, HSETNX, HDEL, HEXISTS and
 *      HINCRBY after the key: each literal of HGET, HMGET, HDEL and HEXISTS; for HSET and HSETNX
 *      the literals in field position (1st, 3rd, ... after the key), for HINCRBY the field, so a
 *      value such as 'PENDING' is not taken for a field. A call on a `KEYS[n]` that the script's
 *      header does not describe as a task hash (the names hash of declare-1 and decline-7) is
 *      left out;
 *   2. field, value lists built in a table constructor (for HSET through `unpack`, or for a
 *      function that passes its list on: endTask's `extra`, requeueLeased's `fields`): the
 *      literals in field position of a constructor whose first item is a literal, unless the
 *      constructor is returned (`return {'STALE', ''}` is a reply, not a field list);
 *   3. literals appended with table.insert (`table.insert(t, 'd'); table.insert(t, due)`), but
 *      not a value made only of digits (the '1' of `lw`);
 *   4. a literal compared with an ARGV item indexed by a variable (`ARGV[j] == 'n'`: enqueue
 *      reading the producer's field list).
 * Not seen: a field built at run time (`'a' .. i`, the pieces of the arguments) or passed in
 * ARGV (the producer's fields of enqueue, the `r`/`e` field of a finish). The pieces `a1`,
 * `a2`, ... are accepted as FIELDS.args followed by digits.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FIELDS } from '../../src/core/protocol/task-fields.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPTS = join(ROOT, 'src', 'redis-scripts');

/** A field name found in Lua source, where it was found. */
interface FieldUse {
  field: string;
  line: number;
  /** Which of the four places: the command, or 'table' / 'table.insert' / 'ARGV comparison'. */
  via: string;
}

const HASH_COMMANDS = new Set(['HGET', 'HMGET', 'HSET', 'HSETNX', 'HDEL', 'HEXISTS', 'HINCRBY']);
const LITERAL = /^(?:'([^'\\]*)'|"([^"\\]*)")$/;

/** `source` with its comments replaced by spaces (newlines kept); string literals stay. */
function withoutComments(source: string): string {
  const LEXEMES = /--\[(=*)\[[\s\S]*?\]\1\]|--[^\n]*|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"/g;
  return source.replace(LEXEMES, (m) => (m.startsWith('--') ? m.replace(/[^\n]/g, ' ') : m));
}

/**
 * The items of the list that opens at `code[open]` (`(` or `{`), split at its top-level commas,
 * trimmed, with the offset of each item.
 */
function listAt(code: string, open: number): { text: string; at: number }[] {
  const close = code[open] === '(' ? ')' : '}';
  const items: { text: string; at: number }[] = [];
  let depth = 0;
  let start = open + 1;
  for (let i = open + 1; i < code.length; i++) {
    const c = code[i]!;
    if (c === "'" || c === '"') {
      for (i++; i < code.length && code[i] !== c; i++) if (code[i] === '\\') i++;
    } else if (c === '(' || c === '{' || c === '[') depth++;
    else if (depth > 0 && (c === ')' || c === '}' || c === ']')) depth--;
    else if (depth === 0 && (c === ',' || c === close)) {
      const raw = code.slice(start, i);
      if (raw.trim() !== '') items.push({ text: raw.trim(), at: start + raw.length - raw.trimStart().length });
      if (c === close) return items;
      start = i + 1;
    }
  }
  throw new Error(`unclosed ${code[open]} at offset ${open}`);
}

function literal(text: string): string | undefined {
  const m = LITERAL.exec(text);
  return m ? (m[1] ?? m[2]) : undefined;
}

/** The task-record field names a Lua source writes as literals (see the header for where). */
function fieldUses(source: string): FieldUse[] {
  const code = withoutComments(source);
  // The same with the string literals blanked too: where to look for calls and constructors.
  const bare = code.replace(/'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"/g, (m) => ' '.repeat(m.length));
  const lineAt = (offset: number): number => code.slice(0, offset).split('\n').length;
  // KEYS[n] the header describes, e.g. `KEYS[1] task hash <prefix>:{<queue>}:t:<id>`.
  const notTaskHash = new Set(
    [...source.matchAll(/^\s*(?:--\s*)?(KEYS\[\d+\])\s+(.*)$/gm)].filter((m) => !/^task hash\b/.test(m[2]!)).map((m) => m[1]!),
  );
  const uses: FieldUse[] = [];
  const add = (field: string | undefined, at: number, via: string): void => {
    if (field !== undefined) uses.push({ field, line: lineAt(at), via });
  };

  // 1. The hash commands.
  for (const m of bare.matchAll(/redis\.p?call\s*\(/g)) {
    const args = listAt(code, m.index + m[0].length - 1);
    const command = literal(args[0]?.text ?? '')?.toUpperCase();
    if (!command || !HASH_COMMANDS.has(command) || notTaskHash.has(args[1]?.text ?? '')) continue;
    const rest = args.slice(2);
    rest.forEach((arg, i) => {
      const fieldPosition = command === 'HSET' || command === 'HSETNX' ? i % 2 === 0 : command === 'HINCRBY' ? i === 0 : true;
      if (fieldPosition) add(literal(arg.text), arg.at, command);
    });
  }
  // 2. Field, value lists in table constructors.
  for (const m of bare.matchAll(/\{/g)) {
    if (/\breturn\s*$/.test(bare.slice(0, m.index))) continue;
    const items = listAt(code, m.index);
    if (items.length === 0 || literal(items[0]!.text) === undefined) continue;
    items.forEach((item, i) => {
      if (i % 2 === 0) add(literal(item.text), item.at, 'table');
    });
  }
  // 3. Literals appended with table.insert: field names, except a value made only of digits
  //    (`table.insert(fields, 'lw'); table.insert(fields, '1')`).
  for (const m of code.matchAll(/table\.insert\(\w+,\s*('[^'\\\n]*'|"[^"\\\n]*")\)/g)) {
    const field = literal(m[1]!);
    if (field !== undefined && !/^\d+$/.test(field)) add(field, m.index + m[0].indexOf(m[1]!), 'table.insert');
  }
  // 4. A field name of the producer's list compared with a literal: `ARGV[j] == 'n'` (an ARGV
  //    item indexed by a variable; a fixed one such as `ARGV[3] == '1'` is a flag, not a field).
  for (const m of code.matchAll(/ARGV\[[^\]]*[a-z_][^\]]*\]\s*[~=]=\s*('[^'\\\n]*'|"[^"\\\n]*")/g)) {
    add(literal(m[1]!), m.index + m[0].indexOf(m[1]!), 'ARGV comparison');
  }
  return uses;
}

const FIELD_VALUES = new Set<string>(Object.values(FIELDS));

/** Whether `field` is a value of FIELDS, or a piece of the arguments (`a1`, `a2`, ...). */
function isField(field: string): boolean {
  return FIELD_VALUES.has(field) || new RegExp(`^${FIELDS.args}[1-9]\\d*$`).test(field);
}

/** Every .lua file of src/redis-scripts and its includes, relative to it. */
function luaFiles(): string[] {
  return [
    ...readdirSync(SCRIPTS).filter((f) => f.endsWith('.lua')),
    ...readdirSync(join(SCRIPTS, 'includes'))
      .filter((f) => f.endsWith('.lua'))
      .map((f) => `includes/${f}`),
  ].sort();
}

const scanned = luaFiles().flatMap((file) => fieldUses(readFileSync(join(SCRIPTS, file), 'utf8')).map((u) => ({ file, ...u })));

describe('task-record fields in the Lua scripts', () => {
  it('the scanner takes fields, not values or replies, from each of the three places', () => {
    const lua = [
      "local t = redis.pcall('HMGET', key, 's', 'lk')",
      "redis.call('HSET', key, 's', 'PENDING', 'at', attempt - 1, unpack(extra))",
      "redis.call('HSETNX', key, 'c', '1')",
      "redis.call('HINCRBY', key, 'ry', 1)",
      "redis.call('HDEL', key, 'tk', 'st') -- and 'zz' in a comment is not read",
      "if redis.call('HEXISTS', key, 'rv') == 1 then return {'STALE', ''} end",
      "endTask(base, id, 'REVOKED', { 'rr', reason, 'e', cjson.encode({ name = 'X' }) }, now)",
      "table.insert(fields, 'lw'); table.insert(fields, '1'); table.insert(fields, 'd'); table.insert(fields, due)",
      "table.insert(problems, 'task ' .. id)",
      "redis.call('ZADD', KEYS[2], now, 'x'); redis.call('HSET', KEYS[4], 'not-a-field', 1)",
      '-- KEYS[4] declared names    <prefix>:{<queue>}:names',
    ].join('\n');
    expect(fieldUses(lua).map((u) => `${u.line}:${u.via}:${u.field}`)).toEqual([
      '1:HMGET:s',
      '1:HMGET:lk',
      '2:HSET:s',
      '2:HSET:at',
      '3:HSETNX:c',
      '4:HINCRBY:ry',
      '5:HDEL:tk',
      '5:HDEL:st',
      '6:HEXISTS:rv',
      '7:table:rr',
      '7:table:e',
      '8:table.insert:lw',
      '8:table.insert:d',
    ]);
  });

  it('a letter that is not in FIELDS is caught', () => {
    const uses = fieldUses("redis.call('HSET', key, 's', 'PENDING', 'qq', 1)\nlocal extra = { 'zz', 2 }\n");
    expect(uses.filter((u) => !isField(u.field)).map((u) => u.field)).toEqual(['qq', 'zz']);
  });

  it('every field name a script reads or writes is a value of FIELDS (or a piece a1, a2, ...)', () => {
    // The scan must see the scripts at all: a scanner that found nothing would pass the check below.
    expect(new Set(scanned.map((u) => u.file)).size).toBeGreaterThan(10);
    const unknown = scanned.filter((u) => !isField(u.field)).map((u) => `${u.file}:${u.line}: '${u.field}' (${u.via})`);
    expect(unknown, 'field names of the Lua scripts that are not in FIELDS (src/core/protocol/task-fields.ts)').toEqual([]);
  });

  it('every value of FIELDS is used by a script or documented in docs/protocol.md', () => {
    const protocol = readFileSync(join(ROOT, 'docs', 'protocol.md'), 'utf8');
    const used = new Set(scanned.map((u) => u.field));
    const orphans = Object.entries(FIELDS)
      .filter(([, letter]) => !used.has(letter) && !protocol.includes(`\`${letter}\``))
      .map(([meaning, letter]) => `${meaning}: '${letter}'`);
    expect(orphans, 'FIELDS no script uses and docs/protocol.md does not name').toEqual([]);
  });

  it('no two meanings of FIELDS share a letter', () => {
    const letters = Object.values(FIELDS);
    expect(letters.filter((l, i) => letters.indexOf(l) !== i)).toEqual([]);
  });
});
