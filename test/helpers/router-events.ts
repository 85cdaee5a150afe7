// Reading 0.6.x RouterEvent JSON back into the core's event data (router-side tests).
import type { KvEventData } from '../../src/core/types.js';

const big = (v: unknown): bigint => BigInt(v as number | bigint);

/** The `event.data` of a RouterEvent (`"cleared"`, `{stored}` or `{removed}`), hashes as exact BigInts. */
export function routerEventData(d: any): KvEventData {
  if (d === 'cleared') return { kind: 'cleared' };
  if (d?.stored) {
    return {
      kind: 'stored',
      parentHash: d.stored.parent_hash === null ? null : big(d.stored.parent_hash),
      blocks: d.stored.blocks.map((b: Record<string, unknown>) => ({ blockHash: big(b.block_hash), tokensHash: big(b.tokens_hash) })),
    };
  }
  if (d?.removed) return { kind: 'removed', blockHashes: d.removed.block_hashes.map(big) };
  throw new Error(`unknown event data ${JSON.stringify(d, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
}
