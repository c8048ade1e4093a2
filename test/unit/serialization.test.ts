import { describe, expect, it } from 'vitest';
import { HeimdallError, SerializationError } from 'heimdall-tasks';
import { argsToJson, toJson } from '../../src/core/task/serialization.js';

class Point {
  constructor(
    readonly x: number,
    readonly y: number,
  ) {}
}

function cyclicObject(): unknown {
  const node: Record<string, unknown> = { name: 'root' };
  node.self = node;
  return node;
}

function cyclicArray(): unknown {
  const list: unknown[] = [1];
  list.push({ back: list });
  return list;
}

function sparse(): unknown[] {
  const a: unknown[] = [1];
  a[2] = 3;
  return a;
}

function throwingElement(): unknown[] {
  const a: unknown[] = [1];
  Object.defineProperty(a, 1, {
    get(): never {
      throw new Error('element exploded');
    },
    enumerable: true,
  });
  return a;
}

function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Runs argsToJson and returns the SerializationError it throws. */
function rejection(args: unknown[]): SerializationError {
  try {
    argsToJson(args);
  } catch (err) {
    if (err instanceof SerializationError) return err;
    throw err;
  }
  throw new Error(`argsToJson accepted ${String(args)}`);
}

describe('argsToJson rejects what JSON would not bring back, naming the path', () => {
  it.each<[kind: string, args: unknown[], path: string, problem: string | RegExp]>([
    ['a function', [() => 1], 'args[0]', 'is a function'],
    ['a symbol', [Symbol('s')], 'args[0]', 'is a symbol'],
    ['a BigInt', [1, 10n], 'args[1]', 'is a BigInt'],
    ['a cycle through an object', [cyclicObject()], 'args[0].self', 'refers back to one of its parents (a cycle)'],
    ['a cycle through an array', [cyclicArray()], 'args[0][1].back', 'refers back to one of its parents (a cycle)'],
    ['undefined in an array', [[1, undefined, 3]], 'args[0][1]', 'is undefined'],
    ['undefined before a defined argument', [undefined, 1], 'args[0]', 'is undefined'],
    ['NaN', [NaN], 'args[0]', 'is NaN'],
    ['Infinity', [{ ratio: Infinity }], 'args[0].ratio', 'is Infinity'],
    ['-Infinity', [[-Infinity]], 'args[0][0]', 'is -Infinity'],
    ['a Date', [{ when: new Date(0) }], 'args[0].when', 'is a Date'],
    ['a Map', [new Map([['a', 1]])], 'args[0]', 'is a Map'],
    ['a Set', [{ tags: new Set(['a']) }], 'args[0].tags', 'is a Set'],
    ['a class instance', [new Point(1, 2)], 'args[0]', 'is a Point'],
    ['an Error', [new Error('x')], 'args[0]', /is an? Error/],
    ['a boxed string', [new String('x')], 'args[0]', 'is a String'],
    ['a hole in a sparse array', [sparse()], 'args[0][1]', 'is a hole in a sparse array'],
    ['a Buffer', [{ data: Buffer.from('hi') }], 'args[0].data', 'is a Buffer'],
    ['a Uint8Array', [new Uint8Array([1, 2])], 'args[0]', 'is a Uint8Array'],
    ['symbol keys', [{ a: 1, [Symbol('k')]: 2 }], 'args[0]', 'has symbol keys'],
    ['a deeply nested value', [0, { a: { b: [1, 2, () => 3] } }], 'args[1].a.b[2]', 'is a function'],
    ['a key that is not an identifier', [{ 'a-b': NaN }], 'args[0]["a-b"]', 'is NaN'],
    ['a key with a quote', [{ 'say "hi"': { when: new Date(0) } }], 'args[0]["say \\"hi\\""].when', 'is a Date'],
    ['a numeric key', [{ 7: 10n }], 'args[0]["7"]', 'is a BigInt'],
    ['an object without a prototype holding a bad value', [Object.assign(Object.create(null) as object, { f: Symbol('x') })], 'args[0].f', 'is a symbol'],
    ['a getter that throws', [{ ok: 1, get boom(): never { throw new Error('getter exploded'); } }], 'args[0].boom', 'could not be read: reading it threw Error: getter exploded'],
    ['an array element getter that throws', [throwingElement()], 'args[0][1]', 'could not be read: reading it threw Error: element exploded'],
    ['a revoked Proxy', [{ p: revokedProxy() }], 'args[0].p', 'is a revoked Proxy'],
  ])('%s', (_kind, args, path, problem) => {
    const err = rejection(args);
    expect(err.path).toBe(path);
    expect(err.code).toBe('HEIMDALL_SERIALIZATION');
    const problemSource = problem instanceof RegExp ? problem.source : escapeRegExp(problem);
    expect(err.message).toMatch(new RegExp(`^${escapeRegExp(path)} ${problemSource}`));
    expect(err.message).toContain('task arguments and results must be plain JSON');
  });

  it('hints at the conversion to use for a Date, a Map and a Set', () => {
    expect(rejection([new Date(0)]).message).toContain('(pass date.toISOString() or a timestamp)');
    expect(rejection([new Map()]).message).toContain('(pass Object.fromEntries(map))');
    expect(rejection([new Set()]).message).toContain('(pass [...set])');
  });

  it('names the first bad value in argument order', () => {
    expect(rejection([1, { a: NaN }, { b: 10n }]).path).toBe('args[1].a');
  });
});

