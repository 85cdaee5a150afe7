// Dynamo request/response wire messages: validating parsers for what the frontend sends, builders for replies.
import { canonicalUuid } from './handoff-wire.js';
import { JsonSyntaxError, parseJson, stringifyJson, type JsonValue } from './lossless-json.js';

/** A wire message that does not match Dynamo's schema; `field` is the dotted path of the offending field. */
export class WireError extends Error {
  readonly field: string | undefined;
  constructor(message: string, field?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WireError';
    this.field = field;
  }
}

type JsonObject = { [key: string]: JsonValue };

const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'bigint') return `integer ${v}`;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer ${v}` : `number ${v}`;
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return typeof v;
}

function parseDoc(text: string | Uint8Array, what: string): JsonValue {
  try {
    return parseJson(text);
  } catch (err) {
    if (err instanceof JsonSyntaxError) throw new WireError(`${what}: invalid JSON: ${err.message}`, undefined, { cause: err });
    throw err;
  }
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function expectObject(v: unknown, field: string, what: string): JsonObject {
  if (!isObject(v)) throw new WireError(`${what}: ${field} must be an object, got ${describe(v)}`, field);
  return v;
}

function child(obj: JsonObject, key: string): JsonValue | undefined {
  return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

function requireField(obj: JsonObject, key: string, path: string, what: string): JsonValue {
  const v = child(obj, key);
  // serde: a missing non-Option field is a hard error.
  if (v === undefined) throw new WireError(`${what}: missing field \`${path}\``, path);
  return v;
}

function requireString(obj: JsonObject, key: string, path: string, what: string): string {
  const v = requireField(obj, key, path, what);
  if (typeof v !== 'string') throw new WireError(`${what}: ${path} must be a string, got ${describe(v)}`, path);
  return v;
}

function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= U32_MAX;
}

function optionalU32(obj: JsonObject, key: string, path: string, what: string): number | null {
  const v = child(obj, key);
  if (v === undefined || v === null) return null;
  if (!isU32(v)) throw new WireError(`${what}: ${path} must be null or a u32 integer, got ${describe(v)}`, path);
  return v;
}

function optionalBool(obj: JsonObject, key: string, path: string, what: string): boolean | null {
  const v = child(obj, key);
  if (v === undefined || v === null) return null;
  if (typeof v !== 'boolean') throw new WireError(`${what}: ${path} must be null or a boolean, got ${describe(v)}`, path);
  return v;
}

function u32Array(v: JsonValue | undefined, path: string, what: string, nullAsEmpty: boolean): number[] {
  if (v === undefined || (v === null && nullAsEmpty)) return [];
  if (!Array.isArray(v)) throw new WireError(`${what}: ${path} must be an array of u32 integers, got ${describe(v)}`, path);
  for (let i = 0; i < v.length; i++) {
    if (!isU32(v[i])) {
      throw new WireError(`${what}: ${path}[${i}] must be a u32 integer, got ${describe(v[i])}`, `${path}[${i}]`);
    }
  }
  return v as number[];
}

// ---------------------------------------------------------------------------------------------
// Request header: RequestControlMessage

export type RequestType = 'single_in' | 'many_in';
export type ResponseType = 'single_out' | 'many_out';

/** Decoded TcpStreamConnectionInfo: where and how to call the frontend back. */
export interface ConnectionInfo {
  address: string;
  subject: string;
  context: string;
  streamType: string;
}

export interface RequestControl {
  id: string;
  requestType: RequestType;
  responseType: ResponseType;
  connectionInfo: ConnectionInfo;
  /** 1.4+ `payload_codec` ("json" or "msgpack"); absent from older frontends, meaning JSON. */
  payloadCodec?: string;
}

const RCM = 'RequestControlMessage';

