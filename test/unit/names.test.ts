// Dynamo's derived names (rt/slug.rs, rt/component.rs, kv_router publisher) with the reference examples.
import { describe, expect, it } from 'vitest';
import {
  cardKey,
  instanceKey,
  kvEventStreamName,
  kvMetricsSubject,
  leaseHex,
  requestSubject,
  serviceName,
  slugify,
} from '../../src/dynamo/names.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const LEASE = 0x694d9981145a61adn;

describe('slugify', () => {
  it('lowercases and replaces everything outside [a-z0-9-_] with _', () => {
    expect(slugify('Qwen/Qwen3-0.6B')).toBe('qwen_qwen3-0_6b');
    expect(slugify('meta-llama/Llama-3.1-8B-Instruct')).toBe('meta-llama_llama-3_1-8b-instruct');
    expect(slugify('a b\tc')).toBe('a_b_c');
  });
  it('strips leading underscores only', () => {
    expect(slugify('__x.y_')).toBe('x_y_');
    expect(slugify('/models/Qwen')).toBe('models_qwen');
    expect(slugify('-x')).toBe('-x');
    expect(slugify('___')).toBe('');
  });
  it('replaces one character (code point) by one _, as Rust chars() does', () => {
    expect(slugify('a😀b')).toBe('a_b');
    expect(slugify('Ünïcode')).toBe('n_code');
    // 'İ' lowercases to 'i' + U+0307 in both Rust and JS.
    expect(slugify('İx')).toBe('i_x');
  });
  it('is idempotent on slugs', () => {
    for (const s of ['qwen_qwen3-0_6b', 'dynamo_backend', 'x-y_z']) expect(slugify(s)).toBe(s);
  });
});

describe('ids, keys and subjects', () => {
  it('formats the lease id as Rust {:x}', () => {
    expect(LEASE).toBe(7587889726860452269n);
    expect(leaseHex(LEASE)).toBe('694d9981145a61ad');
    expect(leaseHex(0x00abcn)).toBe('abc');
    expect(leaseHex(0n)).toBe('0');
    expect(leaseHex(0xffff_ffff_ffff_ffffn)).toBe('ffffffffffffffff');
    expect(() => leaseHex(-1n)).toThrow(RangeError);
    expect(() => leaseHex(1n << 64n)).toThrow(RangeError);
  });
  it('derives the service name, request subject, instance key and card key', () => {
    expect(serviceName(EP)).toBe('dynamo_backend');
    expect(serviceName({ namespace: 'My.NS', component: 'Back', endpoint: 'generate' })).toBe('my_ns_back');
    expect(requestSubject(EP, LEASE)).toBe('dynamo_backend.generate-694d9981145a61ad');
    expect(instanceKey(EP, LEASE)).toBe('v1/instances/dynamo/backend/generate/694d9981145a61ad');
    expect(cardKey(EP, LEASE)).toBe('v1/mdc/dynamo/backend/generate/694d9981145a61ad');
  });
  it('keeps the key suffix parseable as base 16 by the KV router', () => {
    const key = instanceKey(EP, LEASE);
    const last = key.split(/[/:]/).pop()!;
    expect(BigInt(`0x${last}`)).toBe(LEASE);
  });
});

describe('KV side channels', () => {
  it('names the KV event stream: slugify, then every _ becomes -', () => {
    expect(kvEventStreamName('dynamo', 'backend')).toBe('namespace-dynamo-component-backend-kv-events');
    expect(kvEventStreamName('my_ns', 'back_end')).toBe('namespace-my-ns-component-back-end-kv-events');
    expect(kvEventStreamName('NS', 'Mock.er')).toBe('namespace-ns-component-mock-er-kv-events');
  });
  it('publishes load metrics on the raw namespace', () => {
    expect(kvMetricsSubject('dynamo')).toBe('namespace.dynamo.kv_metrics');
    expect(kvMetricsSubject('my_ns')).toBe('namespace.my_ns.kv_metrics');
  });
});
