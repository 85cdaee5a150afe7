// Connections, the etcd lease and registration against real nats-server and etcd processes.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import type { NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConnectionError } from '../../src/adapters/connection-error.js';
import { connectEtcd } from '../../src/adapters/etcd-connection.js';
import { connectNats } from '../../src/adapters/nats-connection.js';
import { createIfAbsent, WorkerLease } from '../../src/adapters/etcd-lease.js';
import { EtcdDiscovery } from '../../src/adapters/etcd-discovery.js';
import { instanceRecord } from '../../src/dynamo/discovery-records.js';
import { generationOf } from '../../src/dynamo/generation.js';
import { buildModelCard, uploadCardFilesToObjectStore } from '../../src/dynamo/model-card.js';
import { cardKey, instanceKey, requestSubject } from '../../src/dynamo/names.js';
import { registerWorker, type DiscoverySession } from '../../src/dynamo/registration.js';
import { createBlake3Hex } from '../../src/hashing/xxh3.js';
import { checkedFiles } from '../../src/model/card-files.js';
import type { CardFileKind } from '../../src/model/resolve-model.js';
import { freePort, haveServers, startEtcd, startNats, waitFor, type ServerHandle } from '../helpers/servers.js';

const enabled = haveServers();
const RUNTIME = { totalKvBlocks: 16384, maxNumSeqs: 256, maxNumBatchedTokens: 8192, dataParallelSize: 1 };

/** A TCP server that accepts connections and never says a word (a hung server, not a closed port). */
async function silentServer(): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    port: (srv.address() as { port: number }).port,
    close() {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

/** Runs `f`, expecting a ConnectionError; returns its message and how long it took. */
async function failure(f: () => Promise<unknown>): Promise<{ message: string; ms: number }> {
  const t0 = Date.now();
  try {
    await f();
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectionError);
    return { message: (err as Error).message, ms: Date.now() - t0 };
  }
  throw new Error('expected a ConnectionError');
}

describe.skipIf(!enabled)('connections', () => {
  let nats: ServerHandle;
  let natsNoJs: ServerHandle;
  let etcd: ServerHandle;

  beforeAll(async () => {
    [nats, natsNoJs, etcd] = await Promise.all([startNats(), startNats({ jetstream: false }), startEtcd()]);
  });
  afterAll(async () => {
    await Promise.all([nats?.stop(), natsNoJs?.stop(), etcd?.stop()]);
  });

  it('connects to NATS with JetStream and to etcd', async () => {
    const nc = await connectNats({ NATS_SERVER: nats.url });
    expect(nc.info?.jetstream).toBe(true);
    await nc.close();
    const client = await connectEtcd({ ETCD_ENDPOINTS: etcd.url });
    await client.put('probe').value('1');
    expect(await client.get('probe').string()).toBe('1');
    client.close();
  });

  it('accepts a list of etcd endpoints with a dead one in it', async () => {
    const dead = await freePort();
    const client = await connectEtcd({ ETCD_ENDPOINTS: `http://127.0.0.1:${dead},${etcd.url}` });
    expect(await client.get('probe').string()).toBe('1');
    client.close();
  });

  it('fails fast with one line naming the URL and NATS_SERVER when nothing listens', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const { message, ms } = await failure(() => connectNats({ NATS_SERVER: url }));
    expect(message).toBe(`cannot connect to NATS at ${url} (NATS_SERVER): connection refused`);
    expect(ms).toBeLessThan(5000);
  });

  it('fails within 5 s when the NATS server never answers', async () => {
    const silent = await silentServer();
    try {
      const url = `nats://127.0.0.1:${silent.port}`;
      const { message, ms } = await failure(() => connectNats({ NATS_SERVER: url }));
      expect(message).toBe(`cannot connect to NATS at ${url} (NATS_SERVER): no answer within 3000 ms`);
      expect(message).not.toContain('\n');
      expect(ms).toBeLessThan(5000);
    } finally {
      silent.close();
    }
  });

  it('never shows credentials from the URL in the message', async () => {
    const port = await freePort();
    const { message } = await failure(() => connectNats({ NATS_SERVER: `nats://user:s3cret@127.0.0.1:${port}` }));
    expect(message).toBe(`cannot connect to NATS at nats://***@127.0.0.1:${port} (NATS_SERVER): connection refused`);
  });

  it('refuses a NATS server without JetStream', async () => {
    const { message, ms } = await failure(() => connectNats({ NATS_SERVER: natsNoJs.url }));
    expect(message).toBe(`NATS at ${natsNoJs.url} (NATS_SERVER) has no JetStream: start nats-server with -js`);
    expect(ms).toBeLessThan(5000);
  });

  it('rejects a NATS_SERVER that is not a nats:// URL', async () => {
    const { message } = await failure(() => connectNats({ NATS_SERVER: 'http://127.0.0.1:4222' }));
    expect(message).toBe("NATS_SERVER must be a nats://host:port URL, got 'http://127.0.0.1:4222'");
  });

  it('fails fast with one line naming the URL and ETCD_ENDPOINTS when nothing listens', async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const { message, ms } = await failure(() => connectEtcd({ ETCD_ENDPOINTS: url }));
    expect(message).toBe(`cannot connect to etcd at ${url} (ETCD_ENDPOINTS): connection refused`);
    expect(ms).toBeLessThan(5000);
  });

  it('fails within 5 s when etcd never answers', async () => {
    const silent = await silentServer();
    try {
      const url = `http://127.0.0.1:${silent.port}`;
      const { message, ms } = await failure(() => connectEtcd({ ETCD_ENDPOINTS: url }));
      expect(message).toBe(`cannot connect to etcd at ${url} (ETCD_ENDPOINTS): no answer within 3000 ms`);
      expect(ms).toBeLessThan(5000);
    } finally {
      silent.close();
    }
  });
});

