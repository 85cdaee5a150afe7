// Shared fixtures for the simulation-core tests: config builders, token helpers, a virtual-clock
// runner that records every token's time, and a strict router-side index that replays KV events.
import { Engine, type EngineRequest, type EngineSetup, type ModelLimits } from '../../src/core/engine.js';
import { sequenceHash, type Xxh3 } from '../../src/core/hash.js';
import { createRng } from '../../src/core/random.js';
import { Scheduler, type PassResult } from '../../src/core/scheduler.js';
import type { Sequence, SequenceInput } from '../../src/core/sequence.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import type { TimingModel } from '../../src/core/timing/timing-model.js';
import type { EngineConfig, KvEvent } from '../../src/core/types.js';
import { OfflineDriver } from '../../src/engine/offline-driver.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/** Dynamo MockEngineArgs defaults, restated here so core tests do not depend on the CLI layer. */
export const DEFAULT_SETUP: Readonly<EngineSetup> = Object.freeze({
  numGpuBlocks: 16384,
  blockSize: 64,
  maxNumSeqs: 256,
  maxNumBatchedTokens: 8192,
  enablePrefixCaching: true,
  enableChunkedPrefill: true,
  watermark: 0.01,
  preemptionMode: 'lifo',
  speedupRatio: 1,
  decodeSpeedupRatio: 1,
  maxModelLen: null,
  dataParallelSize: 1,
  seed: 0,
});

/**
 * Dynamo's vLLM core tests' `make_args`: bs 4, 6 blocks, budget 8, 3 seqs, chunked prefill on,
 * prefix caching off, unscaled time. Watermark 0 because Dynamo's current scheduler has none.
 */
export const DYNAMO_CORE_ARGS: Readonly<Partial<EngineSetup>> = Object.freeze({
  blockSize: 4,
  numGpuBlocks: 6,
  maxNumBatchedTokens: 8,
  maxNumSeqs: 3,
  enableChunkedPrefill: true,
  enablePrefixCaching: false,
  watermark: 0,
});

/** Full engine setup: defaults, then each override layer in order. */
export function engineSetup(...overrides: Partial<EngineSetup>[]): EngineSetup {
  return Object.assign({}, DEFAULT_SETUP, ...overrides) as EngineSetup;
}

/** Just the per-rank engine config (what Scheduler takes). */
export function engineConfig(...overrides: Partial<EngineSetup>[]): EngineConfig {
  const { dataParallelSize: _dp, seed: _seed, ...config } = engineSetup(...overrides);
  return config;
}

let hasherPromise: Promise<Xxh3> | null = null;

/** The injected XXH3 hasher (loaded once per test file). */
export function getHasher(): Promise<Xxh3> {
  hasherPromise ??= createXxh3();
  return hasherPromise;
}

export const DEFAULT_MODEL: Readonly<ModelLimits> = Object.freeze({ vocabSize: 32000, contextLength: 0 });

export interface MakeEngineOptions {
  timing?: TimingModel;
  model?: Partial<ModelLimits>;
}

export async function makeEngine(overrides: Partial<EngineSetup> = {}, opts: MakeEngineOptions = {}): Promise<Engine> {
  const hasher = await getHasher();
  return new Engine(
    engineSetup(overrides),
    opts.timing ?? createPolynomialTimingModel(),
    hasher,
    { ...DEFAULT_MODEL, ...opts.model },
  );
}

export async function makeScheduler(
  overrides: Partial<EngineSetup> = {},
  opts: { timing?: TimingModel; dpRank?: number } = {},
): Promise<Scheduler> {
  const hasher = await getHasher();
  return new Scheduler(engineConfig(overrides), opts.timing ?? createPolynomialTimingModel(), hasher, opts.dpRank ?? 0);
}

// ---------------------------------------------------------------------------------------------
// Tokens and requests
// ---------------------------------------------------------------------------------------------

/** Token ids start, start+1, …, end-1 (like Rust's `start..end`). */
export function range(start: number, end: number): number[] {
  const out: number[] = [];
  for (let t = start; t < end; t++) out.push(t);
  return out;
}

/** `length` token ids starting at `start`. */
export function tokens(length: number, start = 0): number[] {
  return range(start, start + length);
}

