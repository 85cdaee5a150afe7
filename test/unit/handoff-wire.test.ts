// DMHF bootstrap wire format: header check, byte-exact frame JSON, strict/lenient parsing and the streaming decoder.
import { describe, expect, it } from 'vitest';
import {
  checkHeader,
  DMHF_HEADER,
  encodeHandoffFrame,
  HandoffFrameDecoder,
  handoffFrameJson,
  HandoffWireError,
  MAX_HANDOFF_FRAME_BYTES,
  parseHandoffFrame,
  type HandoffFrame,
  type HandoffIdentity,
  type HandoffMessage,
} from '../../src/dynamo/handoff-wire.js';
import { concatBytes } from '../helpers/bytes.js';

const HANDOFF = '0b5e9c52-3f0a-4d6e-9a71-2c8f4e1d7b90';
const REQUEST = '7c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b';
const identity: HandoffIdentity = { handoffId: HANDOFF, bootstrapRoom: 12345n, requestId: REQUEST };
const IDENTITY_JSON = `{"handoff_id":"${HANDOFF}","bootstrap_room":12345,"request_id":"${REQUEST}"}`;

const enc = new TextEncoder();
const frameText = (messageJson: string, identityJson = IDENTITY_JSON) => `{"identity":${identityJson},"message":${messageJson}}`;
const lengthPrefixed = (payload: Uint8Array) => {
  const prefix = new Uint8Array(4);
  new DataView(prefix.buffer).setUint32(0, payload.length, true);
  return concatBytes(prefix, payload);
};

function expectWireError(fn: () => unknown, message: string | RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(HandoffWireError);
  const text = (thrown as Error).message;
  if (typeof message === 'string') expect(text).toBe(message);
  else expect(text).toMatch(message);
}

