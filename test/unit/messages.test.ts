// Wire message parsing/validation and response builders against the Dynamo wire contract (§3, §4).
import { describe, expect, it } from 'vitest';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import {
  annotatedError,
  completeFinalBody,
  dataItemBody,
  handshakeHeader,
  llmDataItemBody,
  llmEngineOutput,
  parseControlMessage,
  parsePreprocessedRequest,
  parseRequestControl,
  prologueHeader,
  SENTINEL_HEADER,
  WireError,
  DUMMY_DISAGGREGATED_PARAMS,
} from '../../src/dynamo/messages.js';

const ID = '8a0c2c8e-2d76-4c49-9d3c-7d7f8f0a6c11';
const enc = new TextEncoder();

function info(over: Record<string, unknown> = {}): string {
  return JSON.stringify({ address: '10.0.0.7:41377', subject: '5b0f-subject', context: ID, stream_type: 'response', ...over });
}
function control(over: Record<string, unknown> = {}, ciOver: Record<string, unknown> = {}): string {
  return JSON.stringify({
    id: ID,
    request_type: 'single_in',
    response_type: 'many_out',
    connection_info: { transport: 'tcp_server', info: info(), ...ciOver },
    ...over,
  });
}

function wireError(fn: () => unknown): WireError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WireError);
    return err as WireError;
  }
  return expect.unreachable('expected WireError');
}

describe('parseRequestControl', () => {
  it('parses the reference example (string and bytes)', () => {
    const expected = {
      id: ID,
      requestType: 'single_in',
      responseType: 'many_out',
      connectionInfo: { address: '10.0.0.7:41377', subject: '5b0f-subject', context: ID, streamType: 'response' },
    };
    expect(parseRequestControl(control())).toEqual(expected);
    expect(parseRequestControl(enc.encode(control()))).toEqual(expected);
  });

  it('ignores unknown fields', () => {
    expect(parseRequestControl(control({ extra: 1 }, { more: [1] })).id).toBe(ID);
  });

  it('rejects bad JSON', () => {
    const e = wireError(() => parseRequestControl('{"id":'));
    expect(e.message).toMatch(/invalid JSON/);
    expect(e.cause).toBeInstanceOf(SyntaxError);
  });

  it('rejects a non-object header', () => {
    expect(wireError(() => parseRequestControl('"stop"')).message).toMatch(/must be an object/);
  });

  it('rejects missing or mistyped fields, naming the field', () => {
    expect(wireError(() => parseRequestControl(control({ id: undefined }))).field).toBe('id');
    expect(wireError(() => parseRequestControl(control({ id: 5 }))).message).toMatch(/id must be a string/);
    expect(wireError(() => parseRequestControl(control({ request_type: 'bogus' }))).field).toBe('request_type');
    expect(wireError(() => parseRequestControl(control({ response_type: 'x' }))).field).toBe('response_type');
    expect(wireError(() => parseRequestControl(control({ connection_info: undefined }))).message).toMatch(
      /missing field `connection_info`/,
    );
    expect(wireError(() => parseRequestControl(control({ connection_info: 'x' }))).field).toBe('connection_info');
  });

  it('rejects a transport other than tcp_server', () => {
    const e = wireError(() => parseRequestControl(control({}, { transport: 'nats' })));
    expect(e.field).toBe('connection_info.transport');
    expect(e.message).toMatch(/tcp_server/);
  });

  it('rejects info that is not a string', () => {
    const e = wireError(() =>
      parseRequestControl(control({}, { info: { address: 'a', subject: 's', context: ID, stream_type: 'response' } })),
    );
    expect(e.field).toBe('connection_info.info');
    expect(e.message).toMatch(/JSON-encoded string/);
  });

  it('rejects info strings that are not valid JSON objects', () => {
    expect(wireError(() => parseRequestControl(control({}, { info: '{not json' }))).message).toMatch(/invalid JSON/);
    expect(wireError(() => parseRequestControl(control({}, { info: '[1]' }))).field).toBe('connection_info.info');
  });

  it('rejects missing info fields', () => {
    const e = wireError(() => parseRequestControl(control({}, { info: info({ address: undefined }) })));
    expect(e.field).toBe('connection_info.info.address');
  });

  it('rejects stream_type other than response', () => {
    const e = wireError(() => parseRequestControl(control({}, { info: info({ stream_type: 'request' }) })));
    expect(e.field).toBe('connection_info.info.stream_type');
  });

  it('rejects a context that does not match id', () => {
    const e = wireError(() => parseRequestControl(control({}, { info: info({ context: 'other' }) })));
    expect(e.field).toBe('connection_info.info.context');
    expect(e.message).toMatch(/does not match id/);
  });
});

