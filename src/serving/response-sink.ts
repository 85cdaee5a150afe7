// Where a request's replies go: the serving layer writes to this; the call-home TCP stream implements it.
import type { ConnectionInfo } from '../dynamo/messages.js';

export type StopMessage = 'stop' | 'kill';

export interface ResponseSink {
  /** The first frame after the handshake: null accepts the request, a message refuses it. */
  sendPrologue(error: string | null): void;
  /** One response item (a NetworkStreamWrapper body); returns the bytes counted as response bytes. */
  sendItem(body: string): number;
  /** Normal end: the complete_final marker, then the end of the stream. Returns the marker's bytes. */
  finish(): number;
  /** Ends without complete_final: after a refusal, an engine error or a shutdown cut. */
  end(): void;
  /** Ends after the frontend's stop or kill (whether a sentinel follows is the generation's rule). */
  endStopped(): void;
  /** Closes the connection mid-stream, no complete_final and no sentinel: a crashed engine, as the frontend sees it. */
  cut(): void;
  /** Drops the connection at once, unsent frames discarded: a stream that stayed congested past the stall timeout. */
  abort(): void;
  /**
   * True while the frames written but not yet sent exceed the stream's send buffer (the frontend is
   * not reading fast enough): the request should stop producing until `onDrain` fires.
   */
  congested(): boolean;
  /** Called when a congested stream has sent what it held (it may be called when not congested too). */
  onDrain(listener: () => void): void;
  /** The frontend sent stop or kill. */
  onControl(listener: (msg: StopMessage) => void): void;
  /** The frontend went away before the stream ended. */
  onPeerGone(listener: () => void): void;
}

/** Opens the reply stream a request's control header asks for (the call-home connection). */
export type OpenSink = (info: ConnectionInfo) => Promise<ResponseSink>;
