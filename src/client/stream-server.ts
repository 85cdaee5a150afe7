// Frontend side of the response stream: a TCP server that workers call home to, one stream per request.
import { randomUUID } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { hostPort } from '../adapters/local-ip.js';
import { parseJson, type JsonValue } from '../dynamo/lossless-json.js';
import { TwoPartStreamDecoder, encodeTwoPartText, type TwoPartMessage, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';

const decoder = new TextDecoder();

/** Everything a finished stream told us. */
export interface StreamResult {
  prologueError: string | null;
  /** The Annotated items, parsed losslessly. */
  items: JsonValue[];
  /** performance.now() at which each item arrived. */
  itemTimes: number[];
  tokenIds: number[];
  /** performance.now() at which each token arrived. */
  tokenTimes: number[];
  finishReason: JsonValue | null;
  usage: JsonValue | null;
  completeFinal: boolean;
  sentinel: boolean;
  /** Errors reported inside the stream (annotated error items or finish_reason {error}). */
  errors: string[];
  connectedAt: number | null;
  endedAt: number;
}

export class PendingStream {
  readonly subject = randomUUID();
  private socket: Socket | null = null;
  private state: 'handshake' | 'prologue' | 'data' | 'done' = 'handshake';
  private readonly result: StreamResult = {
    prologueError: null,
    items: [],
    itemTimes: [],
    tokenIds: [],
    tokenTimes: [],
    finishReason: null,
    usage: null,
    completeFinal: false,
    sentinel: false,
    errors: [],
    connectedAt: null,
    endedAt: 0,
  };
  private resolveDone!: (r: StreamResult) => void;
  private rejectDone!: (e: Error) => void;
  /** Settles when the worker sent the sentinel (or the connection ended). */
  readonly done: Promise<StreamResult>;
  private tokenListeners: Array<(token: number, at: number) => void> = [];
  private itemListeners: Array<(item: JsonValue, at: number) => void> = [];
  private readonly connected: Promise<void>;
  private resolveConnected!: () => void;
  private resolvePrologue!: (error: string | null) => void;
  /** Settles with the prologue's error (null: accepted) once the worker has sent it. */
  readonly prologue = new Promise<string | null>((resolve) => (this.resolvePrologue = resolve));

  constructor(
    private readonly xxh: Xxh3Seed0,
    private readonly onSettled: () => void,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => {});
    this.connected = new Promise((resolve) => (this.resolveConnected = resolve));
  }

  /** Tokens so far (live view). */
  get tokens(): readonly number[] {
    return this.result.tokenIds;
  }

  /** Calls `listener` for every token as it arrives. */
  onToken(listener: (token: number, at: number) => void): void {
    this.tokenListeners.push(listener);
  }

  /** Calls `listener` for every response item as it arrives. */
  onItem(listener: (item: JsonValue, at: number) => void): void {
    this.itemListeners.push(listener);
  }

  /** Resolves once the worker has connected and completed the handshake. */
  whenConnected(): Promise<void> {
    return this.connected;
  }

  /** Asks the worker to stop generating (the frontend's `stop` control message). */
  stop(): void {
    this.control('stop');
  }

  /** Tells the worker the client is gone (the frontend's `kill` control message). */
  kill(): void {
    this.control('kill');
  }

  private control(msg: 'stop' | 'kill'): void {
    this.socket?.write(encodeTwoPartText(JSON.stringify(msg), '', this.xxh));
  }

  /** @internal the server hands over the socket after the handshake. */
  attach(socket: Socket): void {
    this.socket = socket;
    this.state = 'prologue';
    this.result.connectedAt = performance.now();
    this.resolveConnected();
    socket.on('close', () => {
      if (this.state !== 'done') this.finish(null);
    });
  }

  /** @internal one decoded frame from the worker. */
  frame(msg: TwoPartMessage): void {
    const header = msg.header.length ? decoder.decode(msg.header) : '';
    const body = msg.body.length ? msg.body : null;
    if (this.state === 'prologue') {
      if (body !== null || header === '') return this.fail('protocol error: the prologue must be a header-only frame');
      const prologue = parseJson(header) as { error?: JsonValue };
      if (prologue && typeof prologue === 'object' && 'error' in prologue && prologue.error !== null) {
        this.result.prologueError = String(prologue.error);
      }
      this.state = 'data';
      this.resolvePrologue(this.result.prologueError);
      return;
    }
    if (this.state !== 'data') return;
    if (header === '"sentinel"' && body === null) {
      this.result.sentinel = true;
      this.finish(null);
      return;
    }
    if (body === null) return this.fail(`protocol error: unexpected header-only frame ${header}`);
    const wrapper = parseJson(body) as { data?: JsonValue; complete_final?: boolean };
    if (wrapper.complete_final === true) {
      this.result.completeFinal = true;
      return;
    }
    const item = wrapper.data ?? null;
    const arrived = performance.now();
    this.result.items.push(item);
    this.result.itemTimes.push(arrived);
    for (const l of this.itemListeners) l(item, arrived);
    const annotated = item as { data?: { token_ids?: number[]; finish_reason?: JsonValue; completion_usage?: JsonValue }; event?: string; comment?: string[] } | null;
    if (annotated?.event === 'error') this.result.errors.push((annotated.comment ?? []).join('; '));
    const out = annotated?.data;
    if (out) {
      const now = performance.now();
      for (const t of out.token_ids ?? []) {
        this.result.tokenIds.push(Number(t));
        this.result.tokenTimes.push(now);
        for (const l of this.tokenListeners) l(Number(t), now);
      }
      if (out.finish_reason !== undefined && out.finish_reason !== null) {
        this.result.finishReason = out.finish_reason;
        const fr = out.finish_reason as { error?: string };
        if (typeof fr === 'object' && fr && 'error' in fr) this.result.errors.push(String(fr.error));
      }
      if (out.completion_usage !== undefined) this.result.usage = out.completion_usage;
    }
  }

  /** @internal */
  fail(message: string): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.socket?.destroy();
    this.onSettled();
    this.rejectDone(new Error(message));
  }

  private finish(_err: null): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.result.endedAt = performance.now();
    // The frontend closes the connection after the sentinel.
    this.socket?.end();
    this.onSettled();
    this.resolveDone(this.result);
  }
}

