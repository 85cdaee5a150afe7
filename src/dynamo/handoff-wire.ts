// Wire format of Dynamo's mocker bootstrap rendezvous ("DMHF"): client header, u32-LE length-prefixed JSON frames, messages.
import { JsonSyntaxError, parseJson, type JsonValue } from './lossless-json.js';

/** Written once by the destination (TCP client) right after connecting: "DMHF", u16 LE version 1, u16 LE flags 0. */
export const DMHF_HEADER: Uint8Array = new Uint8Array([0x44, 0x4d, 0x48, 0x46, 0x01, 0x00, 0x00, 0x00]);

/** `MAX_BOOTSTRAP_FRAME_BYTES`: the largest JSON payload either side sends or accepts. */
export const MAX_HANDOFF_FRAME_BYTES = 65536;

/** Any header, framing, encoding or schema failure of the bootstrap protocol. */
export class HandoffWireError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HandoffWireError';
  }
}

const PROTOCOL_VERSION = 1;
const MAGIC_BYTES = 4;
const LENGTH_PREFIX_BYTES = 4;

/** Validates the 8-byte client header the way the Rust source (server) does, in the same order. */
export function checkHeader(bytes: Uint8Array): void {
  if (bytes.length !== DMHF_HEADER.length) {
    throw new HandoffWireError(`bootstrap protocol header must be ${DMHF_HEADER.length} bytes, got ${bytes.length}`);
  }
  for (let i = 0; i < MAGIC_BYTES; i++) {
    if (bytes[i] !== DMHF_HEADER[i]) throw new HandoffWireError('bootstrap protocol magic mismatch');
  }
  const version = bytes[4] | (bytes[5] << 8);
  if (version !== PROTOCOL_VERSION) throw new HandoffWireError(`unsupported bootstrap protocol version ${version}`);
  if (bytes[6] !== 0 || bytes[7] !== 0) throw new HandoffWireError('bootstrap protocol flags must be zero');
}

// ---------------------------------------------------------------------------------------------
// Types

/** `BootstrapIdentity`: repeated in every frame; UUIDs are lowercase hyphenated (what the uuid crate writes). */
export interface HandoffIdentity {
  handoffId: string;
  /** u64. */
  bootstrapRoom: bigint;
  requestId: string;
}

export type HandoffOrder = 'SourceFirst' | 'DestinationFirst';
export type HandoffEngineType = 'vllm' | 'sglang' | 'trtllm';
export type DestinationAction = 'ReserveDestination' | 'ActivateDestination' | 'CancelDestination';
export type ActionOutcome = 'Submitted' | 'Accepted' | 'Scheduled' | 'Applied' | 'Noop' | { failed: string };

export interface TransferTiming {
  mode: 'full_prompt' | 'destination_missing';
  fullPromptTokens: number;
  kvBytesPerToken: number | null;
  bandwidthGBps: number | null;
}

export type HandoffMessage =
  | { kind: 'Register'; role: 'Destination'; dpRank: number; order: HandoffOrder; engineType: HandoffEngineType }
  | { kind: 'Registered' }
  /** `id` is u64. */
  | { kind: 'Action'; id: bigint; action: DestinationAction; handoffId: string }
  /** `actionId` is u64. */
  | { kind: 'ActionAck'; actionId: bigint; outcome: ActionOutcome }
  | { kind: 'SourceHeld'; handoffId: string; timing: TransferTiming }
  | { kind: 'DestinationReserved'; handoffId: string; transferablePromptTokens: number }
  | { kind: 'Complete' }
  | { kind: 'Abort'; message: string }
  | { kind: 'Overloaded' }
  | { kind: 'ProtocolError'; message: string };

/** The first frame a destination sends. */
export type RegisterMessage = Extract<HandoffMessage, { kind: 'Register' }>;

/** Both ends and every frame of a session must carry the same identity. */
export function sameIdentity(a: HandoffIdentity, b: HandoffIdentity): boolean {
  return a.handoffId === b.handoffId && a.bootstrapRoom === b.bootstrapRoom && a.requestId === b.requestId;
}

