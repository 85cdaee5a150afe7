// Dynamo 1.4 event-plane messages against the contract's byte examples (dynamo-events-disagg-1x.md §2–3).
import { Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  encodeEventSegment,
  eventChannelKey,
  eventChannelRecord,
  eventSourceKey,
  eventSourceRecord,
  eventSubject,
  packActiveLoad,
  packEnvelope,
  packForwardPassMetrics,
  packRouterEvents,
  packVllmBatch,
  zmqFrames,
} from '../../src/dynamo/event-plane-wire.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const WORKER = 0x694d9981145a61adn; // 7587889726860452269
const HASH = 14643705804678351452n; // tokens [1,2,3,4], block size 4 (contract §2.7.3)
const PUB = 4503599627370497n;
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const str = (s: string) => {
  const b = Buffer.from(s);
  return (b.length < 32 ? (0xa0 | b.length).toString(16) : `d9${b.length.toString(16).padStart(2, '0')}`) + b.toString('hex');
};
const reader = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });

describe('names and records', () => {
  it('percent-encodes segments outside [A-Za-z0-9_-], upper-case hex', () => {
    expect(encodeEventSegment('ns.one')).toBe('ns%2Eone');
    expect(encodeEventSegment('worker/*')).toBe('worker%2F%2A');
    expect(encodeEventSegment('my-ns_1')).toBe('my-ns_1');
  });

  it('puts every topic at the endpoint scope', () => {
    expect(eventSubject(EP, 'kv-events')).toBe('namespace.dynamo.component.backend.endpoint.generate.kv-events');
    expect(eventSubject(EP, 'kv_metrics')).toBe('namespace.dynamo.component.backend.endpoint.generate.kv_metrics');
    expect(eventSubject({ ...EP, namespace: 'ns.one' }, 'forward-pass-metrics')).toBe('namespace.ns%2Eone.component.backend.endpoint.generate.forward-pass-metrics');
  });

  it('writes the EventChannel and EventSource records and keys of §2.6', () => {
    expect(eventChannelKey(EP, 'kv-events', PUB)).toBe('v1/event_channels/namespace/dynamo/component/backend/endpoint/generate/topic/kv-events/10000000000001');
    expect(eventSourceKey(EP, 'kv-events', PUB)).toBe('v1/event_sources/namespace/dynamo/component/backend/endpoint/generate/topic/kv-events/10000000000001');
    expect(eventChannelRecord(EP, 'kv-events', PUB, { kind: 'Zmq', endpoint: 'tcp://10.0.0.5:41817' })).toBe(
      '{"type":"EventChannel","scope":{"kind":"endpoint","endpoint":{"namespace":"dynamo","component":"backend","name":"generate"}},' +
        '"topic":"kv-events","instance_id":4503599627370497,"transport":{"kind":"Zmq","config":{"endpoint":"tcp://10.0.0.5:41817"}}}',
    );
    expect(eventChannelRecord(EP, 'kv_metrics', PUB, { kind: 'Nats', subjectPrefix: 'namespace.dynamo.component.backend.endpoint.generate' })).toContain(
      '"transport":{"kind":"Nats","config":{"subject_prefix":"namespace.dynamo.component.backend.endpoint.generate"}}',
    );
    expect(eventSourceRecord(EP, PUB, WORKER, 0)).toBe(
      '{"type":"EventSource","scope":{"kind":"endpoint","endpoint":{"namespace":"dynamo","component":"backend","name":"generate"}},' +
        '"topic":"kv-events","publisher_id":4503599627370497,' +
        '"metadata":{"kv_state_endpoint":{"namespace":"dynamo","component":"backend","name":"generate"},' +
        '"worker":{"worker_id":7587889726860452269,"dp_rank":0},"publisher_id":4503599627370497}}',
    );
  });
});

