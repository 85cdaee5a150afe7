// Bootstrap (DMHF) handoff sessions in memory: source and destination against each other and against scripted peers, and the rendezvous table.
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { KvTransferSettings } from '../../src/core/kv-transfer.js';
import type { HandoffIdentity, HandoffMessage } from '../../src/dynamo/handoff-wire.js';
import { HandoffClosed, QueuedChannel, channelPair, type HandoffChannel } from '../../src/serving/handoff-channel.js';
import {
  DESTINATION_ENDED,
  HandoffFailed,
  HandoffRendezvous,
  runDestinationSession,
  runSourceSession,
  type DestinationSessionOptions,
  type SourceSessionOptions,
} from '../../src/serving/handoff-sessions.js';

type Register = Extract<HandoffMessage, { kind: 'Register' }>;

const HANDOFF_ID = '0b9f4c3e-7d2a-4e1b-9c5f-2a6d8e0f1a3b';
const REQUEST_ID = '5e1d2c3b-4a59-4867-8f7e-6d5c4b3a2910';
const IDENTITY: HandoffIdentity = { handoffId: HANDOFF_ID, bootstrapRoom: 42n, requestId: REQUEST_ID };
const REGISTER: Register = { kind: 'Register', role: 'Destination', dpRank: 0, order: 'SourceFirst', engineType: 'vllm' };

/** 8 prompt tokens × 1,000,000 B at 1 GB/s: 8 ms in full_prompt mode. */
const TRANSFER: KvTransferSettings = { bandwidthGBps: 1, bytesPerToken: 1_000_000, timingMode: 'full_prompt' };
const PROMPT_TOKENS = 8;

function identity(handoffId: string, overrides: Partial<HandoffIdentity> = {}): HandoffIdentity {
  return { ...IDENTITY, handoffId, ...overrides };
}

let idCounter = 0;
/** A fresh lowercase UUID per call (the rendezvous retires ids, so each test needs its own). */
function freshId(): string {
  idCounter++;
  return `00000000-0000-4000-8000-${idCounter.toString(16).padStart(12, '0')}`;
}

/** The message the promise rejected with (fails the test if it resolved). */
async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(HandoffFailed);
    return (err as Error).message;
  }
  return expect.unreachable('expected the session to fail');
}

/** Resolves once every queued microtask and immediate has run (no timers involved). */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * The far end of a session, played by hand: the session under test gets `channel`; what it sends
 * is recorded (every attempt, also after the channel ended) and can be awaited one by one.
 */
class ScriptedPeer {
  readonly sent: HandoffMessage[] = [];
  readonly inner: QueuedChannel;
  readonly channel: HandoffChannel;
  /** Why the session under test closed the channel, once it has. */
  closedBy: string | null = null;
  private read = 0;
  private wake: (() => void) | null = null;

  constructor(id: HandoffIdentity = IDENTITY) {
    this.inner = new QueuedChannel(id, () => {}, (reason) => (this.closedBy = reason));
    const inner = this.inner;
    this.channel = {
      identity: id,
      send: (m) => {
        this.sent.push(m);
        inner.send(m);
        this.wake?.();
      },
      receive: () => inner.receive(),
      closed: inner.closed,
      close: (reason) => inner.close(reason),
    };
  }

  /** The next message the session sent (waits for it). */
  async next(): Promise<HandoffMessage> {
    while (this.read >= this.sent.length) await new Promise<void>((resolve) => (this.wake = resolve));
    return this.sent[this.read++];
  }

  /** The peer sends `m` to the session. */
  deliver(m: HandoffMessage): void {
    this.inner.deliver(m);
  }

  /** The peer's connection drops. */
  disconnect(): void {
    this.inner.end('peer closed: connection reset');
  }
}

/** Wraps a channel so that every message sent on it lands in `log` with its direction. */
function tap(channel: HandoffChannel, dir: 'S→D' | 'D→S', log: Array<[string, HandoffMessage]>): HandoffChannel {
  return {
    identity: channel.identity,
    send: (m) => {
      log.push([dir, m]);
      channel.send(m);
    },
    receive: () => channel.receive(),
    closed: channel.closed,
    close: (reason) => channel.close(reason),
  };
}

interface SourceRecord {
  sleeps: number[];
  released: number;
  cancelled: number;
  prefilled: number;
}

