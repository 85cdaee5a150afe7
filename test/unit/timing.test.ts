// Unit tests for the polynomial and interpolated step-time models.
import { describe, it, expect } from 'vitest';
import { createPolynomialTimingModel, POLYNOMIAL_COEFFICIENTS } from '../../src/core/timing/polynomial.js';
import {
  createInterpolatedTimingModel,
  validateProfileGrid,
  type ProfileGrid,
} from '../../src/core/timing/interpolated.js';
import type { DecodeBatch, PrefillBatch } from '../../src/core/timing/timing-model.js';

const prefill = (newTokens: number, requests = 1): PrefillBatch => ({
  requests,
  newTokens,
  meanIsl: newTokens,
  meanPrefix: 0,
});
const decodeP = (p: number, requests = 1): DecodeBatch => ({
  requests,
  activeKvTokens: p * 10_000,
  totalKvTokens: 10_000,
  meanContextLength: 512,
});
const decodeAt = (activeKvTokens: number, meanContextLength: number, requests = 1): DecodeBatch => ({
  requests,
  activeKvTokens,
  totalKvTokens: 100_000,
  meanContextLength,
});

describe('polynomial timing model', () => {
  const model = createPolynomialTimingModel();

  it('exposes the Dynamo coefficients', () => {
    expect(model.name).toBe('polynomial');
    expect(POLYNOMIAL_COEFFICIENTS.prefill).toEqual({ a: 4.209989e-7, b: 1.518344e-2, c: 16.50142 });
    expect(POLYNOMIAL_COEFFICIENTS.decode).toEqual({ a: -25.74, b: 54.01, c: 5.74 });
  });

  it.each([
    [1, 16.52],
    [128, 18.45],
    [1000, 32.11],
    [2048, 49.36],
    [8192, 169.14],
    [32768, 966.08],
  ])('prefill(%s) = %s ms', (n, expected) => {
    expect(model.prefillMs(prefill(n))).toBeCloseTo(expected, 2);
  });

  it.each([
    [0, 5.74],
    [0.25, 17.63],
    [0.5, 26.31],
    [0.75, 31.77],
    [1.0, 34.01],
  ])('decode(p=%s) = %s ms', (p, expected) => {
    expect(model.decodeMs(decodeP(p))).toBeCloseTo(expected, 2);
  });

  it('prefill depends only on new tokens, not batch size or prefix', () => {
    expect(model.prefillMs({ requests: 4, newTokens: 1000, meanIsl: 5000, meanPrefix: 4750 })).toBeCloseTo(32.11, 2);
  });

  it('applies the zero rules', () => {
    expect(model.prefillMs(prefill(1000, 0))).toBe(0);
    expect(model.prefillMs(prefill(0))).toBe(0);
    expect(model.prefillMs(prefill(-5))).toBe(0);
    expect(model.prefillMs(prefill(Number.NaN))).toBe(0);
    expect(model.decodeMs(decodeP(0.5, 0))).toBe(0);
  });

  it('clamps utilisation to [0, 1] and tolerates zero capacity', () => {
    expect(model.decodeMs(decodeP(3))).toBeCloseTo(34.01, 2);
    expect(model.decodeMs(decodeP(-1))).toBeCloseTo(5.74, 2);
    expect(model.decodeMs({ requests: 2, activeKvTokens: 50, totalKvTokens: 0, meanContextLength: 10 })).toBeCloseTo(5.74, 2);
  });
});

// Hand-made grid; every expected number below is worked out by hand in the comments.
const grid = (): ProfileGrid => ({
  prefillIsl: Float64Array.from([100, 200, 400]),
  prefillTtftMs: Float64Array.from([10, 20, 60]),
  decodeActiveKvTokens: Float64Array.from([0, 1000, 3000]),
  decodeContextLength: Float64Array.from([100, 300]),
  // rows = active kv [0, 1000, 3000], cols = context [100, 300]
  decodeItlMs: Float64Array.from([2, 4, 6, 10, 10, 20]),
});

