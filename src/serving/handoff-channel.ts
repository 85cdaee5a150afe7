// A bootstrap (KV handoff) session's message channel, whatever carries it: the DMHF TCP connection, or memory in tests.
import type { HandoffIdentity, HandoffMessage } from '../dynamo/handoff-wire.js';

/** The channel ended (peer gone, protocol fault, or closed here); `message` says why. */
export class HandoffClosed extends Error {
  override name = 'HandoffClosed';
}

export interface HandoffChannel {
  /** The session's identity, repeated in every frame. */
  readonly identity: HandoffIdentity;
  /** Queues a message for the peer; a channel that is already gone drops it. */
  send(message: HandoffMessage): void;
  /** The next message from the peer; rejects with HandoffClosed once the channel has ended and nothing is left. */
  receive(): Promise<HandoffMessage>;
  /** Settles with the reason when the channel ends. */
  readonly closed: Promise<string>;
  /** Ends the channel (idempotent). */
  close(reason?: string): void;
}

/**
 * A channel whose incoming side is fed by its carrier (`deliver`, `end`) and whose outgoing side is a
 * function. Messages that arrive while nobody is receiving wait in order.
 */
export class QueuedChannel implements HandoffChannel {
  private readonly inbox: HandoffMessage[] = [];
  private waiter: { resolve: (m: HandoffMessage) => void; reject: (e: Error) => void } | null = null;
  private endReason: string | null = null;
  private settleClosed!: (reason: string) => void;
  readonly closed = new Promise<string>((resolve) => (this.settleClosed = resolve));

  constructor(
    readonly identity: HandoffIdentity,
    private readonly write: (message: HandoffMessage) => void,
    private readonly onClose: (reason: string) => void = () => {},
  ) {}

  get ended(): boolean {
    return this.endReason !== null;
  }

  send(message: HandoffMessage): void {
    if (this.endReason === null) this.write(message);
  }

  receive(): Promise<HandoffMessage> {
    const next = this.inbox.shift();
    if (next) return Promise.resolve(next);
    if (this.endReason !== null) return Promise.reject(new HandoffClosed(this.endReason));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** The carrier received a message. */
  deliver(message: HandoffMessage): void {
    if (this.endReason !== null) return;
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.resolve(message);
    } else this.inbox.push(message);
  }

  /** The carrier ended (or `close` was called): pending and later receives fail once the inbox is empty. */
  end(reason: string): void {
    if (this.endReason !== null) return;
    this.endReason = reason;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(new HandoffClosed(reason));
    this.settleClosed(reason);
  }

  close(reason = 'closed'): void {
    if (this.endReason !== null) return;
    this.end(reason);
    this.onClose(reason);
  }
}

/** Two channels wired to each other in memory (tests, and a source and destination in one process). */
export function channelPair(identity: HandoffIdentity): [QueuedChannel, QueuedChannel] {
  // eslint-disable-next-line prefer-const
  let b: QueuedChannel;
  const a: QueuedChannel = new QueuedChannel(
    identity,
    (m) => queueMicrotask(() => b.deliver(m)),
    (reason) => queueMicrotask(() => b.end(`peer closed: ${reason}`)),
  );
  b = new QueuedChannel(
    identity,
    (m) => queueMicrotask(() => a.deliver(m)),
    (reason) => queueMicrotask(() => a.end(`peer closed: ${reason}`)),
  );
  return [a, b];
}
