// Profile-driven step-time model: linear/bilinear interpolation (with extrapolation) over measured grids.
import {
  sanitizeDecodeMs,
  sanitizePrefillMs,
  type DecodeBatch,
  type PrefillBatch,
  type TimingModel,
} from './timing-model.js';

/** Measured profile. decodeItlMs is row-major: rows follow decodeActiveKvTokens, columns decodeContextLength. */
export interface ProfileGrid {
  prefillIsl: Float64Array;
  prefillTtftMs: Float64Array;
  decodeActiveKvTokens: Float64Array;
  decodeContextLength: Float64Array;
  decodeItlMs: Float64Array;
}

function checkAxis(name: string, axis: Float64Array): string | null {
  if (axis.length < 2) return `${name} needs at least 2 points, got ${axis.length}`;
  for (let i = 0; i < axis.length; i++) {
    if (!Number.isFinite(axis[i])) return `${name}[${i}] is not finite (${axis[i]})`;
    // Axes are rejected rather than sorted: silently reordering would desynchronise them from the value arrays.
    if (i > 0 && !(axis[i] > axis[i - 1])) {
      return `${name} must be strictly increasing, but ${name}[${i - 1}]=${axis[i - 1]} >= ${name}[${i}]=${axis[i]}`;
    }
  }
  return null;
}

function checkFinite(name: string, values: Float64Array): string | null {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) return `${name}[${i}] is not finite (${values[i]})`;
  }
  return null;
}

/**
 * Returns a human-readable problem description, or null when the grid is usable.
 * Axes must already be strictly increasing (unsorted or duplicate points are rejected, not sorted).
 */
export function validateProfileGrid(g: ProfileGrid): string | null {
  if (g.prefillIsl.length !== g.prefillTtftMs.length) {
    return `prefill_isl has ${g.prefillIsl.length} points but prefill_ttft_ms has ${g.prefillTtftMs.length}`;
  }
  const rows = g.decodeActiveKvTokens.length;
  const cols = g.decodeContextLength.length;
  if (g.decodeItlMs.length !== rows * cols) {
    return `decode_itl has ${g.decodeItlMs.length} values but the axes need ${rows}x${cols}=${rows * cols}`;
  }
  return (
    checkAxis('prefill_isl', g.prefillIsl) ??
    checkFinite('prefill_ttft_ms', g.prefillTtftMs) ??
    checkAxis('decode_active_kv_tokens', g.decodeActiveKvTokens) ??
    checkAxis('decode_context_length', g.decodeContextLength) ??
    checkFinite('decode_itl', g.decodeItlMs)
  );
}

/**
 * Index i of the segment [axis[i], axis[i+1]] to use for x, plus the fractional position t.
 * Outside the axis the end segment is reused and t leaves [0, 1], which is exactly linear extrapolation.
 */
function locate(axis: Float64Array, x: number): { i: number; t: number } {
  let lo = 0;
  let hi = axis.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (axis[mid] <= x) lo = mid;
    else hi = mid;
  }
  return { i: lo, t: (x - axis[lo]) / (axis[lo + 1] - axis[lo]) };
}

export function createInterpolatedTimingModel(grid: ProfileGrid): TimingModel {
  const problem = validateProfileGrid(grid);
  if (problem !== null) throw new Error(`invalid profile grid: ${problem}`);
  // Private copies so later mutation of the caller's arrays cannot change timings mid-run.
  const isl = Float64Array.from(grid.prefillIsl);
  const ttft = Float64Array.from(grid.prefillTtftMs);
  const kvAxis = Float64Array.from(grid.decodeActiveKvTokens);
  const ctxAxis = Float64Array.from(grid.decodeContextLength);
  const itl = Float64Array.from(grid.decodeItlMs);
  const cols = ctxAxis.length;

  return {
    name: 'interpolated',
    prefillMs(batch: PrefillBatch): number {
      if (batch.requests <= 0 || !(batch.newTokens > 0)) return 0;
      const { i, t } = locate(isl, batch.newTokens);
      return sanitizePrefillMs(ttft[i] + t * (ttft[i + 1] - ttft[i]));
    },
    decodeMs(batch: DecodeBatch): number {
      if (batch.requests <= 0) return 0;
      const r = locate(kvAxis, batch.activeKvTokens);
      const c = locate(ctxAxis, batch.meanContextLength);
      const v00 = itl[r.i * cols + c.i];
      const v01 = itl[r.i * cols + c.i + 1];
      const v10 = itl[(r.i + 1) * cols + c.i];
      const v11 = itl[(r.i + 1) * cols + c.i + 1];
      const top = v00 + c.t * (v01 - v00);
      const bottom = v10 + c.t * (v11 - v10);
      return sanitizeDecodeMs(top + r.t * (bottom - top));
    },
  };
}
