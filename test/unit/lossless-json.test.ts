// Lossless JSON: parse/stringify parity with JSON.parse/stringify plus exact u64 handling.
import { describe, expect, it } from 'vitest';
import { JsonSyntaxError, RECURSION_LIMIT, parseJson, stringifyJson } from '../../src/dynamo/lossless-json.js';

describe('parseJson: big integers', () => {
  it('round-trips a lease id exactly', () => {
    const text = '{"worker_id":7587889726860452269}';
    const v = parseJson(text) as { worker_id: unknown };
    expect(v.worker_id).toBe(7587889726860452269n);
    expect(stringifyJson(v)).toBe(text);
  });

  it('keeps u64 max and negative i64 min exact', () => {
    expect(parseJson('18446744073709551615')).toBe(18446744073709551615n);
    expect(parseJson('-9223372036854775808')).toBe(-9223372036854775808n);
    expect(stringifyJson([-9223372036854775808n, 18446744073709551615n])).toBe(
      '[-9223372036854775808,18446744073709551615]',
    );
  });

  it('returns numbers for safe integers, including long lexemes in range', () => {
    expect(parseJson('9007199254740991')).toBe(9007199254740991);
    expect(parseJson('-9007199254740991')).toBe(-9007199254740991);
    expect(parseJson('9007199254740992')).toBe(9007199254740992n);
    expect(parseJson('-9007199254740992')).toBe(-9007199254740992n);
    expect(parseJson('123456789012345')).toBe(123456789012345);
    expect(parseJson('1234567890123456')).toBe(1234567890123456);
    expect(typeof parseJson('1234567890123456')).toBe('number');
  });

  it('KV router event with hashes round-trips byte for byte', () => {
    const text =
      '{"worker_id":7587889726860452269,"event":{"event_id":1234567890123,"data":{"stored":{"parent_hash":null,"blocks":[{"block_hash":14643705804678351452,"tokens_hash":14643705804678351452},{"block_hash":4945711292740353085,"tokens_hash":16777012769546811212}]}},"dp_rank":0}}';
    expect(stringifyJson(parseJson(text))).toBe(text);
  });
});