const FULL_BODY =
  '{"model":"Qwen/Qwen3-0.6B","token_ids":[151644,872,198,9707],' +
  '"stop_conditions":{"max_tokens":32,"stop":null,"stop_token_ids_hidden":[151645,151643],"min_tokens":null,"ignore_eos":null,"max_thinking_tokens":null},' +
  '"sampling_options":{"n":null,"best_of":null,"temperature":0.7,"top_p":null,"seed":null},' +
  '"output_options":{"logprobs":null,"prompt_logprobs":null,"skip_special_tokens":null,"formatted_prompt":null},' +
  '"eos_token_ids":[151645],"mdc_sum":"abc","annotations":["formatted_prompt"],' +
  '"estimated_prefix_hit_num_blocks":null,"backend_instance_id":7587889726860452269,"router_config_override":null,"dp_rank":1}';

function body(over: Record<string, unknown>): string {
  const base = {
    token_ids: [1, 2, 3],
    stop_conditions: { max_tokens: 4 },
    eos_token_ids: [],
    annotations: [],
  };
  return JSON.stringify({ ...base, ...over });
}

describe('parsePreprocessedRequest', () => {
  it('parses a full 0.6.1-style request losslessly', () => {
    const r = parsePreprocessedRequest(FULL_BODY);
    expect(r).toMatchObject({
      model: 'Qwen/Qwen3-0.6B',
      tokenIds: [151644, 872, 198, 9707],
      maxTokens: 32,
      stopTokenIdsHidden: [151645, 151643],
      eosTokenIds: [151645],
      minTokens: null,
      ignoreEos: null,
      dpRank: 1,
      backendInstanceId: 7587889726860452269n,
      annotations: ['formatted_prompt'],
    });
    expect((r.raw as { sampling_options: { temperature: number } }).sampling_options.temperature).toBe(0.7);
    expect(parsePreprocessedRequest(enc.encode(FULL_BODY)).tokenIds).toEqual([151644, 872, 198, 9707]);
  });

  it('applies defaults for optional and older-version fields', () => {
    const r = parsePreprocessedRequest('{"token_ids":[5],"stop_conditions":{}}');
    expect(r).toEqual({
      tokenIds: [5],
      maxTokens: null,
      stopTokenIdsHidden: [],
      eosTokenIds: [],
      minTokens: null,
      ignoreEos: null,
      dpRank: null,
      backendInstanceId: null,
      annotations: [],
      bootstrapInfo: null,
      raw: { token_ids: [5], stop_conditions: {} },
    });
    expect('model' in r).toBe(false);
  });

  it('accepts u32 bounds and small backend_instance_id', () => {
    const r = parsePreprocessedRequest(
      body({ token_ids: [0, 4294967295], stop_conditions: { max_tokens: 0, min_tokens: 1, ignore_eos: true }, backend_instance_id: 7 }),
    );
    expect(r.tokenIds).toEqual([0, 4294967295]);
    expect(r.maxTokens).toBe(0);
    expect(r.minTokens).toBe(1);
    expect(r.ignoreEos).toBe(true);
    expect(r.backendInstanceId).toBe(7);
  });

  it('rejects bad JSON and non-object bodies', () => {
    expect(wireError(() => parsePreprocessedRequest('{"token_ids":[1,]}')).message).toMatch(/invalid JSON/);
    expect(wireError(() => parsePreprocessedRequest('[1,2]')).message).toMatch(/must be an object/);
  });

  it.each([
    ['missing', undefined],
    ['empty', []],
    ['null', null],
    ['string', '1,2'],
    ['object', { 0: 1 }],
  ])('rejects token_ids %s', (_name, tokenIds) => {
    const e = wireError(() => parsePreprocessedRequest(body({ token_ids: tokenIds })));
    expect(e.field).toBe('token_ids');
    expect(e.message).toMatch(/token_ids must be a non-empty array of u32/);
  });

  it.each([[-1], [1.5], [4294967296], ['7'], [null], [true]])('rejects token id %j', (bad) => {
    const e = wireError(() => parsePreprocessedRequest(body({ token_ids: [1, bad] })));
    expect(e.field).toBe('token_ids[1]');
    expect(e.message).toMatch(/u32/);
  });

  it('rejects token ids too big even for a double', () => {
    const e = wireError(() => parsePreprocessedRequest('{"token_ids":[18446744073709551615],"stop_conditions":{}}'));
    expect(e.field).toBe('token_ids[0]');
  });

  it('requires stop_conditions to be an object', () => {
    const missing = wireError(() => parsePreprocessedRequest(body({ stop_conditions: undefined })));
    expect(missing.message).toMatch(/missing field `stop_conditions`/);
    expect(missing.field).toBe('stop_conditions');
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: null }))).field).toBe('stop_conditions');
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: [4] }))).field).toBe('stop_conditions');
  });

  it('validates stop_conditions members', () => {
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: { max_tokens: -1 } }))).field).toBe(
      'stop_conditions.max_tokens',
    );
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: { max_tokens: '4' } }))).field).toBe(
      'stop_conditions.max_tokens',
    );
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: { min_tokens: 2.5 } }))).field).toBe(
      'stop_conditions.min_tokens',
    );
    expect(wireError(() => parsePreprocessedRequest(body({ stop_conditions: { ignore_eos: 1 } }))).field).toBe(
      'stop_conditions.ignore_eos',
    );
    expect(
      wireError(() => parsePreprocessedRequest(body({ stop_conditions: { stop_token_ids_hidden: [1, -2] } }))).field,
    ).toBe('stop_conditions.stop_token_ids_hidden[1]');
    expect(
      wireError(() => parsePreprocessedRequest(body({ stop_conditions: { stop_token_ids_hidden: 5 } }))).field,
    ).toBe('stop_conditions.stop_token_ids_hidden');
  });

  it('validates other typed fields', () => {
    expect(wireError(() => parsePreprocessedRequest(body({ model: 5 }))).field).toBe('model');
    expect(wireError(() => parsePreprocessedRequest(body({ eos_token_ids: null }))).field).toBe('eos_token_ids');
    expect(wireError(() => parsePreprocessedRequest(body({ eos_token_ids: ['a'] }))).field).toBe('eos_token_ids[0]');
    expect(wireError(() => parsePreprocessedRequest(body({ annotations: 'x' }))).field).toBe('annotations');
    expect(wireError(() => parsePreprocessedRequest(body({ annotations: [1] }))).field).toBe('annotations[0]');
    expect(wireError(() => parsePreprocessedRequest(body({ dp_rank: -1 }))).field).toBe('dp_rank');
    expect(wireError(() => parsePreprocessedRequest(body({ dp_rank: '0' }))).field).toBe('dp_rank');
    expect(wireError(() => parsePreprocessedRequest(body({ backend_instance_id: 'x' }))).field).toBe(
      'backend_instance_id',
    );
    expect(wireError(() => parsePreprocessedRequest(body({ backend_instance_id: 1.5 }))).field).toBe(
      'backend_instance_id',
    );
    expect(
      wireError(() =>
        parsePreprocessedRequest('{"token_ids":[1],"stop_conditions":{},"backend_instance_id":18446744073709551616}'),
      ).field,
    ).toBe('backend_instance_id');
  });
});