export interface HandoffFrame {
  identity: HandoffIdentity;
  message: HandoffMessage;
}

const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;
const ORDERS: readonly HandoffOrder[] = ['SourceFirst', 'DestinationFirst'];
const ENGINE_TYPES: readonly HandoffEngineType[] = ['vllm', 'sglang', 'trtllm'];
const DESTINATION_ACTIONS: readonly DestinationAction[] = ['ReserveDestination', 'ActivateDestination', 'CancelDestination'];
// Variants of Dynamo's action enum that its source only runs locally; a conforming peer never sends them.
const SOURCE_LOCAL_ACTIONS = ['SubmitPrefill', 'ReleaseSource', 'CancelSource', 'StartTransfer', 'Complete'];
const UNIT_OUTCOMES = ['Submitted', 'Accepted', 'Scheduled', 'Applied', 'Noop'] as const;
const TIMING_MODES: readonly TransferTiming['mode'][] = ['full_prompt', 'destination_missing'];
// Fact variants Dynamo defines for offline replay only; the live handoff never sends them.
const OFFLINE_FACTS = ['TransferCompleted', 'Failed', 'TimedOut', 'Canceled'];

const HYPHENATED_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SIMPLE_UUID = /^[0-9a-f]{32}$/i;
// With the u flag a surrogate pair is one code point, so this matches only unpaired halves.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * The forms the uuid crate's `parse_str` (and so serde) accepts — simple, hyphenated, braced, urn —
 * as the lowercase hyphenated form it writes; null if the text is not a UUID.
 */
export function canonicalUuid(text: string): string | null {
  if (SIMPLE_UUID.test(text)) {
    const h = text.toLowerCase();
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  let inner = text;
  if (text.length === 38 && text.startsWith('{') && text.endsWith('}')) inner = text.slice(1, -1);
  else if (text.startsWith('urn:uuid:')) inner = text.slice('urn:uuid:'.length);
  return HYPHENATED_UUID.test(inner) ? inner.toLowerCase() : null;
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v);
  if (typeof v === 'number' || typeof v === 'bigint') return Object.is(v, -0) ? '-0' : String(v);
  if (typeof v === 'object') return 'an object';
  return String(v);
}

// ---------------------------------------------------------------------------------------------
// Encoding

const textEncoder = new TextEncoder();

function encodeFailure(path: string, problem: string): never {
  throw new HandoffWireError(`cannot encode bootstrap frame: ${path} ${problem}`);
}

function uuidOut(v: string, path: string): string {
  const uuid = typeof v === 'string' ? canonicalUuid(v) : null;
  if (uuid === null) encodeFailure(path, `must be a UUID, got ${describe(v)}`);
  return `"${uuid}"`;
}

// The TS types already say bigint, but a stray number would otherwise serialize an inexact id silently.
function u64Out(v: bigint, path: string): string {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) encodeFailure(path, `must be a u64 bigint, got ${describe(v)}`);
  return v.toString();
}

function uintOut(v: number, max: number, path: string): string {
  if (!Number.isSafeInteger(v) || v < 0 || v > max) {
    encodeFailure(path, `must be an integer in 0..=${max}, got ${describe(v)}`);
  }
  return String(v);
}

/** serde_json (ryu) marks every f64 as a float: 64 → `64.0`, 1e21 → `1e21`; any f64 reader takes both forms. */
function f64Out(v: number, path: string): string {
  // serde_json would write NaN/±inf as null, silently turning a bad bandwidth into "no transfer delay".
  if (typeof v !== 'number' || !Number.isFinite(v)) encodeFailure(path, `must be a finite number, got ${describe(v)}`);
  const s = Object.is(v, -0) ? '-0' : String(v);
  return /^-?\d+$/.test(s) ? `${s}.0` : s.replace('e+', 'e');
}

