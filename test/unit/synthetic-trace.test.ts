// Synthetic workload generator: spec errors, defaults, determinism, lengths, shared prefixes, sessions, arrivals.
import { describe, expect, it } from 'vitest';
import {
  SYNTHETIC_DEFAULTS,
  SyntheticSpecError,
  generateSyntheticTrace,
  parseSyntheticSpec,
  type SyntheticSpec,
} from '../../src/replay/synthetic-trace.js';
import { parseTrace, type TraceRecord } from '../../src/replay/trace.js';

const S = 512;
const spec = (text: string, seed = 1): SyntheticSpec => parseSyntheticSpec(text, seed);
const gen = (text: string, seed = 1, blockSize = S): TraceRecord[] => generateSyntheticTrace(spec(text, seed), blockSize);

function stats(xs: number[]): { mean: number; std: number; min: number; max: number } {
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const x of xs) {
    sum += x;
    min = Math.min(min, x);
    max = Math.max(max, x);
  }
  const mean = sum / xs.length;
  let sq = 0;
  for (const x of xs) sq += (x - mean) ** 2;
  return { mean, std: Math.sqrt(sq / (xs.length - 1)), min, max };
}

function parseError(text: string): SyntheticSpecError {
  try {
    parseSyntheticSpec(text, 0);
  } catch (err) {
    expect(err).toBeInstanceOf(SyntheticSpecError);
    return err as SyntheticSpecError;
  }
  throw new Error(`'${text}' parsed`);
}

/** How many records list each hash id. */
function idCounts(records: TraceRecord[]): Map<number, number> {
  const counts = new Map<number, number>();
  for (const r of records) for (const id of r.hashIds) counts.set(id, (counts.get(id) ?? 0) + 1);
  return counts;
}

/** Distinct groups among `records`: first hash ids that begin more than one of them (a request can share nothing when its prefix rounds down to no block). */
function groupCount(records: TraceRecord[]): number {
  const firsts = new Map<number, number>();
  for (const r of records) firsts.set(r.hashIds[0], (firsts.get(r.hashIds[0]) ?? 0) + 1);
  return [...firsts.values()].filter((c) => c > 1).length;
}

describe('parseSyntheticSpec', () => {
  it('parses every key', () => {
    expect(spec('requests=2000,isl=normal:3000:800,osl=lognormal:200:100,shared-prefix=0.5,prefix-groups=8,turns=3,turn-delay-ms=250,rate=20', 9)).toEqual({
      requests: 2000,
      isl: { kind: 'normal', mean: 3000, std: 800 },
      osl: { kind: 'lognormal', mean: 200, std: 100 },
      sharedPrefixRatio: 0.5,
      prefixGroups: 8,
      turns: 3,
      interTurnDelayMs: 250,
      rate: 20,
      arrival: 'poisson',
      seed: 9,
    });
    const s = spec(' isl = 1000 , osl=fixed:64,arrival=constant,rate=2.5 ');
    expect(s.isl).toEqual({ kind: 'fixed', value: 1000 });
    expect(s.osl).toEqual({ kind: 'fixed', value: 64 });
    expect(s.arrival).toBe('constant');
    expect(s.rate).toBe(2.5);
    expect(spec('isl=uniform:100:200').isl).toEqual({ kind: 'uniform', min: 100, max: 200 });
    expect(spec('rate=burst').rate).toBeNull();
  });

  it('errors name the key', () => {
    const cases: [string, string, RegExp?][] = [
      ['foo=1', 'foo', /unknown key; expected one of requests, isl/],
      ['isl=foo', 'isl'],
      ['osl=gamma:1:2', 'osl'],
      ['isl=0', 'isl'],
      ['isl=12.5', 'isl'],
      ['osl=uniform:0:5', 'osl'],
      ['isl=uniform:9:3', 'isl'],
      ['isl=normal:-5:2', 'isl'],
      ['isl=lognormal:100:-1', 'isl'],
      ['isl=normal:100', 'isl'],
      ['requests=0', 'requests'],
      ['requests=1.5', 'requests'],
      ['requests=', 'requests'],
      ['requests=0x10', 'requests'],
      ['shared-prefix=1.5', 'shared-prefix'],
      ['shared-prefix=-0.1', 'shared-prefix'],
      ['prefix-groups=-1', 'prefix-groups'],
      ['prefix-groups=0,shared-prefix=0.2', 'prefix-groups'],
      ['turns=0', 'turns'],
      ['turn-delay-ms=-3', 'turn-delay-ms'],
      ['rate=0', 'rate'],
      ['rate=fast', 'rate'],
      ['arrival=gamma', 'arrival'],
      ['isl=10,isl=20', 'isl', /more than once/],
      ['requests', 'requests', /KEY=VALUE/],
    ];
    for (const [text, key, detail] of cases) {
      const err = parseError(text);
      expect(err.key, text).toBe(key);
      expect(err.message, text).toMatch(new RegExp(`^--synthetic: ${key}: `));
      if (detail) expect(err.message, text).toMatch(detail);
    }
    expect(parseError('isl=foo').message).toBe(
      "--synthetic: isl: expected fixed N, uniform:MIN:MAX, normal:MEAN:STD or lognormal:MEAN:STD, got 'foo'",
    );
    expect(parseError('shared-prefix=1.5').message).toContain("got '1.5'");
  });

  it('prefix-groups=0 is accepted without sharing, like Dynamo', () => {
    expect(spec('prefix-groups=0').prefixGroups).toBe(0);
    expect(gen('requests=50,prefix-groups=0').every((r) => r.hashIds.length === 4)).toBe(true);
  });

  it('a spec built in code is checked too', () => {
    expect(() => generateSyntheticTrace({ ...SYNTHETIC_DEFAULTS, sharedPrefixRatio: 2 }, S)).toThrow(/--synthetic: shared-prefix: /);
    expect(() => generateSyntheticTrace({ ...SYNTHETIC_DEFAULTS, isl: { kind: 'fixed', value: 0 } }, S)).toThrow(/--synthetic: isl: /);
    expect(() => generateSyntheticTrace(SYNTHETIC_DEFAULTS, 0)).toThrow(RangeError);
  });
});

