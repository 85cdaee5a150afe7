// Dynamo's default fitted polynomial step-time model (used when no profile NPZ is given).
import {
  sanitizeDecodeMs,
  sanitizePrefillMs,
  type DecodeBatch,
  type PrefillBatch,
  type TimingModel,
} from './timing-model.js';

/** Coefficients copied from Dynamo's mocker so simulated latencies match the upstream mocker. */
export const POLYNOMIAL_COEFFICIENTS = {
  /** prefill T(n) = a·n² + b·n + c ms, n = new (uncached) tokens in the step */
  prefill: { a: 4.209989e-7, b: 1.518344e-2, c: 16.50142 },
  /** decode T(p) = a·p² + b·p + c ms, p = KV cache utilisation in [0, 1] */
  decode: { a: -25.74, b: 54.01, c: 5.74 },
} as const;

export function createPolynomialTimingModel(): TimingModel {
  const { prefill, decode } = POLYNOMIAL_COEFFICIENTS;
  return {
    name: 'polynomial',
    prefillMs(batch: PrefillBatch): number {
      if (batch.requests <= 0 || !(batch.newTokens > 0)) return 0;
      const n = batch.newTokens;
      return sanitizePrefillMs(prefill.a * n * n + prefill.b * n + prefill.c);
    },
    decodeMs(batch: DecodeBatch): number {
      if (batch.requests <= 0) return 0;
      // Unknown capacity (0 or NaN) is treated as an empty cache rather than dividing by zero.
      const raw = batch.totalKvTokens > 0 ? batch.activeKvTokens / batch.totalKvTokens : 0;
      const p = Math.min(1, Math.max(0, Number.isFinite(raw) ? raw : 0));
      return sanitizeDecodeMs(decode.a * p * p + decode.b * p + decode.c);
    },
  };
}