// JSON.stringify escapes exactly what serde_json does, except that it writes a lone surrogate as an
// escape Rust cannot decode; refusing it here beats the peer dropping the session over "malformed JSON".
function textOut(v: string, path: string): string {
  if (typeof v !== 'string') encodeFailure(path, `must be a string, got ${describe(v)}`);
  if (LONE_SURROGATE.test(v)) encodeFailure(path, 'contains an unpaired UTF-16 surrogate, which is not valid Unicode');
  return JSON.stringify(v);
}

function variantOut<T extends string>(v: T, allowed: readonly T[], path: string): T {
  if (!allowed.includes(v)) encodeFailure(path, `must be one of ${allowed.join(', ')}, got ${describe(v)}`);
  return v;
}

function identityJson(identity: HandoffIdentity): string {
  return (
    `{"handoff_id":${uuidOut(identity.handoffId, 'identity.handoff_id')}` +
    `,"bootstrap_room":${u64Out(identity.bootstrapRoom, 'identity.bootstrap_room')}` +
    `,"request_id":${uuidOut(identity.requestId, 'identity.request_id')}}`
  );
}

function outcomeJson(outcome: ActionOutcome, path: string): string {
  if (typeof outcome === 'object' && outcome !== null) return `{"Failed":${textOut(outcome.failed, `${path}.Failed`)}}`;
  return `"${variantOut(outcome, UNIT_OUTCOMES, path)}"`;
}

function timingJson(t: TransferTiming, path: string): string {
  const kvBytes =
    t.kvBytesPerToken === null ? 'null' : uintOut(t.kvBytesPerToken, Number.MAX_SAFE_INTEGER, `${path}.kv_bytes_per_token`);
  const bandwidth = t.bandwidthGBps === null ? 'null' : f64Out(t.bandwidthGBps, `${path}.bandwidth_gb_s`);
  return (
    `{"mode":"${variantOut(t.mode, TIMING_MODES, `${path}.mode`)}"` +
    `,"full_prompt_tokens":${uintOut(t.fullPromptTokens, Number.MAX_SAFE_INTEGER, `${path}.full_prompt_tokens`)}` +
    `,"kv_bytes_per_token":${kvBytes},"bandwidth_gb_s":${bandwidth}}`
  );
}

function messageJson(m: HandoffMessage): string {
  switch (m.kind) {
    case 'Register':
      return (
        `{"Register":{"role":"${variantOut(m.role, ['Destination'], 'message.Register.role')}"` +
        `,"dp_rank":${uintOut(m.dpRank, U32_MAX, 'message.Register.dp_rank')}` +
        `,"order":"${variantOut(m.order, ORDERS, 'message.Register.order')}"` +
        `,"engine_type":"${variantOut(m.engineType, ENGINE_TYPES, 'message.Register.engine_type')}"}}`
      );
    case 'Action': {
      const action = variantOut(m.action, DESTINATION_ACTIONS, 'message.Action.action');
      return (
        `{"Action":{"id":${u64Out(m.id, 'message.Action.id')}` +
        `,"action":{"${action}":{"handoff_id":${uuidOut(m.handoffId, `message.Action.action.${action}.handoff_id`)}}}}}`
      );
    }
    case 'ActionAck':
      return (
        `{"ActionAck":{"action_id":${u64Out(m.actionId, 'message.ActionAck.action_id')}` +
        `,"outcome":${outcomeJson(m.outcome, 'message.ActionAck.outcome')}}}`
      );
    case 'SourceHeld':
      return (
        `{"Fact":{"SourceHeld":{"handoff_id":${uuidOut(m.handoffId, 'message.Fact.SourceHeld.handoff_id')}` +
        `,"transfer_timing":${timingJson(m.timing, 'message.Fact.SourceHeld.transfer_timing')}}}}`
      );
    case 'DestinationReserved':
      return (
        `{"Fact":{"DestinationReserved":{"handoff_id":${uuidOut(m.handoffId, 'message.Fact.DestinationReserved.handoff_id')}` +
        `,"transferable_prompt_tokens":${uintOut(
          m.transferablePromptTokens,
          Number.MAX_SAFE_INTEGER,
          'message.Fact.DestinationReserved.transferable_prompt_tokens',
        )}}}}`
      );
    case 'Abort':
    case 'ProtocolError':
      return `{"${m.kind}":{"message":${textOut(m.message, `message.${m.kind}.message`)}}}`;
    case 'Registered':
    case 'Complete':
    case 'Overloaded':
      return `"${m.kind}"`;
    default:
      return encodeFailure('message.kind', `is not a bootstrap message: ${describe((m as { kind: unknown }).kind)}`);
  }
}

