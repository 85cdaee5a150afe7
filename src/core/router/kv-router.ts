// Dynamo's KV-aware router (1.4): prefix overlap from the workers' KV events, router-side load, its cost function and selection.
import { createRng, type Rng } from '../random.js';
import { selectCandidate } from './selection.js';
import { PRIVATE_BLOCK_KEY } from '../kv/block-pool.js';
import type { KvEvent } from '../types.js';
import type { FleetRouter, RouteRequest, RoutingTarget } from './fleet-router.js';
import { KvOverlapIndex } from './kv-index.js';

export { selectCandidate, softmaxSample } from './selection.js';

/** The cost function's knobs, with Dynamo 1.4's names (KvRouterConfig) and defaults. */
export interface KvCostWeights {
  /** overlap_score_credit: blocks of prefill credited per cached block (default 1). */
  overlapScoreCredit: number;
  /** overlap_score_credit_decay: shrinks the credit on workers with more prefill backlog (default 0 = off). */
  overlapScoreCreditDecay: number;
  /** prefill_load_scale: weight of the prefill blocks left after the credit (default 1). */
  prefillLoadScale: number;
  /** decode_active_request_weight: cost per active request (default 0). */
  decodeActiveRequestWeight: number;
}

export const KV_COST_DEFAULTS: KvCostWeights = {
  overlapScoreCredit: 1,
  overlapScoreCreditDecay: 0,
  prefillLoadScale: 1,
  decodeActiveRequestWeight: 0,
};

/**
 * Dynamo's deprecated `overlap_score_weight` (`--kv-overlap-score-weight`): it becomes
 * prefill_load_scale, and a weight of 0 also zeroes the overlap credit
 * (`apply_deprecated_overlap_score_weight_override`).
 */
export function weightsFromOverlapScoreWeight(weight: number, base: KvCostWeights = KV_COST_DEFAULTS): KvCostWeights {
  return { ...base, prefillLoadScale: weight, overlapScoreCredit: weight === 0 ? 0 : base.overlapScoreCredit };
}

/** What the router projects for one candidate (worker × DP rank) when a request arrives. */
export interface CandidateLoad {
  /** Prompt tokens still to compute on it: requests routed there whose first token has not come. */
  activePrefillTokens: number;
  /** Distinct prompt blocks of its active requests. */
  activeDecodeBlocks: number;
  /** Blocks this request would add: its full blocks past the prefix the active requests already hold. */
  additionalActiveBlocks: number;
  activeRequests: number;
}

/** One candidate's inputs to the cost function. */
export interface CostInputs {
  isl: number;
  blockSize: number;
  /** Leading prompt blocks cached on the candidate (from the KV events). */
  overlapBlocks: number;
  load: CandidateLoad;
  /** The smallest activePrefillTokens over all candidates (only the credit decay reads it). */
  minActivePrefillTokens: number;
  /** router_track_prefill_tokens; false (a decode pool's router) charges no prefill at all. Default true. */
  trackPrefillTokens?: boolean;
}

/**
 * The logit (lower is better) of Dynamo's DefaultWorkerSelector for an aggregated worker with
 * prefill tokens tracked (`worker_logit`):
 *   cached   = overlap × block_size
 *   prefill  = (active_prefill_tokens + isl − min(cached, isl) + cached) / block_size
 *   credit   = overlap_score_credit × decay × overlap
 *   logit    = prefill_load_scale × max(0, prefill − credit)
 *            + active_decode_blocks + additional_active_blocks
 *            + decode_active_request_weight × active_requests
 */
export function kvLogit(x: CostInputs, w: KvCostWeights): number {
  const cached = x.overlapBlocks * x.blockSize;
  const tracked = x.trackPrefillTokens !== false;
  const rawPrefillTokens = tracked ? x.load.activePrefillTokens + (x.isl - Math.min(cached, x.isl)) + cached : 0;
  const rawPrefillBlocks = rawPrefillTokens / x.blockSize;
  let decay = 1;
  if (tracked && w.overlapScoreCreditDecay > 0) {
    const excessBlocks = Math.max(0, x.load.activePrefillTokens - x.minActivePrefillTokens) / x.blockSize;
    const requestBlocks = Math.ceil(x.isl / x.blockSize);
    decay = 1 / (1 + w.overlapScoreCreditDecay * (excessBlocks / requestBlocks));
  }
  const credit = w.overlapScoreCredit * decay * x.overlapBlocks;
  const adjusted = Math.max(0, rawPrefillBlocks - credit);
  return w.prefillLoadScale * adjusted + x.load.activeDecodeBlocks + x.load.additionalActiveBlocks + w.decodeActiveRequestWeight * x.load.activeRequests;
}

