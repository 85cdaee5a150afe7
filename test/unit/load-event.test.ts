// LoadEvent bytes as Dynamo's serde_json writes them: field order, exact u64 id, f32 ratios.
import { describe, expect, it } from 'vitest';
import { f32Json, loadEventJson } from '../../src/dynamo/event-messages.js';

describe('f32Json', () => {
  it.each([
    [0, '0.0'],
    [1, '1.0'],
    [0.5, '0.5'],
    [0.25, '0.25'],
    [9 / 1000, '0.009'],
    [0.26417914896788136, '0.26417914'],
    [1 / 3, '0.33333334'],
    [0.1, '0.1'],
    [3 / 16384, '0.00018310547'],
    [NaN, 'null'],
    [Infinity, 'null'],
  ])('%s → %s', (x, text) => {
    expect(f32Json(x)).toBe(text);
  });

  it('always reads back as the same f32', () => {
    for (let i = 0; i <= 1000; i++) {
      const x = i / 997;
      expect(Math.fround(Number(f32Json(x)))).toBe(Math.fround(x));
    }
  });
});

describe('loadEventJson', () => {
  it('matches the §6.3 shape byte for byte, with the real slot count', () => {
    const json = loadEventJson(7587889726860452269n, {
      dpRank: 1,
      activeSlots: 3,
      totalSlots: 256,
      waiting: 7,
      activeBlocks: 120,
      totalBlocks: 16384,
      prefixHitRate: 0.41,
    });
    expect(json).toBe(
      '{"worker_id":7587889726860452269,"data":{"worker_stats":{"data_parallel_rank":1,"request_active_slots":3,"request_total_slots":256,"num_requests_waiting":7},' +
        '"kv_stats":{"kv_active_blocks":120,"kv_total_blocks":16384,"gpu_cache_usage_perc":0.0073242188,"gpu_prefix_cache_hit_rate":0.41},"spec_decode_stats":null}}',
    );
  });
});