/** The compact JSON payload of one frame, keys in the order serde_json writes them. */
export function handoffFrameJson(frame: HandoffFrame): string {
  return `{"identity":${identityJson(frame.identity)},"message":${messageJson(frame.message)}}`;
}

/** One frame ready for the socket: u32 LE payload length, then the JSON payload. */
export function encodeHandoffFrame(frame: HandoffFrame): Uint8Array {
  const payload = textEncoder.encode(handoffFrameJson(frame));
  if (payload.length < 1 || payload.length > MAX_HANDOFF_FRAME_BYTES) {
    throw new HandoffWireError(`bootstrap frame length ${payload.length} is outside 1..=${MAX_HANDOFF_FRAME_BYTES}`);
  }
  const out = new Uint8Array(LENGTH_PREFIX_BYTES + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, true);
  out.set(payload, LENGTH_PREFIX_BYTES);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding
//
// Mirrors serde's derived Deserialize on the Rust types: unknown keys are ignored, missing Option
// fields are None, a unit variant may also arrive as {"Name":null}; everything else is strict.
// Two serde behaviours are not mirrored because no Rust peer produces them: structs written as
// arrays (accepted by serde) and duplicate keys (serde rejects them; here the last one wins).

const MALFORMED = 'bootstrap frame contains malformed JSON';

// fatal: serde_json rejects invalid UTF-8; ignoreBOM: keep a BOM so it fails like it does in serde_json.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

type JsonObject = { [key: string]: JsonValue };

/**
 * A value at `path` plus its twin in the float-free re-parse (see floatLexemesAsNull): the twin is null
 * exactly where the peer wrote a number as a float.
 */
interface Field {
  value: JsonValue | undefined;
  twin: JsonValue | undefined;
  path: string;
}

const C_QUOTE = 0x22;
const C_BACKSLASH = 0x5c;
const C_MINUS = 0x2d;
const C_PLUS = 0x2b;
const C_DOT = 0x2e;
const C_ZERO = 0x30;
const C_NINE = 0x39;
const C_LOWER_E = 0x65;
const C_UPPER_E = 0x45;

/**
 * parseJson yields 8 for both `8` and `8.0`, but serde refuses a float lexeme for an integer field
 * (serde_json even reads `-0` as the float -0.0). Replacing those lexemes with null and parsing again
 * shows which numbers were floats. Only called on text parseJson accepted, so the scan can be simple.
 */
function floatLexemesAsNull(text: string): string {
  let out = '';
  let copied = 0;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === C_QUOTE) {
      i++;
      while (text.charCodeAt(i) !== C_QUOTE) i += text.charCodeAt(i) === C_BACKSLASH ? 2 : 1;
      i++;
    } else if (c === C_MINUS || (c >= C_ZERO && c <= C_NINE)) {
      const start = i;
      let isFloat = false;
      for (; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === C_DOT || d === C_LOWER_E || d === C_UPPER_E) isFloat = true;
        else if (!(d === C_MINUS || d === C_PLUS || (d >= C_ZERO && d <= C_NINE))) break;
      }
      if (isFloat || (i - start === 2 && text.startsWith('-0', start))) {
        out += `${text.slice(copied, start)}null`;
        copied = i;
      }
    } else {
      i++;
    }
  }
  return copied === 0 ? text : out + text.slice(copied);
}

function malformed(path: string, problem: string): never {
  throw new HandoffWireError(`${MALFORMED}: ${path} ${problem}`);
}

function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function required(f: Field): JsonValue {
  if (f.value === undefined) malformed(f.path, 'is missing');
  return f.value;
}