export interface KvRouterOptions {
  workers: number;
  ranksPerWorker: number;
  /** The engines' KV block size (not the trace's). */
  blockSize: number;
  /** --kv-overlap-score-weight (see weightsFromOverlapScoreWeight); ignored when `weights` is given. */
  overlapScoreWeight?: number;
  weights?: KvCostWeights;
  temperature: number;
  seed: number;
  /** router_track_active_blocks (default true): book each request's prompt blocks as active. */
  trackActiveBlocks?: boolean;
  /** router_track_prefill_tokens (default true): charge uncached prompt tokens until the first token. */
  trackPrefillTokens?: boolean;
  /** router_assume_kv_reuse (default true); false books every block as its own (Dynamo draws random hashes). */
  assumeKvReuse?: boolean;
}

/**
 * Dynamo's offline disaggregated replay derives one router per pool from the main config
 * (`derive_prefill_router_config`, `derive_decode_router_config`): the prefill pool's tracks no
 * active blocks; the decode pool's gives no overlap credit, assumes no KV reuse and tracks no
 * prefill tokens, so it balances decode blocks alone.
 */
export function poolRouterOptions(pool: 'prefill' | 'decode', opts: KvRouterOptions): KvRouterOptions {
  if (pool === 'prefill') return { ...opts, trackActiveBlocks: false };
  const base = opts.weights ?? weightsFromOverlapScoreWeight(opts.overlapScoreWeight ?? KV_COST_DEFAULTS.prefillLoadScale);
  return { ...opts, weights: { ...base, overlapScoreCredit: 0 }, assumeKvReuse: false, trackPrefillTokens: false };
}

/** A request the router has placed: what it charged the candidate. */
interface Placed {
  candidate: number;
  /** Its block hashes; the first `sharedLength` (the non-private prefix) count in the candidate's active blocks. */
  hashes: readonly bigint[];
  sharedLength: number;
  privateBlocks: number;
  /** Prompt tokens charged to activePrefillTokens until the first token (0 once cleared). */
  prefillTokens: number;
}

/**
 * The router of Dynamo 1.4's offline replay with `--router-mode kv_router` and the default
 * config: every (worker, DP rank) is a candidate; overlap comes from the KV events the candidates
 * published (applied as the fleet hands them over — at pass start, as Dynamo's replay does for
 * vLLM); the load is what the router itself booked: at routing all of the request's full prompt
 * blocks become active (deduplicated by hash) and its uncached prompt tokens count as prefill
 * backlog, cleared at the first token; everything is released at the end. No output blocks are
 * predicted and there is no router queue (Dynamo's defaults).
 */
export class KvRouter implements FleetRouter {
  readonly name = 'kv';
  readonly index: KvOverlapIndex;
  private readonly weights: KvCostWeights;
  private readonly rng: Rng;
  private readonly candidates: number;
  private readonly overlap: Int32Array;
  private readonly logits: Float64Array;
  private readonly prefillTokens: Float64Array;
  private readonly requests: Int32Array;
  /** Per candidate: active prompt block hash → how many active requests hold it. */
  private readonly activeBlocks: Array<Map<bigint, number>>;
  private readonly privateBlocks: Int32Array;
  private readonly placed = new Map<number, Placed>();
  private readonly costInputs: CostInputs = {
    isl: 0,
    blockSize: 1,
    overlapBlocks: 0,
    minActivePrefillTokens: 0,
    load: { activePrefillTokens: 0, activeDecodeBlocks: 0, additionalActiveBlocks: 0, activeRequests: 0 },
  };
  private readonly trackActiveBlocks: boolean;
  private readonly trackPrefillTokens: boolean;
  private readonly assumeKvReuse: boolean;
  /** Requests routed, and the cached blocks the router saw on each one's chosen candidate (see `stats`). */
  routed = 0;
  overlapBlocksRouted = 0;

  constructor(private readonly opts: KvRouterOptions) {
    this.candidates = opts.workers * opts.ranksPerWorker;
    this.index = new KvOverlapIndex(this.candidates);
    this.weights = opts.weights ?? weightsFromOverlapScoreWeight(opts.overlapScoreWeight ?? KV_COST_DEFAULTS.prefillLoadScale);
    this.rng = createRng(opts.seed);
    this.overlap = new Int32Array(this.candidates);
    this.logits = new Float64Array(this.candidates);
    this.prefillTokens = new Float64Array(this.candidates);
    this.requests = new Int32Array(this.candidates);
    this.activeBlocks = Array.from({ length: this.candidates }, () => new Map());
    this.privateBlocks = new Int32Array(this.candidates);
    this.trackActiveBlocks = opts.trackActiveBlocks ?? true;
    this.trackPrefillTokens = opts.trackPrefillTokens ?? true;
    this.assumeKvReuse = opts.assumeKvReuse ?? true;
    this.costInputs.trackPrefillTokens = this.trackPrefillTokens;
  }