/** Parses and validates the two-part header of a request; rejects anything the Rust worker would refuse. */
export function parseRequestControl(headerJson: string | Uint8Array): RequestControl {
  const root = expectObject(parseDoc(headerJson, RCM), 'header', RCM);
  const id = requireString(root, 'id', 'id', RCM);
  const requestType = requireString(root, 'request_type', 'request_type', RCM);
  if (requestType !== 'single_in' && requestType !== 'many_in') {
    throw new WireError(`${RCM}: request_type must be "single_in" or "many_in", got ${describe(requestType)}`, 'request_type');
  }
  const responseType = requireString(root, 'response_type', 'response_type', RCM);
  if (responseType !== 'single_out' && responseType !== 'many_out') {
    throw new WireError(
      `${RCM}: response_type must be "single_out" or "many_out", got ${describe(responseType)}`,
      'response_type',
    );
  }
  const ci = expectObject(requireField(root, 'connection_info', 'connection_info', RCM), 'connection_info', RCM);
  const transport = requireString(ci, 'transport', 'connection_info.transport', RCM);
  if (transport !== 'tcp_server') {
    throw new WireError(
      `${RCM}: connection_info.transport must be "tcp_server", got ${describe(transport)}`,
      'connection_info.transport',
    );
  }
  const infoRaw = requireField(ci, 'info', 'connection_info.info', RCM);
  if (typeof infoRaw !== 'string') {
    throw new WireError(
      `${RCM}: connection_info.info must be a JSON-encoded string, got ${describe(infoRaw)}`,
      'connection_info.info',
    );
  }
  const INFO = `${RCM}: connection_info.info`;
  const info = expectObject(parseDoc(infoRaw, INFO), 'connection_info.info', RCM);
  const address = requireString(info, 'address', 'connection_info.info.address', RCM);
  const subject = requireString(info, 'subject', 'connection_info.info.subject', RCM);
  const context = requireString(info, 'context', 'connection_info.info.context', RCM);
  const streamType = requireString(info, 'stream_type', 'connection_info.info.stream_type', RCM);
  if (streamType !== 'response') {
    throw new WireError(
      `${RCM}: connection_info.info.stream_type must be "response", got ${describe(streamType)}`,
      'connection_info.info.stream_type',
    );
  }
  if (context !== id) {
    throw new WireError(
      `${RCM}: connection_info.info.context ${describe(context)} does not match id ${describe(id)}`,
      'connection_info.info.context',
    );
  }
  const codec = child(root, 'payload_codec');
  if (codec !== undefined && codec !== null && typeof codec !== 'string') {
    throw new WireError(`${RCM}: payload_codec must be a string, got ${describe(codec)}`, 'payload_codec');
  }
  const out: RequestControl = { id, requestType, responseType, connectionInfo: { address, subject, context, streamType } };
  if (typeof codec === 'string') out.payloadCodec = codec;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Request body: PreprocessedRequest

/** `BootstrapInfo`: where the prefill worker's bootstrap server is and which session this request belongs to. */
export interface BootstrapInfo {
  host: string;
  port: number;
  /** u64. */
  room: bigint;
  /** UUID string (1.3+); null from older frontends. */
  handoffId: string | null;
}

function parseBootstrapInfo(v: JsonValue | undefined): BootstrapInfo | null {
  if (v === undefined || v === null) return null;
  const o = expectObject(v, 'bootstrap_info', PPR);
  const host = requireString(o, 'bootstrap_host', 'bootstrap_info.bootstrap_host', PPR);
  const port = requireField(o, 'bootstrap_port', 'bootstrap_info.bootstrap_port', PPR);
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 0xffff) {
    throw new WireError(`${PPR}: bootstrap_info.bootstrap_port must be a u16 integer, got ${describe(port)}`, 'bootstrap_info.bootstrap_port');
  }
  const roomRaw = requireField(o, 'bootstrap_room', 'bootstrap_info.bootstrap_room', PPR);
  const room = typeof roomRaw === 'bigint' ? roomRaw : typeof roomRaw === 'number' && Number.isSafeInteger(roomRaw) ? BigInt(roomRaw) : -1n;
  if (room < 0n || room > U64_MAX) {
    throw new WireError(`${PPR}: bootstrap_info.bootstrap_room must be a u64 integer, got ${describe(roomRaw)}`, 'bootstrap_info.bootstrap_room');
  }
  const id = child(o, 'handoff_id');
  const handoffId = typeof id === 'string' ? canonicalUuid(id) : null;
  if (id !== undefined && id !== null && handoffId === null) {
    throw new WireError(`${PPR}: bootstrap_info.handoff_id must be a UUID string, got ${describe(id)}`, 'bootstrap_info.handoff_id');
  }
  return { host, port, room, handoffId };
}

