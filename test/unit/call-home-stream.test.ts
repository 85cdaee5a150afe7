// The response plane against the frontend-side stream server, on loopback: frames, sentinel rules, control, hang-up.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallHomeStream, ResponseStreamError } from '../../src/adapters/call-home-stream.js';
import { startStreamServer, type StreamServer } from '../../src/client/stream-server.js';
import { llmDataItemBody } from '../../src/dynamo/messages.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { freePort } from '../helpers/servers.js';

const xxh = await createXxh3();
let server: StreamServer;
beforeAll(async () => {
  server = await startStreamServer(xxh);
});
afterAll(async () => {
  await server.close();
});

async function open(sentinelAfterStop: boolean) {
  const pending = server.register();
  const info = { address: server.address, subject: pending.subject, context: 'r1', streamType: 'response' };
  const stream = await CallHomeStream.open(info, xxh, { sentinelAfterStop });
  await pending.whenConnected();
  return { pending, stream };
}

const item = (t: number, last = false) => llmDataItemBody({ tokenIds: [t], finishReason: last ? 'length' : null });

describe('CallHomeStream', () => {
  it('sends handshake, prologue, items, complete_final and the sentinel on a normal end', async () => {
    const { pending, stream } = await open(false);
    stream.sendPrologue(null);
    expect(stream.sendItem(item(5))).toBe(item(5).length);
    stream.sendItem(item(6, true));
    expect(stream.finish()).toBe('{"complete_final":true}'.length);
    const r = await pending.done;
    expect(r).toMatchObject({ prologueError: null, tokenIds: [5, 6], finishReason: 'length', completeFinal: true, sentinel: true });
  });

  it('refuses with an error prologue followed by the sentinel', async () => {
    const { pending, stream } = await open(false);
    stream.sendPrologue('dp_rank 3 is out of range');
    stream.end();
    expect(await pending.done).toMatchObject({ prologueError: 'dp_rank 3 is out of range', items: [], completeFinal: false, sentinel: true });
  });

  it.each([
    [false, false],
    [true, true],
  ])('after stop: sentinel %s when the generation sends one (%s)', async (sentinelAfterStop, expected) => {
    const { pending, stream } = await open(sentinelAfterStop);
    const heard = new Promise<string>((resolve) => stream.onControl(resolve));
    stream.sendPrologue(null);
    stream.sendItem(item(1));
    pending.stop();
    expect(await heard).toBe('stop');
    stream.endStopped();
    const r = await pending.done;
    expect(r.completeFinal).toBe(false);
    expect(r.sentinel).toBe(expected);
    expect(r.tokenIds).toEqual([1]);
  });

  it('passes kill on and reports a frontend that hangs up', async () => {
    const { pending, stream } = await open(false);
    const heard = new Promise<string>((resolve) => stream.onControl(resolve));
    stream.sendPrologue(null);
    pending.kill();
    expect(await heard).toBe('kill');

    const second = await open(false);
    const gone = new Promise<void>((resolve) => second.stream.onPeerGone(resolve));
    second.stream.sendPrologue(null);
    await server.close();
    await gone;
    expect(second.stream.gone).toBe(true);
    // Writing to a gone peer is harmless.
    second.stream.sendItem(item(1));
    second.stream.end();
    server = await startStreamServer(xxh);
  });

  it('fails to open with a clear error when nothing listens', async () => {
    const port = await freePort();
    await expect(CallHomeStream.open({ address: `127.0.0.1:${port}`, subject: 's', context: 'c', streamType: 'response' }, xxh, { sentinelAfterStop: false })).rejects.toThrow(
      new ResponseStreamError(`call-home connection to 127.0.0.1:${port} failed: connect ECONNREFUSED 127.0.0.1:${port}`),
    );
    await expect(CallHomeStream.open({ address: 'nowhere', subject: 's', context: 'c', streamType: 'response' }, xxh, { sentinelAfterStop: false })).rejects.toThrow(/bad stream address/);
  });
});
