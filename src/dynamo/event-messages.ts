// Dynamo 0.6.x event messages: RouterEvent (KV events) and LoadEvent JSON, written byte for byte as serde does.
import type { KvEvent } from '../core/types.js';

/** Serializes one event exactly as Dynamo's RouterEvent (u64 hashes as bare integers). */
export function routerEventJson(workerId: bigint, event: KvEvent): string {
  const d = event.data;
  let data: string;
  if (d.kind === 'stored') {
    let blocks = '';
    for (let i = 0; i < d.blocks.length; i++) {
      const b = d.blocks[i];
      blocks += `${i ? ',' : ''}{"block_hash":${b.blockHash},"tokens_hash":${b.tokensHash}}`;
    }
    data = `{"stored":{"parent_hash":${d.parentHash === null ? 'null' : d.parentHash},"blocks":[${blocks}]}}`;
  } else if (d.kind === 'removed') {
    data = `{"removed":{"block_hashes":[${d.blockHashes.join(',')}]}}`;
  } else {
    data = '"cleared"';
  }
  return `{"worker_id":${workerId},"event":{"event_id":${event.eventId},"data":${data},"dp_rank":${event.dpRank}}}`;
}

/** One DP rank's load as the router and busy monitor read it. */
export interface RankLoad {
  dpRank: number;
  activeSlots: number;
  totalSlots: number;
  waiting: number;
  activeBlocks: number;
  totalBlocks: number;
  prefixHitRate: number;
}

/**
 * An f32 field as serde_json writes it (ryu): the shortest decimal that reads back as the same f32,
 * with ".0" on whole numbers, and null for NaN or infinity.
 */
export function f32Json(x: number): string {
  const f = Math.fround(x);
  if (!Number.isFinite(f)) return 'null';
  if (Number.isInteger(f) && Math.abs(f) < 1e16) return `${f}.0`;
  for (let digits = 1; digits < 9; digits++) {
    const shortest = Number(f.toPrecision(digits));
    if (Math.fround(shortest) === f) return String(shortest);
  }
  return String(Number(f.toPrecision(9)));
}

export function loadEventJson(workerId: bigint, l: RankLoad): string {
  const usage = f32Json(l.totalBlocks > 0 ? l.activeBlocks / l.totalBlocks : 0);
  return (
    `{"worker_id":${workerId},"data":{"worker_stats":{"data_parallel_rank":${l.dpRank},"request_active_slots":${l.activeSlots},` +
    `"request_total_slots":${l.totalSlots},"num_requests_waiting":${l.waiting}},"kv_stats":{"kv_active_blocks":${l.activeBlocks},` +
    `"kv_total_blocks":${l.totalBlocks},"gpu_cache_usage_perc":${usage},"gpu_prefix_cache_hit_rate":${f32Json(l.prefixHitRate)}},` +
    `"spec_decode_stats":null}}`
  );
}