export interface PreprocessedRequest {
  model?: string;
  tokenIds: number[];
  maxTokens: number | null;
  stopTokenIdsHidden: number[];
  eosTokenIds: number[];
  minTokens: number | null;
  ignoreEos: boolean | null;
  dpRank: number | null;
  backendInstanceId: bigint | number | null;
  annotations: string[];
  /** 1.x `bootstrap_info`: the KV handoff session the frontend set up between a prefill and a decode worker. */
  bootstrapInfo: BootstrapInfo | null;
  /** The whole parsed body (lossless), for fields this interface does not surface. */
  raw: unknown;
}

const PPR = 'PreprocessedRequest';

/**
 * Parses the two-part body of an LLM generate request. Strict where the mocker depends on a field
 * (token_ids, stop_conditions); lenient (defaults) for fields older frontends may omit.
 */
export function parsePreprocessedRequest(bodyJson: string | Uint8Array): PreprocessedRequest {
  const raw = parseDoc(bodyJson, PPR);
  const root = expectObject(raw, 'body', PPR);

  const modelRaw = child(root, 'model');
  let model: string | undefined;
  if (typeof modelRaw === 'string') model = modelRaw;
  else if (modelRaw !== undefined && modelRaw !== null) {
    throw new WireError(`${PPR}: model must be a string, got ${describe(modelRaw)}`, 'model');
  }

  const tokenIdsRaw = child(root, 'token_ids');
  if (!Array.isArray(tokenIdsRaw) || tokenIdsRaw.length === 0) {
    throw new WireError(
      `${PPR}: token_ids must be a non-empty array of u32 integers, got ${
        tokenIdsRaw === undefined ? 'nothing (missing field)' : Array.isArray(tokenIdsRaw) ? 'an empty array' : describe(tokenIdsRaw)
      }`,
      'token_ids',
    );
  }
  const tokenIds = u32Array(tokenIdsRaw, 'token_ids', PPR, false);

  const sc = expectObject(requireField(root, 'stop_conditions', 'stop_conditions', PPR), 'stop_conditions', PPR);
  const maxTokens = optionalU32(sc, 'max_tokens', 'stop_conditions.max_tokens', PPR);
  const minTokens = optionalU32(sc, 'min_tokens', 'stop_conditions.min_tokens', PPR);
  const ignoreEos = optionalBool(sc, 'ignore_eos', 'stop_conditions.ignore_eos', PPR);
  const stopTokenIdsHidden = u32Array(
    child(sc, 'stop_token_ids_hidden'),
    'stop_conditions.stop_token_ids_hidden',
    PPR,
    true,
  );

  // Vec<u32> in Rust, but defaulted here: a mock should not reject a hand-written request over it.
  const eosTokenIds = u32Array(child(root, 'eos_token_ids'), 'eos_token_ids', PPR, false);

  const annRaw = child(root, 'annotations');
  let annotations: string[] = [];
  if (annRaw !== undefined && annRaw !== null) {
    if (!Array.isArray(annRaw)) {
      throw new WireError(`${PPR}: annotations must be an array of strings, got ${describe(annRaw)}`, 'annotations');
    }
    annRaw.forEach((a, i) => {
      if (typeof a !== 'string') {
        throw new WireError(`${PPR}: annotations[${i}] must be a string, got ${describe(a)}`, `annotations[${i}]`);
      }
    });
    annotations = annRaw as string[];
  }

  // 0.9+ frontends put the rank in `routing` (RoutingHints); 0.6–0.8 at the top level.
  const routingRaw = child(root, 'routing');
  let dpRank = optionalU32(root, 'dp_rank', 'dp_rank', PPR);
  if (routingRaw !== undefined && routingRaw !== null) {
    const routing = expectObject(routingRaw, 'routing', PPR);
    dpRank = optionalU32(routing, 'dp_rank', 'routing.dp_rank', PPR) ?? dpRank;
  }

  const biRaw = child(root, 'backend_instance_id');
  let backendInstanceId: bigint | number | null = null;
  if (biRaw !== undefined && biRaw !== null) {
    // u64 in 0.6, i64 in 0.5.1: accept the union of both ranges.
    const ok =
      (typeof biRaw === 'number' && Number.isSafeInteger(biRaw)) ||
      (typeof biRaw === 'bigint' && biRaw >= I64_MIN && biRaw <= U64_MAX);
    if (!ok) {
      throw new WireError(
        `${PPR}: backend_instance_id must be null or a 64-bit integer, got ${describe(biRaw)}`,
        'backend_instance_id',
      );
    }
    backendInstanceId = biRaw as number | bigint;
  }

  const bootstrapInfo = parseBootstrapInfo(child(root, 'bootstrap_info'));
  // Read by nobody (a decode worker computes no prompt whether or not it was prefilled elsewhere, as
  // in Dynamo), but a malformed one is still a malformed request.
  const prefillResult = child(root, 'prefill_result');
  if (prefillResult !== undefined && prefillResult !== null) expectObject(prefillResult, 'prefill_result', PPR);

  const out: PreprocessedRequest = {
    tokenIds,
    maxTokens,
    stopTokenIdsHidden,
    eosTokenIds,
    minTokens,
    ignoreEos,
    dpRank,
    backendInstanceId,
    annotations,
    bootstrapInfo,
    raw,
  };
  if (model !== undefined) out.model = model;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Response stream builders (all return compact JSON text, ready for encodeTwoPartText)

/** Handshake header: the first frame on the call-home socket. */
export function handshakeHeader(subject: string): string {
  return '{"subject":' + JSON.stringify(subject) + ',"stream_type":"response"}';
}

const PROLOGUE_OK = '{"error":null}';

/** Prologue header: null when the engine accepted the request, else the refusal message. */
export function prologueHeader(error: string | null): string {
  return error === null ? PROLOGUE_OK : '{"error":' + JSON.stringify(error) + '}';
}

/**
 * NetworkStreamWrapper body for one response item. A string is taken as the already-serialized
 * Annotated JSON object (Annotated always serializes to an object, so there is no ambiguity).
 */
export function dataItemBody(item: string | object): string {
  const json = typeof item === 'string' ? item : stringifyJson(item);
  return '{"data":' + json + ',"complete_final":false}';
}

const COMPLETE_FINAL = '{"complete_final":true}';

/** Body of the data-only frame that must follow the last item. */
export function completeFinalBody(): string {
  return COMPLETE_FINAL;
}

/** Header of the last frame the worker sends (the JSON string "sentinel", 10 bytes). */
export const SENTINEL_HEADER = '"sentinel"';

export type FinishReason = 'eos' | 'length' | 'stop' | 'cancelled' | 'content_filter' | { error: string };

export interface CompletionUsageInit {
  promptTokens: number;
  completionTokens: number;
  /** Defaults to promptTokens + completionTokens. */
  totalTokens?: number;
  /** Emitted as prompt_tokens_details.cached_tokens when given. */
  cachedTokens?: number | null;
}

export interface LlmEngineOutputInit {
  tokenIds: ArrayLike<number>;
  finishReason?: FinishReason | null;
  usage?: CompletionUsageInit;
  /** `disaggregated_params`, as JSON text (a prefill worker's `"dummy"`); omitted when absent. */
  disaggregatedParamsJson?: string;
}

/** What Dynamo's mocker puts in a prefill worker's `disaggregated_params`: any value tells the frontend prefill succeeded. */
export const DUMMY_DISAGGREGATED_PARAMS = '"dummy"';

// Every LLMEngineOutput field serde writes as null for the mocker, fixed once.
const OUT_PREFIX = '{"token_ids":[';
const OUT_MID = '],"tokens":null,"text":null,"cum_log_probs":null,"log_probs":null,"top_logprobs":null,"finish_reason":';
const OUT_INDEX = ',"index":null';

const FINISH_STRINGS: Record<string, string> = {
  eos: '"eos"',
  length: '"length"',
  stop: '"stop"',
  cancelled: '"cancelled"',
  content_filter: '"content_filter"',
};

function finishJson(f: FinishReason | null | undefined): string {
  if (f === null || f === undefined) return 'null';
  if (typeof f === 'string') {
    const s = FINISH_STRINGS[f];
    if (s === undefined) throw new RangeError(`unknown finish_reason ${JSON.stringify(f)}`);
    return s;
  }
  return '{"error":' + JSON.stringify(f.error) + '}';
}

function tokenList(ids: ArrayLike<number>): string {
  let s = '';
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    // Cheap guard so a NaN or negative id can never produce invalid JSON on the wire.
    if (t >>> 0 !== t) throw new RangeError(`token id ${t} at index ${i} is not a u32`);
    s += i === 0 ? String(t) : ',' + t;
  }
  return s;
}

