// The etcd lease under load and outages (issue 12): a flood of malformed requests must not starve the
// keep-alives, a lost lease is an error line and exit 1 (the default), and `--on-lease-loss reregister`
// comes back with a new lease and records once etcd is reachable again.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, preprocessedRequestJson } from '../../src/client/dynamo-client.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { haveServers, startEtcd, startNats, useCluster, waitFor, type EtcdHandle, type NatsHandle } from '../helpers/servers.js';
import { ROOT, TINY_MODEL, startWorkerProcess } from '../helpers/worker-process.js';

const enabled = haveServers();
const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };

/** A frontend's response-stream port that accepts every call home and discards what it is told. */
async function discardServer(): Promise<{ address: string; close(): void }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.resume();
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(srv.address() as { port: number }).port}`,
    close() {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

const FLOOD_SCRIPT = `
import { readFileSync } from 'node:fs';
import { connect } from 'nats';
const [url, subject, file, rate, durationMs] = process.argv.slice(1);
const frames = JSON.parse(readFileSync(file, 'utf8')).map((b) => Buffer.from(b, 'base64'));
const nc = await connect({ servers: url });
const total = Math.round((Number(rate) * Number(durationMs)) / 1000);
let sent = 0;
const t0 = performance.now();
await new Promise((resolve) => {
  const timer = setInterval(() => {
    const due = Math.min(total, Math.round((Number(rate) * (performance.now() - t0)) / 1000));
    // A reply subject, as a frontend's request has: the worker acks each one.
    for (; sent < due; sent++) nc.publish(subject, frames[sent % frames.length], { reply: '_INBOX.flood.' + (sent % 1000) });
    if (sent >= total) {
      clearInterval(timer);
      resolve();
    }
  }, 10);
});
await nc.flush();
await nc.close();
console.log(sent);
`;

/**
 * Publishes `frames` in turn to `subject` at `rate` per second for `durationMs`, from a child process
 * (the test process only samples); resolves with the number sent.
 */
async function flood(o: { natsUrl: string; subject: string; frames: Uint8Array[]; rate: number; durationMs: number }): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'flood-'));
  const file = join(dir, 'frames.json');
  writeFileSync(file, JSON.stringify(o.frames.map((f) => Buffer.from(f).toString('base64'))));
  try {
    const child = spawn(process.execPath, ['--input-type=module', '-e', FLOOD_SCRIPT, o.natsUrl, o.subject, file, String(o.rate), String(o.durationMs)], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    if (code !== 0) throw new Error(`flood process exited with ${code}: ${out}`);
    return Number(out.trim());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Samples `sample` every `everyMs` until stopped; keeps every value. */
function sampler<T>(sample: () => Promise<T>, everyMs: number): { values: T[]; stop(): Promise<void> } {
  const values: T[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const next = performance.now() + everyMs;
      values.push(await sample());
      const wait = next - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    values,
    async stop() {
      running = false;
      await loop;
    },
  };
}

describe.skipIf(!enabled)('the etcd lease under a flood of malformed requests (0.6.1: etcd + NATS)', () => {
  const cluster = useCluster();
  let observer: Etcd3;
  beforeAll(() => {
    observer = new Etcd3({ hosts: cluster.etcd.url });
  });
  afterAll(() => observer?.close());

  it('keeps at least half its TTL and answers /metrics within a second at ~6,500 malformed requests/s, its stderr read slowly', async () => {
    const ns = 'flood';
    // A log collector reading 256 KiB/s: one synchronous line per bad request used to fill the pipe,
    // and every blocked write stalled the event loop, keep-alives included.
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--speedup-ratio', '0'], { ...cluster.env, DYN_NAMESPACE: ns, DYN_LOG: 'warn' }, { stderrBytesPerSecond: 256 * 1024 });
    const client = await DynamoClient.connect({ env: cluster.env });
    const sink = await discardServer();
    try {
      const [inst] = await client.waitForInstances({ ...EP, namespace: ns }, 1);
      const xxh = client.xxh;
      const control = (id: number): string =>
        JSON.stringify({
          id: `flood-${id}`,
          request_type: 'single_in',
          response_type: 'many_out',
          connection_info: { transport: 'tcp_server', info: JSON.stringify({ address: sink.address, subject: `s${id}`, context: `flood-${id}`, stream_type: 'response' }) },
        });
      // Four kinds, in turn: not a frame; a control header that is not JSON; a body that is not a
      // request (refused on its stream, which the discard server accepts); a prompt over the context.
      const garbage = new TextEncoder().encode('garbage, not a two-part frame');
      const badHeader = encodeTwoPartText('{not json', '{}', xxh);
      const tooLong = preprocessedRequestJson({ tokenIds: Array.from({ length: 5000 }, (_, i) => i % 2000), maxTokens: 3 });
      const frames = Array.from({ length: 64 }, (_, i) => {
        switch (i % 4) {
          case 0:
            return garbage;
          case 1:
            return badHeader;
          case 2:
            return encodeTwoPartText(control(i), '{"token_ids":', xxh);
          default:
            return encodeTwoPartText(control(i), tooLong, xxh);
        }
      });

      const leaseId = inst.instanceId.toString();
      const ttl = sampler(async () => Number((await observer.leaseClient.leaseTimeToLive({ ID: leaseId })).TTL), 200);
      const scrape = sampler(async () => {
        const t0 = performance.now();
        const res = await w.get('/metrics');
        expect(res.status).toBe(200);
        return performance.now() - t0;
      }, 200);

      // ~6,500 requests/s for 5 s from a process of its own, so that this one only samples.
      const RATE = 6500;
      const DURATION_MS = 5000;
      const sent = await flood({ natsUrl: cluster.nats.url, subject: inst.subject, frames, rate: RATE, durationMs: DURATION_MS });
      expect(sent).toBe((RATE * DURATION_MS) / 1000);
      // Every request is counted once the worker has caught up (each kind counts one error).
      const errors = async (): Promise<number> =>
        (await w.get('/metrics')).body
          .split('\n')
          .filter((l) => l.startsWith('dynamo_component_errors_total{') && l.includes(`dynamo_namespace="${ns}"`))
          .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
      await waitFor(async () => (await errors()) >= sent, { timeoutMs: 15_000, intervalMs: 100, message: `all ${sent} requests counted` });
      await Promise.all([ttl.stop(), scrape.stop()]);

      const minTtl = Math.min(...ttl.values);
      const maxScrapeMs = Math.max(...scrape.values);
      const out = w.output();
      if (process.env.SHOW_WORKER_LOG) console.log(out);
      // The figures for the closing note.
      console.log(
        `flood: ${sent} malformed requests in ${DURATION_MS} ms; lease TTL at its lowest ${minTtl} s of 10 ` +
          `(${ttl.values.length} samples), slowest /metrics ${maxScrapeMs.toFixed(0)} ms, ${out.split('\n').length} log lines`,
      );
      expect(minTtl).toBeGreaterThanOrEqual(5);
      expect(maxScrapeMs).toBeLessThan(1000);
      expect(w.proc.exitCode).toBeNull();
      // Still registered under the same lease, and still serving.
      expect((await client.instances({ ...EP, namespace: ns })).map((i) => i.instanceId)).toEqual([inst.instanceId]);
      const r = await (await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 4 })).stream.done;
      expect(r.tokenIds).toHaveLength(4);
      // Warnings are rate-limited: the first ones as they happen, the rest summarised.
      expect(out).toMatch(/dropping malformed request frame/);
      expect(out).toMatch(/refusing request/);
      expect(out).toMatch(/suppressed \d+ /);
      expect(out.split('\n').length).toBeLessThan(1000);
    } finally {
      sink.close();
      await client.close();
      expect(await w.stop()).toBe(0);
    }
  });
});

describe.skipIf(!enabled).concurrent('an etcd outage (0.6.1: etcd + NATS)', () => {
  /** Its own NATS and etcd, so stopping etcd touches nothing else. */
  async function servers(): Promise<{ nats: NatsHandle; etcd: EtcdHandle; env: Record<string, string>; close(): Promise<void> }> {
    const [nats, etcd] = await Promise.all([startNats(), startEtcd()]);
    return {
      nats,
      etcd,
      env: { NATS_SERVER: nats.url, ETCD_ENDPOINTS: etcd.url },
      close: async () => void (await Promise.all([nats.stop(), etcd.stop()])),
    };
  }

  it('by default: one error line naming the lost lease at DYN_LOG=warn, then exit code 1', async () => {
    const s = await servers();
    try {
      const w = await startWorkerProcess(['--model-path', TINY_MODEL], { ...s.env, DYN_NAMESPACE: 'outage-exit', DYN_LOG: 'warn' });
      const client = await DynamoClient.connect({ env: s.env });
      const [inst] = await client.waitForInstances({ ...EP, namespace: 'outage-exit' }, 1);
      await client.close();
      await s.etcd.halt();
      const t0 = performance.now();
      expect(await w.exited).toBe(1);
      const lines = w.output().trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string });
      const errors = lines.filter((l) => l.level >= 50);
      expect(errors).toHaveLength(1);
      expect(errors[0].msg).toMatch(new RegExp(`^etcd lease ${inst.instanceId.toString(16)} lost: no keep-alive answer within 10 s`));
      expect(errors[0].msg).toMatch(/the worker stops \(exit code 1; --on-lease-loss reregister would register it again instead\)/);
      // The loss is found within the TTL (10 s), then the worker drains and exits.
      expect(performance.now() - t0).toBeLessThan(16_000);
    } finally {
      await s.close();
    }
  });

  it('--on-lease-loss reregister: in-flight streams go on, and once etcd is back a new lease and records replace the old ones', async () => {
    const s = await servers();
    const ns = 'outage-rereg';
    const ep = { ...EP, namespace: ns };
    try {
      const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--on-lease-loss', 'reregister'], { ...s.env, DYN_NAMESPACE: ns, DYN_LOG: 'warn' });
      const before = await DynamoClient.connect({ env: s.env });
      const [old] = await before.waitForInstances(ep, 1);
      // A stream that lasts through the outage (the NATS request plane and the call home need no etcd).
      const LONG = 2400;
      const long = await before.generate(old.subject, { tokenIds: [1, 2, 3, 4], maxTokens: LONG });
      await waitFor(() => long.stream.tokens.length > 0, { timeoutMs: 5000, message: 'first token of the long stream' });

      await s.etcd.halt();
      const haltedAt = performance.now();
      await waitFor(() => /registers again with a new lease once etcd answers/.test(w.output()), {
        timeoutMs: 15_000,
        intervalMs: 50,
        message: `the worker reports the lost lease:\n${w.output()}`,
      });
      const lostAfterMs = performance.now() - haltedAt;
      console.log(`long stream: ${long.stream.tokens.length} tokens after ${(performance.now() - long.sentAt).toFixed(0)} ms`);
      expect(long.stream.tokens.length).toBeLessThan(LONG);
      expect((await w.get('/health')).status).toBe(503);

      await s.etcd.resume();
      const resumedAt = performance.now();
      const after = await DynamoClient.connect({ env: s.env });
      // The old instance key is gone (revoked, not left to expire) and a new one is there.
      let fresh: Awaited<ReturnType<DynamoClient['instances']>> = [];
      await waitFor(
        async () => {
          fresh = await after.instances(ep).catch(() => []);
          return fresh.length === 1 && fresh[0].instanceId !== old.instanceId;
        },
        { timeoutMs: 15_000, intervalMs: 50, message: `a new instance key only:\n${w.output()}` },
      );
      const registeredMs = performance.now() - resumedAt;
      const r = await (await after.generate(fresh[0].subject, { tokenIds: [5, 6, 7], maxTokens: 4 })).stream.done;
      const servedMs = performance.now() - resumedAt;
      expect(r.tokenIds).toHaveLength(4);
      expect(r.completeFinal).toBe(true);
      // Every record of the old lease is gone: the card too, and etcd no longer knows the lease.
      expect(await after.card(ep, old.instanceId)).toBeNull();
      expect(await after.card(ep, fresh[0].instanceId)).not.toBeNull();
      const leases = (await after.etcd.leaseClient.leaseLeases()).leases.map((l) => BigInt(l.ID));
      expect(leases).not.toContain(old.instanceId);
      await waitFor(async () => (await w.get('/health')).status === 200, { timeoutMs: 5000, message: '/health ready again' });

      // The stream that was in flight through the outage ends normally.
      const rl = await long.stream.done;
      expect(rl.tokenIds).toHaveLength(LONG);
      expect(rl.completeFinal).toBe(true);

      const out = w.output();
      if (process.env.SHOW_WORKER_LOG) console.log(out);
      expect(out).toMatch(new RegExp(`"level":50,.*etcd lease ${old.instanceId.toString(16)} lost: .*worker 0 registers again`));
      expect(out).toMatch(new RegExp(`worker 0 registered again as instance ${fresh[0].instanceId.toString(16)} \\(was ${old.instanceId.toString(16)}\\)`));
      console.log(
        `etcd outage: lease loss reported ${lostAfterMs.toFixed(0)} ms after etcd stopped; once etcd was back, ` +
          `the new instance key appeared after ${registeredMs.toFixed(0)} ms and the first request was served after ${servedMs.toFixed(0)} ms`,
      );
      await Promise.all([before.close(), after.close()]);
      expect(await w.stop()).toBe(0);
    } finally {
      await s.close();
    }
  });
});