function object(f: Field): JsonObject {
  const v = required(f);
  if (!isObject(v)) malformed(f.path, `must be an object, got ${describe(v)}`);
  return v;
}

function member(f: Field, key: string): Field {
  const obj = object(f);
  if (!Object.prototype.hasOwnProperty.call(obj, key)) return { value: undefined, twin: undefined, path: `${f.path}.${key}` };
  return { value: obj[key], twin: (f.twin as JsonObject)[key], path: `${f.path}.${key}` };
}

function string(f: Field): string {
  const v = required(f);
  if (typeof v !== 'string') malformed(f.path, `must be a string, got ${describe(v)}`);
  // JSON escapes can spell a lone surrogate; serde_json refuses them since a Rust String cannot hold one.
  if (LONE_SURROGATE.test(v)) malformed(f.path, 'contains an unpaired UTF-16 surrogate escape');
  return v;
}

function uuid(f: Field): string {
  const text = string(f);
  const canonical = canonicalUuid(text);
  if (canonical === null) malformed(f.path, `must be a UUID, got ${describe(text)}`);
  return canonical;
}

function unsigned(f: Field, max: bigint, typeName: string): bigint {
  const v = required(f);
  if (typeof v === 'number' && f.twin === null) malformed(f.path, `must be a ${typeName} integer, got the float ${describe(v)}`);
  let n: bigint;
  if (typeof v === 'bigint') n = v;
  else if (typeof v === 'number' && Number.isInteger(v)) n = BigInt(v);
  else return malformed(f.path, `must be a ${typeName} integer, got ${describe(v)}`);
  if (n < 0n || n > max) malformed(f.path, `${n} is out of range for ${typeName}`);
  return n;
}

function u64(f: Field): bigint {
  return unsigned(f, U64_MAX, 'u64');
}

function u32(f: Field): number {
  return Number(unsigned(f, BigInt(U32_MAX), 'u32'));
}

/** A Rust usize (u64) carried as a JS number, so it must also be exact in one. */
function usize(f: Field): number {
  const n = unsigned(f, U64_MAX, 'usize');
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
    malformed(f.path, `${n} exceeds ${Number.MAX_SAFE_INTEGER}, the largest exact count here`);
  }
  return Number(n);
}

function f64(f: Field): number {
  const v = required(f);
  const x = typeof v === 'bigint' ? Number(v) : v;
  if (typeof x !== 'number') malformed(f.path, `must be a number, got ${describe(v)}`);
  // serde_json refuses a literal like 1e400 ("number out of range") where JS would give Infinity.
  if (!Number.isFinite(x)) malformed(f.path, 'is out of range for f64');
  return x;
}

function option<T>(f: Field, read: (f: Field) => T): T | null {
  return f.value === undefined || f.value === null ? null : read(f);
}

/** An externally tagged enum value: a bare variant name, or an object with exactly one key. */
function variant(f: Field): { name: string; content: Field | null } {
  const v = required(f);
  if (typeof v === 'string') return { name: v, content: null };
  if (isObject(v)) {
    const keys = Object.keys(v);
    if (keys.length === 1) return { name: keys[0], content: member(f, keys[0]) };
  }
  return malformed(f.path, `must be a variant name or an object with exactly one key, got ${describe(v)}`);
}

function unitContent(name: string, content: Field | null): void {
  if (content !== null && content.value !== null) {
    malformed(content.path, `must be null (${name} carries no data), got ${describe(content.value)}`);
  }
}

function dataContent(name: string, content: Field | null, path: string): Field {
  if (content === null) malformed(path, `variant ${name} carries data and cannot be a bare string`);
  return content;
}

function unitVariant<T extends string>(f: Field, allowed: readonly T[], what: string): T {
  const { name, content } = variant(f);
  if (!(allowed as readonly string[]).includes(name)) {
    malformed(f.path, `has unknown ${what} ${describe(name)}, expected one of ${allowed.join(', ')}`);
  }
  unitContent(name, content);
  return name as T;
}

