// The TCP request plane on loopback: one empty ACK per frame in order, pipelining, routing, limits, capacity.
import { Socket } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TcpRequestPlane, type TcpRoute } from '../../src/adapters/tcp-request-plane.js';
import { TCP_SERVER_DEFAULTS, type TcpServerSettings } from '../../src/config.js';
import { TcpResponseDecoder, encodeTcpRequest } from '../../src/dynamo/tcp-request-codec.js';
import type { TransportFault } from '../../src/serving/request-server.js';
import { waitFor } from '../helpers/servers.js';

const log = pino({ level: 'silent' });
const planes: TcpRequestPlane[] = [];
afterEach(async () => {
  await Promise.all(planes.splice(0).map((p) => p.close()));
});

interface Seen {
  path: string;
  payload: string;
  fault: TransportFault | null;
}

/** A route that records what it gets; each request stays in flight until `finish()`. */
function recorder(path: string, seen: Seen[]): TcpRoute & { finish(): void } {
  const open: Array<() => void> = [];
  return {
    handle(payload, fault) {
      seen.push({ path, payload: new TextDecoder().decode(payload), fault });
      return new Promise<void>((resolve) => open.push(resolve));
    },
    finish() {
      for (const r of open.splice(0)) r();
    },
  };
}

async function plane(settings: Partial<TcpServerSettings> = {}) {
  const unrouted: string[] = [];
  const framing: string[] = [];
  const p = await TcpRequestPlane.listen({
    settings: { ...TCP_SERVER_DEFAULTS, host: '127.0.0.1', ...settings },
    log,
    unrouted: (payload, fault) => unrouted.push(`${new TextDecoder().decode(payload)}: ${fault.message} (${fault.type})`),
    framingError: (message) => framing.push(message),
  });
  planes.push(p);
  return { p, unrouted, framing };
}

/** A raw frontend connection that collects the worker's replies. */
async function connect(address: string) {
  const [host, port] = address.split(':');
  const socket = new Socket();
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.connect(Number(port), host, resolve);
  });
  const replies: string[] = [];
  const decoder = new TcpResponseDecoder();
  let closed = false;
  socket.on('data', (c: Buffer) => replies.push(...decoder.push(c).map((r) => new TextDecoder().decode(r))));
  socket.on('close', () => (closed = true));
  socket.on('error', () => {});
  return { socket, replies, closed: () => closed };
}

const frame = (path: string, body: string, headers: Record<string, string> = { 'x-endpoint-path': path }) =>
  encodeTcpRequest(path, headers, new TextEncoder().encode(body.padEnd(24, '.')));