describe('response builders', () => {
  it('handshake header matches the §4.1 bytes', () => {
    expect(handshakeHeader('abc')).toBe('{"subject":"abc","stream_type":"response"}');
    expect(JSON.parse(handshakeHeader('a"b'))).toEqual({ subject: 'a"b', stream_type: 'response' });
  });

  it('prologue headers', () => {
    expect(prologueHeader(null)).toBe('{"error":null}');
    expect(prologueHeader('dp_rank 3 >= dp_size 1')).toBe('{"error":"dp_rank 3 >= dp_size 1"}');
    expect(JSON.parse(prologueHeader('quote " and \n'))).toEqual({ error: 'quote " and \n' });
  });

  it('final and sentinel', () => {
    expect(completeFinalBody()).toBe('{"complete_final":true}');
    expect(SENTINEL_HEADER).toBe('"sentinel"');
    expect(enc.encode(SENTINEL_HEADER).length).toBe(10);
  });

  it('llmEngineOutput writes every field the way serde does', () => {
    expect(dataItemBody(llmEngineOutput({ tokenIds: [4021] }))).toBe(
      '{"data":{"data":{"token_ids":[4021],"tokens":null,"text":null,"cum_log_probs":null,"log_probs":null,"top_logprobs":null,"finish_reason":null,"index":null}},"complete_final":false}',
    );
  });

  it('llmDataItemBody equals dataItemBody(llmEngineOutput(...))', () => {
    for (const o of [
      { tokenIds: [1] },
      { tokenIds: [], finishReason: 'length' as const },
      { tokenIds: new Uint32Array([1, 2, 3]), finishReason: { error: 'boom "x"' } },
      { tokenIds: [7], usage: { promptTokens: 10, completionTokens: 3, cachedTokens: 4 } },
    ]) {
      expect(llmDataItemBody(o)).toBe(dataItemBody(llmEngineOutput(o)));
      expect(() => JSON.parse(llmDataItemBody(o))).not.toThrow();
    }
  });

  it('finish reasons', () => {
    const fr = (f: Parameters<typeof llmEngineOutput>[0]['finishReason']) =>
      (JSON.parse(llmEngineOutput({ tokenIds: [], finishReason: f })) as { data: { finish_reason: unknown } }).data
        .finish_reason;
    expect(fr(undefined)).toBeNull();
    expect(fr(null)).toBeNull();
    expect(fr('length')).toBe('length');
    expect(fr('cancelled')).toBe('cancelled');
    expect(fr('eos')).toBe('eos');
    expect(fr('stop')).toBe('stop');
    expect(fr('content_filter')).toBe('content_filter');
    expect(fr({ error: 'oops' })).toEqual({ error: 'oops' });
    expect(() => llmEngineOutput({ tokenIds: [], finishReason: 'bogus' as never })).toThrow(RangeError);
  });

  it('usage goes in completion_usage after index', () => {
    const s = llmEngineOutput({ tokenIds: [1, 2], finishReason: 'length', usage: { promptTokens: 5, completionTokens: 2 } });
    expect(s).toBe(
      '{"data":{"token_ids":[1,2],"tokens":null,"text":null,"cum_log_probs":null,"log_probs":null,"top_logprobs":null,"finish_reason":"length","index":null,"completion_usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}}',
    );
    const withCached = JSON.parse(
      llmEngineOutput({ tokenIds: [1], usage: { promptTokens: 5, completionTokens: 1, cachedTokens: 4, totalTokens: 99 } }),
    );
    expect(withCached.data.completion_usage).toEqual({
      prompt_tokens: 5,
      completion_tokens: 1,
      total_tokens: 99,
      prompt_tokens_details: { cached_tokens: 4 },
    });
  });

  it('rejects token ids that would produce invalid JSON', () => {
    expect(() => llmEngineOutput({ tokenIds: [NaN] })).toThrow(RangeError);
    expect(() => llmEngineOutput({ tokenIds: [-1] })).toThrow(RangeError);
    expect(() => llmEngineOutput({ tokenIds: [1.5] })).toThrow(RangeError);
  });

  it('annotated error item', () => {
    expect(annotatedError('engine died')).toBe('{"event":"error","comment":["engine died"]}');
    expect(dataItemBody(annotatedError('x'))).toBe('{"data":{"event":"error","comment":["x"]},"complete_final":false}');
  });

  it('dataItemBody serializes objects (with bigint) when not given text', () => {
    expect(dataItemBody({ data: { token_ids: [1] }, id: 12345678901234567890n })).toBe(
      '{"data":{"data":{"token_ids":[1]},"id":12345678901234567890},"complete_final":false}',
    );
    expect(parseJson(dataItemBody({ event: 'error', comment: ['m'] }))).toEqual({
      data: { event: 'error', comment: ['m'] },
      complete_final: false,
    });
  });
});