describe.skipIf(!enabled)('lease and registration', () => {
  let nats: ServerHandle;
  let etcd: ServerHandle;
  let nc: NatsConnection;
  let client: Etcd3;
  /** A second, independent client: what etcdctl would see. */
  let observer: Etcd3;

  beforeAll(async () => {
    [nats, etcd] = await Promise.all([startNats(), startEtcd()]);
    nc = await connectNats({ NATS_SERVER: nats.url });
    client = await connectEtcd({ ETCD_ENDPOINTS: etcd.url });
    observer = new Etcd3({ hosts: etcd.url });
  });
  afterAll(async () => {
    observer?.close();
    client?.close();
    await nc?.close();
    await Promise.all([nats?.stop(), etcd?.stop()]);
  });

  const lost: string[] = [];
  const grant = (ttl = 10) => WorkerLease.grant(client, ttl, (reason) => lost.push(reason));

  async function raw(key: string) {
    const res = await observer.get(key).exec();
    return res.kvs[0];
  }

  const GEN061 = generationOf('0.6.1', 'cuda');
  const session = (): Promise<DiscoverySession> => new EtcdDiscovery(client).open((reason) => lost.push(reason));

  it('registers the card, subscribes, then writes the instance key, all on one lease with the exact id', async () => {
    const s = await session();
    const ep = { namespace: 'reg1', component: 'backend', endpoint: 'generate' };
    const subject = requestSubject(ep, s.instanceId);
    const cardJson = buildModelCard({ displayName: 'Qwen/Qwen3-0.6B', files: new Map(), contextLength: 0, blockSize: 64, runtime: RUNTIME });
    const seen: string[] = [];
    await registerWorker({
      session: s,
      generation: GEN061,
      endpoint: ep,
      cardJson,
      listen: async () => {
        // §1.8: the card is there before the endpoint listens, the instance key is not.
        seen.push(`card:${(await raw(cardKey(ep, s.instanceId))) !== undefined}`, `instance:${(await raw(instanceKey(ep, s.instanceId))) !== undefined}`);
        return { nats_tcp: subject };
      },
    });
    expect(seen).toEqual(['card:true', 'instance:false']);

    const card = await raw(cardKey(ep, s.instanceId));
    const inst = await raw(instanceKey(ep, s.instanceId));
    expect(card.value.toString()).toBe(cardJson);
    expect(inst.value.toString()).toBe(instanceRecord(ep, s.instanceId, subject));
    // etcd's own lease field (decimal int64 text) equals our BigInt digit for digit; no double rounding.
    for (const kv of [card, inst]) {
      expect(kv.lease).toBe(s.instanceId.toString());
      expect(BigInt(kv.lease)).toBe(s.instanceId);
    }
    expect(inst.value.toString()).toContain(`"instance_id": ${s.instanceId},`);
    // The instance id also matches the lease list etcd keeps.
    const leases = await observer.leaseClient.leaseLeases();
    expect(leases.leases.map((l) => BigInt(l.ID))).toContain(s.instanceId);

    await s.close();
    expect(await raw(cardKey(ep, s.instanceId))).toBeUndefined();
    expect(await raw(instanceKey(ep, s.instanceId))).toBeUndefined();
    await s.close(); // idempotent
    expect(lost).toEqual([]);
  });

  it('create-if-absent: a second put is refused and leaves value and lease untouched', async () => {
    const a = await grant();
    const b = await grant();
    expect(a.id).not.toBe(b.id);
    const key = 'v1/test/create-if-absent';
    expect(await createIfAbsent(client, key, 'first', a)).toBe('created');
    expect(await createIfAbsent(client, key, 'second', b)).toBe('exists');
    expect(await createIfAbsent(client, key, 'third', a)).toBe('exists');
    const kv = await raw(key);
    expect(kv.value.toString()).toBe('first');
    expect(BigInt(kv.lease)).toBe(a.id);
    await b.revoke();
    expect((await raw(key)).value.toString()).toBe('first');
    await a.revoke();
    expect(await raw(key)).toBeUndefined();
    // Once gone, the key can be created again.
    const c = await grant();
    expect(await createIfAbsent(client, key, 'again', c)).toBe('created');
    await c.revoke();
  });

  it('accepts an existing card silently but refuses an existing instance key', async () => {
    const s = await session();
    const ep = { namespace: 'reg2', component: 'backend', endpoint: 'generate' };
    await s.create(cardKey(ep, s.instanceId), 'earlier card');
    let subscribed = 0;
    const args = {
      session: s,
      generation: GEN061,
      endpoint: ep,
      cardJson: 'new card',
      listen: async () => {
        subscribed++;
        return { nats_tcp: requestSubject(ep, s.instanceId) };
      },
    };
    await registerWorker(args);
    expect((await raw(cardKey(ep, s.instanceId))).value.toString()).toBe('earlier card');
    await expect(registerWorker(args)).rejects.toThrow(`instance key ${instanceKey(ep, s.instanceId)} already exists`);
    expect(subscribed).toBe(2);
    await s.close();
  });

  it('keeps a 2 s lease and its keys alive well past the TTL', async () => {
    const lease = await grant(2);
    const key = 'v1/test/keepalive';
    await createIfAbsent(client, key, 'x', lease);
    const start = Date.now();
    // Wait for keep-alive answers that arrive after 2.5 TTLs: only renewals can make that happen.
    await waitFor(() => lease.lastKeepAliveAt > start + 5000, { timeoutMs: 10_000, message: 'keep-alive past 5 s' });
    expect(lease.alive).toBe(true);
    expect((await raw(key)).value.toString()).toBe('x');
    const ttl = await observer.leaseClient.leaseTimeToLive({ ID: lease.etcdId });
    expect(Number(ttl.TTL)).toBeGreaterThan(0);
    await lease.revoke();
    expect(await raw(key)).toBeUndefined();
    expect(lost).toEqual([]);
  });

  it('reports a lease revoked behind its back once, at the next keep-alive', async () => {
    const reasons: string[] = [];
    const lease = await WorkerLease.grant(client, 2, (r) => reasons.push(r));
    await observer.leaseClient.leaseRevoke({ ID: lease.etcdId });
    await waitFor(() => reasons.length > 0, { timeoutMs: 5000, message: 'onLost after an external revoke' });
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatch(/^etcd lease [0-9a-f]+ lost: /);
    expect(lease.alive).toBe(false);
    await lease.revoke(); // harmless after a loss
    expect(reasons).toHaveLength(1);
  });

  it('reports the lease lost within about a TTL when etcd goes away', async () => {
    const own = await startEtcd();
    const c = await connectEtcd({ ETCD_ENDPOINTS: own.url });
    try {
      const reasons: string[] = [];
      const lease = await WorkerLease.grant(c, 2, (r) => reasons.push(r));
      await own.stop();
      const t0 = Date.now();
      await waitFor(() => reasons.length > 0, { timeoutMs: 6000, message: 'onLost after etcd stopped' });
      expect(Date.now() - t0).toBeLessThan(4000);
      expect(reasons[0]).toContain('no keep-alive answer within 2 s');
      const t1 = Date.now();
      await lease.revoke(); // bounded even with etcd gone
      expect(Date.now() - t1).toBeLessThan(4000);
    } finally {
      c.close();
      await own.stop();
    }
  });

  it('0.6.0: uploads the card files to the object store bucket named by the slug, checksums intact', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'card-files-'));
    try {
      const tokenizer = JSON.stringify({ model: { vocab: Object.fromEntries(Array.from({ length: 40_000 }, (_, i) => [`t${i}`, i])) } });
      writeFileSync(join(dir, 'config.json'), '{"max_position_embeddings":4096}');
      writeFileSync(join(dir, 'tokenizer.json'), tokenizer); // > 128 KiB: several object-store chunks
      writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages }}');
      const blake3 = await createBlake3Hex();
      const checked = await checkedFiles(
        {
          dir,
          source: 'local',
          files: new Map<CardFileKind, string>([
            ['config', join(dir, 'config.json')],
            ['tokenizer', join(dir, 'tokenizer.json')],
            ['chatTemplate', join(dir, 'chat_template.jinja')],
          ]),
        },
        blake3,
      );
      const slug = 'qwen_qwen3-0_6b';
      const uploaded = await uploadCardFilesToObjectStore(nc, slug, checked);
      const authority = nats.url.replace('nats://', '');
      expect([...uploaded]).toEqual([
        ['config', { path: `nats://${authority}/${slug}/config.json`, checksum: checked.get('config')!.checksum }],
        ['tokenizer', { path: `nats://${authority}/${slug}/tokenizer.json`, checksum: checked.get('tokenizer')!.checksum }],
        ['chatTemplate', { path: `nats://${authority}/${slug}/chat_template.jinja`, checksum: checked.get('chatTemplate')!.checksum }],
      ]);

      // Download like the 0.6.0 frontend: bucket and object from the URL, then verify BLAKE3.
      const os = await nc.jetstream().views.os(slug);
      for (const [, f] of uploaded) {
        const [bucket, name] = new URL(f.path).pathname.slice(1).split('/');
        expect(bucket).toBe(slug);
        const obj = await os.get(name);
        expect(obj).not.toBeNull();
        const chunks: Uint8Array[] = [];
        for await (const chunk of obj!.data) chunks.push(chunk);
        expect(await obj!.error).toBeFalsy(); // nats.js checks the SHA-256 digest at the end
        const bytes = Buffer.concat(chunks);
        expect(`blake3:${blake3(new Uint8Array(bytes))}`).toBe(f.checksum);
      }
      const info = await os.info('tokenizer.json');
      expect(info?.chunks).toBeGreaterThan(1);
      expect(info?.digest).toMatch(/^SHA-256=[A-Za-z0-9_-]+=*$/);

      // The card then points at the object store.
      const card = buildModelCard({ displayName: 'Qwen/Qwen3-0.6B', files: uploaded, contextLength: 4096, blockSize: 64, runtime: RUNTIME });
      expect(card).toContain(`"model_info":{"hf_config_json":{"path":"nats://${authority}/${slug}/config.json",`);
      expect(card).toContain(`"chat_template_file":{"hf_chat_template":{"path":"nats://${authority}/${slug}/chat_template.jinja",`);
      expect(card).not.toContain('prompt_formatter');

      // Uploading again (a second worker) replaces the objects in place.
      await uploadCardFilesToObjectStore(nc, slug, checked);
      const names = (await os.list()).map((o) => o.name).sort();
      expect(names).toEqual(['chat_template.jinja', 'config.json', 'tokenizer.json']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