function usageJson(u: CompletionUsageInit): string {
  const total = u.totalTokens ?? u.promptTokens + u.completionTokens;
  let s =
    ',"completion_usage":{"prompt_tokens":' +
    u.promptTokens +
    ',"completion_tokens":' +
    u.completionTokens +
    ',"total_tokens":' +
    total;
  if (u.cachedTokens !== undefined) {
    s += ',"prompt_tokens_details":{"cached_tokens":' + (u.cachedTokens === null ? 'null' : u.cachedTokens) + '}';
  }
  return s + '}';
}

function engineOutputJson(o: LlmEngineOutputInit): string {
  return (
    OUT_PREFIX +
    tokenList(o.tokenIds) +
    OUT_MID +
    finishJson(o.finishReason) +
    OUT_INDEX +
    (o.disaggregatedParamsJson === undefined ? '' : ',"disaggregated_params":' + o.disaggregatedParamsJson) +
    (o.usage === undefined ? '' : usageJson(o.usage)) +
    '}'
  );
}

/** Annotated<LLMEngineOutput> JSON text, built from fixed fragments (no object serialization per token). */
export function llmEngineOutput(o: LlmEngineOutputInit): string {
  return '{"data":' + engineOutputJson(o) + '}';
}

/** Fused dataItemBody(llmEngineOutput(o)) for the per-token hot path. */
export function llmDataItemBody(o: LlmEngineOutputInit): string {
  return '{"data":{"data":' + engineOutputJson(o) + '},"complete_final":false}';
}

/** Annotated error item: the frontend surfaces `comment[0]` as the error text. */
export function annotatedError(message: string): string {
  return '{"event":"error","comment":[' + JSON.stringify(message) + ']}';
}

export type ControlMessage = 'stop' | 'kill' | 'sentinel';

const textDecoder = new TextDecoder();

/** Classifies a header the frontend sends on the response socket; null for anything unrecognised. */
export function parseControlMessage(header: Uint8Array | string): ControlMessage | null {
  let text: string;
  if (typeof header === 'string') text = header;
  else {
    // Every valid control message is a short JSON string; skip decoding anything else.
    if (header.length === 0 || header.length > 64) return null;
    text = textDecoder.decode(header);
  }
  switch (text) {
    case '"stop"':
      return 'stop';
    case '"kill"':
      return 'kill';
    case '"sentinel"':
      return 'sentinel';
  }
  let v: JsonValue;
  try {
    v = parseJson(text);
  } catch {
    return null;
  }
  return v === 'stop' || v === 'kill' || v === 'sentinel' ? v : null;
}
