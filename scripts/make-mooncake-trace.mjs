#!/usr/bin/env node
// Writes a synthetic Mooncake-shaped JSONL trace (seeded): 23,608 requests over about an hour,
// mean input ≈ 7,590 tokens, mean output ≈ 182 tokens, shared-prefix hash ids at 512 tokens per id.
// Usage: node scripts/make-mooncake-trace.mjs [--scale N] [--seed S] > trace.jsonl
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { scale: { type: 'string', default: '1' }, seed: { type: 'string', default: '7' }, requests: { type: 'string' } } });
const scale = Number(values.scale);
const total = values.requests ? Number(values.requests) : Math.round(23608 * scale);

let s = Number(values.seed) >>> 0 || 1;
const rand = () => {
  // xorshift32: small, seeded, deterministic across platforms
  s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
  return s / 4294967296;
};
const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
const lognormal = (mean, sigma) => Math.exp(Math.log(mean) - (sigma * sigma) / 2 + sigma * normal());

const BLOCK = 512;
const durationMs = 3_600_000 * scale;
const meanGap = durationMs / total;
// A few hundred "system prompts / documents" that many requests start with, as in the real trace.
const prefixes = [];
let nextId = 0;
for (let i = 0; i < 400; i++) {
  const len = 1 + Math.floor(lognormal(6, 0.8));
  prefixes.push(Array.from({ length: len }, () => nextId++));
}

let t = 0;
const out = [];
for (let i = 0; i < total; i++) {
  t += -Math.log(1 - rand()) * meanGap;
  const input = Math.max(1, Math.min(128_000, Math.round(lognormal(7590, 0.9))));
  const output = Math.max(1, Math.min(4096, Math.round(lognormal(182, 0.8))));
  const blocks = Math.ceil(input / BLOCK);
  const ids = [];
  if (rand() < 0.6) {
    const p = prefixes[Math.floor(Math.pow(rand(), 2) * prefixes.length)];
    for (let k = 0; k < p.length && ids.length < blocks; k++) ids.push(p[k]);
  }
  while (ids.length < blocks) ids.push(nextId++);
  out.push(JSON.stringify({ timestamp: Math.round(t), input_length: input, output_length: output, hash_ids: ids }));
  if (out.length >= 4096) { process.stdout.write(out.join('\n') + '\n'); out.length = 0; }
}
if (out.length) process.stdout.write(out.join('\n') + '\n');