describe('defaults', () => {
  it('are declared once and used for missing keys', () => {
    expect(SYNTHETIC_DEFAULTS).toEqual({
      requests: 1000,
      isl: { kind: 'fixed', value: 2048 },
      osl: { kind: 'fixed', value: 256 },
      sharedPrefixRatio: 0,
      prefixGroups: 1,
      turns: 1,
      interTurnDelayMs: 0,
      rate: null,
      arrival: 'poisson',
      seed: 0,
    });
    expect(Object.isFrozen(SYNTHETIC_DEFAULTS)).toBe(true);
    expect(parseSyntheticSpec('', 5)).toEqual({ ...SYNTHETIC_DEFAULTS, seed: 5 });
    expect(parseSyntheticSpec('turns=2', 5)).toEqual({ ...SYNTHETIC_DEFAULTS, turns: 2, seed: 5 });
  });

  it('generate 1000 independent 2048/256 requests at t=0, nothing shared', () => {
    const records = generateSyntheticTrace(SYNTHETIC_DEFAULTS, S);
    expect(records).toHaveLength(1000);
    records.forEach((r, i) => {
      expect(r).toMatchObject({ index: i, line: i + 1, timestampMs: 0, inputLength: 2048, outputLength: 256 });
      expect(r.hashIds).toHaveLength(4);
      expect(r.after).toBeUndefined();
    });
    expect([...idCounts(records).values()].every((c) => c === 1)).toBe(true);
  });

  it('records survive the trace file format', () => {
    const records = gen('requests=300,isl=normal:1500:700,osl=uniform:1:50,shared-prefix=0.4,prefix-groups=3,rate=7');
    const jsonl = records.map((r) => JSON.stringify({ timestamp: r.timestampMs, input_length: r.inputLength, output_length: r.outputLength, hash_ids: r.hashIds })).join('\n');
    const parsed = parseTrace(jsonl, S);
    expect(parsed.map(({ after: _a, ...r }) => r)).toEqual(records.map(({ after: _a, ...r }) => r));
    for (const r of records) for (const id of r.hashIds) expect(Number.isSafeInteger(id) && id >= 0).toBe(true);
  });
});