describe('parseControlMessage', () => {
  it('recognises the frontend control frames', () => {
    expect(parseControlMessage(enc.encode('"stop"'))).toBe('stop');
    expect(parseControlMessage(enc.encode('"kill"'))).toBe('kill');
    expect(parseControlMessage(enc.encode('"sentinel"'))).toBe('sentinel');
    expect(parseControlMessage('"kill"')).toBe('kill');
    expect(parseControlMessage(enc.encode(' "stop"\n'))).toBe('stop');
  });

  it('returns null for anything else', () => {
    expect(parseControlMessage(new Uint8Array(0))).toBeNull();
    expect(parseControlMessage(enc.encode('"Stop"'))).toBeNull();
    expect(parseControlMessage(enc.encode('stop'))).toBeNull();
    expect(parseControlMessage(enc.encode('{"error":null}'))).toBeNull();
    expect(parseControlMessage(enc.encode('"stop'))).toBeNull();
    expect(parseControlMessage(new Uint8Array(100).fill(0x20))).toBeNull();
  });
});

describe('disaggregation fields', () => {
  const body = (extra: Record<string, unknown>) => JSON.stringify({ token_ids: [1, 2], stop_conditions: { max_tokens: 1 }, ...extra });

  it('reads bootstrap_info with an exact u64 room and a normalised handoff id', () => {
    const text = body({}).slice(0, -1) + ',"bootstrap_info":{"bootstrap_host":"10.0.0.1","bootstrap_port":7001,"bootstrap_room":18446744073709551615,"handoff_id":"0F8E3C2A-1111-4222-8333-944445555666"}}';
    const r = parsePreprocessedRequest(text);
    expect(r.bootstrapInfo).toEqual({ host: '10.0.0.1', port: 7001, room: 18446744073709551615n, handoffId: '0f8e3c2a-1111-4222-8333-944445555666' });
    expect(parsePreprocessedRequest(body({ bootstrap_info: { bootstrap_host: 'h', bootstrap_port: 1, bootstrap_room: 3 } })).bootstrapInfo?.handoffId).toBeNull();
  });

  it('accepts a decode request prefilled elsewhere: prefill_result (1.x) or top-level disaggregated_params (0.6.1)', () => {
    expect(parsePreprocessedRequest(body({ prefill_result: { disaggregated_params: 'dummy' } })).tokenIds).toEqual([1, 2]);
    expect(parsePreprocessedRequest(body({ disaggregated_params: 'dummy' })).tokenIds).toEqual([1, 2]);
    expect(parsePreprocessedRequest(body({ prefill_result: null })).tokenIds).toEqual([1, 2]);
  });

  it.each([
    [{ bootstrap_info: 'x' }, /bootstrap_info must be an object/],
    [{ bootstrap_info: { bootstrap_host: 'h', bootstrap_port: 70000, bootstrap_room: 1 } }, /bootstrap_port must be a u16/],
    [{ bootstrap_info: { bootstrap_host: 'h', bootstrap_port: 1, bootstrap_room: -1 } }, /bootstrap_room must be a u64/],
    [{ bootstrap_info: { bootstrap_port: 1, bootstrap_room: 1 } }, /missing field `bootstrap_info.bootstrap_host`/],
    [{ bootstrap_info: { bootstrap_host: 'h', bootstrap_port: 1, bootstrap_room: 1, handoff_id: 'abc' } }, /handoff_id must be a UUID/],
    [{ prefill_result: [1] }, /prefill_result must be an object/],
  ])('refuses malformed handoff fields %#', (extra, message) => {
    expect(() => parsePreprocessedRequest(body(extra))).toThrow(message);
  });

  it("writes a prefill's disaggregated_params after index, before completion_usage", () => {
    expect(llmEngineOutput({ tokenIds: [5], disaggregatedParamsJson: DUMMY_DISAGGREGATED_PARAMS })).toBe(
      '{"data":{"token_ids":[5],"tokens":null,"text":null,"cum_log_probs":null,"log_probs":null,"top_logprobs":null,"finish_reason":null,"index":null,"disaggregated_params":"dummy"}}',
    );
  });
});
