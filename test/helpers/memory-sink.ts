// An in-memory ResponseSink: records what the request path writes, and plays the frontend's stop, kill and hang-up.
import type { ConnectionInfo } from '../../src/dynamo/messages.js';
import { parseJson, type JsonValue } from '../../src/dynamo/lossless-json.js';
import type { ResponseSink, StopMessage } from '../../src/serving/response-sink.js';

export type SinkEvent =
  | { kind: 'prologue'; error: string | null; at: number }
  | { kind: 'item'; body: JsonValue; at: number }
  | { kind: 'finish'; at: number }
  | { kind: 'end'; at: number }
  | { kind: 'end-stopped'; at: number }
  | { kind: 'cut'; at: number }
  | { kind: 'abort'; at: number };

export class MemorySink implements ResponseSink {
  readonly events: SinkEvent[] = [];
  private control: ((msg: StopMessage) => void) | null = null;
  private gone: (() => void) | null = null;
  private itemListeners: Array<(tokens: number) => void> = [];
  private drain: (() => void) | null = null;
  private isCongested = false;
  tokens: number[] = [];

  constructor(
    readonly info: ConnectionInfo,
    private readonly now: () => number,
  ) {}

  sendPrologue(error: string | null): void {
    this.events.push({ kind: 'prologue', error, at: this.now() });
  }

  sendItem(body: string): number {
    const parsed = parseJson(body) as { data?: { data?: { token_ids?: number[] } } };
    this.events.push({ kind: 'item', body: parsed as JsonValue, at: this.now() });
    for (const t of parsed.data?.data?.token_ids ?? []) this.tokens.push(Number(t));
    for (const l of this.itemListeners) l(this.tokens.length);
    return body.length;
  }

  finish(): number {
    this.events.push({ kind: 'finish', at: this.now() });
    return '{"complete_final":true}'.length;
  }

  end(): void {
    this.events.push({ kind: 'end', at: this.now() });
  }

  endStopped(): void {
    this.events.push({ kind: 'end-stopped', at: this.now() });
  }

  cut(): void {
    this.events.push({ kind: 'cut', at: this.now() });
  }

  abort(): void {
    this.events.push({ kind: 'abort', at: this.now() });
  }

  /** Never congested, unless a test says so with `setCongested`. */
  congested(): boolean {
    return this.isCongested;
  }

  onDrain(listener: () => void): void {
    this.drain = listener;
  }

  /** The frontend stops reading (true), or reads everything it was sent (false: the stream drains). */
  setCongested(on: boolean): void {
    this.isCongested = on;
    if (!on) this.drain?.();
  }

  onControl(listener: (msg: StopMessage) => void): void {
    this.control = listener;
  }

  onPeerGone(listener: () => void): void {
    this.gone = listener;
  }

  /** Calls `listener` with the token count after every item. */
  onItem(listener: (tokens: number) => void): void {
    this.itemListeners.push(listener);
  }

  /** The frontend sends stop or kill. */
  send(msg: StopMessage): void {
    this.control?.(msg);
  }

  /** The frontend hangs up. */
  hangUp(): void {
    this.gone?.();
  }

  get prologueError(): string | null | undefined {
    const p = this.events.find((e) => e.kind === 'prologue');
    return p && p.kind === 'prologue' ? p.error : undefined;
  }

  /** The kinds of the events after the prologue, items collapsed to their count. */
  get shape(): string[] {
    const out: string[] = [];
    let items = 0;
    for (const e of this.events) {
      if (e.kind === 'item') items++;
      else {
        if (items) out.push(`${items} items`);
        items = 0;
        out.push(e.kind === 'prologue' ? `prologue ${e.error === null ? 'ok' : 'error'}` : e.kind);
      }
    }
    if (items) out.push(`${items} items`);
    return out;
  }
}
