// How Dynamo's routers pick among scored candidates: the lowest score with uniform ties, or a softmax sample.
import type { Rng } from '../random.js';

/**
 * Picks among candidates in order (callers sort them by worker, then DP rank, as Dynamo's seeded
 * selector does). Temperature 0: the lowest logit, ties broken uniformly by reservoir sampling.
 * Above 0: softmax over −(logit − min) / ((max − min) × temperature), uniform when all are equal,
 * the first candidate whose running sum reaches a uniform sample.
 */
export function selectCandidate(logits: ArrayLike<number>, temperature: number, rng: Rng): number {
  const n = logits.length;
  if (n === 0) throw new Error('no candidates to route to');
  if (temperature === 0) {
    let best = 0;
    let ties = 1;
    for (let i = 1; i < n; i++) {
      if (logits[i] < logits[best]) {
        best = i;
        ties = 1;
      } else if (logits[i] === logits[best]) {
        ties++;
        if (rng.nextInt(ties) === 0) best = i;
      }
    }
    return best;
  }
  return softmaxSample(logits, temperature, rng.nextFloat());
}

/** Dynamo's `softmax_sample_entries` with the uniform `sample` given (tests pin it). */
export function softmaxSample(logits: ArrayLike<number>, temperature: number, sample: number): number {
  const n = logits.length;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    lo = Math.min(lo, logits[i]);
    hi = Math.max(hi, logits[i]);
  }
  const probs = new Float64Array(n);
  if (lo === hi) probs.fill(1 / n);
  else {
    const scale = -1 / ((hi - lo) * temperature);
    const top = lo * scale;
    for (let i = 0; i < n; i++) probs[i] = Math.exp(logits[i] * scale - top);
  }
  let sum = 0;
  for (let i = 0; i < n; i++) sum += probs[i];
  let cumulative = 0;
  for (let i = 0; i < n; i++) {
    cumulative += probs[i] / sum;
    if (sample <= cumulative) return i;
  }
  return n - 1;
}