export interface StreamServer {
  /** "ip:port" for connection_info. */
  readonly address: string;
  register(): PendingStream;
  close(): Promise<void>;
}

/** Listens on `host:port` (DYN_TCP_RESPONSE_STREAM_HOST/PORT on the frontend; port 0 = any free port). */
export async function startStreamServer(xxh: Xxh3Seed0, host = '127.0.0.1', port = 0): Promise<StreamServer> {
  const pending = new Map<string, PendingStream>();
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const frames = new TwoPartStreamDecoder({ xxh });
    let stream: PendingStream | null = null;
    socket.on('data', (chunk: Buffer) => {
      let messages: TwoPartMessage[];
      try {
        messages = frames.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      } catch (err) {
        stream?.fail(`protocol error: ${(err as Error).message}`);
        socket.destroy();
        return;
      }
      for (const msg of messages) {
        if (stream) {
          try {
            stream.frame(msg);
          } catch (err) {
            stream.fail(`protocol error: ${(err as Error).message}`);
          }
          continue;
        }
        // First frame: the handshake names the stream this connection belongs to.
        let subject: unknown;
        try {
          subject = (JSON.parse(decoder.decode(msg.header)) as { subject?: unknown }).subject;
        } catch {
          subject = undefined;
        }
        const target = typeof subject === 'string' ? pending.get(subject) : undefined;
        if (!target || msg.body.length) {
          socket.destroy();
          return;
        }
        stream = target;
        stream.attach(socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(port, host, () => resolve()));
  const bound = (server.address() as AddressInfo).port;
  return {
    address: hostPort(host, bound),
    register() {
      const s: PendingStream = new PendingStream(xxh, () => pending.delete(s.subject));
      pending.set(s.subject, s);
      return s;
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
