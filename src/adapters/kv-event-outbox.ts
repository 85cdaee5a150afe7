// The 0.6.x KV events on their way to JetStream: a bounded outbox that keeps every event until the
// stream has acknowledged it and publishes them in order, across NATS outages.
//
// - While the connection is up and JetStream answers, events are published as they come (many in
//   flight) and leave the outbox on their ack.
// - A failed publish, or a disconnect, starts an outage: nothing new is sent; once every publish in
//   flight has settled (a disconnect abandons them at once) the unacknowledged ones go back to the
//   front of the outbox. When the connection is up again they are re-sent one at a time, with a
//   growing delay after each failure, until one is acknowledged; then the outbox drains as before.
//   Each message carries a `Nats-Msg-Id` that stays the same when it is re-sent, so one the server
//   stored before its ack was lost is dropped by the stream's duplicate window, not stored twice.
// - If more than `limit` events wait (or an ack arrives for an event after one that failed, so the
//   stream's order can no longer be kept), the outbox is dropped; once connected, each DP rank's
//   cache is published instead: a `cleared` event, then every cached block as stores, parents first.
//   Events of a rank waiting for that snapshot are dropped too (the snapshot covers them).
// - One warning line per outage, when it is over, says how long it lasted and what was republished.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { KvEvent } from '../core/types.js';
import type { ConnectionLink } from './nats-link.js';

/** Delay before the first re-send after a failure; it doubles up to RETRY_MAX_MS. */
export const RETRY_MIN_MS = 50;
export const RETRY_MAX_MS = 2000;

export interface KvEventOutboxOptions {
  /** Publishes one message; resolves once JetStream acknowledged it. */
  publish(data: Uint8Array, msgId: string): Promise<unknown>;
  encode(event: KvEvent): Uint8Array;
  link: ConnectionLink;
  /** DP ranks whose events go through this outbox (ranks 0 … ranks-1). */
  ranks: number;
  /**
   * A rank's cache as `[cleared, stored…]` with fresh event ids, or null while the rank has events
   * not yet handed out (the snapshot is then taken with its next events).
   */
  snapshot(rank: number): KvEvent[] | null;
  log: Logger;
  /** Events held at most (acknowledged by nobody yet) before the outbox gives up and republishes the cache instead. */
  limit: number;
}

type EntryState = 'queued' | 'sent' | 'ok' | 'failed';

interface Entry {
  readonly data: Uint8Array;
  readonly msgId: string;
  /** Snapshot events do not count against the limit (they are bounded by the cache's size). */
  readonly snapshot: boolean;
  state: EntryState;
}

interface Outage {
  startedAt: number;
  reason: string;
  /** Events acknowledged while the outage lasted (held back, re-sent or published in order after it). */
  published: number;
  /** Events dropped because the outbox overflowed or its order broke (the cache was republished instead). */
  dropped: number;
  overflowed: boolean;
  orderBroken: boolean;
  snapshotEvents: number;
  peak: number;
}

export interface KvOutboxStats {
  /** Events waiting for an ack (sent or not). */
  waiting: number;
  published: number;
  dropped: number;
  snapshots: number;
  outages: number;
}

export class KvEventOutbox {
  readonly limit: number;
  private readonly nonce = randomBytes(6).toString('hex');
  private nextMsg = 0;
  private entries: Entry[] = [];
  /** entries[head] is the oldest unacknowledged event. */
  private head = 0;
  /** entries[head..next) were handed to publish (or settled); entries[next..] are queued. */
  private next = 0;
  private inFlight = 0;
  /** Live events (not snapshot ones) in the outbox. */
  private counted = 0;
  /** 'live': many in flight; 'probe': one at a time until an ack proves the stream is back. */
  private mode: 'live' | 'probe' = 'live';
  /** Bumped when publishes in flight are abandoned (a disconnect): their late answers are ignored. */
  private generation = 0;
  private readonly resync: boolean[];
  private retryTimer: NodeJS.Timeout | null = null;
  private retryMs = RETRY_MIN_MS;
  private outage: Outage | null = null;
  private lastError = '';
  private stopped = false;
  private readonly idleWaiters = new Set<() => void>();
  private readonly unlisten: () => void;
  readonly stats: KvOutboxStats = { waiting: 0, published: 0, dropped: 0, snapshots: 0, outages: 0 };

