// Seeded per-pass latency jitter (--latency-jitter): a random factor with mean 1 applied to a pass's duration.
import { createRng, type Rng } from '../random.js';

/** Every factor lies in [JITTER_MIN_FACTOR, JITTER_MAX_FACTOR]. */
export const JITTER_MIN_FACTOR = 0.3;
export const JITTER_MAX_FACTOR = 1.7;

/** Mixed with the engine seed and the DP rank into the seed of a rank's jitter stream. */
export const JITTER_SEED_SALT = 0x6a177e5;

/**
 * One stream of pass-duration factors. `factor(cv)` draws a lognormal factor with mean 1 and
 * coefficient of variation `cv` (sigma² = ln(1 + cv²), mu = −sigma²/2), from two uniforms of the
 * seeded PRNG by Box–Muller, then clamps it to [0.3, 1.7]. The clamp trims the long upper tail
 * more than the lower one, so the mean shifts slightly below 1 and the CV below `cv` as `cv` grows
 * (cv 0.1: unchanged; cv 0.3: mean ≈ 0.995, CV ≈ 0.286; cv 1: mean ≈ 0.85, CV ≈ 0.59). `cv` 0
 * returns exactly 1 and draws nothing, so the stream only advances on jittered passes.
 */
export class PassJitter {
  private readonly rng: Rng;

  constructor(seed: number) {
    this.rng = createRng(seed);
  }

  factor(cv: number): number {
    if (cv === 0) return 1;
    if (!(cv > 0) || !Number.isFinite(cv)) throw new RangeError(`latency jitter must be a finite number ≥ 0, got ${cv}`);
    const sigma2 = Math.log1p(cv * cv);
    const mu = -sigma2 / 2;
    // Box–Muller: u1 in (0, 1] keeps the logarithm finite.
    const u1 = 1 - this.rng.nextFloat();
    const u2 = this.rng.nextFloat();
    const z = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    const f = Math.exp(mu + Math.sqrt(sigma2) * z);
    return Math.min(JITTER_MAX_FACTOR, Math.max(JITTER_MIN_FACTOR, f));
  }
}