describe('determinism', () => {
  const text = 'requests=3000,isl=lognormal:2000:900,osl=normal:150:60,shared-prefix=0.5,prefix-groups=6,turns=3,turn-delay-ms=40,rate=15';

  it('same spec and seed give identical records; another seed differs', () => {
    expect(gen(text, 42)).toEqual(gen(text, 42));
    const a = gen(text, 42);
    const b = gen(text, 43);
    expect(b.map((r) => r.inputLength)).not.toEqual(a.map((r) => r.inputLength));
    expect(b.map((r) => r.outputLength)).not.toEqual(a.map((r) => r.outputLength));
    expect(b.map((r) => r.timestampMs)).not.toEqual(a.map((r) => r.timestampMs));
    expect(b.map((r) => r.hashIds[0])).not.toEqual(a.map((r) => r.hashIds[0]));
  });

  it('changing one setting leaves the other draws alone', () => {
    const a = gen('requests=500,isl=normal:3000:800,osl=normal:100:30,rate=10', 3);
    const b = gen('requests=500,isl=normal:3000:800,osl=uniform:5:9,rate=10,shared-prefix=0.5,prefix-groups=4', 3);
    expect(b.map((r) => r.inputLength)).toEqual(a.map((r) => r.inputLength));
    expect(b.map((r) => r.timestampMs)).toEqual(a.map((r) => r.timestampMs));
  });
});

describe('length distributions (20,000 draws)', () => {
  const N = 20_000;
  const isl = (dist: string, seed = 11) => gen(`requests=${N},isl=${dist},osl=1`, seed).map((r) => r.inputLength);
  const osl = (dist: string, seed = 11) => gen(`requests=${N},isl=1,osl=${dist}`, seed).map((r) => r.outputLength);

  it('normal: mean and std', () => {
    for (const xs of [isl('normal:3000:800'), osl('normal:3000:800', 12)]) {
      const s = stats(xs);
      expect(Math.abs(s.mean - 3000)).toBeLessThan(30);
      expect(Math.abs(s.std - 800)).toBeLessThan(24);
      expect(xs.every(Number.isInteger)).toBe(true);
    }
  });

  it('lognormal: mean and std are those of the lengths', () => {
    for (const [mean, std] of [
      [200, 100],
      [3000, 1500],
    ]) {
      const xs = osl(`lognormal:${mean}:${std}`);
      const s = stats(xs);
      expect(Math.abs(s.mean - mean)).toBeLessThan(0.02 * mean);
      expect(Math.abs(s.std - std)).toBeLessThan(0.05 * std);
      // Skewed right, unlike a normal: the median sits below the mean.
      const sorted = [...xs].sort((a, b) => a - b);
      expect(sorted[N / 2]).toBeLessThan(mean * 0.95);
    }
  });

  it('uniform: the whole inclusive range, evenly', () => {
    const xs = isl('uniform:100:200');
    const s = stats(xs);
    expect(s.min).toBe(100);
    expect(s.max).toBe(200);
    expect(Math.abs(s.mean - 150)).toBeLessThan(1);
    expect(Math.abs(s.std - Math.sqrt((101 ** 2 - 1) / 12))).toBeLessThan(1);
  });

  it('fixed is fixed; draws are integers clamped to at least 1', () => {
    expect(new Set(isl('777'))).toEqual(new Set([777]));
    const xs = osl('normal:3:20');
    expect(Math.min(...xs)).toBe(1);
    expect(xs.every((x) => Number.isInteger(x) && x >= 1)).toBe(true);
    expect(xs.filter((x) => x === 1).length).toBeGreaterThan(N * 0.4);
  });
});

