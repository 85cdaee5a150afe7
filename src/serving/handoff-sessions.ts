// Bootstrap (KV handoff) sessions between a prefill worker (source) and a decode worker (destination), as Dynamo's mocker runs them.
//
// vLLM order (SourceFirst): the destination registers; the source answers Registered, runs the
// prefill and holds its KV, says SourceHeld and asks the destination to reserve; the destination
// acks Accepted and, once its KV is reserved, says DestinationReserved; the source waits out the
// modelled transfer, asks for activation (acked Applied), frees its KV and says Complete.
import type { KvTransferSettings } from '../core/kv-transfer.js';
import { transferDelayMs, transferTokens } from '../core/kv-transfer.js';
import {
  sameIdentity,
  type ActionOutcome,
  type DestinationAction,
  type HandoffIdentity,
  type HandoffMessage,
  type RegisterMessage as Register,
  type TransferTiming,
} from '../dynamo/handoff-wire.js';
import { HandoffClosed, type HandoffChannel } from './handoff-channel.js';

/** The error text both ends report for a destination whose session did not complete (Dynamo's wording). */
export const DESTINATION_ENDED = 'destination handoff ended before completion';

/** Dynamo's destination keeps at most this many action outcomes (for re-acking duplicates). */
const OUTCOME_CACHE_BOUND = 16;

/** What a session failed with; `message` is what the request's stream reports. */
export class HandoffFailed extends Error {
  override name = 'HandoffFailed';
}

interface Deadline {
  /** Rejects with the deadline's message when it passes. */
  promise: Promise<never>;
  clear(): void;
  /** Moves the deadline `ms` later (Dynamo extends a session's by the modelled transfer). */
  extend(ms: number): void;
}

/** A promise that rejects with `message` after `ms` (plus any extensions), unless cleared. */
function deadline(ms: number, message: string): Deadline {
  let timer: NodeJS.Timeout | undefined;
  // Extensions granted since the timer was armed: when it fires, it re-arms for them instead.
  let pending = 0;
  const promise = new Promise<never>((_, reject) => {
    const fire = (): void => {
      if (pending > 0) {
        timer = setTimeout(fire, pending);
        pending = 0;
      } else reject(new HandoffFailed(message));
    };
    timer = setTimeout(fire, ms);
  });
  promise.catch(() => {});
  return {
    promise,
    clear: () => clearTimeout(timer),
    extend(extra) {
      if (extra > 0) pending += extra;
    },
  };
}

/** The delay a SourceHeld timing implies for `tokens` (what either side extends its deadline by). */
function timingDelayMs(timing: TransferTiming, tokens: number): number {
  return transferDelayMs(tokens, { bytesPerToken: timing.kvBytesPerToken, bandwidthGBps: timing.bandwidthGBps ?? 0 });
}