// Every message kind with the JSON serde_json writes for it (written by hand from the Rust types).
const MESSAGES: [HandoffMessage, string][] = [
  [
    { kind: 'Register', role: 'Destination', dpRank: 0, order: 'SourceFirst', engineType: 'vllm' },
    '{"Register":{"role":"Destination","dp_rank":0,"order":"SourceFirst","engine_type":"vllm"}}',
  ],
  [
    { kind: 'Register', role: 'Destination', dpRank: 3, order: 'DestinationFirst', engineType: 'sglang' },
    '{"Register":{"role":"Destination","dp_rank":3,"order":"DestinationFirst","engine_type":"sglang"}}',
  ],
  [
    { kind: 'Register', role: 'Destination', dpRank: 4294967295, order: 'SourceFirst', engineType: 'trtllm' },
    '{"Register":{"role":"Destination","dp_rank":4294967295,"order":"SourceFirst","engine_type":"trtllm"}}',
  ],
  [{ kind: 'Registered' }, '"Registered"'],
  [
    { kind: 'Action', id: 1n, action: 'ReserveDestination', handoffId: HANDOFF },
    `{"Action":{"id":1,"action":{"ReserveDestination":{"handoff_id":"${HANDOFF}"}}}}`,
  ],
  [
    { kind: 'Action', id: 3n, action: 'ActivateDestination', handoffId: HANDOFF },
    `{"Action":{"id":3,"action":{"ActivateDestination":{"handoff_id":"${HANDOFF}"}}}}`,
  ],
  [
    { kind: 'Action', id: 18446744073709551615n, action: 'CancelDestination', handoffId: HANDOFF },
    `{"Action":{"id":18446744073709551615,"action":{"CancelDestination":{"handoff_id":"${HANDOFF}"}}}}`,
  ],
  [{ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' }, '{"ActionAck":{"action_id":1,"outcome":"Accepted"}}'],
  [{ kind: 'ActionAck', actionId: 0n, outcome: 'Submitted' }, '{"ActionAck":{"action_id":0,"outcome":"Submitted"}}'],
  [{ kind: 'ActionAck', actionId: 2n, outcome: 'Scheduled' }, '{"ActionAck":{"action_id":2,"outcome":"Scheduled"}}'],
  [{ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' }, '{"ActionAck":{"action_id":3,"outcome":"Applied"}}'],
  [{ kind: 'ActionAck', actionId: 4n, outcome: 'Noop' }, '{"ActionAck":{"action_id":4,"outcome":"Noop"}}'],
  [
    { kind: 'ActionAck', actionId: 9223372036854775813n, outcome: { failed: 'destination request was reserved more than once' } },
    '{"ActionAck":{"action_id":9223372036854775813,"outcome":{"Failed":"destination request was reserved more than once"}}}',
  ],
  [
    {
      kind: 'SourceHeld',
      handoffId: HANDOFF,
      timing: { mode: 'full_prompt', fullPromptTokens: 8, kvBytesPerToken: 1000000, bandwidthGBps: 1 },
    },
    `{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":{"mode":"full_prompt","full_prompt_tokens":8,"kv_bytes_per_token":1000000,"bandwidth_gb_s":1.0}}}}`,
  ],
  [
    {
      kind: 'SourceHeld',
      handoffId: HANDOFF,
      timing: { mode: 'destination_missing', fullPromptTokens: 10, kvBytesPerToken: null, bandwidthGBps: null },
    },
    `{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":{"mode":"destination_missing","full_prompt_tokens":10,"kv_bytes_per_token":null,"bandwidth_gb_s":null}}}}`,
  ],
  [
    {
      kind: 'SourceHeld',
      handoffId: HANDOFF,
      timing: { mode: 'full_prompt', fullPromptTokens: 0, kvBytesPerToken: 131072, bandwidthGBps: 12.5 },
    },
    `{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":{"mode":"full_prompt","full_prompt_tokens":0,"kv_bytes_per_token":131072,"bandwidth_gb_s":12.5}}}}`,
  ],
  [
    { kind: 'DestinationReserved', handoffId: HANDOFF, transferablePromptTokens: 12 },
    `{"Fact":{"DestinationReserved":{"handoff_id":"${HANDOFF}","transferable_prompt_tokens":12}}}`,
  ],
  [{ kind: 'Complete' }, '"Complete"'],
  [{ kind: 'Abort', message: 'handoff canceled' }, '{"Abort":{"message":"handoff canceled"}}'],
  [{ kind: 'Overloaded' }, '"Overloaded"'],
  [
    { kind: 'ProtocolError', message: 'handoff participant identity or backend mismatch' },
    '{"ProtocolError":{"message":"handoff participant identity or backend mismatch"}}',
  ],
  [
    { kind: 'Abort', message: 'quote " backslash \\ newline \n tab \t nul \u0000 é 😀' },
    '{"Abort":{"message":"quote \\" backslash \\\\ newline \\n tab \\t nul \\u0000 é 😀"}}',
  ],
];

describe('header', () => {
  it('is DMHF, version 1 LE, flags 0', () => {
    expect([...DMHF_HEADER]).toEqual([0x44, 0x4d, 0x48, 0x46, 0x01, 0x00, 0x00, 0x00]);
    expect(() => checkHeader(Uint8Array.from(DMHF_HEADER))).not.toThrow();
  });

  it.each([
    [[0x44, 0x4d, 0x48, 0x47, 1, 0, 0, 0], 'bootstrap protocol magic mismatch'],
    [[0x64, 0x6d, 0x68, 0x66, 1, 0, 0, 0], 'bootstrap protocol magic mismatch'],
    [[0x44, 0x4d, 0x48, 0x46, 2, 0, 0, 0], 'unsupported bootstrap protocol version 2'],
    [[0x44, 0x4d, 0x48, 0x46, 0, 1, 0, 0], 'unsupported bootstrap protocol version 256'],
    [[0x44, 0x4d, 0x48, 0x46, 0, 0, 0, 0], 'unsupported bootstrap protocol version 0'],
    [[0x44, 0x4d, 0x48, 0x46, 1, 0, 1, 0], 'bootstrap protocol flags must be zero'],
    [[0x44, 0x4d, 0x48, 0x46, 1, 0, 0, 0x80], 'bootstrap protocol flags must be zero'],
    // Magic is checked before version, version before flags.
    [[0, 0, 0, 0, 9, 9, 9, 9], 'bootstrap protocol magic mismatch'],
    [[0x44, 0x4d, 0x48, 0x46, 9, 0, 1, 0], 'unsupported bootstrap protocol version 9'],
  ])('rejects %j', (bytes, message) => {
    expectWireError(() => checkHeader(Uint8Array.from(bytes)), message);
  });

  it('needs exactly 8 bytes', () => {
    expectWireError(() => checkHeader(DMHF_HEADER.subarray(0, 7)), 'bootstrap protocol header must be 8 bytes, got 7');
    expectWireError(() => checkHeader(concatBytes(DMHF_HEADER, Uint8Array.of(0))), /must be 8 bytes, got 9/);
  });
});

describe('encoding: byte-exact JSON for every message kind', () => {
  it.each(MESSAGES.map(([m, json]) => [m.kind, m, json] as const))('%s', (_kind, message, json) => {
    const frame: HandoffFrame = { identity, message };
    const expected = frameText(json);
    expect(handoffFrameJson(frame)).toBe(expected);
    const payload = enc.encode(expected);
    expect(encodeHandoffFrame(frame)).toEqual(lengthPrefixed(payload));
    expect(parseHandoffFrame(expected)).toEqual(frame);
    expect(parseHandoffFrame(payload)).toEqual(frame);
  });

  it('writes the length prefix little-endian', () => {
    const bytes = encodeHandoffFrame({ identity, message: { kind: 'Complete' } });
    const len = frameText('"Complete"').length;
    expect([...bytes.subarray(0, 4)]).toEqual([len & 0xff, len >> 8, 0, 0]);
  });

  it('keeps u64 bootstrap rooms exact beyond 2^53', () => {
    for (const room of [18446744073709551615n, 2n ** 63n + 5n, 2n ** 53n + 1n, 0n]) {
      const frame: HandoffFrame = { identity: { ...identity, bootstrapRoom: room }, message: { kind: 'Registered' } };
      const json = handoffFrameJson(frame);
      expect(json).toContain(`"bootstrap_room":${room},`);
      expect(parseHandoffFrame(json).identity.bootstrapRoom).toBe(room);
    }
    expect(parseHandoffFrame(frameText('"Complete"', IDENTITY_JSON.replace('12345', '9223372036854775813'))).identity.bootstrapRoom).toBe(
      9223372036854775813n,
    );
  });

  it.each([
    [64, '64.0'],
    [1, '1.0'],
    [0.5, '0.5'],
    [-0, '-0.0'],
    [1e21, '1e21'],
    [1.5e-7, '1.5e-7'],
    [12345678.25, '12345678.25'],
  ])('writes bandwidth %d like serde_json: %s', (bandwidth, text) => {
    const timing = { mode: 'full_prompt', fullPromptTokens: 1, kvBytesPerToken: 1, bandwidthGBps: bandwidth } as const;
    const json = handoffFrameJson({ identity, message: { kind: 'SourceHeld', handoffId: HANDOFF, timing } });
    expect(json).toContain(`"bandwidth_gb_s":${text}}`);
    expect(Object.is((parseHandoffFrame(json).message as { timing: { bandwidthGBps: number } }).timing.bandwidthGBps, bandwidth)).toBe(true);
  });

  it('writes UUIDs in the lowercase hyphenated form the uuid crate writes', () => {
    const upper = { ...identity, handoffId: HANDOFF.toUpperCase(), requestId: `{${REQUEST}}` };
    expect(handoffFrameJson({ identity: upper, message: { kind: 'Complete' } })).toBe(frameText('"Complete"'));
    const simple = { ...identity, handoffId: HANDOFF.replace(/-/g, '') };
    expect(handoffFrameJson({ identity: simple, message: { kind: 'Complete' } })).toBe(frameText('"Complete"'));
  });

  it('accepts a payload of exactly 65536 bytes and refuses one more', () => {
    const base = encodeHandoffFrame({ identity, message: { kind: 'Abort', message: '' } }).length - 4;
    const fits = { identity, message: { kind: 'Abort', message: 'x'.repeat(MAX_HANDOFF_FRAME_BYTES - base) } } as const;
    expect(encodeHandoffFrame(fits).length).toBe(4 + MAX_HANDOFF_FRAME_BYTES);
    const over = { identity, message: { kind: 'Abort', message: 'x'.repeat(MAX_HANDOFF_FRAME_BYTES - base + 1) } } as const;
    expectWireError(() => encodeHandoffFrame(over), 'bootstrap frame length 65537 is outside 1..=65536');
    // The limit counts UTF-8 bytes, not UTF-16 units.
    const wide = { identity, message: { kind: 'Abort', message: 'é'.repeat(40000) } } as const;
    expectWireError(() => encodeHandoffFrame(wide), `bootstrap frame length ${base + 80000} is outside 1..=65536`);
  });

  const bad = (message: HandoffMessage, id: Partial<HandoffIdentity> = {}): HandoffFrame => ({ identity: { ...identity, ...id }, message });
  it.each([
    ['non-UUID handoff id', bad({ kind: 'Complete' }, { handoffId: 'not-a-uuid' }), /identity\.handoff_id must be a UUID/],
    ['non-UUID request id', bad({ kind: 'Complete' }, { requestId: '' }), /identity\.request_id must be a UUID/],
    ['negative room', bad({ kind: 'Complete' }, { bootstrapRoom: -1n }), /identity\.bootstrap_room must be a u64 bigint, got -1/],
    ['room above u64', bad({ kind: 'Complete' }, { bootstrapRoom: 2n ** 64n }), /bootstrap_room must be a u64/],
    ['room as a number', bad({ kind: 'Complete' }, { bootstrapRoom: 5 as unknown as bigint }), /bootstrap_room must be a u64 bigint, got 5/],
    ['action id as a number', bad({ kind: 'Action', id: 1 as unknown as bigint, action: 'ReserveDestination', handoffId: HANDOFF }), /message\.Action\.id/],
    ['source-local action', bad({ kind: 'Action', id: 1n, action: 'StartTransfer' as 'ReserveDestination', handoffId: HANDOFF }), /message\.Action\.action must be one of/],
    ['dp_rank above u32', bad({ kind: 'Register', role: 'Destination', dpRank: 2 ** 32, order: 'SourceFirst', engineType: 'vllm' }), /dp_rank must be an integer in 0\.\.=4294967295/],
    ['fractional dp_rank', bad({ kind: 'Register', role: 'Destination', dpRank: 0.5, order: 'SourceFirst', engineType: 'vllm' }), /dp_rank/],
    ['unknown engine', bad({ kind: 'Register', role: 'Destination', dpRank: 0, order: 'SourceFirst', engineType: 'VLLM' as 'vllm' }), /engine_type must be one of vllm, sglang, trtllm/],
    ['unknown outcome', bad({ kind: 'ActionAck', actionId: 1n, outcome: 'Done' as 'Noop' }), /outcome must be one of/],
    ['NaN bandwidth', bad({ kind: 'SourceHeld', handoffId: HANDOFF, timing: { mode: 'full_prompt', fullPromptTokens: 1, kvBytesPerToken: 1, bandwidthGBps: NaN } }), /bandwidth_gb_s must be a finite number, got NaN/],
    ['infinite bandwidth', bad({ kind: 'SourceHeld', handoffId: HANDOFF, timing: { mode: 'full_prompt', fullPromptTokens: 1, kvBytesPerToken: 1, bandwidthGBps: Infinity } }), /bandwidth_gb_s must be a finite number/],
    ['negative token count', bad({ kind: 'DestinationReserved', handoffId: HANDOFF, transferablePromptTokens: -1 }), /transferable_prompt_tokens must be an integer/],
    ['lone surrogate', bad({ kind: 'Abort', message: 'bad \ud800 text' }), /message\.Abort\.message contains an unpaired UTF-16 surrogate/],
    ['unknown kind', bad({ kind: 'Hello' } as unknown as HandoffMessage), /message\.kind is not a bootstrap message/],
  ])('refuses %s', (_name, frame, message) => {
    expectWireError(() => handoffFrameJson(frame), message);
    expectWireError(() => encodeHandoffFrame(frame), /^cannot encode bootstrap frame: /);
  });

  it('allows a paired surrogate (an astral character)', () => {
    expect(handoffFrameJson(bad({ kind: 'Abort', message: '😀' }))).toContain('"message":"😀"');
  });
});

describe('parsing: lenient where serde is', () => {
  it('ignores unknown keys at every level', () => {
    const json =
      `{"extra":[1,2.5,{"x":-0}],"identity":{"handoff_id":"${HANDOFF}","bootstrap_room":12345,"request_id":"${REQUEST}","zone":7},` +
      `"message":{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","new":true,"transfer_timing":{"mode":"full_prompt","full_prompt_tokens":8,` +
      `"kv_bytes_per_token":1000000,"bandwidth_gb_s":1.0,"latency":0.25}}}},"trailer":null}`;
    expect(parseHandoffFrame(json)).toEqual({
      identity,
      message: { kind: 'SourceHeld', handoffId: HANDOFF, timing: { mode: 'full_prompt', fullPromptTokens: 8, kvBytesPerToken: 1000000, bandwidthGBps: 1 } },
    });
  });

  it.each([
    ['{"Complete":null}', { kind: 'Complete' }],
    ['{"Registered":null}', { kind: 'Registered' }],
    ['{"Overloaded":null}', { kind: 'Overloaded' }],
    [
      '{"Register":{"role":{"Destination":null},"dp_rank":1,"order":{"DestinationFirst":null},"engine_type":{"sglang":null}}}',
      { kind: 'Register', role: 'Destination', dpRank: 1, order: 'DestinationFirst', engineType: 'sglang' },
    ],
    ['{"ActionAck":{"action_id":7,"outcome":{"Applied":null}}}', { kind: 'ActionAck', actionId: 7n, outcome: 'Applied' }],
  ])('takes a unit variant written as a map: %s', (json, message) => {
    expect(parseHandoffFrame(frameText(json)).message).toEqual(message);
  });

  it('reads missing Option fields as null', () => {
    const json = `{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":{"mode":"destination_missing","full_prompt_tokens":3}}}}`;
    expect(parseHandoffFrame(frameText(json)).message).toEqual({
      kind: 'SourceHeld',
      handoffId: HANDOFF,
      timing: { mode: 'destination_missing', fullPromptTokens: 3, kvBytesPerToken: null, bandwidthGBps: null },
    });
  });

  it('reads an f64 written as an integer, including one beyond 2^53', () => {
    const timing = (bw: string) =>
      `{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":{"mode":"full_prompt","full_prompt_tokens":1,"kv_bytes_per_token":null,"bandwidth_gb_s":${bw}}}}}`;
    const bandwidth = (bw: string) => (parseHandoffFrame(frameText(timing(bw))).message as { timing: { bandwidthGBps: number } }).timing.bandwidthGBps;
    expect(bandwidth('64')).toBe(64);
    expect(bandwidth('6.4e1')).toBe(64);
    expect(bandwidth('-2')).toBe(-2);
    expect(bandwidth('36893488147419103232')).toBe(2 ** 65);
  });

  it('accepts whitespace, bytes input and the UUID forms the uuid crate parses', () => {
    const pretty = `{\n  "identity" : {\n    "handoff_id": "${HANDOFF.toUpperCase()}",\n    "bootstrap_room": 12345,\n    "request_id": "urn:uuid:${REQUEST}"\n  },\n  "message": "Complete"\n}\n`;
    expect(parseHandoffFrame(enc.encode(pretty))).toEqual({ identity, message: { kind: 'Complete' } });
    const compact = frameText('"Complete"', `{"handoff_id":"${HANDOFF.replace(/-/g, '')}","bootstrap_room":12345,"request_id":"{${REQUEST}}"}`);
    expect(parseHandoffFrame(compact).identity).toEqual(identity);
  });
});

describe('parsing: strict elsewhere', () => {
  const MALFORMED = /^bootstrap frame contains malformed JSON/;

  it.each([
    ['{"identity":', MALFORMED],
    ['', MALFORMED],
    [`${frameText('"Complete"')} x`, MALFORMED],
    [`\ufeff${frameText('"Complete"')}`, MALFORMED],
    ['[1,2]', /frame must be an object, got an array/],
    ['null', /frame must be an object, got null/],
  ])('rejects malformed or non-object JSON %#', (json, message) => {
    expectWireError(() => parseHandoffFrame(json), message);
  });

  it('rejects invalid UTF-8', () => {
    const bytes = concatBytes(enc.encode(frameText('{"Abort":{"message":"')), Uint8Array.of(0xc3, 0x28), enc.encode('"}}'));
    expectWireError(() => parseHandoffFrame(bytes), 'bootstrap frame contains malformed JSON: invalid UTF-8');
  });

  const room = (value: string) => frameText('"Complete"', IDENTITY_JSON.replace('12345', value));
  const id = (value: string) => frameText(`{"Action":{"id":${value},"action":{"ReserveDestination":{"handoff_id":"${HANDOFF}"}}}}`);
  const message = (json: string) => frameText(json);
  const held = (timing: string) => message(`{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}","transfer_timing":${timing}}}}`);

  it.each([
    ['missing identity', `{"message":"Complete"}`, 'bootstrap frame contains malformed JSON: frame.identity is missing'],
    ['missing message', `{"identity":${IDENTITY_JSON}}`, /frame\.message is missing/],
    ['missing room', frameText('"Complete"', `{"handoff_id":"${HANDOFF}","request_id":"${REQUEST}"}`), /frame\.identity\.bootstrap_room is missing/],
    ['room above u64', room('18446744073709551616'), /frame\.identity\.bootstrap_room 18446744073709551616 is out of range for u64/],
    ['negative room', room('-1'), /bootstrap_room -1 is out of range for u64/],
    ['room as a float', room('12345.0'), /bootstrap_room must be a u64 integer, got the float 12345/],
    ['room as an exponent', room('1e3'), /bootstrap_room must be a u64 integer, got the float 1000/],
    ['room as -0', room('-0'), /bootstrap_room must be a u64 integer, got the float -0/],
    ['room as a string', room('"12345"'), /bootstrap_room must be a u64 integer, got "12345"/],
    ['room as null', room('null'), /bootstrap_room must be a u64 integer, got null/],
    ['non-UUID handoff id', frameText('"Complete"', IDENTITY_JSON.replace(HANDOFF, 'abc')), /frame\.identity\.handoff_id must be a UUID, got "abc"/],
    ['UUID with misplaced hyphens', frameText('"Complete"', IDENTITY_JSON.replace(HANDOFF, '0b5e9c523-f0a-4d6e-9a71-2c8f4e1d7b90')), /handoff_id must be a UUID/],
    ['request id as a number', frameText('"Complete"', IDENTITY_JSON.replace(`"${REQUEST}"`, '5')), /frame\.identity\.request_id must be a string, got 5/],
    ['action id above u64', id('18446744073709551616'), /frame\.message\.Action\.id 18446744073709551616 is out of range for u64/],
    ['action id as a float', id('1.0'), /frame\.message\.Action\.id must be a u64 integer, got the float 1/],
    ['action id as a string', id('"1"'), /frame\.message\.Action\.id must be a u64 integer, got "1"/],
    ['unknown message', message('"Hello"'), /frame\.message has unknown bootstrap message "Hello"/],
    ['lowercase variant', message('"complete"'), /unknown bootstrap message "complete"/],
    ['two-key enum object', message('{"Complete":null,"Overloaded":null}'), /frame\.message must be a variant name or an object with exactly one key/],
    ['empty enum object', message('{}'), /exactly one key/],
    ['unit variant with data', message('{"Complete":{}}'), /frame\.message\.Complete must be null \(Complete carries no data\)/],
    ['data variant as a bare string', message('"Abort"'), /frame\.message variant Abort carries data and cannot be a bare string/],
    ['Abort without message', message('{"Abort":{}}'), /frame\.message\.Abort\.message is missing/],
    ['Abort with null', message('{"Abort":null}'), /frame\.message\.Abort must be an object, got null/],
    ['lone surrogate escape', message('{"Abort":{"message":"bad \\ud800 text"}}'), /Abort\.message contains an unpaired UTF-16 surrogate escape/],
    ['ProtocolError message not a string', message('{"ProtocolError":{"message":1}}'), /ProtocolError\.message must be a string/],
    ['source role', message('{"Register":{"role":"Source","dp_rank":0,"order":"SourceFirst","engine_type":"vllm"}}'), /Register\.role has unknown participant role "Source"/],
    ['unknown order', message('{"Register":{"role":"Destination","dp_rank":0,"order":"sourcefirst","engine_type":"vllm"}}'), /Register\.order has unknown handoff order "sourcefirst"/],
    ['unknown engine', message('{"Register":{"role":"Destination","dp_rank":0,"order":"SourceFirst","engine_type":"TRTLLM"}}'), /Register\.engine_type has unknown engine type "TRTLLM"/],
    ['dp_rank above u32', message('{"Register":{"role":"Destination","dp_rank":4294967296,"order":"SourceFirst","engine_type":"vllm"}}'), /Register\.dp_rank 4294967296 is out of range for u32/],
    ['missing dp_rank', message('{"Register":{"role":"Destination","order":"SourceFirst","engine_type":"vllm"}}'), /Register\.dp_rank is missing/],
    ['source-local action', message(`{"Action":{"id":0,"action":{"SubmitPrefill":{"handoff_id":"${HANDOFF}"}}}}`), /Action\.action holds SubmitPrefill, a source-local action/],
    ['StartTransfer action', message(`{"Action":{"id":2,"action":{"StartTransfer":{"handoff_id":"${HANDOFF}","delay_ms":8.0}}}}`), /holds StartTransfer, a source-local action/],
    ['Complete action', message(`{"Action":{"id":5,"action":{"Complete":{"handoff_id":"${HANDOFF}"}}}}`), /holds Complete, a source-local action/],
    ['unknown action', message(`{"Action":{"id":1,"action":{"Teleport":{"handoff_id":"${HANDOFF}"}}}}`), /has unknown destination action "Teleport"/],
    ['action without handoff id', message('{"Action":{"id":1,"action":{"ReserveDestination":{}}}}'), /ReserveDestination\.handoff_id is missing/],
    ['unknown outcome', message('{"ActionAck":{"action_id":1,"outcome":"Done"}}'), /ActionAck\.outcome has unknown action outcome "Done"/],
    ['Failed without text', message('{"ActionAck":{"action_id":1,"outcome":"Failed"}}'), /variant Failed carries data/],
    ['Failed with a number', message('{"ActionAck":{"action_id":1,"outcome":{"Failed":3}}}'), /outcome\.Failed must be a string, got 3/],
    ['negative action_id', message('{"ActionAck":{"action_id":-1,"outcome":"Noop"}}'), /ActionAck\.action_id -1 is out of range for u64/],
    ...['TransferCompleted', 'Failed', 'TimedOut', 'Canceled'].map(
      (fact) => [`offline fact ${fact}`, message(`{"Fact":{"${fact}":{"handoff_id":"${HANDOFF}"}}}`), new RegExp(`frame\\.message\\.Fact holds unsupported fact ${fact}`)] as [string, string, RegExp],
    ),
    ['unknown fact', message(`{"Fact":{"Teleported":{"handoff_id":"${HANDOFF}"}}}`), /frame\.message\.Fact has unknown fact "Teleported"/],
    ['unknown timing mode', held('{"mode":"FullPrompt","full_prompt_tokens":1}'), /transfer_timing\.mode has unknown transfer timing mode "FullPrompt"/],
    ['float token count', held('{"mode":"full_prompt","full_prompt_tokens":8.0}'), /full_prompt_tokens must be a usize integer, got the float 8/],
    ['token count beyond 2^53', held('{"mode":"full_prompt","full_prompt_tokens":9007199254740992}'), /full_prompt_tokens 9007199254740992 exceeds 9007199254740991/],
    ['negative kv bytes', held('{"mode":"full_prompt","full_prompt_tokens":1,"kv_bytes_per_token":-5}'), /kv_bytes_per_token -5 is out of range for usize/],
    ['bandwidth as a string', held('{"mode":"full_prompt","full_prompt_tokens":1,"bandwidth_gb_s":"1"}'), /bandwidth_gb_s must be a number, got "1"/],
    ['bandwidth out of f64 range', held('{"mode":"full_prompt","full_prompt_tokens":1,"bandwidth_gb_s":1e400}'), /bandwidth_gb_s is out of range for f64/],
    ['missing transfer timing', message(`{"Fact":{"SourceHeld":{"handoff_id":"${HANDOFF}"}}}`), /SourceHeld\.transfer_timing is missing/],
    ['reserved tokens as a float', message(`{"Fact":{"DestinationReserved":{"handoff_id":"${HANDOFF}","transferable_prompt_tokens":1.5}}}`), /transferable_prompt_tokens must be a usize integer, got the float 1\.5/],
  ])('rejects %s', (_name, json, expected) => {
    expectWireError(() => parseHandoffFrame(json), expected);
    if (typeof expected !== 'string') expectWireError(() => parseHandoffFrame(json), MALFORMED);
  });

  it('takes an escaped surrogate pair', () => {
    expect(parseHandoffFrame(frameText('{"Abort":{"message":"\\ud83d\\ude00"}}')).message).toEqual({ kind: 'Abort', message: '😀' });
  });

  it('tells floats from integers even when strings and keys look numeric', () => {
    const json = frameText(`{"Abort":{"message":"1.0 -0 2e5"}}`, `{"1.0":1.5,"handoff_id":"${HANDOFF}","bootstrap_room":7,"request_id":"${REQUEST}","x":"\\"3.5"}`);
    expect(parseHandoffFrame(json)).toEqual({ identity: { ...identity, bootstrapRoom: 7n }, message: { kind: 'Abort', message: '1.0 -0 2e5' } });
  });
});

describe('HandoffFrameDecoder', () => {
  // The SourceFirst session from both directions, as one byte stream.
  const session: HandoffFrame[] = MESSAGES.map(([message], i) => ({
    identity: { ...identity, bootstrapRoom: i % 2 === 0 ? 18446744073709551615n : 2n ** 63n + 5n },
    message,
  }));
  const stream = concatBytes(...session.map(encodeHandoffFrame));

  it('returns several frames from one chunk', () => {
    const decoder = new HandoffFrameDecoder();
    expect(decoder.push(stream)).toEqual(session);
    expect(decoder.bufferedBytes).toBe(0);
    expect(() => decoder.finish()).not.toThrow();
  });

  it('reassembles frames split at every byte boundary', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new HandoffFrameDecoder();
      const frames = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      expect(frames).toEqual(session);
    }
  });

  it('reassembles a stream fed one byte at a time', () => {
    const decoder = new HandoffFrameDecoder();
    const frames: HandoffFrame[] = [];
    for (let i = 0; i < stream.length; i++) frames.push(...decoder.push(stream.subarray(i, i + 1)));
    expect(frames).toEqual(session);
  });

  it('reports bytes buffered inside a frame and refuses to finish there', () => {
    const one = encodeHandoffFrame(session[0]);
    const decoder = new HandoffFrameDecoder();
    expect(decoder.push(one.subarray(0, 2))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(2);
    expect(decoder.push(one.subarray(2, 10))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(10);
    expectWireError(() => decoder.finish(), 'bootstrap stream ended inside a frame (10 bytes buffered)');
    expect(decoder.push(one.subarray(10))).toEqual([session[0]]);
    expect(() => decoder.finish()).not.toThrow();
  });

  it('accepts a 65536-byte frame', () => {
    const base = encodeHandoffFrame({ identity, message: { kind: 'Abort', message: '' } }).length - 4;
    const frame: HandoffFrame = { identity, message: { kind: 'Abort', message: 'y'.repeat(MAX_HANDOFF_FRAME_BYTES - base) } };
    const bytes = encodeHandoffFrame(frame);
    const decoder = new HandoffFrameDecoder();
    expect(decoder.push(bytes.subarray(0, 30000))).toEqual([]);
    expect(decoder.push(bytes.subarray(30000))).toEqual([frame]);
  });

  it('rejects an empty frame', () => {
    expectWireError(() => new HandoffFrameDecoder().push(Uint8Array.of(0, 0, 0, 0)), 'bootstrap received an empty frame');
  });

  it('rejects an oversized length as soon as the prefix is complete', () => {
    const decoder = new HandoffFrameDecoder();
    expect(decoder.push(Uint8Array.of(0x01, 0x00))).toEqual([]);
    expectWireError(() => decoder.push(Uint8Array.of(0x01, 0x00)), 'bootstrap received a frame of 65537 bytes, more than the 65536-byte limit');
    expectWireError(() => new HandoffFrameDecoder().push(Uint8Array.of(0xff, 0xff, 0xff, 0xff)), /frame of 4294967295 bytes/);
  });

  it('rejects a frame with malformed JSON and stays failed', () => {
    const decoder = new HandoffFrameDecoder();
    expectWireError(() => decoder.push(lengthPrefixed(enc.encode('{nope'))), /^bootstrap frame contains malformed JSON/);
    expectWireError(() => decoder.push(stream), /^bootstrap frame contains malformed JSON/);
    expectWireError(() => decoder.finish(), /^bootstrap frame contains malformed JSON/);
  });

  it('hands over the frames before a bad one, then reports the error', () => {
    const good = encodeHandoffFrame({ identity, message: { kind: 'Complete' } });
    const decoder = new HandoffFrameDecoder();
    expect(decoder.push(concatBytes(good, Uint8Array.of(0, 0, 0, 0), good))).toEqual([{ identity, message: { kind: 'Complete' } }]);
    expectWireError(() => decoder.push(good), 'bootstrap received an empty frame');
    expectWireError(() => decoder.finish(), 'bootstrap received an empty frame');
  });

  it('does not depend on the chunk staying unchanged after push', () => {
    const bytes = encodeHandoffFrame({ identity, message: { kind: 'Overloaded' } });
    const chunk = Uint8Array.from(bytes.subarray(0, 20));
    const decoder = new HandoffFrameDecoder();
    decoder.push(chunk);
    chunk.fill(0);
    expect(decoder.push(bytes.subarray(20))).toEqual([{ identity, message: { kind: 'Overloaded' } }]);
  });
});
