// Seeded synthetic workload for `replay --synthetic SPEC`: trace records without a trace file.
import { createRng, mixSeed, type Rng } from '../core/random.js';
import type { TraceRecord } from './trace.js';

/** A token-length distribution; draws are rounded and clamped to at least 1. */
export type LengthDist =
  | { kind: 'fixed'; value: number }
  /** Integers in [min, max], both inclusive. */
  | { kind: 'uniform'; min: number; max: number }
  | { kind: 'normal'; mean: number; std: number }
  /** `mean` and `std` describe the resulting lengths, not their logarithm. */
  | { kind: 'lognormal'; mean: number; std: number };

export interface SyntheticSpec {
  /** Total requests, counting every turn of every session. */
  requests: number;
  /** Prompt length of a first turn; for a later turn, the new tokens appended to the conversation. */
  isl: LengthDist;
  osl: LengthDist;
  /** Fraction of a first turn's prompt, from its start, that its prefix group shares (in whole trace blocks). */
  sharedPrefixRatio: number;
  /** Sessions are spread uniformly over this many groups; 0 (only with a ratio of 0) means none. */
  prefixGroups: number;
  /** Turns per session; each later turn extends the previous prompt and its output. */
  turns: number;
  /** Pause between a turn finishing and the next turn of its session being issued. */
  interTurnDelayMs: number;
  /** First-turn arrivals in requests per second; null issues every session at t=0 (for closed-loop runs). */
  rate: number | null;
  arrival: 'poisson' | 'constant';
  /** Seeds every draw; a 32-bit unsigned integer like the run's --seed. */
  seed: number;
}

/**
 * Without a spec: 1000 single-turn requests of 2048 prompt and 256 output tokens, nothing shared,
 * all issued at t=0 (as Dynamo's replay does without an arrival rate). Set a rate for an open-loop
 * run, or pair it with a concurrency limit.
 */
export const SYNTHETIC_DEFAULTS: SyntheticSpec = Object.freeze({
  requests: 1000,
  isl: Object.freeze({ kind: 'fixed', value: 2048 }),
  osl: Object.freeze({ kind: 'fixed', value: 256 }),
  sharedPrefixRatio: 0,
  // One group, so that a ratio alone means one prefix (a system prompt) common to every session.
  prefixGroups: 1,
  turns: 1,
  interTurnDelayMs: 0,
  rate: null,
  arrival: 'poisson',
  seed: 0,
}) as SyntheticSpec;

/** A spec that cannot be used; `key` is the spec key at fault (e.g. "isl"). */
export class SyntheticSpecError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`--synthetic: ${key}: ${message}`);
    this.name = 'SyntheticSpecError';
  }
}

const KEYS = ['requests', 'isl', 'osl', 'shared-prefix', 'prefix-groups', 'turns', 'turn-delay-ms', 'rate', 'arrival'] as const;
type Key = (typeof KEYS)[number];

const DIST_FORMS = 'fixed N, uniform:MIN:MAX, normal:MEAN:STD or lognormal:MEAN:STD';
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function num(text: string): number {
  return NUMBER.test(text.trim()) ? Number(text) : NaN;
}

function bad(key: string, expected: string, got: string): SyntheticSpecError {
  return new SyntheticSpecError(key, `expected ${expected}, got '${got}'`);
}

function parseInteger(key: string, text: string, min: number): number {
  const v = num(text);
  if (!Number.isSafeInteger(v) || v < min) throw bad(key, `an integer of at least ${min}`, text);
  return v;
}

function parseDist(key: string, text: string): LengthDist {
  const parts = text.split(':');
  const kind = parts[0].trim();
  const n = parts.map(num);
  let dist: LengthDist | null = null;
  if (parts.length === 1 && !Number.isNaN(n[0])) dist = { kind: 'fixed', value: n[0] };
  else if (parts.length === 2 && kind === 'fixed') dist = { kind: 'fixed', value: n[1] };
  else if (parts.length === 3 && kind === 'uniform') dist = { kind: 'uniform', min: n[1], max: n[2] };
  else if (parts.length === 3 && (kind === 'normal' || kind === 'lognormal')) dist = { kind, mean: n[1], std: n[2] };
  if (!dist) throw bad(key, DIST_FORMS, text);
  checkDist(key, dist, text);
  return dist;
}

function checkDist(key: string, d: LengthDist, shown: string): void {
  const int1 = (v: number) => Number.isSafeInteger(v) && v >= 1;
  const finite = (v: number, min: number) => typeof v === 'number' && Number.isFinite(v) && v >= min;
  switch (d.kind) {
    case 'fixed':
      if (!int1(d.value)) throw bad(key, 'a whole number of tokens of at least 1', shown);
      return;
    case 'uniform':
      if (!int1(d.min) || !int1(d.max) || d.min > d.max) throw bad(key, 'uniform:MIN:MAX with whole numbers 1 <= MIN <= MAX', shown);
      return;
    case 'normal':
    case 'lognormal':
      if (!finite(d.mean, 1) || !finite(d.std, 0)) throw bad(key, `${d.kind}:MEAN:STD with MEAN >= 1 and STD >= 0`, shown);
      return;
    default:
      throw bad(key, DIST_FORMS, shown);
  }
}