function aborted(signal: AbortSignal, message: string): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal.aborted) reject(new HandoffFailed(message));
    else signal.addEventListener('abort', () => reject(new HandoffFailed(message)), { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Source side: where a prefill request and its destination's connection meet.

interface PendingSession {
  source?: { identity: HandoffIdentity; resolve: (c: HandoffChannel) => void; reject: (e: Error) => void };
  destination?: { channel: HandoffChannel; register: Register };
  timer: NodeJS.Timeout;
}

export interface RendezvousOptions {
  rendezvousTimeoutMs: number;
  /** Sessions pending or active at once (per worker); a destination beyond it is told Overloaded. */
  maxSessions: number;
}

/** Ids stay retired (refused if seen again) for this many sessions. */
const RETIRED_IDS = 4096;

/** One prefill worker's rendezvous table: each session's two participants may arrive in either order. */
export class HandoffRendezvous {
  private readonly pending = new Map<string, PendingSession>();
  private readonly retired = new Set<string>();
  private active = 0;
  private closedWith: string | null = null;

  constructor(private readonly o: RendezvousOptions) {}

  /** Sessions waiting for their other participant. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** A destination connected and registered (called by the bootstrap server). */
  acceptDestination(channel: HandoffChannel, register: Register): void {
    const id = channel.identity.handoffId;
    const refuse = (message: HandoffMessage): void => {
      channel.send(message);
      channel.close('refused');
    };
    if (this.closedWith !== null) return refuse({ kind: 'ProtocolError', message: 'handoff manager is shutting down' });
    if (this.retired.has(id)) return refuse({ kind: 'ProtocolError', message: 'handoff session is already active or retired' });
    const entry = this.pending.get(id);
    if (entry?.destination) return refuse({ kind: 'ProtocolError', message: 'duplicate destination participant' });
    if (!entry && this.pending.size + this.active >= this.o.maxSessions) return refuse({ kind: 'Overloaded' });
    if (entry?.source) return this.pair(id, entry, channel, register);
    const waiting = entry ?? this.open(id);
    waiting.destination = { channel, register };
    // A destination that leaves before its source arrives frees the slot at once.
    void channel.closed.then(() => {
      if (this.pending.get(id) === waiting && !waiting.source) this.drop(id, waiting);
    });
  }

  /** The prefill request of a session arrived: resolves with its destination's channel once paired. */
  awaitDestination(identity: HandoffIdentity, signal: AbortSignal): Promise<HandoffChannel> {
    const id = identity.handoffId;
    if (this.closedWith !== null) return Promise.reject(new HandoffFailed('handoff manager is shutting down'));
    if (this.retired.has(id)) return Promise.reject(new HandoffFailed('handoff session is already active or retired'));
    const entry = this.pending.get(id);
    if (entry?.source) return Promise.reject(new HandoffFailed('duplicate source participant'));
    if (!entry && this.pending.size + this.active >= this.o.maxSessions) return Promise.reject(new HandoffFailed('handoff session limit reached'));
    return new Promise<HandoffChannel>((resolve, reject) => {
      const waiting = entry ?? this.open(id);
      waiting.source = { identity, resolve, reject };
      signal.addEventListener(
        'abort',
        () => {
          if (this.pending.get(id) !== waiting) return;
          waiting.destination?.channel.send({ kind: 'Abort', message: 'source request was canceled before rendezvous' });
          waiting.destination?.channel.close('source canceled');
          this.drop(id, waiting);
          reject(new HandoffFailed('source request was canceled before rendezvous'));
        },
        { once: true },
      );
      if (waiting.destination) this.pair(id, waiting, waiting.destination.channel, waiting.destination.register);
    });
  }

  /** A paired session ended (either way): its slot is free again. */
  sessionEnded(): void {
    this.active = Math.max(0, this.active - 1);
  }

  /** Refuses everything pending (shutdown). */
  close(): void {
    this.closedWith = 'handoff manager is shutting down';
    for (const [id, entry] of [...this.pending]) {
      entry.destination?.channel.send({ kind: 'ProtocolError', message: this.closedWith });
      entry.destination?.channel.close('shutdown');
      entry.source?.reject(new HandoffFailed(this.closedWith));
      this.drop(id, entry);
    }
  }

  private open(id: string): PendingSession {
    const entry: PendingSession = {
      timer: setTimeout(() => {
        if (this.pending.get(id) !== entry) return;
        const message = 'handoff participant rendezvous timed out';
        entry.destination?.channel.send({ kind: 'ProtocolError', message });
        entry.destination?.channel.close('rendezvous timed out');
        entry.source?.reject(new HandoffFailed(message));
        this.drop(id, entry);
      }, this.o.rendezvousTimeoutMs),
    };
    this.pending.set(id, entry);
    return entry;
  }

  private drop(id: string, entry: PendingSession): void {
    clearTimeout(entry.timer);
    if (this.pending.get(id) === entry) this.pending.delete(id);
    this.retire(id);
  }

  private retire(id: string): void {
    this.retired.add(id);
    if (this.retired.size > RETIRED_IDS) this.retired.delete(this.retired.values().next().value as string);
  }

  private pair(id: string, entry: PendingSession, channel: HandoffChannel, register: Register): void {
    const source = entry.source!;
    this.drop(id, entry);
    // This worker is a vLLM-style engine: it speaks the source-first order only.
    if (!sameIdentity(source.identity, channel.identity) || register.order !== 'SourceFirst' || register.engineType !== 'vllm') {
      const message = 'handoff participant identity or backend mismatch';
      channel.send({ kind: 'ProtocolError', message });
      channel.close('mismatch');
      source.reject(new HandoffFailed(message));
      return;
    }
    this.active++;
    source.resolve(channel);
  }
}

export interface SourceSessionOptions {
  channel: HandoffChannel;
  /** Runs the prefill; resolves once its token is out and its KV is held. */
  prefill: () => Promise<void>;
  promptTokens: number;
  transfer: KvTransferSettings;
  /** Frees the held KV after a successful transfer. */
  release: () => void;
  /** Ends the prefill wherever it is (queued, running or held), freeing its KV. */
  cancel: () => void;
  /** The request was cancelled by its client. */
  signal: AbortSignal;
  sessionTimeoutMs: number;
  sleep: (ms: number, signal: AbortSignal) => Promise<void>;
}

/** What the source announces in SourceHeld: how the destination can model the transfer too. */
export function transferTiming(promptTokens: number, t: KvTransferSettings): TransferTiming {
  const enabled = t.bytesPerToken !== null && t.bandwidthGBps > 0;
  // A disabled transfer says so with nulls: Dynamo's peers reject a zero bandwidth.
  return {
    mode: t.timingMode,
    fullPromptTokens: promptTokens,
    kvBytesPerToken: enabled ? t.bytesPerToken : null,
    bandwidthGBps: enabled ? t.bandwidthGBps : null,
  };
}

/**
 * Runs the source side of a paired session to its Complete. Rejects with HandoffFailed (after
 * telling the destination Abort and freeing the prefill's KV) when anything goes wrong.
 */
export async function runSourceSession(o: SourceSessionOptions): Promise<void> {
  const { channel } = o;
  const handoffId = channel.identity.handoffId;
  const stop = new AbortController();
  const limit = deadline(o.sessionTimeoutMs, 'handoff session timed out');
  const guards: Array<Promise<never>> = [
    limit.promise,
    aborted(o.signal, 'source request was canceled'),
    channel.closed.then(() => Promise.reject(new HandoffFailed('destination disconnected'))),
  ];
  guards.forEach((g) => g.catch(() => {}));
  const guarded = <T>(p: Promise<T>): Promise<T> => Promise.race([p, ...guards]);
  // Action ids follow Dynamo's coordinator: local actions take ids too (SubmitPrefill is 0).
  let nextActionId = 0n;
  const takeId = (): bigint => nextActionId++;
  const expect = async (what: string, match: (m: HandoffMessage) => boolean): Promise<HandoffMessage> => {
    for (;;) {
      const m = await guarded(channel.receive().catch((err) => Promise.reject(err instanceof HandoffClosed ? new HandoffFailed('destination disconnected') : err)));
      if (m.kind === 'Abort' || m.kind === 'ProtocolError') throw new HandoffFailed(m.message);
      if (m.kind === 'Overloaded') throw new HandoffFailed('destination overloaded');
      if (match(m)) return m;
      throw new HandoffFailed(`unexpected destination bootstrap message while waiting for ${what}: ${m.kind}`);
    }
  };
  const ack = async (id: bigint): Promise<ActionOutcome> => {
    const m = await expect(`the ack of action ${id}`, (x) => x.kind === 'ActionAck' && x.actionId === id);
    return (m as Extract<HandoffMessage, { kind: 'ActionAck' }>).outcome;
  };
  let reserveIssued = false;
  try {
    channel.send({ kind: 'Registered' });
    takeId(); // SubmitPrefill
    await guarded(o.prefill());
    const timing = transferTiming(o.promptTokens, o.transfer);
    if (timing.mode === 'full_prompt') limit.extend(timingDelayMs(timing, o.promptTokens));
    channel.send({ kind: 'SourceHeld', handoffId, timing });
    const reserveId = takeId();
    channel.send({ kind: 'Action', id: reserveId, action: 'ReserveDestination', handoffId });
    reserveIssued = true;
    const reserved = await ack(reserveId);
    if (reserved !== 'Accepted') throw new HandoffCanceled(`destination refused the reservation: ${outcomeText(reserved)}`);
    const fact = (await expect('DestinationReserved', (x) => x.kind === 'DestinationReserved')) as Extract<HandoffMessage, { kind: 'DestinationReserved' }>;
    takeId(); // StartTransfer
    const delay = transferDelayMs(transferTokens(o.transfer.timingMode, o.promptTokens, fact.transferablePromptTokens), o.transfer);
    if (timing.mode === 'destination_missing') limit.extend(delay);
    if (delay > 0) await guarded(o.sleep(delay, stop.signal));
    const activateId = takeId();
    channel.send({ kind: 'Action', id: activateId, action: 'ActivateDestination', handoffId });
    const activated = await ack(activateId);
    if (activated !== 'Applied') throw new HandoffCanceled(`destination did not activate: ${outcomeText(activated)}`);
    takeId(); // ReleaseSource
    o.release();
    takeId(); // Complete
    channel.send({ kind: 'Complete' });
  } catch (err) {
    o.cancel();
    if (err instanceof HandoffCanceled) {
      // Dynamo's cleanup: cancel the destination's reservation, then abort the session.
      if (reserveIssued) channel.send({ kind: 'Action', id: takeId(), action: 'CancelDestination', handoffId });
      channel.send({ kind: 'Abort', message: 'handoff canceled' });
      throw new HandoffFailed('handoff canceled');
    }
    const message = (err as Error).message;
    channel.send({ kind: 'Abort', message });
    throw err instanceof HandoffFailed ? err : new HandoffFailed(message);
  } finally {
    stop.abort();
    limit.clear();
    channel.close('session over');
  }
}

/** A failed action outcome: the session is cleaned up as Dynamo's coordinator does. */
class HandoffCanceled extends Error {}

function outcomeText(o: ActionOutcome): string {
  return typeof o === 'string' ? o : `Failed(${o.failed})`;
}

// ---------------------------------------------------------------------------------------------
// Destination side: a decode request that follows a source's actions.

export interface DestinationSessionOptions {
  channel: HandoffChannel;
  /**
   * Asks for a KV reservation: returns a refusal reason at once, or null and later calls
   * `onReserved` with the prompt tokens the reservation must receive by transfer.
   */
  reserve: (onReserved: (transferableTokens: number) => void) => string | null;
  /** The transfer is done: start decoding. False when there was no reservation to activate. */
  activate: () => boolean;
  /** Drops the reservation (or the request). False when there was nothing to cancel. */
  cancel: () => boolean;
  signal: AbortSignal;
  rendezvousTimeoutMs: number;
  sessionTimeoutMs: number;
}

/**
 * Runs the destination side until the source says Complete after a successful activation. On
 * anything else (Abort, a protocol fault, the source gone, a timeout, the client's cancel) it
 * cancels locally, closes the connection and rejects with HandoffFailed (Dynamo's destination never
 * sends Abort itself).
 */
export async function runDestinationSession(o: DestinationSessionOptions): Promise<void> {
  const { channel } = o;
  const outcomes = new Map<bigint, { action: DestinationAction; outcome: ActionOutcome }>();
  let registered = false;
  let reserved = false;
  let activated = false;
  let held: TransferTiming | null = null;
  let limit = deadline(o.rendezvousTimeoutMs, DESTINATION_ENDED);
  const cancelled = aborted(o.signal, DESTINATION_ENDED);
  cancelled.catch(() => {});
  const answer = (id: bigint, action: DestinationAction, outcome: ActionOutcome): void => {
    if (outcomes.size >= OUTCOME_CACHE_BOUND) throw new HandoffFailed('bootstrap action outcome cache exceeded its bound');
    outcomes.set(id, { action, outcome });
    channel.send({ kind: 'ActionAck', actionId: id, outcome });
  };
  try {
    for (;;) {
      let m: HandoffMessage;
      try {
        m = await Promise.race([channel.receive(), limit.promise, cancelled]);
      } catch (err) {
        if (err instanceof HandoffClosed) throw new HandoffFailed(DESTINATION_ENDED);
        throw err;
      }
      switch (m.kind) {
        case 'Registered':
          if (registered) throw new HandoffFailed('source registered the destination more than once');
          registered = true;
          limit.clear();
          limit = deadline(o.sessionTimeoutMs, DESTINATION_ENDED);
          break;
        case 'SourceHeld':
          if (m.handoffId !== channel.identity.handoffId) throw new HandoffFailed('source held a different handoff');
          if (!registered) throw new HandoffFailed('source held the handoff before registering the destination');
          if (held !== null) {
            if (JSON.stringify(held) !== JSON.stringify(m.timing)) throw new HandoffFailed('source changed the handoff transfer timing');
            break;
          }
          held = m.timing;
          // The session may take the modelled transfer longer (full_prompt: known now).
          if (held.mode === 'full_prompt') limit.extend(timingDelayMs(held, held.fullPromptTokens));
          break;
        case 'Action': {
          const seen = outcomes.get(m.id);
          if (seen) {
            if (seen.action !== m.action) throw new HandoffFailed('bootstrap action ID was reused with different content');
            channel.send({ kind: 'ActionAck', actionId: m.id, outcome: seen.outcome });
            break;
          }
          if (m.action === 'ReserveDestination') {
            if (reserved) {
              answer(m.id, m.action, { failed: 'destination request was reserved more than once' });
              break;
            }
            // The ack always precedes the fact, even when the KV is reserved at once.
            let acked = false;
            let early: number | null = null;
            const fact = (transferable: number): void => {
              if (held?.mode === 'destination_missing') limit.extend(timingDelayMs(held, transferable));
              channel.send({ kind: 'DestinationReserved', handoffId: channel.identity.handoffId, transferablePromptTokens: transferable });
            };
            const refusal = o.reserve((transferable) => (acked ? fact(transferable) : (early = transferable)));
            if (refusal !== null) answer(m.id, m.action, { failed: refusal });
            else {
              reserved = true;
              answer(m.id, m.action, 'Accepted');
              acked = true;
              if (early !== null) fact(early);
            }
          } else if (m.action === 'ActivateDestination') {
            const ok = o.activate();
            if (ok) activated = true;
            answer(m.id, m.action, ok ? 'Applied' : 'Noop');
          } else {
            answer(m.id, m.action, o.cancel() ? 'Applied' : 'Noop');
          }
          break;
        }
        case 'Complete':
          if (!activated) throw new HandoffFailed('source completed before destination activation finished');
          return;
        case 'Abort':
        case 'ProtocolError':
          throw new HandoffFailed(DESTINATION_ENDED);
        default:
          throw new HandoffFailed(`unexpected source bootstrap message: ${m.kind}`);
      }
    }
  } catch (err) {
    o.cancel();
    throw err instanceof HandoffFailed ? err : new HandoffFailed((err as Error).message);
  } finally {
    limit.clear();
    channel.close('session over');
  }
}