function readIdentity(f: Field): HandoffIdentity {
  return {
    handoffId: uuid(member(f, 'handoff_id')),
    bootstrapRoom: u64(member(f, 'bootstrap_room')),
    requestId: uuid(member(f, 'request_id')),
  };
}

function readRegister(f: Field): HandoffMessage {
  // Only a destination registers over TCP; the source registers with its own manager in-process.
  unitVariant(member(f, 'role'), ['Destination'], 'participant role');
  return {
    kind: 'Register',
    role: 'Destination',
    dpRank: u32(member(f, 'dp_rank')),
    order: unitVariant(member(f, 'order'), ORDERS, 'handoff order'),
    engineType: unitVariant(member(f, 'engine_type'), ENGINE_TYPES, 'engine type'),
  };
}

function readAction(f: Field): HandoffMessage {
  const id = u64(member(f, 'id'));
  const actionField = member(f, 'action');
  const { name, content } = variant(actionField);
  if (!(DESTINATION_ACTIONS as readonly string[]).includes(name)) {
    if (SOURCE_LOCAL_ACTIONS.includes(name)) {
      malformed(actionField.path, `holds ${name}, a source-local action that is never sent to a destination`);
    }
    malformed(actionField.path, `has unknown destination action ${describe(name)}`);
  }
  const data = dataContent(name, content, actionField.path);
  return { kind: 'Action', id, action: name as DestinationAction, handoffId: uuid(member(data, 'handoff_id')) };
}

function readOutcome(f: Field): ActionOutcome {
  const { name, content } = variant(f);
  if (name === 'Failed') return { failed: string(dataContent(name, content, f.path)) };
  if (!(UNIT_OUTCOMES as readonly string[]).includes(name)) {
    malformed(f.path, `has unknown action outcome ${describe(name)}, expected one of ${UNIT_OUTCOMES.join(', ')}, Failed`);
  }
  unitContent(name, content);
  return name as ActionOutcome;
}

function readTiming(f: Field): TransferTiming {
  return {
    mode: unitVariant(member(f, 'mode'), TIMING_MODES, 'transfer timing mode'),
    fullPromptTokens: usize(member(f, 'full_prompt_tokens')),
    kvBytesPerToken: option(member(f, 'kv_bytes_per_token'), usize),
    bandwidthGBps: option(member(f, 'bandwidth_gb_s'), f64),
  };
}

function readFact(f: Field): HandoffMessage {
  const { name, content } = variant(f);
  switch (name) {
    case 'SourceHeld': {
      const data = dataContent(name, content, f.path);
      return {
        kind: 'SourceHeld',
        handoffId: uuid(member(data, 'handoff_id')),
        timing: readTiming(member(data, 'transfer_timing')),
      };
    }
    case 'DestinationReserved': {
      const data = dataContent(name, content, f.path);
      return {
        kind: 'DestinationReserved',
        handoffId: uuid(member(data, 'handoff_id')),
        transferablePromptTokens: usize(member(data, 'transferable_prompt_tokens')),
      };
    }
    default:
      if (OFFLINE_FACTS.includes(name)) {
        malformed(f.path, `holds unsupported fact ${name}: Dynamo records it only in offline replay, never on the wire`);
      }
      return malformed(f.path, `has unknown fact ${describe(name)}`);
  }
}

function readMessage(f: Field): HandoffMessage {
  const { name, content } = variant(f);
  switch (name) {
    case 'Registered':
    case 'Complete':
    case 'Overloaded':
      unitContent(name, content);
      return { kind: name };
    case 'Register':
      return readRegister(dataContent(name, content, f.path));
    case 'Action':
      return readAction(dataContent(name, content, f.path));
    case 'ActionAck': {
      const data = dataContent(name, content, f.path);
      return { kind: 'ActionAck', actionId: u64(member(data, 'action_id')), outcome: readOutcome(member(data, 'outcome')) };
    }
    case 'Fact':
      return readFact(dataContent(name, content, f.path));
    case 'Abort':
    case 'ProtocolError':
      return { kind: name, message: string(member(dataContent(name, content, f.path), 'message')) };
    default:
      return malformed(f.path, `has unknown bootstrap message ${describe(name)}`);
  }
}