function distText(d: LengthDist): string {
  switch (d.kind) {
    case 'fixed':
      return String(d.value);
    case 'uniform':
      return `uniform:${d.min}:${d.max}`;
    default:
      return `${d.kind}:${d.mean}:${d.std}`;
  }
}

/** Checks a whole spec, whether parsed or built in code; errors name the spec key. */
function validate(spec: SyntheticSpec): void {
  if (!Number.isSafeInteger(spec.requests) || spec.requests < 1) throw bad('requests', 'an integer of at least 1', String(spec.requests));
  checkDist('isl', spec.isl, distText(spec.isl));
  checkDist('osl', spec.osl, distText(spec.osl));
  const r = spec.sharedPrefixRatio;
  if (!(Number.isFinite(r) && r >= 0 && r <= 1)) throw bad('shared-prefix', 'a ratio in [0, 1]', String(r));
  if (!Number.isSafeInteger(spec.prefixGroups) || spec.prefixGroups < 0) throw bad('prefix-groups', 'an integer of at least 0', String(spec.prefixGroups));
  if (spec.prefixGroups === 0 && r > 0) {
    throw new SyntheticSpecError('prefix-groups', `0 groups cannot share a prefix; set at least 1 or shared-prefix=0 (got shared-prefix=${r})`);
  }
  if (!Number.isSafeInteger(spec.turns) || spec.turns < 1) throw bad('turns', 'an integer of at least 1', String(spec.turns));
  if (!(Number.isFinite(spec.interTurnDelayMs) && spec.interTurnDelayMs >= 0)) {
    throw bad('turn-delay-ms', 'a non-negative number of milliseconds', String(spec.interTurnDelayMs));
  }
  if (spec.rate !== null && !(Number.isFinite(spec.rate) && spec.rate > 0)) {
    throw bad('rate', "a positive number of requests per second or 'burst'", String(spec.rate));
  }
  if (spec.arrival !== 'poisson' && spec.arrival !== 'constant') throw bad('arrival', "'poisson' or 'constant'", String(spec.arrival));
}

/**
 * Parses `key=value,key=value`; unspecified keys take SYNTHETIC_DEFAULTS. `seed` comes from the
 * run's own seed so that one flag reseeds everything.
 */
export function parseSyntheticSpec(spec: string, seed: number): SyntheticSpec {
  const out: SyntheticSpec = { ...SYNTHETIC_DEFAULTS, seed };
  const seen = new Set<string>();
  for (const raw of spec.split(',')) {
    const entry = raw.trim();
    if (entry === '') continue;
    const eq = entry.indexOf('=');
    if (eq < 0) throw new SyntheticSpecError(entry, `expected KEY=VALUE with KEY one of ${KEYS.join(', ')}`);
    const key = entry.slice(0, eq).trim();
    const value = entry.slice(eq + 1).trim();
    if (!(KEYS as readonly string[]).includes(key)) throw new SyntheticSpecError(key, `unknown key; expected one of ${KEYS.join(', ')}`);
    if (seen.has(key)) throw new SyntheticSpecError(key, 'given more than once');
    seen.add(key);
    switch (key as Key) {
      case 'requests':
        out.requests = parseInteger(key, value, 1);
        break;
      case 'isl':
        out.isl = parseDist(key, value);
        break;
      case 'osl':
        out.osl = parseDist(key, value);
        break;
      case 'shared-prefix': {
        const v = num(value);
        if (!(v >= 0 && v <= 1)) throw bad(key, 'a ratio in [0, 1]', value);
        out.sharedPrefixRatio = v;
        break;
      }
      case 'prefix-groups':
        out.prefixGroups = parseInteger(key, value, 0);
        break;
      case 'turns':
        out.turns = parseInteger(key, value, 1);
        break;
      case 'turn-delay-ms': {
        const v = num(value);
        if (!(Number.isFinite(v) && v >= 0)) throw bad(key, 'a non-negative number of milliseconds', value);
        out.interTurnDelayMs = v;
        break;
      }
      case 'rate': {
        if (value === 'burst') {
          out.rate = null;
          break;
        }
        const v = num(value);
        if (!(Number.isFinite(v) && v > 0)) throw bad(key, "a positive number of requests per second or 'burst'", value);
        out.rate = v;
        break;
      }
      case 'arrival':
        if (value !== 'poisson' && value !== 'constant') throw bad(key, "'poisson' or 'constant'", value);
        out.arrival = value;
        break;
    }
  }
  validate(out);
  return out;
}

// Separate streams, so that changing one setting (say the output lengths) leaves the other draws alone.
const STREAM_ISL = 0x69736c;
const STREAM_OSL = 0x6f736c;
const STREAM_GROUP = 0x67727570;
const STREAM_ARRIVAL = 0x61727276;