describe('shared prefixes', () => {
  /** Group of each record: its first hash id, which its group shares when the ratio is above 0. */
  const groupsOf = (records: TraceRecord[]) => records.map((r) => r.hashIds[0]);

  it('fixed lengths: exactly the ratio of blocks is shared, within groups only', () => {
    const records = gen('requests=4000,isl=2048,shared-prefix=0.5,prefix-groups=8');
    const counts = idCounts(records);
    const groups = groupsOf(records);
    expect(new Set(groups).size).toBe(8);
    const members = new Map<number, TraceRecord[]>();
    records.forEach((r, i) => members.set(groups[i], [...(members.get(groups[i]) ?? []), r]));
    const owner = new Map<number, number>();
    for (const [g, rs] of members) {
      // Seeded uniform over the groups.
      expect(rs.length).toBeGreaterThan(4000 / 8 * 0.8);
      expect(rs.length).toBeLessThan(4000 / 8 * 1.2);
      for (const r of rs) {
        expect(r.hashIds.slice(0, 2)).toEqual(rs[0].hashIds.slice(0, 2));
        for (const id of r.hashIds) {
          expect(owner.get(id) ?? g).toBe(g);
          owner.set(id, g);
        }
      }
    }
    let shared = 0;
    let total = 0;
    for (const r of records) {
      total += r.hashIds.length;
      shared += r.hashIds.filter((id) => counts.get(id)! > 1).length;
    }
    expect(shared / total).toBe(0.5);
    // Drawn at random, not dealt in turn: neighbours share a group about 1/8 of the time, and
    // another seed deals differently.
    const same = groups.slice(1).filter((g, i) => g === groups[i]).length / (groups.length - 1);
    expect(same).toBeGreaterThan(0.1);
    expect(same).toBeLessThan(0.15);
    const ordinals = (gs: number[]) => gs.map((g) => [...new Set(gs)].indexOf(g));
    expect(ordinals(groupsOf(gen('requests=4000,isl=2048,shared-prefix=0.5,prefix-groups=8', 2)))).not.toEqual(ordinals(groups));
  });

  it('varying lengths: the shared fraction of prompt tokens matches the ratio', () => {
    for (const ratio of [0.1, 0.3, 0.75]) {
      const records = gen(`requests=20000,isl=normal:3000:800,shared-prefix=${ratio},prefix-groups=5`, 4);
      const counts = idCounts(records);
      let shared = 0;
      let total = 0;
      for (const r of records) {
        total += r.inputLength;
        r.hashIds.forEach((id, j) => {
          if (counts.get(id)! > 1) shared += Math.min(S, r.inputLength - j * S);
        });
        // Shared blocks come first.
        const firstPrivate = r.hashIds.findIndex((id) => counts.get(id) === 1);
        if (firstPrivate >= 0) expect(r.hashIds.slice(firstPrivate).every((id) => counts.get(id) === 1)).toBe(true);
      }
      expect(Math.abs(shared / total - ratio)).toBeLessThan(0.01);
      expect(groupCount(records)).toBe(5);
    }
  });

  it('a prefix between block boundaries rounds up or down in proportion', () => {
    // 0.3 × 2048 = 614.4 tokens: one block (512) 80% of the time, two (1024) 20%.
    const records = gen('requests=20000,isl=2048,shared-prefix=0.3,prefix-groups=2', 6);
    const counts = idCounts(records);
    const shared = records.map((r) => r.hashIds.filter((id) => counts.get(id)! > 1).length);
    expect(new Set(shared)).toEqual(new Set([1, 2]));
    const mean = shared.reduce((a, b) => a + b, 0) / shared.length;
    expect(Math.abs((mean * S) / 2048 - 0.3)).toBeLessThan(0.005);
  });

  it('ratio 0 shares nothing; ratio 1 shares whole prompts of equal length', () => {
    expect([...idCounts(gen('requests=500,isl=uniform:1:3000,prefix-groups=4')).values()].every((c) => c === 1)).toBe(true);
    const records = gen('requests=500,isl=1100,shared-prefix=1,prefix-groups=4');
    expect(new Set(records.map((r) => r.hashIds.join())).size).toBe(4);
    expect(records[0].hashIds).toHaveLength(3);
  });

  it('one group by default', () => {
    const records = gen('requests=200,shared-prefix=0.25');
    expect(new Set(records.map((r) => r.hashIds[0])).size).toBe(1);
  });
});