  constructor(private readonly o: KvEventOutboxOptions) {
    this.limit = o.limit;
    this.resync = Array.from({ length: o.ranks }, () => false);
    this.unlisten = o.link.onChange((up) => (up ? this.reconnected() : this.disconnected()));
  }

  /** Queues one pass's events (all of one DP rank; called at every pass start) and publishes what the state allows. */
  publish(rank: number, events: readonly KvEvent[]): void {
    if (this.stopped) return;
    if (this.resync[rank]) {
      // The snapshot this rank waits for covers these events; take it now if it can be taken.
      if (!this.takeSnapshot(rank) && this.outage) this.outage.dropped += events.length;
      this.pump();
      return;
    }
    if (events.length === 0) return;
    if (this.counted + events.length > this.limit) {
      this.giveUp('overflow', events.length);
      this.tryResync();
      this.pump();
      return;
    }
    for (const e of events) this.push(e, false);
    this.pump();
  }

  /**
   * Waits until every event is acknowledged, the connection is down, or `timeoutMs` passed; then stops
   * (nothing more is published). Returns how many events were left unpublished.
   */
  async close(timeoutMs: number): Promise<number> {
    if (!this.stopped && this.o.link.connected && !this.idle()) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.idleWaiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        timer.unref();
        this.idleWaiters.add(done);
      });
    }
    this.stopped = true;
    this.unlisten();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const left = this.entries.length - this.head;
    const pendingSnapshots = this.resync.filter(Boolean).length;
    if (left > 0 || pendingSnapshots > 0) {
      this.o.log.warn(
        `KV events: ${left} event(s) not published to JetStream at shutdown` +
          (pendingSnapshots ? ` and ${pendingSnapshots} DP rank(s) not republished` : '') +
          (this.lastError ? ` (last error: ${this.lastError})` : this.o.link.connected ? '' : ' (NATS disconnected)'),
      );
    }
    return left;
  }

  private idle(): boolean {
    return this.head === this.entries.length && !this.resync.includes(true);
  }

  private push(event: KvEvent, snapshot: boolean): void {
    this.entries.push({ data: this.o.encode(event), msgId: `${this.nonce}.${this.nextMsg++}`, snapshot, state: 'queued' });
    if (!snapshot) this.counted++;
    const waiting = this.entries.length - this.head;
    this.stats.waiting = waiting;
    if (this.outage && waiting > this.outage.peak) this.outage.peak = waiting;
  }

  /** Sends what the mode allows: everything queued when live, one event at a time when probing. */
  private pump(): void {
    if (this.stopped || !this.o.link.connected || this.retryTimer) return;
    const window = this.mode === 'live' ? Infinity : 1;
    while (this.inFlight < window && this.next < this.entries.length) this.send(this.entries[this.next++]);
  }

  private send(entry: Entry): void {
    entry.state = 'sent';
    this.inFlight++;
    const generation = this.generation;
    let answer: Promise<unknown>;
    try {
      answer = this.o.publish(entry.data, entry.msgId);
    } catch (err) {
      answer = Promise.reject(err);
    }
    answer.then(
      () => this.settled(entry, generation, null),
      (err: unknown) => this.settled(entry, generation, err instanceof Error ? err : new Error(String(err))),
    );
  }

  private settled(entry: Entry, generation: number, err: Error | null): void {
    if (generation !== this.generation || this.stopped) return;
    this.inFlight--;
    entry.state = err ? 'failed' : 'ok';
    if (err) {
      this.lastError = err.message;
      this.begin('publish failed');
      this.mode = 'probe';
    }
    this.popAcknowledged();
    if (this.inFlight > 0) return;
    if (this.head < this.next) {
      // Everything sent has settled and the oldest failed: re-send from there, unless a later event
      // made it into the stream before it (then the stream's order is lost: republish the cache).
      if (this.entries.slice(this.head, this.next).some((e) => e.state === 'ok')) {
        this.giveUp('order', 0);
        this.tryResync();
      } else {
        for (let i = this.head; i < this.next; i++) this.entries[i].state = 'queued';
        this.next = this.head;
        this.retryLater();
        return;
      }
    } else if (!err && this.mode === 'probe') {
      this.mode = 'live';
      this.retryMs = RETRY_MIN_MS;
    }
    this.pump();
    this.checkIdle();
  }

  private popAcknowledged(): void {
    while (this.head < this.next && this.entries[this.head].state === 'ok') {
      const e = this.entries[this.head++];
      if (!e.snapshot) this.counted--;
      this.stats.published++;
      if (this.outage) this.outage.published++;
    }
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.next -= this.head;
      this.head = 0;
    }
    this.stats.waiting = this.entries.length - this.head;
  }

  private retryLater(): void {
    if (this.retryTimer || this.stopped) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, delay);
    this.retryTimer.unref();
  }

  /** The connection dropped: what is in flight may or may not have been stored; re-send it (deduplicated) later. */
  private disconnected(): void {
    if (this.stopped) return;
    this.begin('NATS disconnected');
    this.generation++;
    this.inFlight = 0;
    this.mode = 'probe';
    // Acks come back in order, so an acknowledged event behind an unanswered one means a reordering.
    this.popAcknowledged();
    if (this.entries.slice(this.head, this.next).some((e) => e.state === 'ok')) this.giveUp('order', 0);
    for (let i = this.head; i < this.next; i++) this.entries[i].state = 'queued';
    this.next = this.head;
  }

  private reconnected(): void {
    if (this.stopped) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryMs = RETRY_MIN_MS;
    this.tryResync();
    // Nothing waits: the next event goes out as usual (a failure starts another outage).
    if (this.head === this.entries.length) this.mode = 'live';
    this.pump();
    this.checkIdle();
  }

  /** Drops the whole outbox; every rank republishes its cache once connected. */
  private giveUp(why: 'overflow' | 'order', incoming: number): void {
    this.begin(why === 'overflow' ? 'outbox full' : 'stream order lost');
    const dropped = this.entries.length - this.head;
    let live = 0;
    for (let i = this.head; i < this.entries.length; i++) if (!this.entries[i].snapshot && this.entries[i].state !== 'ok') live++;
    this.outage!.dropped += live + incoming;
    if (why === 'overflow') this.outage!.overflowed = true;
    else this.outage!.orderBroken = true;
    this.stats.dropped += live + incoming;
    if (dropped > 0) this.generation++;
    this.entries = [];
    this.head = this.next = this.inFlight = this.counted = 0;
    this.stats.waiting = 0;
    this.mode = 'probe';
    this.resync.fill(true);
  }

  private tryResync(): void {
    if (!this.o.link.connected) return;
    for (let rank = 0; rank < this.resync.length; rank++) if (this.resync[rank]) this.takeSnapshot(rank);
  }

  /** Queues the rank's snapshot if connected and the pool can give one now. */
  private takeSnapshot(rank: number): boolean {
    if (!this.o.link.connected) return false;
    const events = this.o.snapshot(rank);
    if (events === null) return false;
    this.resync[rank] = false;
    this.stats.snapshots++;
    if (this.outage) this.outage.snapshotEvents += events.length;
    for (const e of events) this.push(e, true);
    return true;
  }

  private begin(reason: string): void {
    if (this.outage) return;
    this.outage = { startedAt: performance.now(), reason, published: 0, dropped: 0, overflowed: false, orderBroken: false, snapshotEvents: 0, peak: this.entries.length - this.head };
    this.stats.outages++;
    this.o.log.debug(`KV events: ${reason}; holding events for JetStream (up to ${this.limit})`);
  }

  /** Ends the outage once everything is acknowledged, with its one summary line. */
  private checkIdle(): void {
    if (!this.idle() || this.mode !== 'live' || this.inFlight > 0) return;
    for (const w of [...this.idleWaiters]) w();
    const o = this.outage;
    if (!o) return;
    this.outage = null;
    const seconds = ((performance.now() - o.startedAt) / 1000).toFixed(1);
    const why = o.reason + (this.lastError && o.reason === 'publish failed' ? ` (${this.lastError})` : '');
    let line = `KV events: JetStream publishing interrupted for ${seconds} s (${why}); `;
    if (o.overflowed || o.orderBroken) {
      line +=
        `${o.dropped} event(s) dropped (${o.overflowed ? `outbox full at ${this.limit} events` : 'stream order lost'}), ` +
        `the cache republished as ${o.snapshotEvents} event(s) (cleared, then stores)`;
      if (o.published > o.snapshotEvents) line += ` and ${o.published - o.snapshotEvents} later event(s) published in order`;
    } else {
      line += `${o.published} event(s) held (at most ${o.peak} at once) and published in order, none lost`;
    }
    this.lastError = '';
    // An outage no event waited through changed nothing the router sees.
    if (o.published + o.dropped > 0) this.o.log.warn(line);
    else this.o.log.debug(line);
  }
}