/** Draws lengths from one distribution off its own stream. */
function lengthSampler(d: LengthDist, rng: Rng): () => number {
  let spare = NaN;
  // Box-Muller, keeping the second normal of each pair.
  const gaussian = (): number => {
    if (!Number.isNaN(spare)) {
      const z = spare;
      spare = NaN;
      return z;
    }
    const r = Math.sqrt(-2 * Math.log(1 - rng.nextFloat()));
    const theta = 2 * Math.PI * rng.nextFloat();
    spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  };
  const clamp = (x: number) => Math.max(1, Math.round(x));
  switch (d.kind) {
    case 'fixed':
      return () => d.value;
    case 'uniform': {
      const span = d.max - d.min + 1;
      return () => d.min + rng.nextInt(span);
    }
    case 'normal':
      return () => clamp(d.mean + d.std * gaussian());
    case 'lognormal': {
      // Moments of the lengths themselves: sigma^2 = ln(1 + (std/mean)^2), mu = ln(mean) - sigma^2/2.
      const sigma2 = Math.log(1 + (d.std / d.mean) ** 2);
      const mu = Math.log(d.mean) - sigma2 / 2;
      const sigma = Math.sqrt(sigma2);
      return () => clamp(Math.exp(mu + sigma * gaussian()));
    }
  }
}

/**
 * Generates the records: sessions in arrival order, each session's turns consecutive. A later
 * turn carries its session's start as `timestampMs` (ignored: `after` decides when it is issued).
 * Hash ids are dense non-negative integers in order of first use, each naming one
 * `traceBlockSize` chunk.
 */
export function generateSyntheticTrace(spec: SyntheticSpec, traceBlockSize: number): TraceRecord[] {
  validate(spec);
  if (!Number.isSafeInteger(traceBlockSize) || traceBlockSize < 1) {
    throw new RangeError(`trace block size must be a positive integer, got ${traceBlockSize}`);
  }
  const S = traceBlockSize;
  const seed = spec.seed >>> 0;
  const isl = lengthSampler(spec.isl, createRng(mixSeed(seed, STREAM_ISL)));
  const osl = lengthSampler(spec.osl, createRng(mixSeed(seed, STREAM_OSL)));
  const groupRng = createRng(mixSeed(seed, STREAM_GROUP));
  const arrivalRng = createRng(mixSeed(seed, STREAM_ARRIVAL));
  const grouped = spec.sharedPrefixRatio > 0 && spec.prefixGroups > 0;
  const meanGapMs = spec.rate === null ? 0 : 1000 / spec.rate;

  let nextId = 0;
  // A group's ids are allocated on first use, so a longer member extends what shorter ones share.
  // A prompt ending inside a shared chunk still takes its id: a chunk's tokens follow from its id
  // alone, so the shorter prompt holds the start of the same chunk (whole-prompt sharing at ratio 1).
  const groupIds: number[][] = grouped ? Array.from({ length: spec.prefixGroups }, () => []) : [];
  const groupId = (g: number, j: number): number => {
    const ids = groupIds[g];
    while (ids.length <= j) ids.push(nextId++);
    return ids[j];
  };

  /**
   * Chunks of a first-turn prompt its group shares: ratio × length rounded to a chunk boundary (the
   * prompt's end counting as one), up or down at random in proportion, so that the shared fraction
   * is right on average even when a chunk is a large part of the prompt.
   */
  const sharedChunks = (length: number, chunks: number): number => {
    const target = spec.sharedPrefixRatio * length;
    const below = Math.min(chunks, Math.floor(target / S));
    if (below >= chunks) return chunks;
    const lo = below * S;
    const hi = Math.min(lo + S, length);
    return groupRng.nextFloat() * (hi - lo) < target - lo ? below + 1 : below;
  };

  const records: TraceRecord[] = new Array(spec.requests);
  let index = 0;
  let startMs = 0;
  for (let session = 0; index < spec.requests; session++) {
    if (session > 0 && spec.rate !== null) {
      startMs += spec.arrival === 'constant' ? meanGapMs : -Math.log(1 - arrivalRng.nextFloat()) * meanGapMs;
    }
    const group = grouped ? groupRng.nextInt(spec.prefixGroups) : -1;
    let prev: TraceRecord | null = null;
    for (let turn = 0; turn < spec.turns && index < spec.requests; turn++) {
      const fresh = isl();
      const outputLength = osl();
      const inputLength = prev ? prev.inputLength + prev.outputLength + fresh : fresh;
      const chunks = Math.ceil(inputLength / S);
      const hashIds: number[] = [];
      if (prev) {
        // The previous prompt's last partial chunk now continues with its output, so it is a
        // different chunk: only its whole chunks carry over, as in traces of real conversations.
        const kept = Math.floor(prev.inputLength / S);
        for (let j = 0; j < kept; j++) hashIds.push(prev.hashIds[j]);
      } else if (group >= 0) {
        const shared = sharedChunks(inputLength, chunks);
        for (let j = 0; j < shared; j++) hashIds.push(groupId(group, j));
      }
      while (hashIds.length < chunks) hashIds.push(nextId++);
      const record: TraceRecord = { index, line: index + 1, timestampMs: startMs, inputLength, outputLength, hashIds };
      if (prev) record.after = { indices: [prev.index], delayMs: spec.interTurnDelayMs };
      records[index++] = record;
      prev = record;
    }
  }
  return records;
}
