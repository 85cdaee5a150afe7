// The response plane: the worker's side of Dynamo's TCP "call home" stream (handshake, prologue, items, sentinel).
import type { Socket } from 'node:net';
import { TwoPartStreamDecoder, encodeTwoPartText, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';
import { SENTINEL_HEADER, completeFinalBody, handshakeHeader, parseControlMessage, prologueHeader, type ConnectionInfo } from '../dynamo/messages.js';
import type { OpenSink, ResponseSink, StopMessage } from '../serving/response-sink.js';
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
}

/** How long to wait for the frontend's stream server to accept the connection. */
const CONNECT_TIMEOUT_MS = 10_000;

export class CallHomeStream implements ResponseSink {
  private readonly decoder: TwoPartStreamDecoder;
  private controlListener: ((msg: StopMessage) => void) | null = null;
  private closeListener: (() => void) | null = null;
  private finished = false;
  private peerGone = false;

  private constructor(
    private readonly socket: Socket,
    private readonly xxh: Xxh3Seed0,
    private readonly sentinelAfterStop: boolean,
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
    const stream = new CallHomeStream(socket, xxh, opts.sentinelAfterStop);
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

  private close(sentinel: boolean): void {
    if (this.finished) return;
    if (sentinel) this.write(SENTINEL_HEADER, '');
    this.finished = true;
    if (this.peerGone) {
      this.socket.destroy();
      return;
    }
    this.socket.end();
    setTimeout(() => this.socket.destroy(), LINGER_MS).unref();
  }

  private write(header: string, body: string): void {
    if (this.peerGone || this.socket.destroyed) return;
    this.socket.write(encodeTwoPartText(header, body, this.xxh));
  }
}

/** The OpenSink of a generation: call-home streams with its sentinel rule. */
export function callHome(xxh: Xxh3Seed0, opts: CallHomeOptions): OpenSink {
  return (info) => CallHomeStream.open(info, xxh, opts);
}