describe('parseJson: parity with JSON.parse', () => {
  const cases = [
    '0',
    '-0',
    '1',
    '-1',
    '3.14',
    '-2.5e-3',
    '1e3',
    '1E+3',
    '1.0',
    '1e400',
    '0.1',
    '123.456e7',
    'true',
    'false',
    'null',
    '""',
    '"plain"',
    '"esc \\" \\\\ \\/ \\b \\f \\n \\r \\t"',
    '"\\u00e9\\u4e2d\\uD83D\\uDE00"',
    '"\\ud800 lone"',
    '"raw é 中 😀"',
    '[]',
    '{}',
    ' [ 1 , [ 2 , [ 3 , { "a" : [ ] } ] ] ] ',
    '{"a":{"b":{"c":[1,{"d":null}]}},"e":"f"}',
    '{"dup":1,"dup":2}',
    '{"2":"b","1":"a","x":0}',
    '\t\n\r {"k":[true,false,null]} \n',
  ];
  // Wrapping with a big integer forces the hand-written parser instead of the native fast path.
  const viaSlowPath = (text: string) => (parseJson(`[${text},12345678901234567890]`) as unknown[])[0];
  for (const text of cases) {
    it(`parses ${JSON.stringify(text)}`, () => {
      expect(parseJson(text)).toStrictEqual(JSON.parse(text));
      expect(viaSlowPath(text)).toStrictEqual(JSON.parse(text));
    });
  }

  it('-0 stays negative zero', () => {
    expect(Object.is(parseJson('-0'), -0)).toBe(true);
  });

  it('1e3 is the number 1000, not a bigint', () => {
    expect(parseJson('1e3')).toBe(1000);
    expect(parseJson('1e19')).toBe(1e19);
  });

  it('__proto__ keys become own properties and do not pollute prototypes', () => {
    const v = parseJson('{"__proto__":{"polluted":true},"a":1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['__proto__', 'a']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const slow = parseJson('{"__proto__":{"polluted":true},"big":12345678901234567890}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(slow)).toBe(Object.prototype);
    expect(Object.keys(slow)).toEqual(['__proto__', 'big']);
    expect(slow['__proto__']).toEqual({ polluted: true });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('accepts UTF-8 bytes', () => {
    const bytes = new TextEncoder().encode('{"s":"é","n":18446744073709551615}');
    expect(parseJson(bytes)).toEqual({ s: 'é', n: 18446744073709551615n });
  });
});

describe('parseJson: errors', () => {
  const bad = [
    '',
    ' ',
    '{',
    '[',
    '[1,]',
    '{"a":1,}',
    '{,}',
    '{"a" 1}',
    '{a:1}',
    "{'a':1}",
    '"unterminated',
    '"bad \\x escape"',
    '"\\u12G4"',
    '"ctl \u0001 char"',
    '01',
    '-',
    '1.',
    '.5',
    '1e',
    '1e+',
    '+1',
    'NaN',
    'Infinity',
    'tru',
    'nul',
    '[1 2]',
    '{"a":1}x',
    '1 2',
    'null garbage',
    '\uFEFF1',
  ];
  for (const text of bad) {
    it(`rejects ${JSON.stringify(text)}`, () => {
      expect(() => JSON.parse(text)).toThrow(SyntaxError);
      expect(() => parseJson(text)).toThrow(SyntaxError);
    });
  }

  it('reports the position of trailing garbage', () => {
    try {
      parseJson('{"a":1} x');
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(JsonSyntaxError);
      expect((err as JsonSyntaxError).position).toBe(8);
      expect((err as Error).message).toMatch(/position 8/);
    }
  });

  it('rejects invalid UTF-8 bytes', () => {
    expect(() => parseJson(new Uint8Array([0x22, 0xff, 0x22]))).toThrow(SyntaxError);
  });

  it('rejects absurd nesting cleanly instead of overflowing the stack', () => {
    // The big integer forces the lossless (recursive) parser rather than the native fast path.
    const deep = (n: number) => '['.repeat(n) + '12345678901234567890' + ']'.repeat(n);
    expect(() => parseJson(deep(100_000))).toThrow(SyntaxError);
    expect(() => parseJson('['.repeat(100_000) + ']'.repeat(100_000))).toThrow(SyntaxError);
  });

  it("caps nesting where serde_json does: 127 levels parse, the 128th bracket is refused (on both paths)", () => {
    expect(RECURSION_LIMIT).toBe(128);
    const arrays = (n: number, inner = '1') => '['.repeat(n) + inner + ']'.repeat(n);
    const objects = (n: number) => '{"a":'.repeat(n - 1) + '{}' + '}'.repeat(n - 1);
    for (const inner of ['1', '12345678901234567890']) {
      expect(parseJson(arrays(127, inner))).toBeDefined();
      for (const n of [128, 129, 1000]) {
        try {
          parseJson(arrays(n, inner));
          expect.unreachable(`${n} levels parsed`);
        } catch (err) {
          expect(err).toBeInstanceOf(JsonSyntaxError);
          // serde_json: "recursion limit exceeded at line 1 column 128"
          expect((err as JsonSyntaxError).position).toBe(127);
          expect((err as Error).message).toMatch(/^Recursion limit exceeded/);
        }
      }
    }
    expect(parseJson(objects(127))).toBeDefined();
    expect(() => parseJson(objects(128))).toThrow(/Recursion limit exceeded/);
    expect(() => parseJson(new TextEncoder().encode(arrays(129)))).toThrow(/Recursion limit exceeded/);
  });

  it('counts only real nesting: brackets in strings and many shallow siblings are fine', () => {
    const inStrings = JSON.stringify({ s: '['.repeat(500) + '{'.repeat(500), t: ['\\"[[[', '{'] });
    expect(parseJson(inStrings)).toEqual(JSON.parse(inStrings));
    const siblings = JSON.stringify(Array.from({ length: 1000 }, (_, i) => ({ i, v: [[i]] })));
    expect(parseJson(siblings)).toEqual(JSON.parse(siblings));
    const nearLimit = '['.repeat(127) + ']'.repeat(127);
    const twice = `[${nearLimit.slice(1, -1)},${nearLimit.slice(1, -1)}]`;
    expect(parseJson(twice)).toEqual(JSON.parse(twice));
  });

  it('the slow path and the native fast path agree', () => {
    const text = '{"a":[1,-2,3.5,1e3,-0,"s\\u00e9",{"b":null}],"c":true}';
    const big = text.replace('"c":true', '"c":true,"z":12345678901234567890');
    const fast = parseJson(text) as Record<string, unknown>;
    const slow = parseJson(big) as Record<string, unknown>;
    expect(slow.z).toBe(12345678901234567890n);
    delete slow.z;
    expect(slow).toStrictEqual(fast);
    expect(Object.is((slow.a as unknown[])[4], -0)).toBe(true);
  });

  it('16-digit safe integers and digit runs inside strings still parse exactly', () => {
    expect(parseJson('[1234567890123456,"9999999999999999999"]')).toEqual([1234567890123456, '9999999999999999999']);
    expect(parseJson('0.12345678901234567890')).toBe(0.12345678901234568);
  });
});

describe('stringifyJson: parity with JSON.stringify', () => {
  const date = new Date(0);
  const values: unknown[] = [
    null,
    true,
    false,
    0,
    -0,
    1.5,
    1e21,
    1e-7,
    NaN,
    Infinity,
    -Infinity,
    '',
    'quote " backslash \\ newline \n tab \t ctl \u0001 \u2028 é 😀 lone \ud800',
    [],
    {},
    [1, 'a', null, [2, [3]], { b: [] }],
    { a: 1, b: undefined, c: () => 1, d: Symbol('x'), e: [undefined, () => 1] },
    { 2: 'b', 1: 'a', z: 0 },
    { nested: { deeper: { deepest: [{}, []] } } },
    { date },
    { toJSON: () => ({ replaced: true }) },
    [new Number(3), new String('s'), new Boolean(false)],
    new Map([[1, 2]]),
  ];
  values.forEach((v, i) => {
    it(`compact #${i}`, () => {
      expect(stringifyJson(v)).toBe(JSON.stringify(v));
    });
    it(`pretty #${i}`, () => {
      expect(stringifyJson(v, { pretty: true })).toBe(JSON.stringify(v, null, 2));
    });
  });

  it('writes bigint bare, also boxed', () => {
    expect(stringifyJson({ id: 7587889726860452269n, n: -5n })).toBe('{"id":7587889726860452269,"n":-5}');
    expect(stringifyJson([Object(10n)])).toBe('[10]');
  });

  it('pretty mode matches serde_json to_vec_pretty layout', () => {
    const v = {
      component: 'backend',
      endpoint: 'generate',
      namespace: 'dynamo',
      instance_id: 7587889726860452269n,
      transport: { nats_tcp: 'dynamo_backend.generate-694d9a8c2f3e1b2d' },
      empty_arr: [],
      empty_obj: {},
      list: [1, 2],
    };
    expect(stringifyJson(v, { pretty: true })).toBe(
      [
        '{',
        '  "component": "backend",',
        '  "endpoint": "generate",',
        '  "namespace": "dynamo",',
        '  "instance_id": 7587889726860452269,',
        '  "transport": {',
        '    "nats_tcp": "dynamo_backend.generate-694d9a8c2f3e1b2d"',
        '  },',
        '  "empty_arr": [],',
        '  "empty_obj": {},',
        '  "list": [',
        '    1,',
        '    2',
        '  ]',
        '}',
      ].join('\n'),
    );
  });

  it('throws on cycles and on top-level values with no JSON form', () => {
    const a: Record<string, unknown> = {};
    a.self = a;
    expect(() => stringifyJson(a)).toThrow(TypeError);
    expect(() => stringifyJson(undefined)).toThrow(TypeError);
    expect(() => stringifyJson(() => 1)).toThrow(TypeError);
  });

  it('allows the same object twice when it is not a cycle', () => {
    const shared = { x: 1 };
    expect(stringifyJson([shared, shared])).toBe('[{"x":1},{"x":1}]');
  });

  it('parse(stringify(x)) is the identity for mixed big values', () => {
    const v = { a: [1, -1, 0.5, 2n ** 63n, -(2n ** 63n), 'x', null, true], b: { c: 'é\n' } };
    expect(parseJson(stringifyJson(v))).toStrictEqual(v);
    expect(parseJson(stringifyJson(v, { pretty: true }))).toStrictEqual(v);
  });
});
