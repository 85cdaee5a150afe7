// Seeded, fast PRNG (sfc32 seeded through splitmix32) so every run is reproducible.

export interface Rng {
  /** Uniform integer in [0, bound). */
  nextInt(bound: number): number;
  /** Uniform float in [0, 1). */
  nextFloat(): number;
}

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Mixes several 32-bit values into one seed (order matters). */
export function mixSeed(...parts: number[]): number {
  const state = { s: 0x2545f491 };
  let acc = 0;
  for (const p of parts) {
    state.s ^= p | 0;
    acc = (acc ^ splitmix32(state)) >>> 0;
  }
  return acc;
}

export function createRng(seed: number): Rng {
  const init = { s: seed | 0 };
  let a = splitmix32(init);
  let b = splitmix32(init);
  let c = splitmix32(init);
  let d = splitmix32(init);
  const next = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 8; i++) next();
  return {
    nextInt: (bound) => Math.floor((next() / 4294967296) * bound),
    nextFloat: () => next() / 4294967296,
  };
}
