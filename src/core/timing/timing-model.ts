// Shared contract for engine step-time models (prefill and decode), independent of how times are derived.

/** One scheduled prefill step. `newTokens` excludes prefix-cache hits, so a fully cached prompt has newTokens 0. */
export interface PrefillBatch {
  requests: number;
  newTokens: number;
  meanIsl: number;
  meanPrefix: number;
}

/** One scheduled decode step; `totalKvTokens` is the KV cache capacity, not the usage. */
export interface DecodeBatch {
  requests: number;
  activeKvTokens: number;
  totalKvTokens: number;
  meanContextLength: number;
}

/**
 * Step-time model in milliseconds.
 * prefillMs: 0 when requests == 0 or newTokens <= 0, never negative.
 * decodeMs: 0 when requests == 0, otherwise at least 1 ms.
 * Speedup is deliberately not applied here: the scheduler divides, so models stay comparable with Dynamo's tables.
 */
export interface TimingModel {
  readonly name: string;
  prefillMs(batch: PrefillBatch): number;
  decodeMs(batch: DecodeBatch): number;
}

/** Decode floor used by Dynamo: a decode step never completes faster than 1 ms. */
export const DECODE_FLOOR_MS = 1.0;

/** Clamp a raw prefill time; NaN and negatives (possible from extrapolation) mean "free", not an error. */
export function sanitizePrefillMs(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? ms : 0;
}

/** Clamp a raw decode time to the 1 ms floor; NaN also lands on the floor so the engine always advances. */
export function sanitizeDecodeMs(ms: number): number {
  return Number.isFinite(ms) && ms > DECODE_FLOOR_MS ? ms : DECODE_FLOOR_MS;
}
