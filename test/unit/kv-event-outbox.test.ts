// The 0.6.x KV-event outbox against a simulated JetStream stream (with Nats-Msg-Id deduplication) and
// a connection whose status the test flips: order kept across failures and disconnects, one summary
// line per outage, overflow and lost order answered by a cleared event and the cache; its variable.
import type { Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KvEventOutbox, RETRY_MAX_MS, RETRY_MIN_MS } from '../../src/adapters/kv-event-outbox.js';
import type { ConnectionLink } from '../../src/adapters/nats-link.js';
import { main } from '../../src/cli.js';
import { ConfigError, WORKER_DEFAULTS, parseWorkerConfig } from '../../src/config.js';
import type { KvEvent } from '../../src/core/types.js';

class FakeLink implements ConnectionLink {
  connected = true;
  private readonly listeners = new Set<(up: boolean) => void>();
  onChange(listener: (up: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  set(up: boolean): void {
    this.connected = up;
    for (const l of this.listeners) l(up);
  }
}

interface Publish {
  label: string;
  msgId: string;
  resolve(): void;
  reject(message: string): void;
}

/** A stream that stores a message when the test says so, dropping a repeated Nats-Msg-Id. */
class FakeStream {
  readonly stored: string[] = [];
  private readonly ids = new Set<string>();
  readonly calls: Publish[] = [];
  /** Answer every publish at once with an ack (true) or leave it to the test (false). */
  auto = true;

  publish = (data: Uint8Array, msgId: string): Promise<unknown> => {
    const label = new TextDecoder().decode(data);
    return new Promise((resolve, reject) => {
      const call: Publish = {
        label,
        msgId,
        resolve: () => {
          this.store(label, msgId);
          resolve(undefined);
        },
        reject: (message) => reject(new Error(message)),
      };
      this.calls.push(call);
      if (this.auto) queueMicrotask(() => this.answer(call, 'ack'));
    });
  };

  store(label: string, msgId: string): void {
    if (this.ids.has(msgId)) return;
    this.ids.add(msgId);
    this.stored.push(label);
  }

  /** Publishes not yet answered, oldest first. */
  open(): Publish[] {
    return this.calls.filter((c) => !(c as Publish & { done?: boolean }).done);
  }

  answer(call: Publish, how: 'ack' | 'lost' | 'stored-ack-lost' | 'no-responders'): void {
    (call as Publish & { done?: boolean }).done = true;
    if (how === 'ack') call.resolve();
    else if (how === 'stored-ack-lost') {
      this.store(call.label, call.msgId);
      call.reject('TIMEOUT');
    } else call.reject(how === 'lost' ? 'TIMEOUT' : '503');
  }
}

const ev = (rank: number, id: number, label: string): KvEvent => ({ eventId: id, dpRank: rank, data: { kind: 'removed', blockHashes: [BigInt(label.length)] }, label } as KvEvent & { label: string });
const labels = (prefix: string, n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `${prefix}${from + i}`);
const events = (rank: number, names: string[]): KvEvent[] => names.map((n, i) => ev(rank, i, n));

function setup(o: { limit?: number; ranks?: number; snapshot?: (rank: number) => KvEvent[] | null } = {}) {
  const link = new FakeLink();
  const stream = new FakeStream();
  const warnings: string[] = [];
  const log = { warn: (m: string) => warnings.push(m), debug: () => {}, info: () => {} } as unknown as Logger;
  const snapshots: number[] = [];
  const outbox = new KvEventOutbox({
    publish: stream.publish,
    encode: (e) => new TextEncoder().encode((e as KvEvent & { label: string }).label),
    link,
    ranks: o.ranks ?? 1,
    snapshot:
      o.snapshot ??
      ((rank) => {
        snapshots.push(rank);
        return events(rank, [`cleared@${rank}`, ...labels(`cache${rank}-`, 2)]);
      }),
    log,
    limit: o.limit ?? 10_000,
  });
  return { link, stream, warnings, outbox, snapshots };
}

/** Lets queued microtasks (acks, settle callbacks) run. */
const settle = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('KvEventOutbox', () => {
  it('publishes events as they come, all in flight at once, and keeps none once acknowledged', async () => {
    const { stream, outbox, warnings } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, labels('e', 3)));
    expect(stream.calls.map((c) => c.label)).toEqual(['e0', 'e1', 'e2']);
    expect(outbox.stats.waiting).toBe(3);
    for (const c of stream.open()) stream.answer(c, 'ack');
    await settle();
    expect(stream.stored).toEqual(['e0', 'e1', 'e2']);
    expect(outbox.stats).toMatchObject({ waiting: 0, published: 3, outages: 0 });
    expect(warnings).toEqual([]);
  });

  it('re-sends a failed suffix in order, one at a time after a delay, then pipelines again; one summary line', async () => {
    const { stream, outbox, warnings } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, labels('e', 4)));
    const [a, b, c, d] = stream.open();
    stream.answer(a, 'ack');
    // b reached the stream but its ack was lost; c and d never arrived.
    stream.answer(b, 'stored-ack-lost');
    stream.answer(c, 'lost');
    await settle();
    // Nothing new goes out while a publish is still in flight.
    outbox.publish(0, events(0, ['e4']));
    expect(stream.calls).toHaveLength(4);
    stream.answer(d, 'lost');
    await settle();
    expect(stream.open()).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(RETRY_MIN_MS);
    // One probe: b again, under the same message id.
    expect(stream.open().map((x) => [x.label, x.msgId])).toEqual([['e1', b.msgId]]);
    stream.answer(stream.open()[0], 'ack');
    await settle();
    // Back to live: the rest at once, in order.
    expect(stream.open().map((x) => x.label)).toEqual(['e2', 'e3', 'e4']);
    for (const x of stream.open()) stream.answer(x, 'ack');
    await settle();
    expect(stream.stored).toEqual(['e0', 'e1', 'e2', 'e3', 'e4']);
    expect(outbox.stats.waiting).toBe(0);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^KV events: JetStream publishing interrupted for \d+\.\d s \(publish failed \(TIMEOUT\)\); 4 event\(s\) held .* published in order, none lost$/);
  });

  it('backs off while JetStream does not answer (503 after a reconnect), doubling up to the cap', async () => {
    const { stream, outbox } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, ['e0']));
    const delays: number[] = [];
    let last = 0;
    for (let attempt = 0; attempt < 8; attempt++) {
      stream.answer(stream.open()[0], 'no-responders');
      await settle();
      const before = stream.calls.length;
      let waited = 0;
      while (stream.calls.length === before) {
        await vi.advanceTimersByTimeAsync(10);
        waited += 10;
      }
      delays.push(waited);
      last = waited;
    }
    expect(delays.slice(0, 3)).toEqual([RETRY_MIN_MS, RETRY_MIN_MS * 2, RETRY_MIN_MS * 4]);
    expect(last).toBe(RETRY_MAX_MS);
    stream.answer(stream.open()[0], 'ack');
    await settle();
    expect(stream.stored).toEqual(['e0']);
  });

  it('holds everything while disconnected, abandons what was in flight, and republishes it in order on reconnect', async () => {
    const { link, stream, outbox, warnings } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, labels('e', 2)));
    const [a, b] = stream.open();
    link.set(false);
    outbox.publish(0, events(0, labels('e', 3, 2)));
    expect(stream.calls).toHaveLength(2);
    // The abandoned publishes' answers change nothing: the first was stored before the server went
    // away (it will be deduplicated when re-sent), the second was lost.
    stream.answer(a, 'stored-ack-lost');
    stream.answer(b, 'lost');
    await settle();
    await vi.advanceTimersByTimeAsync(RETRY_MAX_MS * 2);
    expect(stream.calls).toHaveLength(2);
    link.set(true);
    expect(stream.open().map((x) => x.label)).toEqual(['e0']);
    stream.auto = true;
    stream.answer(stream.open()[0], 'ack');
    await settle();
    await settle();
    expect(stream.stored).toEqual(['e0', 'e1', 'e2', 'e3', 'e4']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/\(NATS disconnected\); 5 event\(s\) held \(at most 5 at once\) and published in order, none lost/);
  });

  it('an outage nothing waited through logs no warning', async () => {
    const { link, stream, outbox, warnings } = setup();
    link.set(false);
    link.set(true);
    outbox.publish(0, events(0, ['e0']));
    await settle();
    expect(stream.stored).toEqual(['e0']);
    expect(warnings).toEqual([]);
  });

  it('on overflow drops the outbox and, once connected, publishes each rank\'s cache (cleared first), then newer events', async () => {
    const { link, stream, outbox, warnings, snapshots } = setup({ limit: 5, ranks: 2 });
    link.set(false);
    outbox.publish(0, events(0, labels('a', 3)));
    outbox.publish(1, events(1, labels('b', 2)));
    // The 6th waiting event overflows: everything is dropped and no snapshot is taken while down.
    outbox.publish(0, events(0, ['a3']));
    expect(outbox.stats).toMatchObject({ waiting: 0, dropped: 6 });
    outbox.publish(1, events(1, ['b2'])); // covered by rank 1's coming snapshot
    expect(snapshots).toEqual([]);
    link.set(true);
    expect(snapshots).toEqual([0, 1]);
    outbox.publish(0, events(0, ['a4']));
    await settle();
    await settle();
    expect(stream.stored).toEqual(['cleared@0', 'cache0-0', 'cache0-1', 'cleared@1', 'cache1-0', 'cache1-1', 'a4']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/\(NATS disconnected\); 7 event\(s\) dropped \(outbox full at 5 events\), the cache republished as 6 event\(s\) \(cleared, then stores\) and 1 later event\(s\) published in order$/);
  });

  it('a rank with events not yet handed out takes its snapshot with its next events', async () => {
    let ready = false;
    const { link, stream, outbox } = setup({ limit: 1, snapshot: (rank) => (ready ? events(rank, ['cleared', 'cache']) : null) });
    link.set(false);
    outbox.publish(0, events(0, labels('e', 2)));
    link.set(true);
    await settle();
    expect(stream.calls).toHaveLength(0);
    ready = true;
    outbox.publish(0, events(0, ['e2'])); // a pass start: its events are in the snapshot
    await settle();
    await settle();
    expect(stream.stored).toEqual(['cleared', 'cache']);
  });

  it('republishes the cache when a later event made it into the stream before an earlier one', async () => {
    const { stream, outbox, warnings } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, labels('e', 2)));
    const [a, b] = stream.open();
    stream.answer(a, 'no-responders');
    stream.answer(b, 'ack');
    await settle();
    expect(outbox.stats.dropped).toBe(1);
    stream.auto = true;
    await vi.advanceTimersByTimeAsync(0);
    for (const x of stream.open()) stream.answer(x, 'ack');
    await settle();
    await settle();
    expect(stream.stored).toEqual(['e1', 'cleared@0', 'cache0-0', 'cache0-1']);
    expect(warnings[0]).toMatch(/stream order lost/);
  });

  it('close() waits for the acks, or reports what it could not publish', async () => {
    const { link, stream, outbox, warnings } = setup();
    stream.auto = false;
    outbox.publish(0, events(0, ['e0']));
    const closing = outbox.close(1000);
    stream.answer(stream.open()[0], 'ack');
    expect(await closing).toBe(0);
    expect(warnings).toEqual([]);

    const second = setup();
    second.link.set(false);
    second.outbox.publish(0, events(0, labels('e', 3)));
    expect(await second.outbox.close(1000)).toBe(3);
    expect(second.warnings).toEqual(['KV events: 3 event(s) not published to JetStream at shutdown (NATS disconnected)']);
    void link;
  });
});

describe('DYN_MOCKER_KV_OUTBOX_EVENTS', () => {
  const cfg = (env: Record<string, string>) => parseWorkerConfig({ modelPath: 'm' }, [], env);

  it('defaults to 10,000 events', () => {
    expect(cfg({}).kvOutboxEvents).toBe(10_000);
    expect(WORKER_DEFAULTS.kvOutboxEvents).toBe(10_000);
    expect(cfg({ DYN_MOCKER_KV_OUTBOX_EVENTS: '50' }).kvOutboxEvents).toBe(50);
  });

  it.each([
    ['0', /integer in \[1, 10000000\]/],
    ['10k', /must be an integer, got '10k'/],
  ])('exits 2 in one line naming the variable for %s', async (value, message) => {
    const env = { DYN_MOCKER_KV_OUTBOX_EVENTS: value };
    expect(() => cfg(env)).toThrow(ConfigError);
    let err = '';
    const code = await main(['--model-path', 'm'], { out: () => {}, err: (t) => (err += t), env, isTty: false });
    expect(code).toBe(2);
    expect(err.trim().split('\n')).toHaveLength(1);
    expect(err).toContain('DYN_MOCKER_KV_OUTBOX_EVENTS');
    expect(err).toMatch(message);
  });
});