  /**
   * The router's own view of the run: requests routed and the prompt tokens it expected the chosen
   * workers to have cached. Set against the engines' actual hits, it shows what routing on
   * events saw and missed.
   */
  stats(): Record<string, number> {
    return { routed: this.routed, overlap_blocks: this.overlapBlocksRouted, overlap_tokens: this.overlapBlocksRouted * this.opts.blockSize };
  }

  onKvEvents(worker: number, events: readonly KvEvent[]): void {
    const base = worker * this.opts.ranksPerWorker;
    for (const e of events) this.index.apply(base + e.dpRank, e.data);
  }

  /**
   * What the router projects on `candidate` for a request whose first `sharedLength` block hashes
   * may be shared, of `fullBlocks` it would book (written into `load`).
   */
  fillLoad(load: CandidateLoad, candidate: number, hashes: readonly bigint[], sharedLength: number, fullBlocks: number): CandidateLoad {
    const active = this.activeBlocks[candidate];
    let depth = 0;
    if (active.size > 0) while (depth < sharedLength && active.has(hashes[depth])) depth++;
    load.activePrefillTokens = this.prefillTokens[candidate];
    load.activeDecodeBlocks = active.size + this.privateBlocks[candidate];
    load.additionalActiveBlocks = fullBlocks - depth;
    load.activeRequests = this.requests[candidate];
    return load;
  }

  route(request: RouteRequest): RoutingTarget {
    const { blockSize } = this.opts;
    const hashes = request.blockHashes();
    const fullBlocks = Math.floor(request.promptLength / blockSize);
    // Replay-private blocks (no other request shares them) form a suffix; each counts as its own block.
    let sharedLength = 0;
    while (sharedLength < hashes.length && hashes[sharedLength] !== PRIVATE_BLOCK_KEY) sharedLength++;
    this.index.overlaps(hashes, this.overlap, sharedLength);
    // What the load book holds of it: nothing (active blocks untracked), or every block as its own
    // (no KV reuse assumed), or its shared prefix by hash and the rest as private blocks.
    const bookedShared = this.trackActiveBlocks && this.assumeKvReuse ? sharedLength : 0;
    const privateBlocks = this.trackActiveBlocks ? Math.max(0, fullBlocks - bookedShared) : 0;
    const projectedBlocks = this.trackActiveBlocks ? fullBlocks : 0;
    let minPrefill = Infinity;
    for (let c = 0; c < this.candidates; c++) minPrefill = Math.min(minPrefill, this.prefillTokens[c]);
    // One reusable inputs object: this runs for every candidate of every request.
    const x = this.costInputs;
    x.isl = request.promptLength;
    x.blockSize = blockSize;
    x.minActivePrefillTokens = minPrefill;
    for (let c = 0; c < this.candidates; c++) {
      x.overlapBlocks = this.overlap[c];
      this.fillLoad(x.load, c, hashes, bookedShared, projectedBlocks);
      this.logits[c] = kvLogit(x, this.weights);
    }
    const candidate = selectCandidate(this.logits, this.opts.temperature, this.rng);
    const cached = this.overlap[candidate] * blockSize;
    const prefillTokens = this.trackPrefillTokens ? request.promptLength - Math.min(cached, request.promptLength) : 0;
    const active = this.activeBlocks[candidate];
    for (let i = 0; i < bookedShared; i++) active.set(hashes[i], (active.get(hashes[i]) ?? 0) + 1);
    this.privateBlocks[candidate] += privateBlocks;
    this.prefillTokens[candidate] += prefillTokens;
    this.requests[candidate]++;
    this.placed.set(request.key, { candidate, hashes, sharedLength: bookedShared, privateBlocks, prefillTokens });
    this.routed++;
    this.overlapBlocksRouted += this.overlap[candidate];
    const ranks = this.opts.ranksPerWorker;
    return { worker: Math.floor(candidate / ranks), rank: candidate % ranks };
  }

  onFirstToken(key: number): void {
    const p = this.placed.get(key);
    if (p) this.prefillDone(p);
  }

  onEnd(key: number): void {
    const p = this.placed.get(key);
    if (!p) return;
    this.placed.delete(key);
    this.prefillDone(p);
    const active = this.activeBlocks[p.candidate];
    for (let i = 0; i < p.sharedLength; i++) {
      const h = p.hashes[i];
      const n = active.get(h)! - 1;
      if (n === 0) active.delete(h);
      else active.set(h, n);
    }
    this.privateBlocks[p.candidate] -= p.privateBlocks;
    this.requests[p.candidate]--;
  }

  private prefillDone(p: Placed): void {
    this.prefillTokens[p.candidate] -= p.prefillTokens;
    p.prefillTokens = 0;
  }
}
