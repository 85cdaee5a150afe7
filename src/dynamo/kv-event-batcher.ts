// One DP rank's KV events as Dynamo 1.4's publisher sends them: coalesced, deduplicated, numbered from 1, batched.
//
// As `llm/kv_router/publisher/{event_processor,dedup,batching,sinks}.rs` does it:
// - a stored event that continues the previous one (its parent is that event's last block) joins
//   it, and so do adjacent removals, up to 128 blocks per RouterEvent;
// - every store counts its blocks; a removal passes only for blocks whose count drops to 0 (or that
//   were never counted), and a removal left with no blocks is dropped without using an id;
// - `event_id` starts at 1 and grows by exactly 1 per RouterEvent sent: the router treats any gap as
//   lost state and clears the rank;
// - RouterEvents go out in envelopes of at most 128 events and 8192 blocks.
import type { KvEvent, KvEventData, StoredBlock } from '../core/types.js';
import type { RouterEventOut } from './event-plane-wire.js';

export const MAX_BLOCKS_PER_EVENT = 128;
export const MAX_EVENTS_PER_ENVELOPE = 128;
export const MAX_BLOCKS_PER_ENVELOPE = 8192;

const blocksOf = (d: KvEventData): number => (d.kind === 'stored' ? d.blocks.length : d.kind === 'removed' ? d.blockHashes.length : 0);

export class KvEventBatcher {
  private nextId = 1n;
  private readonly stored = new Map<bigint, number>();

  constructor(readonly dpRank: number) {}

  /** The id the next RouterEvent will get (ids already sent are all below it). */
  get nextEventId(): bigint {
    return this.nextId;
  }

  /** Leaves `n` event ids unused (a fault plan's `gap`: the router sees lost events and clears the rank). */
  skip(n: number): void {
    this.nextId += BigInt(n);
  }

  /** One pass's pool events → the envelopes to publish, each a list of numbered RouterEvents. */
  batch(events: readonly KvEvent[]): RouterEventOut[][] {
    const out: KvEventData[] = [];
    for (const e of events) this.coalesce(out, this.dedup(e.data));
    const numbered = out.map((data) => ({ eventId: this.nextId++, dpRank: this.dpRank, data }));
    return envelopes(numbered);
  }

  private dedup(d: KvEventData): KvEventData | null {
    if (d.kind === 'stored') {
      for (const b of d.blocks) this.stored.set(b.blockHash, (this.stored.get(b.blockHash) ?? 0) + 1);
      return d;
    }
    if (d.kind === 'cleared') {
      this.stored.clear();
      return d;
    }
    const passing: bigint[] = [];
    for (const h of d.blockHashes) {
      const count = this.stored.get(h);
      if (count === undefined) passing.push(h);
      else if (count <= 1) {
        this.stored.delete(h);
        passing.push(h);
      } else this.stored.set(h, count - 1);
    }
    return passing.length ? { kind: 'removed', blockHashes: passing } : null;
  }

  private coalesce(out: KvEventData[], d: KvEventData | null): void {
    if (d === null) return;
    const last = out.length ? out[out.length - 1] : null;
    if (d.kind === 'stored') {
      let parent = d.parentHash;
      let blocks: StoredBlock[] = d.blocks;
      if (last?.kind === 'stored' && last.blocks.length < MAX_BLOCKS_PER_EVENT && parent === last.blocks[last.blocks.length - 1].blockHash) {
        const room = MAX_BLOCKS_PER_EVENT - last.blocks.length;
        const merged = [...last.blocks, ...blocks.slice(0, room)];
        out[out.length - 1] = { kind: 'stored', parentHash: last.parentHash, blocks: merged };
        blocks = blocks.slice(room);
        parent = merged[merged.length - 1].blockHash;
      }
      for (let i = 0; i < blocks.length; i += MAX_BLOCKS_PER_EVENT) {
        const chunk = blocks.slice(i, i + MAX_BLOCKS_PER_EVENT);
        out.push({ kind: 'stored', parentHash: parent, blocks: chunk });
        parent = chunk[chunk.length - 1].blockHash;
      }
      return;
    }
    if (d.kind === 'removed') {
      let hashes = d.blockHashes;
      if (last?.kind === 'removed' && last.blockHashes.length < MAX_BLOCKS_PER_EVENT) {
        const room = MAX_BLOCKS_PER_EVENT - last.blockHashes.length;
        out[out.length - 1] = { kind: 'removed', blockHashes: [...last.blockHashes, ...hashes.slice(0, room)] };
        hashes = hashes.slice(room);
      }
      for (let i = 0; i < hashes.length; i += MAX_BLOCKS_PER_EVENT) out.push({ kind: 'removed', blockHashes: hashes.slice(i, i + MAX_BLOCKS_PER_EVENT) });
      return;
    }
    out.push(d);
  }
}

/** Splits numbered RouterEvents into envelopes of ≤ 128 events and ≤ 8192 blocks (an oversized event goes alone). */
export function envelopes(events: readonly RouterEventOut[]): RouterEventOut[][] {
  const out: RouterEventOut[][] = [];
  let current: RouterEventOut[] = [];
  let blocks = 0;
  for (const e of events) {
    const n = blocksOf(e.data);
    if (current.length && (current.length === MAX_EVENTS_PER_ENVELOPE || blocks + n > MAX_BLOCKS_PER_ENVELOPE)) {
      out.push(current);
      current = [];
      blocks = 0;
    }
    current.push(e);
    blocks += n;
  }
  if (current.length) out.push(current);
  return out;
}