describe('msgpack messages', () => {
  // Byte for byte the contract's examples: rmp-serde's smallest uint forms (`cf` for a u64 above 32
  // bits) and `cb` for every f64.
  it('envelope (§2.2): five named keys in order, the payload as bin', () => {
    const payload = new Uint8Array(175).fill(7);
    const env = packEnvelope(PUB, 0n, 1755300000000, 'kv-events', payload);
    expect(hex(env)).toBe(
      '85' + str('publisher_id') + 'cf0010000000000001' + str('sequence') + '00' + str('published_at') + 'cf00000198b0087100' + str('topic') + str('kv-events') + str('payload') + 'c4af' + hex(payload),
    );
    expect(reader.unpack(env)).toEqual({ publisher_id: PUB, sequence: 0, published_at: 1755300000000n, topic: 'kv-events', payload: Buffer.from(payload) });
  });

  it('a KV batch (§2.7.3): an array of RouterEvent maps with every field', () => {
    const bytes = packRouterEvents(WORKER, [{ eventId: 1n, dpRank: 0, data: { kind: 'stored', parentHash: null, blocks: [{ blockHash: HASH, tokensHash: HASH }] } }]);
    expect(hex(bytes)).toBe(
      '91' + '83' + str('worker_id') + 'cf694d9981145a61ad' + str('storage_tier') + str('device') +
        str('event') + '83' + str('event_id') + '01' +
        str('data') + '81' + str('stored') + '83' + str('parent_hash') + 'c0' + str('start_position') + 'c0' +
        str('blocks') + '91' + '83' + str('block_hash') + 'cfcb38e4d7fb2dca5c' + str('tokens_hash') + 'cfcb38e4d7fb2dca5c' + str('mm_extra_info') + 'c0' +
        str('dp_rank') + '00',
    );
    const removed = packRouterEvents(WORKER, [{ eventId: 2n, dpRank: 1, data: { kind: 'removed', blockHashes: [HASH] } }]);
    expect(hex(removed)).toContain(str('data') + '81' + str('removed') + '81' + str('block_hashes') + '91cfcb38e4d7fb2dca5c');
    expect(hex(packRouterEvents(WORKER, [{ eventId: 3n, dpRank: 0, data: { kind: 'cleared' } }]))).toContain(str('data') + str('cleared'));
  });

  it('writes every u64 in its smallest uint form, as rmp-serde does, never as int64 or a float', () => {
    const forms: Array<[bigint, string]> = [
      [0x7fn, '7f'],
      [0xffn, 'ccff'],
      [0xffffn, 'cdffff'],
      [0xffffffffn, 'ceffffffff'],
      [0x100000000n, 'cf0000000100000000'],
      [(1n << 63n) - 1n, 'cf7fffffffffffffff'],
      [(1n << 64n) - 1n, 'cfffffffffffffffff'],
    ];
    for (const [v, form] of forms) {
      const bytes = packRouterEvents(v, [{ eventId: v, dpRank: 0, data: { kind: 'removed', blockHashes: [v] } }]);
      expect(hex(bytes)).toContain(str('worker_id') + form);
      expect(hex(bytes)).toContain(str('event_id') + form);
      expect(hex(bytes)).toContain(str('block_hashes') + '91' + form);
      expect(reader.unpack(bytes)[0].event.data.removed.block_hashes[0]).toEqual(v > 0xffffffffn ? v : Number(v));
    }
  });

  it('writes f64 fields as float64 even when integral (an idle pass is all zeros)', () => {
    const zero = { numPrefill: 0, sumPrefillTokens: 0, varPrefillLength: 0, sumPrefillKvTokens: 0, numDecode: 0, sumDecodeKvTokens: 0, varDecodeKvTokens: 0 };
    const bytes = hex(packForwardPassMetrics(WORKER, 0, 1, { wallTimeS: 0, scheduled: zero, queued: zero }));
    const f0 = 'cb0000000000000000';
    expect(bytes).toContain(str('wall_time') + f0);
    expect(bytes.split(str('var_prefill_length') + f0)).toHaveLength(3);
    expect(bytes.split(str('var_decode_kv_tokens') + f0)).toHaveLength(3);
    expect(bytes).toContain(str('sum_prefill_tokens') + '00');
    expect(hex(packVllmBatch(2, [], 0))).toBe('93' + 'cb4000000000000000' + '90' + '00');
  });

  it('ActiveLoad (§3.2): KV blocks in use as kv_used_blocks, the other loads nil', () => {
    expect(hex(packActiveLoad(WORKER, 0, 120))).toBe(
      '85' + str('worker_id') + 'cf694d9981145a61ad' + str('dp_rank') + '00' + str('active_decode_blocks') + 'c0' + str('active_prefill_tokens') + 'c0' + str('kv_used_blocks') + '78',
    );
  });

  it('forward-pass metrics (§3.1): version 1, worker id as decimal text, both request maps in the planner\'s field order', () => {
    const m = packForwardPassMetrics(WORKER, 1, 42, {
      wallTimeS: 0.0123,
      scheduled: { numPrefill: 2, sumPrefillTokens: 300, varPrefillLength: 2500, sumPrefillKvTokens: 64, numDecode: 3, sumDecodeKvTokens: 900, varDecodeKvTokens: 12.5 },
      queued: { numPrefill: 1, sumPrefillTokens: 100, varPrefillLength: 0, numDecode: 0, sumDecodeKvTokens: 0, varDecodeKvTokens: 0 },
    });
    expect(hex(m).startsWith('87' + str('version') + '01' + str('worker_id') + str('7587889726860452269') + str('dp_rank') + '01' + str('counter_id') + '2a' + str('wall_time') + 'cb')).toBe(true);
    const decoded = reader.unpack(m);
    expect(Object.keys(decoded)).toEqual(['version', 'worker_id', 'dp_rank', 'counter_id', 'wall_time', 'scheduled_requests', 'queued_requests']);
    expect(Object.keys(decoded.scheduled_requests)).toEqual([
      'num_prefill_requests', 'sum_prefill_tokens', 'var_prefill_length', 'sum_prefill_kv_tokens', 'num_decode_requests', 'sum_decode_kv_tokens', 'var_decode_kv_tokens',
    ]);
    expect(Object.keys(decoded.queued_requests)).toEqual(['num_prefill_requests', 'sum_prefill_tokens', 'var_prefill_length', 'num_decode_requests', 'sum_decode_kv_tokens', 'var_decode_kv_tokens']);
    expect(decoded).toMatchObject({ worker_id: '7587889726860452269', counter_id: 42, wall_time: 0.0123, scheduled_requests: { var_decode_kv_tokens: 12.5, sum_prefill_kv_tokens: 64 } });
  });

  it('ZMQ message (§2.5): topic, publisher id and sequence as u64 BE, then 0x01 | u32 length | envelope', () => {
    const env = new Uint8Array([9, 8, 7]);
    const [topic, pub, seq, framed] = zmqFrames('kv-events', PUB, 5n, env);
    expect(Buffer.from(topic).toString()).toBe('kv-events');
    expect(hex(pub)).toBe('0010000000000001');
    expect(hex(seq)).toBe('0000000000000005');
    expect(hex(framed)).toBe('0100000003090807');
  });

  it("vLLM's batch (§2.9): [ts, [map-form events], dp_rank], byte for byte the contract's example", () => {
    const bytes = packVllmBatch(1755300000.123, [
      { type: 'BlockStored', blockHashes: [HASH], parentBlockHash: null, tokenIds: [1, 2, 3, 4], blockSize: 4 },
      { type: 'BlockRemoved', blockHashes: [HASH] },
    ], 0);
    expect(hex(bytes)).toBe(
      '93cb41da27f02807df3b' + '92' +
        '86' + str('type') + str('BlockStored') + str('block_hashes') + '91cfcb38e4d7fb2dca5c' + str('parent_block_hash') + 'c0' + str('token_ids') + '9401020304' + str('block_size') + '04' + str('group_idx') + '00' +
        '83' + str('type') + str('BlockRemoved') + str('block_hashes') + '91cfcb38e4d7fb2dca5c' + str('group_idx') + '00' +
        '00',
    );
  });
});