describe('multi-turn sessions', () => {
  it('each turn extends the previous prompt and output and waits for it', () => {
    const records = gen('requests=10,turns=3,isl=1000,osl=100,turn-delay-ms=250,rate=4,arrival=constant');
    expect(records).toHaveLength(10);
    const turns = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0];
    const seen = new Set<number>();
    records.forEach((r, i) => {
      const turn = turns[i];
      expect(r.index).toBe(i);
      expect(r.inputLength).toBe([1000, 2100, 3200][turn]);
      expect(r.hashIds).toHaveLength(Math.ceil(r.inputLength / S));
      const session = Math.floor(i / 3);
      expect(r.timestampMs).toBe(session * 250);
      if (turn === 0) {
        expect(r.after).toBeUndefined();
      } else {
        const prev = records[i - 1];
        expect(r.after).toEqual({ indices: [i - 1], delayMs: 250 });
        const kept = Math.floor(prev.inputLength / S);
        expect(r.hashIds.slice(0, kept)).toEqual(prev.hashIds.slice(0, kept));
        // The previous turn's partial last block is not reused.
        expect(r.hashIds[kept]).not.toBe(prev.hashIds[kept]);
      }
      const fresh = turn === 0 ? r.hashIds : r.hashIds.slice(Math.floor(records[i - 1].inputLength / S));
      for (const id of fresh) {
        expect(seen.has(id)).toBe(false);
        seen.add(id);
      }
    });
  });

  it('later turns draw their new tokens from isl and keep the whole blocks before them', () => {
    const records = gen('requests=6000,turns=4,isl=normal:800:200,osl=uniform:10:300,shared-prefix=0.5,prefix-groups=3,turn-delay-ms=5');
    let growth = 0;
    let n = 0;
    for (const r of records) {
      if (!r.after) continue;
      const prev = records[r.after.indices[0]];
      expect(r.after.indices[0]).toBe(r.index - 1);
      expect(r.after.delayMs).toBe(5);
      expect(r.timestampMs).toBe(prev.timestampMs);
      const kept = Math.floor(prev.inputLength / S);
      expect(r.hashIds.slice(0, kept)).toEqual(prev.hashIds.slice(0, kept));
      growth += r.inputLength - prev.inputLength - prev.outputLength;
      n++;
    }
    expect(n).toBe(4500);
    expect(Math.abs(growth / n - 800)).toBeLessThan(10);
    expect(groupCount(records.filter((r) => !r.after))).toBe(3);
  });
});

describe('arrivals', () => {
  const gaps = (records: TraceRecord[]) => records.slice(1).map((r, i) => r.timestampMs - records[i].timestampMs);

  it('Poisson: exponential gaps at the spec rate, starting at 0', () => {
    for (const [rate, seed] of [
      [20, 1],
      [0.5, 2],
    ]) {
      const records = gen(`requests=20000,isl=10,osl=1,rate=${rate}`, seed);
      expect(records[0].timestampMs).toBe(0);
      const g = stats(gaps(records));
      expect(g.min).toBeGreaterThanOrEqual(0);
      const meanGap = 1000 / rate;
      expect(Math.abs(g.mean - meanGap)).toBeLessThan(0.03 * meanGap);
      // Exponential: std equals the mean (a constant or uniform spacing would not).
      expect(Math.abs(g.std - meanGap)).toBeLessThan(0.05 * meanGap);
      const observed = (records.length - 1) / (records[records.length - 1].timestampMs / 1000);
      expect(Math.abs(observed - rate)).toBeLessThan(0.03 * rate);
    }
  });

  it('constant spacing and the burst default', () => {
    expect(gaps(gen('requests=100,rate=8,arrival=constant')).every((g) => Math.abs(g - 125) < 1e-9)).toBe(true);
    expect(gen('requests=100').every((r) => r.timestampMs === 0)).toBe(true);
    expect(gen('requests=100,arrival=constant').every((r) => r.timestampMs === 0)).toBe(true);
  });

  it('only first turns are spaced by the rate', () => {
    const records = gen('requests=9000,turns=3,rate=10');
    const firsts = records.filter((r) => !r.after);
    expect(firsts).toHaveLength(3000);
    expect(Math.abs(stats(gaps(firsts)).mean - 100)).toBeLessThan(5);
  });
});

describe('performance', () => {
  it('generates 100,000 requests well under a second', () => {
    const s = spec('requests=100000,isl=lognormal:3000:1500,osl=normal:200:80,shared-prefix=0.4,prefix-groups=16,turns=2,rate=100');
    generateSyntheticTrace({ ...s, requests: 1000 }, S);
    const t0 = performance.now();
    const records = generateSyntheticTrace(s, S);
    const ms = performance.now() - t0;
    expect(records).toHaveLength(100_000);
    expect(ms).toBeLessThan(500);
  });
});