/** Parses and validates one frame payload (without its length prefix). UUIDs come back lowercase hyphenated. */
export function parseHandoffFrame(json: Uint8Array | string): HandoffFrame {
  let text: string;
  try {
    text = typeof json === 'string' ? json : utf8Decoder.decode(json);
  } catch (err) {
    throw new HandoffWireError(`${MALFORMED}: invalid UTF-8`, { cause: err });
  }
  let value: JsonValue;
  try {
    value = parseJson(text);
  } catch (err) {
    if (err instanceof JsonSyntaxError) throw new HandoffWireError(`${MALFORMED}: ${err.message}`, { cause: err });
    throw err;
  }
  const floatless = floatLexemesAsNull(text);
  const root: Field = { value, twin: floatless === text ? value : parseJson(floatless), path: 'frame' };
  return { identity: readIdentity(member(root, 'identity')), message: readMessage(member(root, 'message')) };
}

/**
 * Incremental decoder for the frames of one bootstrap connection (after the header).
 *
 * tokio hands frames to the session one at a time, so frames before a bad one in the same chunk are still
 * acted on (a `Complete` followed by garbage completes the session). push() therefore returns the frames it
 * completed before an error and throws that error on the next push() or finish(); it throws at once when
 * no frame preceded it. After an error the decoder stays failed.
 */
export class HandoffFrameDecoder {
  private readonly prefix = new Uint8Array(LENGTH_PREFIX_BYTES);
  private prefixFill = 0;
  // Allocated at the announced size once the prefix is known; null between frames.
  private payload: Uint8Array | null = null;
  private payloadFill = 0;
  private failure: HandoffWireError | null = null;

  /** Bytes of an incomplete frame currently held (0 at a frame boundary). */
  get bufferedBytes(): number {
    return this.payload === null ? this.prefixFill : LENGTH_PREFIX_BYTES + this.payloadFill;
  }

  /** Feeds bytes read from the socket; returns every frame they completed, in order. */
  push(chunk: Uint8Array): HandoffFrame[] {
    if (this.failure !== null) throw this.failure;
    const frames: HandoffFrame[] = [];
    try {
      this.consume(chunk, frames);
    } catch (err) {
      if (!(err instanceof HandoffWireError)) throw err;
      this.failure = err;
      if (frames.length === 0) throw err;
    }
    return frames;
  }

  /** Call at end of stream: throws a pending error, or if the stream stopped inside a frame. */
  finish(): void {
    if (this.failure !== null) throw this.failure;
    if (this.bufferedBytes > 0) {
      throw new HandoffWireError(`bootstrap stream ended inside a frame (${this.bufferedBytes} bytes buffered)`);
    }
  }

  private consume(chunk: Uint8Array, frames: HandoffFrame[]): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.payload === null) {
        const take = Math.min(LENGTH_PREFIX_BYTES - this.prefixFill, chunk.length - off);
        this.prefix.set(chunk.subarray(off, off + take), this.prefixFill);
        this.prefixFill += take;
        off += take;
        if (this.prefixFill < LENGTH_PREFIX_BYTES) return;
        this.prefixFill = 0;
        const length = new DataView(this.prefix.buffer).getUint32(0, true);
        if (length === 0) throw new HandoffWireError('bootstrap received an empty frame');
        if (length > MAX_HANDOFF_FRAME_BYTES) {
          throw new HandoffWireError(
            `bootstrap received a frame of ${length} bytes, more than the ${MAX_HANDOFF_FRAME_BYTES}-byte limit`,
          );
        }
        this.payload = new Uint8Array(length);
        this.payloadFill = 0;
      }
      const take = Math.min(this.payload.length - this.payloadFill, chunk.length - off);
      this.payload.set(chunk.subarray(off, off + take), this.payloadFill);
      this.payloadFill += take;
      off += take;
      if (this.payloadFill === this.payload.length) {
        const payload = this.payload;
        this.payload = null;
        frames.push(parseHandoffFrame(payload));
      }
    }
  }
}
