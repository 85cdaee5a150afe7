// Loads a profiled timing grid from an NPZ file and picks the timing model, falling back like Dynamo does.
import { readFileSync } from 'node:fs';
import { createInterpolatedTimingModel, validateProfileGrid, type ProfileGrid } from '../core/timing/interpolated.js';
import { createPolynomialTimingModel } from '../core/timing/polynomial.js';
import type { TimingModel } from '../core/timing/timing-model.js';
import { parseNpz, type NpyArray } from './npz.js';

function axis(path: string, arrays: Map<string, NpyArray>, key: string): NpyArray {
  const arr = arrays.get(key);
  if (!arr) throw new Error(`profile ${path}: missing array '${key}' (found: ${[...arrays.keys()].join(', ') || 'none'})`);
  return arr;
}

function vector(path: string, arrays: Map<string, NpyArray>, key: string): Float64Array {
  const arr = axis(path, arrays, key);
  if (arr.shape.length !== 1) throw new Error(`profile ${path}: '${key}' must be 1-D, got shape (${arr.shape.join(', ')})`);
  return arr.data;
}

/** Read and validate the profile grid at `path`; every error message names the file. */
export function loadProfileGrid(path: string): ProfileGrid {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new Error(`profile ${path}: cannot read file: ${(err as Error).message}`);
  }
  let arrays: Map<string, NpyArray>;
  try {
    arrays = parseNpz(bytes);
  } catch (err) {
    throw new Error(`profile ${path}: ${(err as Error).message}`);
  }
  const prefillIsl = vector(path, arrays, 'prefill_isl');
  const prefillTtftMs = vector(path, arrays, 'prefill_ttft_ms');
  const decodeActiveKvTokens = vector(path, arrays, 'decode_active_kv_tokens');
  const decodeContextLength = vector(path, arrays, 'decode_context_length');
  const itl = axis(path, arrays, 'decode_itl');
  const rows = decodeActiveKvTokens.length;
  const cols = decodeContextLength.length;
  if (itl.shape.length !== 2 || itl.shape[0] !== rows || itl.shape[1] !== cols) {
    throw new Error(
      `profile ${path}: 'decode_itl' must have shape (${rows}, ${cols}) matching decode_active_kv_tokens x decode_context_length, got (${itl.shape.join(', ')})`,
    );
  }
  const grid: ProfileGrid = { prefillIsl, prefillTtftMs, decodeActiveKvTokens, decodeContextLength, decodeItlMs: itl.data };
  const problem = validateProfileGrid(grid);
  if (problem !== null) throw new Error(`profile ${path}: ${problem}`);
  return grid;
}

/**
 * No path → polynomial model. Unusable file → one error line and the polynomial model,
 * because Dynamo's mocker keeps serving with its defaults rather than refusing to start.
 */
export function loadTimingModel(path: string | undefined, log: (msg: string) => void): TimingModel {
  if (path === undefined) return createPolynomialTimingModel();
  try {
    return createInterpolatedTimingModel(loadProfileGrid(path));
  } catch (err) {
    log(`failed to load timing profile ${path}: ${(err as Error).message}; falling back to the polynomial timing model`);
    return createPolynomialTimingModel();
  }
}
