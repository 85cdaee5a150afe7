// The whole engine: one scheduler per data-parallel rank, request validation and routing.
import type { Xxh3 } from './hash.js';
import { createRng, mixSeed } from './random.js';
import { Scheduler } from './scheduler.js';
import type { Sequence } from './sequence.js';
import type { TimingModel } from './timing/timing-model.js';
import type { EngineConfig } from './types.js';

export interface EngineSetup extends EngineConfig {
  dataParallelSize: number;
  seed: number;
}

/** What the engine needs to know about the model it pretends to run. */
export interface ModelLimits {
  vocabSize: number;
  /** Context length from the model's config; 0 when unknown. */
  contextLength: number;
}

export interface EngineRequest {
  /** Caller's handle, returned in every emission. */
  key: number;
  promptLength: number;
  promptTokens?: ArrayLike<number>;
  promptBlocks?: { local: bigint[]; seq: bigint[]; tail: number[] };
  /** Requested output tokens; null means "up to the remaining context". */
  maxTokens: number | null;
  bannedTokens?: ReadonlySet<number>;
  /** Explicit DP rank (from the router); null means round-robin. */
  dpRank?: number | null;
  /** Per-request seed (e.g. sampling_options.seed); defaults to the arrival counter. */
  seed?: number;
  /** See SequenceInput.privateOutput (trace replay). */
  privateOutput?: boolean;
  /** Keep the KV after the last token for a handoff (prefill side); see Scheduler.release. */
  holdOnFinish?: boolean;
}

export type SubmitError = { ok: false; kind: 'invalid' | 'dp-rank' | 'too-long' | 'rejected'; reason: string };
export type SubmitResult = { ok: true; seq: Sequence; rank: number } | SubmitError;

/** --max-model-len, else the model's context length (0 = unknown: no limit). */
export function contextLimit(maxModelLen: number | null | undefined, modelContextLength: number): number | null {
  return maxModelLen ?? (modelContextLength > 0 ? modelContextLength : null);
}

export class Engine {
  readonly ranks: Scheduler[];
  private nextRank = 0;
  private arrivals = 0;

  constructor(
    readonly setup: EngineSetup,
    timing: TimingModel,
    hasher: Xxh3,
    readonly model: ModelLimits,
  ) {
    this.ranks = [];
    for (let r = 0; r < setup.dataParallelSize; r++) this.ranks.push(new Scheduler(setup, timing, hasher, r, setup.seed));
  }

  /** The context limit requests are held to. */
  get contextLimit(): number | null {
    return contextLimit(this.setup.maxModelLen, this.model.contextLength);
  }

  /** Exact output length for a prompt, or an error when the request cannot be served. */
  outputLength(promptLength: number, maxTokens: number | null): number | SubmitError {
    const limit = this.contextLimit;
    if (limit !== null && promptLength >= limit) {
      return { ok: false, kind: 'too-long', reason: `prompt has ${promptLength} tokens, which does not fit the context length of ${limit}` };
    }
    // A prefill worker computes the prompt and the first token, whatever the request asked for (Dynamo's rule).
    if (this.setup.workerType === 'prefill') return 1;
    if (maxTokens === null) {
      if (limit === null) {
        return { ok: false, kind: 'invalid', reason: 'stop_conditions.max_tokens is required when the context length is unknown (set --max-model-len)' };
      }
      return limit - promptLength;
    }
    return limit === null ? maxTokens : Math.min(maxTokens, limit - promptLength);
  }

  /** The DP rank a request goes to: the router's choice if valid, else round-robin. */
  route(dpRank: number | null | undefined): number | SubmitError {
    const { dataParallelSize } = this.setup;
    if (dpRank === undefined || dpRank === null) {
      const rank = this.nextRank;
      this.nextRank = (this.nextRank + 1) % dataParallelSize;
      return rank;
    }
    if (!Number.isInteger(dpRank) || dpRank < 0 || dpRank >= dataParallelSize) {
      return { ok: false, kind: 'dp-rank', reason: `dp_rank ${dpRank} is out of range: this worker has data_parallel_size ${dataParallelSize}` };
    }
    return dpRank;
  }

  /** Every static reason to refuse a request; returns its exact output length otherwise. */
  check(req: Pick<EngineRequest, 'promptLength' | 'maxTokens'>, rank: number): number | SubmitError {
    if (req.promptLength < 1) return { ok: false, kind: 'invalid', reason: 'token_ids must not be empty' };
    const { enableChunkedPrefill, maxNumBatchedTokens } = this.setup;
    if (!enableChunkedPrefill && maxNumBatchedTokens !== null && req.promptLength > maxNumBatchedTokens) {
      return {
        ok: false,
        kind: 'rejected',
        reason: `request rejected: prompt of ${req.promptLength} tokens exceeds max_num_batched_tokens ${maxNumBatchedTokens} with chunked prefill disabled`,
      };
    }
    const output = this.outputLength(req.promptLength, req.maxTokens);
    if (typeof output !== 'number') return output;
    const refusal = this.ranks[rank].refusal(req.promptLength, output);
    return refusal === null ? output : { ok: false, kind: 'rejected', reason: refusal };
  }

  submit(req: EngineRequest): SubmitResult {
    return this.enter(req, 'add');
  }

  /** Queues a decode-side handoff on its rank (see Scheduler.reserve); the caller retries reservations. */
  reserve(req: EngineRequest): SubmitResult {
    return this.enter(req, 'reserve');
  }

  private enter(req: EngineRequest, how: 'add' | 'reserve'): SubmitResult {
    const rank = this.route(req.dpRank);
    if (typeof rank !== 'number') return rank;
    const output = this.check(req, rank);
    if (typeof output !== 'number') return output;
    const seed = mixSeed(this.setup.seed, req.seed ?? this.arrivals);
    this.arrivals++;
    const added = this.ranks[rank][how]({
      key: req.key,
      promptLength: req.promptLength,
      promptTokens: req.promptTokens,
      promptBlocks: req.promptBlocks,
      maxOutputTokens: output,
      rng: createRng(seed),
      vocabSize: this.model.vocabSize,
      bannedTokens: req.bannedTokens,
      privateOutput: req.privateOutput,
      holdOnFinish: req.holdOnFinish,
    });
    if (!added.ok) return { ok: false, kind: 'rejected', reason: added.reason };
    return { ok: true, seq: added.seq, rank };
  }

  get idle(): boolean {
    return this.ranks.every((r) => r.idle);
  }
}