/** A scheduler-level input (what Scheduler.add takes). */
export function seqInput(
  key: number,
  promptTokens: readonly number[],
  maxOutputTokens: number,
  extra: Partial<SequenceInput> = {},
): SequenceInput {
  return {
    key,
    promptLength: promptTokens.length,
    promptTokens,
    maxOutputTokens,
    rng: createRng(key + 1),
    vocabSize: DEFAULT_MODEL.vocabSize,
    ...extra,
  };
}

/** A request to feed runToCompletion: arrives at `atMs`. */
export interface TimedRequest extends EngineRequest {
  atMs: number;
}

/** Builds a TimedRequest from explicit prompt tokens. */
export function request(
  key: number,
  atMs: number,
  promptTokens: readonly number[],
  maxTokens: number,
  extra: Partial<EngineRequest> = {},
): TimedRequest {
  return { key, atMs, promptLength: promptTokens.length, promptTokens, maxTokens, ...extra };
}

// ---------------------------------------------------------------------------------------------
// Running on the virtual clock
// ---------------------------------------------------------------------------------------------

export interface RequestRecord {
  key: number;
  submittedAt: number | null;
  /** Engine's answer at submit; null if never submitted. */
  accepted: boolean | null;
  rejectKind?: string;
  rejectReason?: string;
  seq?: Sequence;
  rank?: number;
  tokens: number[];
  /** Virtual time (ms) at which each token became visible. */
  times: number[];
  finishedAt: number | null;
  /** Set when the test cancelled the request (through `ctx.cancel`). */
  cancelledAt: number | null;
}

export interface PassRecord {
  rank: number;
  result: PassResult;
}

export interface RunContext {
  engine: Engine;
  driver: OfflineDriver;
  records: Map<number, RequestRecord>;
  /** Cancels a live request on its own rank; returns the scheduler's answer. */
  cancel(key: number, atMs: number): boolean;
}

export interface RunHooks {
  onToken?(ctx: RunContext, record: RequestRecord, token: number, atMs: number): void;
  onPass?(ctx: RunContext, rank: number, result: PassResult): void;
  /** Keep every PassResult (memory heavy for big runs). Default true. */
  keepPasses?: boolean;
}

export interface RunOutcome {
  records: Map<number, RequestRecord>;
  /** Virtual time of the last event. */
  endMs: number;
  passes: PassRecord[];
  passCount: number;
  /** KV events per DP rank, in emission order. */
  events: KvEvent[][];
  driver: OfflineDriver;
}

/** Schedules every request on an OfflineDriver and runs until everything is served. */
export function runToCompletion(engine: Engine, requests: readonly TimedRequest[], hooks: RunHooks = {}): RunOutcome {
  const records = new Map<number, RequestRecord>();
  const passes: PassRecord[] = [];
  const events: KvEvent[][] = engine.ranks.map(() => []);
  const keepPasses = hooks.keepPasses ?? true;
  let passCount = 0;
  const bySeq = new Map<Sequence, RequestRecord>();
  const ctx = {} as RunContext;

  const driver = new OfflineDriver(engine, {
    onSubmit(key, atMs, result) {
      const rec = records.get(key);
      if (!rec) throw new Error(`submit of unknown key ${key}`);
      rec.submittedAt = atMs;
      rec.accepted = result.ok;
      if (result.ok) {
        rec.seq = result.seq;
        rec.rank = result.rank;
        bySeq.set(result.seq, rec);
      } else {
        rec.rejectReason = result.reason;
        rec.rejectKind = (result as { kind?: string }).kind;
      }
    },
    onToken(seq, token, atMs) {
      const rec = bySeq.get(seq);
      if (!rec) throw new Error(`token for unknown sequence ${seq.key}`);
      // A token from the pass during whose delivery the request was cancelled is still delivered
      // (same timestamp); anything later is a leak.
      if (rec.cancelledAt !== null && atMs > rec.cancelledAt) {
        throw new Error(`request ${rec.key} emitted a token at ${atMs}, after it was cancelled at ${rec.cancelledAt}`);
      }
      rec.tokens.push(token);
      rec.times.push(atMs);
      hooks.onToken?.(ctx, rec, token, atMs);
    },
    onFinish(seq, atMs) {
      const rec = bySeq.get(seq);
      if (!rec) throw new Error(`finish of unknown sequence ${seq.key}`);
      if (rec.finishedAt !== null) throw new Error(`request ${rec.key} finished twice`);
      rec.finishedAt = atMs;
    },
    onPass(rank, result) {
      passCount++;
      if (keepPasses) passes.push({ rank, result });
      for (const e of result.kvEvents) events[rank].push(e);
      hooks.onPass?.(ctx, rank, result);
    },
  });

  ctx.engine = engine;
  ctx.driver = driver;
  ctx.records = records;
  ctx.cancel = (key, atMs) => {
    const rec = records.get(key);
    if (!rec?.seq || rec.rank === undefined) return false;
    const ok = engine.ranks[rec.rank].cancel(rec.seq);
    if (ok) rec.cancelledAt = atMs;
    return ok;
  };

  for (const r of requests) {
    if (records.has(r.key)) throw new Error(`duplicate request key ${r.key}`);
    records.set(r.key, {
      key: r.key,
      submittedAt: null,
      accepted: null,
      tokens: [],
      times: [],
      finishedAt: null,
      cancelledAt: null,
    });
    const { atMs, ...req } = r;
    driver.schedule(atMs, req);
  }
  const endMs = driver.run();
  return { records, endMs, passes, passCount, events, driver };
}