describe('SerializationError', () => {
  it('carries path and code and is a HeimdallError', () => {
    const err = rejection([{ when: new Date(0) }]);
    expect(err).toBeInstanceOf(SerializationError);
    expect(err).toBeInstanceOf(HeimdallError);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('SerializationError');
    expect(err.path).toBe('args[0].when');
    expect(err.code).toBe('HEIMDALL_SERIALIZATION');
  });
});

describe('toJson uses the root it is given', () => {
  it('names a bad value in a result from `result`', () => {
    let caught: unknown;
    try {
      toJson({ items: [1, 2, 3, new Map()] }, 'result');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SerializationError);
    expect((caught as SerializationError).path).toBe('result.items[3]');
  });

  it('rejects a bad root value at the root path', () => {
    expect(() => toJson(() => 1, 'result')).toThrow(SerializationError);
    expect(() => toJson(undefined, 'result')).toThrow(/^result is undefined/);
  });
});

describe('argsToJson accepts plain JSON', () => {
  it.each<[kind: string, args: unknown[], json: string]>([
    ['no arguments', [], '[]'],
    ['primitives', [1, 'two', true, false, null, -2.5], '[1,"two",true,false,null,-2.5]'],
    ['plain objects', [{ a: 1, b: { c: 'x' } }], '[{"a":1,"b":{"c":"x"}}]'],
    ['nested arrays', [[1, [2, [3, []]]]], '[[1,[2,[3,[]]]]]'],
    ['empty containers', [{}, []], '[{},[]]'],
    ['an object without a prototype', [Object.assign(Object.create(null) as object, { a: 1 })], '[{"a":1}]'],
    ['odd keys', [{ 'a-b': 1, '': 2 }], '[{"a-b":1,"":2}]'],
    ['an undefined property, dropped', [{ a: 1, b: undefined }], '[{"a":1}]'],
    ['one trailing undefined argument, trimmed', [42, undefined], '[42]'],
    ['several trailing undefined arguments, trimmed', [42, undefined, undefined], '[42]'],
    ['only undefined arguments', [undefined, undefined], '[]'],
    ['null kept, unlike undefined', [null], '[null]'],
  ])('%s', (_kind, args, json) => {
    expect(argsToJson(args)).toBe(json);
  });

  it('accepts the same object twice (shared, not a cycle)', () => {
    const shared = { id: 1 };
    expect(argsToJson([shared, [shared, { again: shared }]])).toBe('[{"id":1},[{"id":1},{"again":{"id":1}}]]');
  });

  it('does not trim an undefined that is not trailing', () => {
    expect(rejection([1, undefined, 3]).path).toBe('args[1]');
  });
});
