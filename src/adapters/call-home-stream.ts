// The response plane: the worker's side of Dynamo's TCP "call home" stream (handshake, prologue, items, sentinel).
import type { Socket } from 'node:net';
import { TwoPartStreamDecoder, encodeTwoPartText, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';
import { SENTINEL_HEADER, completeFinalBody, handshakeHeader, parseControlMessage, prologueHeader, type ConnectionInfo } from '../dynamo/messages.js';
import type { OpenSink, ResponseSink, StopMessage } from '../serving/response-sink.js';
import { RESPONSE_STREAM_DEFAULTS } from '../config.js';
import { connectTcp, splitHostPort } from './tcp-connect.js';

/** After the sentinel, the frontend closes first; a worker waits this long for it at most. */
const LINGER_MS = 10_000;

export class ResponseStreamError extends Error {
  override name = 'ResponseStreamError';
}

export interface CallHomeOptions {
  /**
   * Whether the stream still ends with the sentinel after the frontend's stop or kill. Dynamo 0.6.x
   * sends it; from 0.8 the worker just closes (frontends of every version accept both).
   */
  sentinelAfterStop: boolean;
  /**
   * The send buffer: once more than this many written bytes are still unsent (queued in the process,
   * beyond what the kernel took), the stream is congested. Default 1 MiB (DYN_MOCKER_STREAM_BUFFER_BYTES).
   */
  bufferBytes?: number;
}

/** How long to wait for the frontend's stream server to accept the connection. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Frames written while the socket still holds unsent data are copied into chunks of this size rather
 * than queued one by one: a queued write costs Node a few hundred bytes of bookkeeping, more than a
 * token's frame itself, so a stalled stream of single frames would take ~3.5× its bytes in memory.
 */
const COALESCE_BYTES = 64 * 1024;

export class CallHomeStream implements ResponseSink {
  private readonly decoder: TwoPartStreamDecoder;
  private controlListener: ((msg: StopMessage) => void) | null = null;
  private closeListener: (() => void) | null = null;
  private drainListener: (() => void) | null = null;
  /** Frames waiting for the socket's queue to empty, coalesced (see COALESCE_BYTES). */
  private pending: Buffer | null = null;
  private pendingLength = 0;
  /** Unsent bytes went over the buffer since the socket last emptied its queue. */
  private overBuffer = false;
  private finished = false;
  private peerGone = false;

  private constructor(
    private readonly socket: Socket,
    private readonly xxh: Xxh3Seed0,
    private readonly sentinelAfterStop: boolean,
    private readonly bufferBytes: number,
  ) {
    this.decoder = new TwoPartStreamDecoder({ xxh });
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      } catch {
        this.socket.destroy();
        return;
      }
      for (const frame of frames) {
        const msg = parseControlMessage(frame.header);
        if ((msg === 'stop' || msg === 'kill') && !this.finished) this.controlListener?.(msg);
      }
    });
    const gone = (): void => {
      if (this.peerGone) return;
      this.peerGone = true;
      if (!this.finished) this.closeListener?.();
    };
    socket.on('close', gone);
    socket.on('end', gone);
    socket.on('error', gone);
  }

  /** Connects to the frontend's stream server and sends the handshake. */
  static async open(info: ConnectionInfo, xxh: Xxh3Seed0, opts: CallHomeOptions): Promise<CallHomeStream> {
    // The address comes from the request: a bad one is the frontend's error, named as such.
    if (!splitHostPort(info.address)) throw new ResponseStreamError(`bad stream address '${info.address}'`);
    const socket = await connectTcp(info.address, CONNECT_TIMEOUT_MS, 'call-home connection', (m) => new ResponseStreamError(m));
    socket.setNoDelay(true);
    const stream = new CallHomeStream(socket, xxh, opts.sentinelAfterStop, opts.bufferBytes ?? RESPONSE_STREAM_DEFAULTS.bufferBytes);
    stream.write(handshakeHeader(info.subject), '');
    return stream;
  }

  /** True once the frontend closed the connection or it failed. */
  get gone(): boolean {
    return this.peerGone;
  }

  onControl(listener: (msg: StopMessage) => void): void {
    this.controlListener = listener;
  }

  /** Called if the frontend goes away before the stream finished. */
  onPeerGone(listener: () => void): void {
    this.closeListener = listener;
  }

  /** Bytes written but not yet handed to the kernel (queued on the socket or coalescing). */
  get unsentBytes(): number {
    return this.socket.writableLength + this.pendingLength;
  }

  congested(): boolean {
    return !this.socket.destroyed && this.unsentBytes > this.bufferBytes;
  }

  onDrain(listener: () => void): void {
    this.drainListener = listener;
  }

  sendPrologue(error: string | null): void {
    this.write(prologueHeader(error), '');
  }

  /** Sends one data item body; returns the bytes counted as response bytes. */
  sendItem(body: string): number {
    this.write('', body);
    return body.length;
  }

  /** Normal end: complete_final marker, then the sentinel. Returns the marker's byte count. */
  finish(): number {
    const body = completeFinalBody();
    this.write('', body);
    this.end();
    return body.length;
  }

  /** Ends without complete_final (after an error prologue, an engine error or a shutdown cut). */
  end(): void {
    this.close(true);
  }

  endStopped(): void {
    this.close(this.sentinelAfterStop);
  }

  cut(): void {
    this.close(false);
  }

  /** Destroys the connection: whatever is still queued is dropped and its memory released. */
  abort(): void {
    this.finished = true;
    this.pending = null;
    this.pendingLength = 0;
    this.socket.destroy();
  }

  private close(sentinel: boolean): void {
    if (this.finished) return;
    if (sentinel) this.write(SENTINEL_HEADER, '');
    this.finished = true;
    if (this.peerGone) {
      this.socket.destroy();
      return;
    }
    this.flushPending();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), LINGER_MS).unref();
  }

  private write(header: string, body: string): void {
    if (this.peerGone || this.socket.destroyed) return;
    const frame = encodeTwoPartText(header, body, this.xxh);
    if (this.pendingLength === 0 && this.socket.writableLength === 0) {
      // Nothing queued: the kernel takes the frame now (the usual case with a reading frontend).
      this.socket.write(frame, this.written);
    } else {
      if (this.pendingLength + frame.length > COALESCE_BYTES) this.flushPending();
      if (frame.length >= COALESCE_BYTES) this.socket.write(frame, this.written);
      else {
        this.pending ??= Buffer.allocUnsafe(COALESCE_BYTES);
        this.pending.set(frame, this.pendingLength);
        this.pendingLength += frame.length;
      }
    }
    if (this.unsentBytes > this.bufferBytes) this.overBuffer = true;
  }

  /** Queues the coalesced frames on the socket. */
  private flushPending(): void {
    if (this.pendingLength === 0 || this.socket.destroyed) return;
    const chunk = this.pending!.subarray(0, this.pendingLength);
    this.pending = null;
    this.pendingLength = 0;
    this.socket.write(chunk, this.written);
  }

  /**
   * A write reached the kernel. Once the socket's queue is empty, the coalesced frames follow; a
   * stream that went over its buffer is drained when nothing at all is left unsent.
   */
  private readonly written = (err?: Error | null): void => {
    if (err || this.socket.writableLength !== 0) return;
    if (this.pendingLength > 0) return this.flushPending();
    if (!this.overBuffer) return;
    this.overBuffer = false;
    this.drainListener?.();
  };
}

/** The OpenSink of a generation: call-home streams with its sentinel rule. */
export function callHome(xxh: Xxh3Seed0, opts: CallHomeOptions): OpenSink {
  return (info) => CallHomeStream.open(info, xxh, opts);
}
