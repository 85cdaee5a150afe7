// Plain data types shared by the simulation core and its drivers.

export type PreemptionMode = 'lifo' | 'fifo';

/** A worker's part in disaggregated serving (Dynamo's `worker_type`). */
export type WorkerType = 'aggregated' | 'prefill' | 'decode';

/** The engine slice of the configuration: one scheduler + block pool (one DP rank). */
export interface EngineConfig {
  numGpuBlocks: number;
  blockSize: number;
  maxNumSeqs: number;
  /** Per-pass token budget; null means unlimited. */
  maxNumBatchedTokens: number | null;
  enablePrefixCaching: boolean;
  enableChunkedPrefill: boolean;
  /** Fraction of all blocks that admission keeps free. */
  watermark: number;
  preemptionMode: PreemptionMode;
  /** Divides every simulated duration; Infinity means no delay at all. */
  speedupRatio: number;
  /** Extra divisor for decode time only. */
  decodeSpeedupRatio: number;
  /**
   * Coefficient of variation of a seeded random factor (mean 1, clamped to [0.3, 1.7]) that
   * multiplies every pass's duration; 0 or absent = deterministic. Read at every pass, so it may
   * change at run time.
   */
  latencyJitter?: number;
  /** Caps prompt + output tokens; null means the model's context length decides. */
  maxModelLen: number | null;
  /**
   * Disaggregation role (default aggregated): a prefill worker emits one token per request, a decode
   * worker computes prompts at no cost (their KV arrives from a prefill worker).
   */
  workerType?: WorkerType;
}

/** KV cache events as the router sees them; hashes are exact u64 values. */
export interface StoredBlock {
  blockHash: bigint;
  tokensHash: bigint;
  /** The block's token ids, only when the scheduler records them (`recordBlockTokens`). */
  tokens?: number[];
}

export type KvEventData =
  | { kind: 'stored'; parentHash: bigint | null; blocks: StoredBlock[] }
  | { kind: 'removed'; blockHashes: bigint[] }
  | { kind: 'cleared' };

export interface KvEvent {
  /** Per-DP-rank counter starting at 0. */
  eventId: number;
  dpRank: number;
  data: KvEventData;
  /** The key of the sequence whose blocks a stored event reports (only when the pool tags owners). */
  owner?: number;
}