function sourceOptions(channel: HandoffChannel, over: Partial<SourceSessionOptions> = {}): { opts: SourceSessionOptions; rec: SourceRecord } {
  const rec: SourceRecord = { sleeps: [], released: 0, cancelled: 0, prefilled: 0 };
  const opts: SourceSessionOptions = {
    channel,
    prefill: async () => {
      rec.prefilled++;
    },
    promptTokens: PROMPT_TOKENS,
    transfer: TRANSFER,
    release: () => {
      rec.released++;
    },
    cancel: () => {
      rec.cancelled++;
    },
    signal: new AbortController().signal,
    sessionTimeoutMs: 60_000,
    sleep: async (ms) => {
      rec.sleeps.push(ms);
    },
    ...over,
  };
  return { opts, rec };
}

interface DestinationRecord {
  reserves: number;
  activations: number;
  cancels: number;
  /** Calls the reservation's `onReserved` (when the test holds it back). */
  reserveNow: ((transferable: number) => void) | null;
}

/** A destination whose reservation succeeds with `transferable` tokens: at once, or (sync false) when the test says so. */
function destinationOptions(
  channel: HandoffChannel,
  o: { transferable?: number; sync?: boolean; refusal?: string | null } & Partial<DestinationSessionOptions> = {},
): { opts: DestinationSessionOptions; rec: DestinationRecord } {
  const { transferable = PROMPT_TOKENS, sync = true, refusal = null, ...over } = o;
  const rec: DestinationRecord = { reserves: 0, activations: 0, cancels: 0, reserveNow: null };
  let reserved = false;
  let active = false;
  const opts: DestinationSessionOptions = {
    channel,
    reserve: (onReserved) => {
      rec.reserves++;
      if (refusal !== null) return refusal;
      const done = (t: number): void => {
        reserved = true;
        onReserved(t);
      };
      if (sync) done(transferable);
      else rec.reserveNow = done;
      return null;
    },
    activate: () => {
      rec.activations++;
      if (!reserved) return false;
      active = true;
      return true;
    },
    cancel: () => {
      rec.cancels++;
      const had = reserved || active;
      reserved = active = false;
      return had;
    },
    signal: new AbortController().signal,
    rendezvousTimeoutMs: 30_000,
    sessionTimeoutMs: 60_000,
    ...over,
  };
  return { opts, rec };
}

const fullTiming = { mode: 'full_prompt', fullPromptTokens: 8, kvBytesPerToken: 1_000_000, bandwidthGBps: 1 } as const;

afterEach(() => {
  vi.useRealTimers();
});