/** Record for `key`, throwing if absent (keeps tests terse under strict mode). */
export function rec(outcome: RunOutcome, key: number): RequestRecord {
  const r = outcome.records.get(key);
  if (!r) throw new Error(`no record for request ${key}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Router-side index
// ---------------------------------------------------------------------------------------------

export class RouterIndexError extends Error {
  constructor(
    message: string,
    readonly event: KvEvent,
  ) {
    super(message);
    this.name = 'RouterIndexError';
  }
}

interface IndexedBlock {
  parent: bigint | null;
  tokensHash: bigint;
  children: Set<bigint>;
}

interface RankIndex {
  blocks: Map<bigint, IndexedBlock>;
  nextEventId: number;
}

export interface RouterIndexOptions {
  /** Require event ids 0, 1, 2, … per DP rank (default true). */
  checkEventIds?: boolean;
  /** Verify block_hash = XXH3(parent ‖ tokens_hash) (first block: block_hash = tokens_hash). */
  hasher?: Xxh3;
  /** Throw when a block is removed while one of its children is still stored (default false). */
  requireLeafRemoval?: boolean;
  /** Blocks whose removal may name a block this index never saw stored (e.g. before a late subscription). */
  tolerateUnknownRemoval?: (hash: bigint) => boolean;
  /**
   * Accept a jump forward in the event ids right before a `cleared` event (events a publisher
   * dropped and replaced by a republished cache); with checkEventIds, ids must still grow by 1 elsewhere.
   */
  gapBeforeCleared?: boolean;
}

/**
 * A minimal stand-in for Dynamo's router radix tree, one tree per DP rank. It is deliberately
 * stricter than the router: anything the router would log as an error (unknown parent, unknown
 * removed block) throws, and so does re-storing a hash that is still live.
 */
export class RouterIndex {
  private readonly ranks = new Map<number, RankIndex>();
  storedBlocks = 0;
  removedBlocks = 0;
  /** Removals of a block that still had stored children (the children become unreachable). */
  orphaningRemovals = 0;

  constructor(private readonly opts: RouterIndexOptions = {}) {}

  private rank(dpRank: number): RankIndex {
    let r = this.ranks.get(dpRank);
    if (!r) {
      r = { blocks: new Map(), nextEventId: 0 };
      this.ranks.set(dpRank, r);
    }
    return r;
  }

  has(hash: bigint, dpRank = 0): boolean {
    return this.ranks.get(dpRank)?.blocks.has(hash) ?? false;
  }

  size(dpRank = 0): number {
    return this.ranks.get(dpRank)?.blocks.size ?? 0;
  }

  hashes(dpRank = 0): bigint[] {
    return [...(this.ranks.get(dpRank)?.blocks.keys() ?? [])];
  }

  parentOf(hash: bigint, dpRank = 0): bigint | null | undefined {
    return this.ranks.get(dpRank)?.blocks.get(hash)?.parent;
  }

  /** Longest chain of `seqHashes` present from the root (what a router would score as overlap). */
  overlap(seqHashes: readonly bigint[], dpRank = 0): number {
    const blocks = this.ranks.get(dpRank)?.blocks;
    let n = 0;
    for (const h of seqHashes) {
      const b = blocks?.get(h);
      if (!b || b.parent !== (n === 0 ? null : seqHashes[n - 1])) break;
      n++;
    }
    return n;
  }

  applyEvents(events: readonly KvEvent[]): this {
    for (const e of events) this.apply(e);
    return this;
  }

  apply(e: KvEvent): void {
    const r = this.rank(e.dpRank);
    const clearedAfterGap = this.opts.gapBeforeCleared === true && e.data.kind === 'cleared' && e.eventId > r.nextEventId;
    if ((this.opts.checkEventIds ?? true) && e.eventId !== r.nextEventId && !clearedAfterGap) {
      throw new RouterIndexError(`rank ${e.dpRank}: event id ${e.eventId}, expected ${r.nextEventId}`, e);
    }
    r.nextEventId = e.eventId + 1;
    const d = e.data;
    switch (d.kind) {
      case 'stored': {
        if (d.blocks.length === 0) throw new RouterIndexError('stored event with no blocks', e);
        let parent = d.parentHash;
        if (parent !== null && !r.blocks.has(parent)) {
          throw new RouterIndexError(`rank ${e.dpRank}: stored parent ${parent} is unknown`, e);
        }
        for (const b of d.blocks) {
          if (r.blocks.has(b.blockHash)) {
            throw new RouterIndexError(`rank ${e.dpRank}: block ${b.blockHash} stored while still live`, e);
          }
          if (this.opts.hasher) {
            const expected = sequenceHash(this.opts.hasher, parent, b.tokensHash);
            if (expected !== b.blockHash) {
              throw new RouterIndexError(`rank ${e.dpRank}: block ${b.blockHash} is not XXH3(parent ${parent} ‖ ${b.tokensHash})`, e);
            }
          }
          r.blocks.set(b.blockHash, { parent, tokensHash: b.tokensHash, children: new Set() });
          if (parent !== null) r.blocks.get(parent)!.children.add(b.blockHash);
          this.storedBlocks++;
          parent = b.blockHash;
        }
        break;
      }
      case 'removed': {
        if (d.blockHashes.length === 0) throw new RouterIndexError('removed event with no blocks', e);
        for (const h of d.blockHashes) {
          const b = r.blocks.get(h);
          if (!b && this.opts.tolerateUnknownRemoval?.(h)) continue;
          if (!b) throw new RouterIndexError(`rank ${e.dpRank}: removed block ${h} is unknown`, e);
          if (b.children.size > 0) {
            this.orphaningRemovals++;
            if (this.opts.requireLeafRemoval) {
              throw new RouterIndexError(`rank ${e.dpRank}: removed block ${h} while ${b.children.size} children are live`, e);
            }
          }
          if (b.parent !== null) r.blocks.get(b.parent)?.children.delete(h);
          for (const c of b.children) {
            const child = r.blocks.get(c);
            if (child) child.parent = null;
          }
          r.blocks.delete(h);
          this.removedBlocks++;
        }
        break;
      }
      case 'cleared':
        r.blocks.clear();
        break;
    }
  }
}

/** Replays `events` into a (new or given) RouterIndex; throws RouterIndexError on any violation. */
export function applyEvents(events: readonly KvEvent[], index: RouterIndex = new RouterIndex()): RouterIndex {
  return index.applyEvents(events);
}

// ---------------------------------------------------------------------------------------------
// Seeded PRNG for test workloads (independent of the engine's own RNG)
// ---------------------------------------------------------------------------------------------

/** mulberry32: tiny, seedable, good enough to generate workloads. */
export function testRng(seed: number): { next(): number; int(lo: number, hi: number): number; pick<T>(xs: readonly T[]): T; chance(p: number): boolean } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    /** Integer in [lo, hi]. */
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  };
}