describe('TcpRequestPlane', () => {
  it('advertises ip:port/{key} and ACKs pipelined frames one by one, in order, with empty replies', async () => {
    const { p } = await plane();
    expect(p.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(p.transport('abc/generate')).toBe(`${p.address}/abc/generate`);
    const seen: Seen[] = [];
    p.route('abc/generate', recorder('abc/generate', seen));
    const c = await connect(p.address);
    const frames = Array.from({ length: 20 }, (_, i) => frame('abc/generate', `request ${i}`));
    c.socket.write(Buffer.concat(frames));
    await waitFor(() => c.replies.length === 20, { message: '20 ACKs' });
    expect(c.replies.every((r) => r === '')).toBe(true);
    expect(seen.map((s) => s.payload.replace(/\.+$/, ''))).toEqual(frames.map((_, i) => `request ${i}`));
    c.socket.destroy();
  });

  it('serves many connections at once, each with its own ordered replies', async () => {
    const { p } = await plane();
    const seen: Seen[] = [];
    p.route('k/generate', recorder('k/generate', seen));
    const conns = await Promise.all(Array.from({ length: 25 }, () => connect(p.address)));
    conns.forEach((c, i) => c.socket.write(Buffer.concat([0, 1, 2, 3].map((j) => frame('k/generate', `${i}-${j}`)))));
    await waitFor(() => conns.every((c) => c.replies.length === 4), { message: '4 ACKs on every connection' });
    expect(seen).toHaveLength(100);
    for (let i = 0; i < 25; i++) expect(seen.filter((s) => s.payload.startsWith(`${i}-`)).map((s) => s.payload.slice(0, 4).replace(/\.+$/, ''))).toEqual([0, 1, 2, 3].map((j) => `${i}-${j}`));
    for (const c of conns) c.socket.destroy();
  });

  it('ACKs a request for an unknown or unreadable path too, and hands it over to be refused on its stream', async () => {
    const { p, unrouted } = await plane();
    p.route('known/generate', recorder('known/generate', []));
    const c = await connect(p.address);
    const badPath = frame('xx', 'utf8');
    badPath[2] = 0xc3;
    badPath[3] = 0x28;
    c.socket.write(Buffer.concat([frame('other/generate', 'lost'), frame('', 'empty'), badPath]));
    await waitFor(() => c.replies.length === 3, { message: '3 ACKs' });
    expect(c.replies).toEqual(['', '', '']);
    expect(unrouted.map((u) => u.replace(/\.+:/, ':'))).toEqual([
      'lost: unknown endpoint "other/generate" (generate)',
      'empty: unknown endpoint "" (generate)',
      'utf8: Invalid endpoint path: not valid UTF-8 (invalid_message)',
    ]);
    c.socket.destroy();
  });

  it('serves a frame whose headers are not JSON (Dynamo ignores them)', async () => {
    const { p } = await plane();
    const seen: Seen[] = [];
    p.route('h/generate', recorder('h/generate', seen));
    const c = await connect(p.address);
    const f = frame('h/generate', 'body', {});
    // Overwrite the "{}" headers with "{x" (same length): not JSON.
    f[2 + 'h/generate'.length + 3] = 0x78;
    c.socket.write(f);
    await waitFor(() => c.replies.length === 1);
    expect(seen).toHaveLength(1);
    c.socket.destroy();
  });

  it('closes a connection sending a frame over DYN_TCP_MAX_MESSAGE_SIZE, after serving the frames before it; others go on', async () => {
    const { p, framing } = await plane({ maxMessageBytes: 200 });
    const seen: Seen[] = [];
    p.route('m/generate', recorder('m/generate', seen));
    const c = await connect(p.address);
    c.socket.write(Buffer.concat([frame('m/generate', 'small'), frame('m/generate', 'x'.repeat(500))]));
    await waitFor(() => c.closed(), { message: 'connection closed' });
    expect(c.replies).toEqual(['']);
    expect(seen).toHaveLength(1);
    expect(framing).toEqual([expect.stringMatching(/^request frame of \d+ bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE \(200\)$/)]);
    const d = await connect(p.address);
    d.socket.write(frame('m/generate', 'after'));
    await waitFor(() => d.replies.length === 1, { message: 'a new connection is served' });
    expect(seen).toHaveLength(2);
    d.socket.destroy();
  });

  it('refuses requests beyond DYN_TCP_WORKER_POOL_SIZE + DYN_TCP_WORK_QUEUE_SIZE in flight as overloaded', async () => {
    const { p } = await plane({ workerPoolSize: 1, workQueueSize: 1 });
    const seen: Seen[] = [];
    const route = recorder('c/generate', seen);
    p.route('c/generate', route);
    const c = await connect(p.address);
    c.socket.write(Buffer.concat([frame('c/generate', '1'), frame('c/generate', '2'), frame('c/generate', '3')]));
    await waitFor(() => c.replies.length === 3);
    expect(seen.map((s) => s.fault)).toEqual([null, null, { type: 'generate', message: 'Server overloaded: worker at capacity' }]);
    // Once the requests in flight end, there is room again.
    route.finish();
    c.socket.write(frame('c/generate', 'again'));
    await waitFor(() => c.replies.length === 4);
    expect(seen[3].fault).toBeNull();
    c.socket.destroy();
  });

  it('stops routing a key once it is unrouted', async () => {
    const { p, unrouted } = await plane();
    const seen: Seen[] = [];
    p.route('u/generate', recorder('u/generate', seen));
    p.unroute('u/generate');
    const c = await connect(p.address);
    c.socket.write(frame('u/generate', 'late'));
    await waitFor(() => c.replies.length === 1);
    expect(seen).toEqual([]);
    expect(unrouted).toHaveLength(1);
    c.socket.destroy();
  });
});