describe('source and destination over an in-memory channel pair', () => {
  it('run a SourceFirst session to Complete with the exact messages in each direction', async () => {
    const [s, d] = channelPair(IDENTITY);
    const log: Array<[string, HandoffMessage]> = [];
    const src = sourceOptions(tap(s, 'S→D', log));
    const dst = destinationOptions(tap(d, 'D→S', log));
    await Promise.all([runSourceSession(src.opts), runDestinationSession(dst.opts)]);
    const byDir = (dir: string) => log.filter(([x]) => x === dir).map(([, m]) => m);
    expect(byDir('S→D')).toEqual([
      { kind: 'Registered' },
      { kind: 'SourceHeld', handoffId: HANDOFF_ID, timing: fullTiming },
      { kind: 'Action', id: 1n, action: 'ReserveDestination', handoffId: HANDOFF_ID },
      { kind: 'Action', id: 3n, action: 'ActivateDestination', handoffId: HANDOFF_ID },
      { kind: 'Complete' },
    ]);
    expect(byDir('D→S')).toEqual([
      { kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' },
      { kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: 8 },
      { kind: 'ActionAck', actionId: 3n, outcome: 'Applied' },
    ]);
    // The source waits out the modelled transfer once, between DestinationReserved and Activate.
    expect(src.rec).toEqual({ sleeps: [8], released: 1, cancelled: 0, prefilled: 1 });
    expect(dst.rec).toMatchObject({ reserves: 1, activations: 1, cancels: 0 });
    // Both ends closed the connection.
    expect(s.ended && d.ended).toBe(true);
  });

  it('the destination acks Accepted before DestinationReserved also when the reservation is made later', async () => {
    const [s, d] = channelPair(IDENTITY);
    const log: Array<[string, HandoffMessage]> = [];
    const src = sourceOptions(tap(s, 'S→D', log));
    const dst = destinationOptions(tap(d, 'D→S', log), { sync: false });
    const both = Promise.all([runSourceSession(src.opts), runDestinationSession(dst.opts)]);
    while (!dst.rec.reserveNow) await settle();
    expect(log.map(([dir, m]) => `${dir} ${m.kind}`)).toEqual(['S→D Registered', 'S→D SourceHeld', 'S→D Action', 'D→S ActionAck']);
    dst.rec.reserveNow(8);
    await both;
    expect(log.filter(([dir]) => dir === 'D→S').map(([, m]) => m.kind)).toEqual(['ActionAck', 'DestinationReserved', 'ActionAck']);
  });

  it('a failed source ends the destination with "destination handoff ended before completion"', async () => {
    const [s, d] = channelPair(IDENTITY);
    const src = sourceOptions(s, {
      prefill: async () => {
        throw new HandoffFailed('source prefill did not complete');
      },
    });
    const dst = destinationOptions(d);
    const [srcErr, dstErr] = await Promise.all([failure(runSourceSession(src.opts)), failure(runDestinationSession(dst.opts))]);
    expect(srcErr).toBe('source prefill did not complete');
    expect(dstErr).toBe(DESTINATION_ENDED);
    expect(src.rec.cancelled).toBe(1);
    expect(dst.rec.cancels).toBe(1);
  });
});

describe('source session against a scripted destination', () => {
  /** Plays a well-behaved destination up to the Activate action; returns what the source sent. */
  async function reserveAndActivate(peer: ScriptedPeer, transferable: number): Promise<HandoffMessage[]> {
    const seen: HandoffMessage[] = [];
    for (let i = 0; i < 3; i++) seen.push(await peer.next());
    peer.deliver({ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' });
    peer.deliver({ kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: transferable });
    seen.push(await peer.next());
    peer.deliver({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    seen.push(await peer.next());
    return seen;
  }

  const timings: Array<[string, Partial<KvTransferSettings>, number, number[], object]> = [
    ['full_prompt: 8 tokens × 1e6 B at 1 GB/s', {}, 4, [8], fullTiming],
    ['destination_missing: the destination\'s 4 transferable tokens', { timingMode: 'destination_missing' }, 4, [4], { ...fullTiming, mode: 'destination_missing' }],
    ['destination_missing with a full prefix hit (0 tokens)', { timingMode: 'destination_missing' }, 0, [], { ...fullTiming, mode: 'destination_missing' }],
    ['no bytes per token', { bytesPerToken: null }, 8, [], { ...fullTiming, kvBytesPerToken: null, bandwidthGBps: null }],
    ['bandwidth 0', { bandwidthGBps: 0 }, 8, [], { ...fullTiming, kvBytesPerToken: null, bandwidthGBps: null }],
  ];
  for (const [what, transfer, transferable, sleeps, timing] of timings) {
    it(`waits the modelled transfer before Activate — ${what}: ${sleeps.length ? `${sleeps[0]} ms` : 'no wait'}`, async () => {
      const peer = new ScriptedPeer();
      const src = sourceOptions(peer.channel, { transfer: { ...TRANSFER, ...transfer } });
      const done = runSourceSession(src.opts);
      const seen = await reserveAndActivate(peer, transferable);
      await done;
      expect(seen).toEqual([
        { kind: 'Registered' },
        { kind: 'SourceHeld', handoffId: HANDOFF_ID, timing },
        { kind: 'Action', id: 1n, action: 'ReserveDestination', handoffId: HANDOFF_ID },
        { kind: 'Action', id: 3n, action: 'ActivateDestination', handoffId: HANDOFF_ID },
        { kind: 'Complete' },
      ]);
      expect(src.rec.sleeps).toEqual(sleeps);
      expect(src.rec).toMatchObject({ released: 1, cancelled: 0 });
      expect(peer.closedBy).toBe('session over');
    });
  }

  it('asks for Activate only after the transfer sleep has ended', async () => {
    const peer = new ScriptedPeer();
    let endSleep!: () => void;
    const src = sourceOptions(peer.channel, {
      sleep: (ms) => {
        src.rec.sleeps.push(ms);
        return new Promise<void>((resolve) => (endSleep = resolve));
      },
    });
    const done = runSourceSession(src.opts);
    for (let i = 0; i < 3; i++) await peer.next();
    peer.deliver({ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' });
    peer.deliver({ kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: 8 });
    while (src.rec.sleeps.length === 0) await settle();
    await settle();
    expect(peer.sent).toHaveLength(3);
    endSleep();
    expect(await peer.next()).toMatchObject({ kind: 'Action', id: 3n, action: 'ActivateDestination' });
    peer.deliver({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    await done;
  });

  it('destination disconnect → "destination disconnected": cancels the prefill and sends Abort', async () => {
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel);
    const done = failure(runSourceSession(src.opts));
    for (let i = 0; i < 3; i++) await peer.next();
    peer.disconnect();
    expect(await done).toBe('destination disconnected');
    expect(peer.sent.at(-1)).toEqual({ kind: 'Abort', message: 'destination disconnected' });
    expect(src.rec).toMatchObject({ cancelled: 1, released: 0 });
  });

  it('a Failed ack for Reserve → CancelDestination, then Abort "handoff canceled"; rejects "handoff canceled"', async () => {
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel);
    const done = failure(runSourceSession(src.opts));
    for (let i = 0; i < 3; i++) await peer.next();
    peer.deliver({ kind: 'ActionAck', actionId: 1n, outcome: { failed: 'destination prompt exceeds the KV pool capacity' } });
    expect(await done).toBe('handoff canceled');
    const [cancel, abort] = peer.sent.slice(3);
    expect(cancel).toMatchObject({ kind: 'Action', action: 'CancelDestination', handoffId: HANDOFF_ID });
    expect(abort).toEqual({ kind: 'Abort', message: 'handoff canceled' });
    expect(peer.sent).toHaveLength(5);
    expect(src.rec).toMatchObject({ cancelled: 1, released: 0, sleeps: [] });
  });

  it('a Noop ack for Activate is cleaned up the same way', async () => {
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel);
    const done = failure(runSourceSession(src.opts));
    for (let i = 0; i < 3; i++) await peer.next();
    peer.deliver({ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' });
    peer.deliver({ kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: 8 });
    await peer.next();
    peer.deliver({ kind: 'ActionAck', actionId: 3n, outcome: 'Noop' });
    expect(await done).toBe('handoff canceled');
    expect(peer.sent.slice(4).map((m) => (m.kind === 'Action' ? m.action : m.kind))).toEqual(['CancelDestination', 'Abort']);
    expect(src.rec).toMatchObject({ cancelled: 1, released: 0 });
  });

  it('an Abort from the destination ends the source with its text', async () => {
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel);
    const done = failure(runSourceSession(src.opts));
    for (let i = 0; i < 3; i++) await peer.next();
    peer.deliver({ kind: 'ProtocolError', message: 'bootstrap frame changed session identity' });
    expect(await done).toBe('bootstrap frame changed session identity');
    expect(src.rec.cancelled).toBe(1);
  });

  it('the client\'s abort → "source request was canceled" (also while the prefill runs)', async () => {
    const peer = new ScriptedPeer();
    const client = new AbortController();
    const src = sourceOptions(peer.channel, { signal: client.signal, prefill: () => new Promise<void>(() => {}) });
    const done = failure(runSourceSession(src.opts));
    expect(await peer.next()).toEqual({ kind: 'Registered' });
    client.abort();
    expect(await done).toBe('source request was canceled');
    expect(peer.sent).toEqual([{ kind: 'Registered' }, { kind: 'Abort', message: 'source request was canceled' }]);
    expect(src.rec.cancelled).toBe(1);
    expect(peer.closedBy).toBe('session over');
  });

  it('session timeout → "handoff session timed out" (a silent destination)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel, { sessionTimeoutMs: 50 });
    const done = failure(runSourceSession(src.opts));
    for (let i = 0; i < 3; i++) await peer.next();
    // 50 ms, extended by the 8 ms transfer the SourceHeld timing implies.
    await vi.advanceTimersByTimeAsync(57);
    expect(peer.sent).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    expect(await done).toBe('handoff session timed out');
    expect(peer.sent.at(-1)).toEqual({ kind: 'Abort', message: 'handoff session timed out' });
    expect(src.rec.cancelled).toBe(1);
  });

  // Dynamo's source deadline is rendezvous + handoff_session_timeout_ms, extended by the modelled
  // transfer delay once it is known: a 5 ms timeout still lets an 8 ms transfer complete (deadline 13 ms).
  it('the session deadline is extended by the modelled transfer delay', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const peer = new ScriptedPeer();
    const src = sourceOptions(peer.channel, {
      sessionTimeoutMs: 5,
      sleep: (ms) => new Promise<void>((resolve) => setTimeout(resolve, ms)),
    });
    const done = runSourceSession(src.opts);
    for (let i = 0; i < 3; i++) await peer.next();
    peer.deliver({ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' });
    peer.deliver({ kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: 8 });
    await vi.advanceTimersByTimeAsync(8);
    expect(await peer.next()).toMatchObject({ kind: 'Action', id: 3n, action: 'ActivateDestination' });
    peer.deliver({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    await done;
  });
});

describe('destination session against a scripted source', () => {
  const reserve = { kind: 'Action', id: 1n, action: 'ReserveDestination', handoffId: HANDOFF_ID } as const;
  const activate = { kind: 'Action', id: 3n, action: 'ActivateDestination', handoffId: HANDOFF_ID } as const;

  /** Registered, SourceHeld and the Reserve action; waits for the ack and the fact. */
  async function upToReserved(peer: ScriptedPeer): Promise<HandoffMessage[]> {
    peer.deliver({ kind: 'Registered' });
    peer.deliver({ kind: 'SourceHeld', handoffId: HANDOFF_ID, timing: fullTiming });
    peer.deliver(reserve);
    return [await peer.next(), await peer.next()];
  }

  it('answers a successful session: Accepted, DestinationReserved, Applied; resolves on Complete', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel, { transferable: 12 });
    const done = runDestinationSession(dst.opts);
    expect(await upToReserved(peer)).toEqual([
      { kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' },
      { kind: 'DestinationReserved', handoffId: HANDOFF_ID, transferablePromptTokens: 12 },
    ]);
    peer.deliver(activate);
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    peer.deliver({ kind: 'Complete' });
    await done;
    expect(dst.rec).toMatchObject({ reserves: 1, activations: 1, cancels: 0 });
    expect(peer.sent).toHaveLength(3);
    expect(peer.closedBy).toBe('session over');
  });

  it('a refused reservation is acked Failed with the reason', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel, { refusal: 'destination prompt exceeds the KV pool capacity' });
    const done = failure(runDestinationSession(dst.opts));
    peer.deliver({ kind: 'Registered' });
    peer.deliver(reserve);
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 1n, outcome: { failed: 'destination prompt exceeds the KV pool capacity' } });
    peer.deliver({ kind: 'Action', id: 2n, action: 'CancelDestination', handoffId: HANDOFF_ID });
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 2n, outcome: 'Noop' });
    peer.deliver({ kind: 'Abort', message: 'handoff canceled' });
    expect(await done).toBe(DESTINATION_ENDED);
  });

  it('a duplicate Action id gets the cached ack again (the action is not run twice)', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = runDestinationSession(dst.opts);
    await upToReserved(peer);
    peer.deliver(reserve);
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 1n, outcome: 'Accepted' });
    peer.deliver(activate);
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    peer.deliver(activate);
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    peer.deliver({ kind: 'Complete' });
    await done;
    expect(dst.rec).toMatchObject({ reserves: 1, activations: 1 });
  });

  it('a second Reserve under a new id is acked Failed "destination request was reserved more than once"', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = runDestinationSession(dst.opts);
    await upToReserved(peer);
    peer.deliver({ ...reserve, id: 7n });
    expect(await peer.next()).toEqual({ kind: 'ActionAck', actionId: 7n, outcome: { failed: 'destination request was reserved more than once' } });
    expect(dst.rec.reserves).toBe(1);
    peer.disconnect();
    expect(await failure(done)).toBe(DESTINATION_ENDED);
  });

  it('the same Action id with a different action → "bootstrap action ID was reused with different content"', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = failure(runDestinationSession(dst.opts));
    await upToReserved(peer);
    peer.deliver({ ...activate, id: 1n });
    expect(await done).toBe('bootstrap action ID was reused with different content');
    expect(dst.rec).toMatchObject({ activations: 0, cancels: 1 });
  });

  it('a Complete before the Activate ack → "source completed before destination activation finished"', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = failure(runDestinationSession(dst.opts));
    await upToReserved(peer);
    peer.deliver({ kind: 'Complete' });
    expect(await done).toBe('source completed before destination activation finished');
    expect(dst.rec.cancels).toBe(1);
    expect(peer.closedBy).toBe('session over');
  });

  it('a second Registered → "source registered the destination more than once"', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = failure(runDestinationSession(dst.opts));
    peer.deliver({ kind: 'Registered' });
    peer.deliver({ kind: 'Registered' });
    expect(await done).toBe('source registered the destination more than once');
  });

  const endings: Array<[string, (peer: ScriptedPeer) => void]> = [
    ['Abort', (peer) => peer.deliver({ kind: 'Abort', message: 'destination disconnected' })],
    ['ProtocolError', (peer) => peer.deliver({ kind: 'ProtocolError', message: 'handoff participant identity or backend mismatch' })],
    ['the source closing the connection', (peer) => peer.disconnect()],
  ];
  for (const [what, end] of endings) {
    it(`${what} → "${DESTINATION_ENDED}" and the reservation is cancelled`, async () => {
      const peer = new ScriptedPeer();
      const dst = destinationOptions(peer.channel);
      const done = failure(runDestinationSession(dst.opts));
      await upToReserved(peer);
      end(peer);
      expect(await done).toBe(DESTINATION_ENDED);
      expect(dst.rec.cancels).toBe(1);
      // Dynamo's destination never sends Abort, ProtocolError or a cancel frame: it just closes.
      expect(peer.sent.map((m) => m.kind)).toEqual(['ActionAck', 'DestinationReserved']);
    });
  }

  it('Overloaded → "unexpected source bootstrap message: Overloaded"', async () => {
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel);
    const done = failure(runDestinationSession(dst.opts));
    peer.deliver({ kind: 'Overloaded' });
    expect(await done).toBe('unexpected source bootstrap message: Overloaded');
    expect(dst.rec.cancels).toBe(1);
    expect(peer.sent).toEqual([]);
  });

  it('the decode client\'s cancel ends the session with "destination handoff ended before completion"', async () => {
    const peer = new ScriptedPeer();
    const client = new AbortController();
    const dst = destinationOptions(peer.channel, { signal: client.signal });
    const done = failure(runDestinationSession(dst.opts));
    await upToReserved(peer);
    client.abort();
    expect(await done).toBe(DESTINATION_ENDED);
    expect(dst.rec.cancels).toBe(1);
    expect(peer.closedBy).toBe('session over');
  });

  it('no Registered within the rendezvous timeout, or no Complete within the session timeout, ends it', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const early = new ScriptedPeer();
    const a = failure(runDestinationSession(destinationOptions(early.channel, { rendezvousTimeoutMs: 30, sessionTimeoutMs: 1000 }).opts));
    await vi.advanceTimersByTimeAsync(30);
    expect(await a).toBe(DESTINATION_ENDED);

    const late = new ScriptedPeer();
    const b = failure(runDestinationSession(destinationOptions(late.channel, { rendezvousTimeoutMs: 30, sessionTimeoutMs: 100 }).opts));
    late.deliver({ kind: 'Registered' });
    await vi.advanceTimersByTimeAsync(99); // past the rendezvous timeout: Registered replaced it
    let settled = false;
    void b.then(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await b).toBe(DESTINATION_ENDED);
  });

  // Dynamo's destination deadline, once Registered, is handoff_session_timeout_ms plus the modelled
  // transfer delay once known (full_prompt: from SourceHeld): 5 ms + 8 ms outlasts the source's transfer wait.
  it('the session deadline is extended by the transfer delay announced in SourceHeld', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const peer = new ScriptedPeer();
    const dst = destinationOptions(peer.channel, { sessionTimeoutMs: 5 });
    const done = runDestinationSession(dst.opts);
    done.catch(() => {}); // today it rejects at 5 ms
    await upToReserved(peer);
    await vi.advanceTimersByTimeAsync(8); // the source's transfer wait
    peer.deliver(activate);
    await settle();
    expect(peer.sent.at(-1)).toEqual({ kind: 'ActionAck', actionId: 3n, outcome: 'Applied' });
    peer.deliver({ kind: 'Complete' });
    await done;
  });
});

