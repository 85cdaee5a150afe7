// The response plane: the worker's side of Dynamo's TCP "call home" stream (handshake, prologue, items, sentinel).
import { Socket } from 'node:net';
import { TwoPartStreamDecoder, encodeTwoPartText, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';
import { SENTINEL_HEADER, completeFinalBody, handshakeHeader, parseControlMessage, prologueHeader, type ConnectionInfo } from '../dynamo/messages.js';
import type { OpenSink, ResponseSink, StopMessage } from '../serving/response-sink.js';

/** After the sentinel, the frontend closes first; a worker waits this long for it at most. */
const LINGER_MS = 10_000;

export class ResponseStreamError extends Error {
  override name = 'ResponseStreamError';
}

function splitAddress(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  const port = Number(address.slice(i + 1));
  let host = address.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new ResponseStreamError(`bad stream address '${address}'`);
  return { host, port };
}

export interface CallHomeOptions {
  /**
   * Whether the stream still ends with the sentinel after the frontend's stop or kill. Dynamo 0.6.x
   * sends it; from 0.8 the worker just closes (frontends of every version accept both).
   */
  sentinelAfterStop: boolean;
  /** How long to wait for the frontend's stream server to accept the connection. */
  connectTimeoutMs?: number;
}

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
  static open(info: ConnectionInfo, xxh: Xxh3Seed0, opts: CallHomeOptions): Promise<CallHomeStream> {
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let target: { host: string; port: number };
      try {
        target = splitAddress(info.address);
      } catch (err) {
        reject(err);
        return;
      }
      const socket = new Socket();
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ResponseStreamError(`call-home connection to ${info.address} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new ResponseStreamError(`call-home connection to ${info.address} failed: ${err.message}`));
      });
      socket.connect(target.port, target.host, () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        const stream = new CallHomeStream(socket, xxh, opts.sentinelAfterStop);
        stream.write(handshakeHeader(info.subject), '');
        resolve(stream);
      });
    });
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