describe('interpolated timing model', () => {
  const model = createInterpolatedTimingModel(grid());

  it('is named', () => {
    expect(model.name).toBe('interpolated');
  });

  it.each([
    [100, 10], // grid point
    [150, 15], // halfway 10..20
    [300, 40], // halfway 20..60
    [400, 60], // last grid point
    [50, 5], // below: slope (20-10)/100 = 0.1 → 10 - 50·0.1
    [10, 1], // 10 - 90·0.1
    [600, 100], // above: slope (60-20)/200 = 0.2 → 60 + 200·0.2
  ])('prefill(%s) = %s ms', (n, expected) => {
    expect(model.prefillMs(prefill(n))).toBeCloseTo(expected, 10);
  });

  it('clamps negative prefill extrapolation to 0', () => {
    // slope 0.2 from (100, 10): at 20 tokens 10 - 80·0.2 = -6 → 0
    const steep = createInterpolatedTimingModel({ ...grid(), prefillIsl: Float64Array.from([100, 200]), prefillTtftMs: Float64Array.from([10, 30]) });
    expect(steep.prefillMs(prefill(20))).toBe(0);
  });

  it.each([
    [0, 100, 2], // corner
    [1000, 300, 10], // interior node
    [1000, 200, 8], // edge midpoint between 6 and 10
    [500, 200, 5.5], // centre of first cell: (2+4+6+10)/4
    [2000, 200, 11.5], // centre of second cell: (6+10+10+20)/4
    [0, 500, 6], // beyond context: row 0 slope 2/200 → 2 + 400·0.01
    [5000, 100, 14], // beyond kv: col 0 slope 4/2000 → 10 + 2000·0.002
    // beyond both: on cell [1000,3000]x[100,300] f = 6 + 4u + 4v + 6uv, u = v = 2 → 46
    [5000, 500, 46],
  ])('decode(kv=%s, ctx=%s) = %s ms', (kv, ctx, expected) => {
    expect(model.decodeMs(decodeAt(kv, ctx))).toBeCloseTo(expected, 10);
  });

  it('floors decode at 1 ms, including NaN results', () => {
    // row 0 extrapolated to ctx -1000: 2 + (-1100)·0.01 = -9 → 1
    expect(model.decodeMs(decodeAt(0, -1000))).toBe(1);
    expect(model.decodeMs(decodeAt(0, Number.NaN))).toBe(1);
  });

  it('applies the zero rules', () => {
    expect(model.prefillMs(prefill(150, 0))).toBe(0);
    expect(model.prefillMs(prefill(0))).toBe(0);
    expect(model.decodeMs(decodeAt(500, 200, 0))).toBe(0);
  });

  it('copies the grid so later mutation has no effect', () => {
    const g = grid();
    const m = createInterpolatedTimingModel(g);
    g.prefillTtftMs[0] = 1000;
    expect(m.prefillMs(prefill(100))).toBe(10);
  });
});

describe('validateProfileGrid', () => {
  it('accepts a good grid', () => {
    expect(validateProfileGrid(grid())).toBeNull();
  });

  it.each<[string, Partial<ProfileGrid>, RegExp]>([
    ['prefill length mismatch', { prefillTtftMs: Float64Array.from([1, 2]) }, /prefill_ttft_ms has 2/],
    ['decode size mismatch', { decodeItlMs: Float64Array.from([1, 2, 3]) }, /decode_itl has 3 values.*3x2=6/],
    ['unsorted axis', { prefillIsl: Float64Array.from([100, 400, 200]) }, /prefill_isl must be strictly increasing/],
    ['duplicate axis point', { decodeContextLength: Float64Array.from([100, 100]) }, /decode_context_length must be strictly increasing/],
    [
      'too few points',
      { decodeActiveKvTokens: Float64Array.from([5]), decodeItlMs: Float64Array.from([1, 2]) },
      /decode_active_kv_tokens needs at least 2 points/,
    ],
    ['non-finite axis', { prefillIsl: Float64Array.from([1, Number.NaN, 3]) }, /prefill_isl\[1\] is not finite/],
    ['non-finite value', { decodeItlMs: Float64Array.from([1, 2, 3, Infinity, 5, 6]) }, /decode_itl\[3\] is not finite/],
  ])('rejects %s', (_label, patch, message) => {
    const bad = { ...grid(), ...patch };
    expect(validateProfileGrid(bad)).toMatch(message);
    expect(() => createInterpolatedTimingModel(bad)).toThrow(message);
  });
});