describe('HandoffRendezvous', () => {
  const rendezvous = (o: Partial<{ rendezvousTimeoutMs: number; maxSessions: number }> = {}) =>
    new HandoffRendezvous({ rendezvousTimeoutMs: 30_000, maxSessions: 8, ...o });

  /** A destination connection as the bootstrap server hands it over: the server's end and the decode's end. */
  function destination(id: HandoffIdentity): { server: QueuedChannel; decode: QueuedChannel } {
    const [server, decode] = channelPair(id);
    return { server, decode };
  }

  /** Everything the decode end receives until the connection closes, and why it closed. */
  async function drain(decode: QueuedChannel): Promise<{ messages: HandoffMessage[]; closed: string }> {
    const messages: HandoffMessage[] = [];
    for (;;) {
      try {
        messages.push(await decode.receive());
      } catch (err) {
        expect(err).toBeInstanceOf(HandoffClosed);
        return { messages, closed: (err as Error).message };
      }
    }
  }

  it('pairs a destination that arrives first with its source', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    const { server } = destination(id);
    r.acceptDestination(server, REGISTER);
    expect(r.pendingCount).toBe(1);
    const channel = await r.awaitDestination(id, new AbortController().signal);
    expect(channel).toBe(server);
    expect(r.pendingCount).toBe(0);
  });

  it('pairs a source that arrives first with its destination', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    const paired = r.awaitDestination(id, new AbortController().signal);
    expect(r.pendingCount).toBe(1);
    const { server } = destination(id);
    r.acceptDestination(server, REGISTER);
    expect(await paired).toBe(server);
    expect(r.pendingCount).toBe(0);
  });

  it('runs a full session once paired (source first)', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    const paired = r.awaitDestination(id, new AbortController().signal);
    const { server, decode } = destination(id);
    r.acceptDestination(server, REGISTER);
    const src = sourceOptions(await paired);
    const dst = destinationOptions(decode);
    await Promise.all([runSourceSession(src.opts), runDestinationSession(dst.opts)]);
    r.sessionEnded();
    expect(src.rec).toMatchObject({ released: 1, sleeps: [8] });
    expect(dst.rec).toMatchObject({ activations: 1, cancels: 0 });
  });

  const mismatches: Array<[string, Partial<Register>, Partial<HandoffIdentity>]> = [
    ['order DestinationFirst', { order: 'DestinationFirst' }, {}],
    ['engine sglang', { engineType: 'sglang' }, {}],
    ['a different bootstrap room', {}, { bootstrapRoom: 43n }],
    ['a different request id', {}, { requestId: 'ffffffff-0000-4000-8000-000000000000' }],
  ];
  for (const [what, register, ident] of mismatches) {
    for (const destinationFirst of [true, false]) {
      it(`${what} (${destinationFirst ? 'destination' : 'source'} first) → ProtocolError to the destination, the source rejects`, async () => {
        const r = rendezvous();
        const handoffId = freshId();
        const { server, decode } = destination(identity(handoffId, ident));
        const accept = () => r.acceptDestination(server, { ...REGISTER, ...register });
        if (destinationFirst) accept();
        const paired = failure(r.awaitDestination(identity(handoffId), new AbortController().signal));
        if (!destinationFirst) accept();
        expect(await paired).toBe('handoff participant identity or backend mismatch');
        expect(await drain(decode)).toEqual({
          messages: [{ kind: 'ProtocolError', message: 'handoff participant identity or backend mismatch' }],
          closed: 'peer closed: mismatch',
        });
        expect(r.pendingCount).toBe(0);
      });
    }
  }

  it('rendezvous timeout → "handoff participant rendezvous timed out" to a waiting destination or source; the id is retired', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const r = rendezvous({ rendezvousTimeoutMs: 100 });
    const destId = identity(freshId());
    const { server, decode } = destination(destId);
    r.acceptDestination(server, REGISTER);
    const srcId = identity(freshId());
    const source = failure(r.awaitDestination(srcId, new AbortController().signal));
    await vi.advanceTimersByTimeAsync(99);
    expect(r.pendingCount).toBe(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(await source).toBe('handoff participant rendezvous timed out');
    expect(await drain(decode)).toEqual({
      messages: [{ kind: 'ProtocolError', message: 'handoff participant rendezvous timed out' }],
      closed: 'peer closed: rendezvous timed out',
    });
    expect(r.pendingCount).toBe(0);
    // A late participant of a timed-out session is refused.
    expect(await failure(r.awaitDestination(destId, new AbortController().signal))).toBe('handoff session is already active or retired');
  });

  it('refuses a retired id: a source or destination arriving again after its session paired', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    r.acceptDestination(destination(id).server, REGISTER);
    await r.awaitDestination(id, new AbortController().signal);
    expect(await failure(r.awaitDestination(id, new AbortController().signal))).toBe('handoff session is already active or retired');
    const again = destination(id);
    r.acceptDestination(again.server, REGISTER);
    expect(await drain(again.decode)).toEqual({
      messages: [{ kind: 'ProtocolError', message: 'handoff session is already active or retired' }],
      closed: 'peer closed: refused',
    });
    expect(r.pendingCount).toBe(0);
  });

  it('refuses a duplicate participant of a pending session', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    r.acceptDestination(destination(id).server, REGISTER);
    const dup = destination(id);
    r.acceptDestination(dup.server, REGISTER);
    expect((await drain(dup.decode)).messages).toEqual([{ kind: 'ProtocolError', message: 'duplicate destination participant' }]);

    const other = identity(freshId());
    const first = r.awaitDestination(other, new AbortController().signal);
    expect(await failure(r.awaitDestination(other, new AbortController().signal))).toBe('duplicate source participant');
    r.acceptDestination(destination(other).server, REGISTER);
    await first;
  });

  it('maxSessions exceeded (pending + active) → the destination gets Overloaded, a source "handoff session limit reached"', async () => {
    const r = rendezvous({ maxSessions: 2 });
    const active = identity(freshId());
    r.acceptDestination(destination(active).server, REGISTER);
    await r.awaitDestination(active, new AbortController().signal); // 1 active
    const pendingId = identity(freshId());
    const pendingSource = r.awaitDestination(pendingId, new AbortController().signal); // 1 pending
    const extra = destination(identity(freshId()));
    r.acceptDestination(extra.server, REGISTER);
    expect(await drain(extra.decode)).toEqual({ messages: [{ kind: 'Overloaded' }], closed: 'peer closed: refused' });
    expect(await failure(r.awaitDestination(identity(freshId()), new AbortController().signal))).toBe('handoff session limit reached');
    // The pending session's own participant still gets in.
    r.acceptDestination(destination(pendingId).server, REGISTER);
    await pendingSource;
    // A session that ends frees its slot.
    r.sessionEnded();
    const later = identity(freshId());
    r.acceptDestination(destination(later).server, REGISTER);
    expect(r.pendingCount).toBe(1);
  });

  it('a pending destination that disconnects frees its slot at once', async () => {
    const r = rendezvous({ maxSessions: 1 });
    const { server, decode } = destination(identity(freshId()));
    r.acceptDestination(server, REGISTER);
    expect(r.pendingCount).toBe(1);
    decode.close('decode cancelled');
    await settle();
    expect(r.pendingCount).toBe(0);
    const next = identity(freshId());
    r.acceptDestination(destination(next).server, REGISTER);
    expect(r.pendingCount).toBe(1);
  });

  it('abort before rendezvous → "source request was canceled before rendezvous"; the id is retired', async () => {
    const r = rendezvous();
    const id = identity(freshId());
    const client = new AbortController();
    const waiting = failure(r.awaitDestination(id, client.signal));
    client.abort();
    expect(await waiting).toBe('source request was canceled before rendezvous');
    expect(r.pendingCount).toBe(0);
    const late = destination(id);
    r.acceptDestination(late.server, REGISTER);
    expect((await drain(late.decode)).messages).toEqual([{ kind: 'ProtocolError', message: 'handoff session is already active or retired' }]);
  });

  it('close() refuses everything pending with "handoff manager is shutting down"', async () => {
    const r = rendezvous();
    const source = failure(r.awaitDestination(identity(freshId()), new AbortController().signal));
    const { server, decode } = destination(identity(freshId()));
    r.acceptDestination(server, REGISTER);
    r.close();
    expect(await source).toBe('handoff manager is shutting down');
    expect((await drain(decode)).messages).toEqual([{ kind: 'ProtocolError', message: 'handoff manager is shutting down' }]);
    expect(await failure(r.awaitDestination(identity(freshId()), new AbortController().signal))).toBe('handoff manager is shutting down');
  });
});
