// Fault plans seen from the frontend side, on real worker processes: every action of `--faults` (refuse,
// error, cut, stall, slow, no_stream, crash, deregister, kv_events, load_metrics), the seeded plan's
// determinism, and the runtime control API (auth, PATCH, stats). The request-path actions run on both
// request planes: Dynamo 1.4 over TCP with file discovery (no servers) and 0.6.1 over NATS with etcd.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, type GenerateRequest, type Instance } from '../../src/client/dynamo-client.js';
import type { StreamResult } from '../../src/client/stream-server.js';
import { FaultMatcher, parseFaultPlan } from '../../src/faults/fault-plan.js';
import { seqHashes } from '../helpers/reference-hash.js';
import { RouterSubscriber, fileRecords } from '../helpers/router-subscriber.js';
import { tenRequestsThreeSlots } from '../helpers/scenarios.js';
import { haveServers, useCluster, waitFor, type Cluster } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const EP = (namespace: string) => ({ namespace, component: 'backend', endpoint: 'generate' });
const prompt = (n: number, base = 0) => Array.from({ length: n }, (_, i) => ((base + i) % 1900) + 10);

type Plan = { seed?: number; rules: Array<{ match?: Record<string, unknown>; action: Record<string, unknown> }> };

let planDir: string;
let planCount = 0;
beforeAll(() => {
  planDir = mkdtempSync(join(tmpdir(), 'fault-plans-'));
});
afterAll(() => rmSync(planDir, { recursive: true, force: true }));

/** Writes a plan (or any JSON value, for the refusals) to its own temp file; returns the path. */
function planFile(plan: unknown): string {
  const path = join(planDir, `plan-${planCount++}.json`);
  writeFileSync(path, JSON.stringify(plan));
  return path;
}

/** A worker, a frontend-side client that found it, and how to reach it. */
interface Rig {
  w: WorkerProcess;
  client: DynamoClient;
  inst: Instance;
  ns: string;
  /** File-discovery root (1.4), or null (etcd). */
  root: string | null;
}

/** A protocol generation with its request plane and discovery, started in namespace `ns`. */
interface Generation {
  name: string;
  /** Normal streams end with the sentinel after complete_final. */
  sentinel: boolean;
  start(ns: string, args: string[], env?: Record<string, string>): Promise<Rig>;
}

/** Dynamo 1.4 with file discovery and the TCP request plane: no servers at all. */
const FILE_TCP_14: Generation = {
  name: '1.4 file + TCP',
  sentinel: true,
  async start(ns, args, env = {}) {
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4', ...args], {
      DYN_NAMESPACE: ns,
      DYN_DISCOVERY_BACKEND: 'file',
      DYN_FILE_KV: root,
      DYN_EVENT_PLANE: 'zmq',
      DYN_EVENT_PLANE_HOST: '127.0.0.1',
      ...env,
    });
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const [inst] = await client.waitForInstances(EP(ns), 1);
    expect(inst.transport.kind).toBe('tcp');
    return { w, client, inst, ns, root };
  },
};

/** Dynamo 0.6.1 over etcd and the NATS request plane. */
function natsEtcd061(cluster: Cluster): Generation {
  return {
    name: '0.6.1 etcd + NATS',
    sentinel: true,
    async start(ns, args, env = {}) {
      const w = await startWorkerProcess(['--model-path', TINY_MODEL, ...args], { ...cluster.env, DYN_NAMESPACE: ns, ...env });
      const client = await DynamoClient.connect({ env: cluster.env });
      const [inst] = await client.waitForInstances(EP(ns), 1);
      expect(inst.transport.kind).toBe('nats');
      return { w, client, inst, ns, root: null };
    },
  };
}

async function finish(r: Rig): Promise<void> {
  await r.client.close();
  expect(await r.w.stop()).toBe(0);
}

/** Sends one request and waits for its stream to end. */
async function run(r: Rig, req: GenerateRequest): Promise<StreamResult & { sentAt: number }> {
  const h = await r.client.generate(r.inst, req);
  return { ...(await h.stream.done), sentAt: h.sentAt };
}

/** After the faults: no request in flight and no KV block held (a leak would show here). */
async function healthy(w: WorkerProcess): Promise<void> {
  await waitFor(async () => (await w.metric('dynamo_component_inflight_requests')) === 0, { timeoutMs: 5000, message: 'inflight gauge back to 0' });
  await waitFor(async () => (await w.metric('dynamo_component_kvstats_active_blocks')) === 0, { timeoutMs: 5000, message: 'no KV blocks held' });
}

/** dynamo_mocker_faults_injected_total for one kind (0 when the series does not exist yet). */
async function injected(w: WorkerProcess, kind: string): Promise<number> {
  return (await w.metric(`dynamo_mocker_faults_injected_total{kind="${kind}"}`)) ?? 0;
}

/** Mean inter-token latency of a stream. */
function itl(r: StreamResult): number {
  const t = r.tokenTimes;
  return (t[t.length - 1] - t[0]) / (t.length - 1);
}

/** The request-path actions, on one generation: each in its own worker, plan and namespace. */
function requestPath(gen: () => Generation, tag: string): void {
  const MAX = 20;
  const start = (ns: string, plan: Plan, args: string[] = []) => gen().start(`${ns}-${tag}`, ['--faults', planFile(plan), ...args]);

  it('refuse: the prologue carries the plan’s message; the next request is served', async () => {
    const r = await start('refuse', { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'injected refusal' } }] });
    const refused = await run(r, { tokenIds: prompt(24), maxTokens: MAX });
    expect(refused.prologueError).toBe('injected refusal');
    expect(refused.tokenIds).toEqual([]);
    const next = await run(r, { tokenIds: prompt(24), maxTokens: MAX });
    expect(next).toMatchObject({ prologueError: null, completeFinal: true, sentinel: gen().sentinel, errors: [] });
    expect(next.tokenIds).toHaveLength(MAX);
    await healthy(r.w);
    expect(await injected(r.w, 'refuse')).toBe(1);
    await finish(r);
  });

  it('error after_tokens N: exactly N tokens, an error item with the message, then complete_final', async () => {
    const r = await start('error', { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'error', after_tokens: 3, message: 'injected error' } }] });
    const failed = await run(r, { tokenIds: prompt(40), maxTokens: MAX });
    expect(failed.prologueError).toBeNull();
    expect(failed.tokenIds).toHaveLength(3);
    expect(failed.errors).toEqual(['injected error']);
    expect(failed.finishReason).toEqual({ error: 'injected error' });
    expect(failed.completeFinal).toBe(true);
    const next = await run(r, { tokenIds: prompt(40), maxTokens: MAX });
    expect(next).toMatchObject({ completeFinal: true, errors: [] });
    expect(next.tokenIds).toHaveLength(MAX);
    await healthy(r.w);
    expect(await injected(r.w, 'error')).toBe(1);
    await finish(r);
  });

  it('cut after_tokens N: exactly N tokens, then the connection closes with no complete_final, sentinel or error', async () => {
    const r = await start('cut', { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'cut', after_tokens: 4 } }] });
    const cut = await run(r, { tokenIds: prompt(40), maxTokens: MAX });
    expect(cut).toMatchObject({ prologueError: null, completeFinal: false, sentinel: false, errors: [], finishReason: null });
    expect(cut.tokenIds).toHaveLength(4);
    const next = await run(r, { tokenIds: prompt(40), maxTokens: MAX });
    expect(next).toMatchObject({ completeFinal: true, sentinel: gen().sentinel });
    expect(next.tokenIds).toHaveLength(MAX);
    await healthy(r.w);
    expect(await injected(r.w, 'cut')).toBe(1);
    await finish(r);
  });

  it('stall before_token k ms M: at least M between token k-1 and token k (the send for k = 1), every token delivered', async () => {
    const M = 500;
    const r = await start('stall', {
      rules: [
        { match: { request_index: [0, 0] }, action: { kind: 'stall', before_token: 1, ms: M } },
        { match: { request_index: [1, 1] }, action: { kind: 'stall', before_token: 5, ms: M } },
        // Past the request's last token: nothing to stall, nothing to count.
        { match: { request_index: [2, 2] }, action: { kind: 'stall', before_token: MAX + 1, ms: M } },
      ],
    });
    const first = await run(r, { tokenIds: prompt(32), maxTokens: MAX });
    expect(first.tokenIds).toHaveLength(MAX);
    expect(first.completeFinal).toBe(true);
    expect(first.tokenTimes[0] - first.sentAt).toBeGreaterThanOrEqual(M);
    const fifth = await run(r, { tokenIds: prompt(32), maxTokens: MAX });
    expect(fifth.tokenIds).toHaveLength(MAX);
    expect(fifth.completeFinal).toBe(true);
    expect(fifth.tokenTimes[4] - fifth.tokenTimes[3]).toBeGreaterThanOrEqual(M);
    // Before the stall the request ran at its normal pace.
    expect(fifth.tokenTimes[3] - fifth.sentAt).toBeLessThan(M);
    const plain = await run(r, { tokenIds: prompt(32), maxTokens: MAX });
    expect(plain.tokenIds).toHaveLength(MAX);
    expect(plain.endedAt - plain.sentAt).toBeLessThan(M);
    await healthy(r.w);
    expect(await injected(r.w, 'stall')).toBe(2);
    await finish(r);
  });

  it('slow factor F: inter-token latency about F times an unfaulted request’s', async () => {
    const F = 4;
    const r = await start('slow', { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'slow', factor: F } }] });
    const slow = await run(r, { tokenIds: prompt(32), maxTokens: 30 });
    const plain = await run(r, { tokenIds: prompt(32, 500), maxTokens: 30 });
    for (const s of [slow, plain]) expect(s).toMatchObject({ completeFinal: true, errors: [] });
    expect(slow.tokenIds).toHaveLength(30);
    expect(plain.tokenIds).toHaveLength(30);
    expect(itl(slow)).toBeGreaterThanOrEqual(0.6 * F * itl(plain));
    await healthy(r.w);
    expect(await injected(r.w, 'slow')).toBe(1);
    await finish(r);
  });

  it('no_stream: the request is acknowledged but the worker never calls home, while a later request is served in full', async () => {
    const r = await start('nostream', { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'no_stream' } }] });
    // generate resolves only once the plane acknowledged the request.
    const silent = await r.client.generate(r.inst, { tokenIds: prompt(24), maxTokens: MAX });
    let connected = false;
    void silent.stream.whenConnected().then(() => (connected = true));
    const later = await run(r, { tokenIds: prompt(24, 300), maxTokens: MAX });
    expect(later).toMatchObject({ completeFinal: true, prologueError: null });
    expect(later.tokenIds).toHaveLength(MAX);
    expect(connected).toBe(false);
    expect(silent.stream.tokens).toHaveLength(0);
    await healthy(r.w);
    expect(await injected(r.w, 'no_stream')).toBe(1);
    expect(connected).toBe(false);
    await finish(r);
  });
}

/** deregister: the records leave discovery for a while; the worker keeps serving meanwhile. */
function deregisterScenario(gen: () => Generation, tag: string): void {
  it('deregister ms M: the instance leaves discovery and comes back, while a running request on it completes', async () => {
    const M = 1000;
    const LONG = 450;
    const r = await gen().start(`dereg-${tag}`, ['--faults', planFile({ rules: [{ match: { request_index: [1, 1] }, action: { kind: 'deregister', ms: M } }] })]);
    const ep = EP(r.ns);
    const long = await r.client.generate(r.inst, { tokenIds: prompt(32), maxTokens: LONG });
    await waitFor(() => long.stream.tokens.length >= 5, { timeoutMs: 5000, message: 'the long request streams' });
    const trigger = await run(r, { tokenIds: prompt(16, 700), maxTokens: 3 });
    expect(trigger.tokenIds).toHaveLength(3);
    await waitFor(async () => (await r.client.instances(ep)).length === 0, { timeoutMs: 3000, message: 'instance record withdrawn' });
    const goneAt = performance.now();
    // Withdrawn while the long request is still streaming.
    expect(long.stream.tokens.length).toBeLessThan(LONG);
    await waitFor(async () => (await r.client.instances(ep)).length === 1, { timeoutMs: M + 5000, message: 'instance record restored' });
    // Restored while it is still streaming: it ran through the whole window.
    expect(long.stream.tokens.length).toBeLessThan(LONG);
    expect(performance.now() - goneAt).toBeGreaterThanOrEqual(0.5 * M);
    const [back] = await r.client.instances(ep);
    expect(back.instanceId).toBe(r.inst.instanceId);
    const res = await long.stream.done;
    expect(res).toMatchObject({ completeFinal: true, errors: [] });
    expect(res.tokenIds).toHaveLength(LONG);
    // Still serving through the restored record.
    expect((await run(r, { tokenIds: prompt(16), maxTokens: 4 })).tokenIds).toHaveLength(4);
    await healthy(r.w);
    expect(await injected(r.w, 'deregister')).toBe(1);
    await finish(r);
  });
}

describe('fault plans on Dynamo 1.4 (file discovery, TCP request plane, ZMQ event plane)', () => {
  describe('request path', () => requestPath(() => FILE_TCP_14, '14'));
  deregisterScenario(() => FILE_TCP_14, '14');

  it('crash after_tokens N: the process exits with exit_code once the client has N tokens', async () => {
    const r = await FILE_TCP_14.start('crash', ['--faults', planFile({ rules: [{ match: { request_index: [0, 0] }, action: { kind: 'crash', after_tokens: 5, exit_code: 17 } }] })]);
    const h = await r.client.generate(r.inst, { tokenIds: prompt(32), maxTokens: 200 });
    const res = await h.stream.done;
    expect(await r.w.exited).toBe(17);
    expect(res.tokenIds).toHaveLength(5);
    expect(res.completeFinal).toBe(false);
    expect(r.w.output()).toMatch(/crashing with exit code 17/);
    await r.client.close();
  });

  describe('event plane faults, as a KV router and a planner see them', () => {
    const BS = 16;
    let probeSeed = 60_000;

    interface EventRig extends Rig {
      sub: RouterSubscriber;
    }

    async function startEvents(ns: string, plan: Plan): Promise<EventRig> {
      const r = await FILE_TCP_14.start(ns, ['--faults', planFile(plan), '--block-size', String(BS)]);
      const sub = await RouterSubscriber.connect({ records: fileRecords(r.root!), endpoint: EP(ns), kvPublishers: 1 });
      await probe({ ...r, sub });
      return { ...r, sub };
    }

    /**
     * Sends one-block requests (17-token prompts, below every rule's min_prompt_tokens) until the
     * subscriber sees one's stored event: the ZMQ subscription is live, and, as a publisher's events
     * arrive in order, everything published before has arrived (a fence, not a wait).
     */
    async function probe(r: EventRig): Promise<void> {
      await waitFor(
        async () => {
          const tokens = prompt(BS + 1, probeSeed);
          probeSeed += BS + 1;
          const [hash] = seqHashes(tokens, BS);
          await run(r, { tokenIds: tokens, maxTokens: 1 });
          return waitFor(() => storedWith(r.sub, hash).length > 0, { timeoutMs: 300 }).then(
            () => true,
            () => false,
          );
        },
        { timeoutMs: 15_000, message: 'KV events reach the subscriber' },
      );
    }

    const storedWith = (sub: RouterSubscriber, hash: bigint) => sub.kvEvents.filter((e) => e.data.kind === 'stored' && e.data.blocks.some((b) => b.blockHash === hash));

    async function finishEvents(r: EventRig): Promise<void> {
      await healthy(r.w);
      r.sub.close();
      await finish(r);
    }

    // Probes are requests too, so rules pick the scenario's requests by prompt length: the first
    // 64-token prompt is "request 0", the second "request 1".
    const kvRule = (mode: string, extra: Record<string, unknown> = {}) => ({ match: { min_prompt_tokens: 64, times: 1 }, action: { kind: 'kv_events', mode, ...extra } });

    it('kv_events drop: no stored event for request 0’s blocks; request 1’s arrive', async () => {
      const r = await startEvents('kvdrop', { rules: [kvRule('drop')] });
      const [a, b] = [prompt(64, 1000), prompt(64, 1200)];
      expect((await run(r, { tokenIds: a, maxTokens: 8 })).tokenIds).toHaveLength(8);
      expect((await run(r, { tokenIds: b, maxTokens: 8 })).tokenIds).toHaveLength(8);
      await probe(r);
      for (const h of seqHashes(a, BS)) expect(storedWith(r.sub, h)).toHaveLength(0);
      for (const h of seqHashes(b, BS)) expect(storedWith(r.sub, h)).toHaveLength(1);
      // Dropped events use no event id: the router sees no gap.
      expect(r.sub.violations).toEqual([]);
      expect(await injected(r.w, 'kv_events')).toBe(1);
      await finishEvents(r);
    });

    it('kv_events duplicate: request 0’s stored blocks arrive twice, request 1’s once', async () => {
      const r = await startEvents('kvdup', { rules: [kvRule('duplicate')] });
      const [a, b] = [prompt(64, 1000), prompt(64, 1200)];
      await run(r, { tokenIds: a, maxTokens: 8 });
      await run(r, { tokenIds: b, maxTokens: 8 });
      await probe(r);
      for (const h of seqHashes(a, BS)) expect(storedWith(r.sub, h)).toHaveLength(2);
      for (const h of seqHashes(b, BS)) expect(storedWith(r.sub, h)).toHaveLength(1);
      expect(r.sub.violations).toEqual([]);
      expect(await injected(r.w, 'kv_events')).toBe(1);
      await finishEvents(r);
    });

    it('kv_events gap: the next event_id skips one, once', async () => {
      const r = await startEvents('kvgap', { rules: [kvRule('gap')] });
      const [a, b] = [prompt(64, 1000), prompt(64, 1200)];
      await run(r, { tokenIds: a, maxTokens: 8 });
      await run(r, { tokenIds: b, maxTokens: 8 });
      await probe(r);
      const events = r.sub.kvEvents;
      const i = events.indexOf(storedWith(r.sub, seqHashes(a, BS)[0])[0]);
      expect(i).toBeGreaterThan(0);
      expect(events[i].eventId).toBe(events[i - 1].eventId + 2n);
      expect(r.sub.violations).toEqual([`rank 0: event ${events[i].eventId} after ${events[i - 1].eventId} (a gap resets the rank)`]);
      // Every other step is +1.
      for (let j = 1; j < events.length; j++) if (j !== i) expect(events[j].eventId).toBe(events[j - 1].eventId + 1n);
      expect(storedWith(r.sub, seqHashes(b, BS)[0])).toHaveLength(1);
      await finishEvents(r);
    });

    it('kv_events delay ms: request 0’s stored events arrive no sooner than ms after it was sent', async () => {
      const D = 600;
      const r = await startEvents('kvdelay', { rules: [kvRule('delay', { ms: D })] });
      const seen = new Map<bigint, number>();
      r.sub.onKvEvent((e) => {
        if (e.data.kind === 'stored') for (const b of e.data.blocks) if (!seen.has(b.blockHash)) seen.set(b.blockHash, performance.now());
      });
      const a = prompt(64, 1000);
      const res = await run(r, { tokenIds: a, maxTokens: 8 });
      // The request itself is not held up.
      expect(res.endedAt - res.sentAt).toBeLessThan(D);
      const hashes = seqHashes(a, BS);
      await waitFor(() => hashes.every((h) => seen.has(h)), { timeoutMs: D + 5000, message: 'delayed events arrive' });
      for (const h of hashes) expect(seen.get(h)! - res.sentAt).toBeGreaterThanOrEqual(D);
      expect(r.sub.violations).toEqual([]);
      await finishEvents(r);
    });

    it('load_metrics stop ms: no ActiveLoad during the window, then reports resume; freeze repeats the last value', async () => {
      const W = 1500;
      // Exact prompt lengths pick the requests: 48 tokens stop the reports, 80 freeze them, 64 run plain.
      const r = await startEvents('load', {
        rules: [
          { match: { min_prompt_tokens: 48, max_prompt_tokens: 48 }, action: { kind: 'load_metrics', mode: 'stop', ms: W } },
          { match: { min_prompt_tokens: 80, max_prompt_tokens: 80 }, action: { kind: 'load_metrics', mode: 'freeze', ms: W } },
        ],
      });
      const loads = r.sub.loads;
      const used = (i: number) => Number(loads[i].kv_used_blocks);
      const idle = () => waitFor(() => loads.length > 0 && used(loads.length - 1) === 0, { timeoutMs: 5000, message: 'ActiveLoad at 0' });
      // The kv_metrics socket is a publisher of its own: probe it until its reports arrive (and say 0).
      await waitFor(
        async () => {
          const n = loads.length;
          await run(r, { tokenIds: prompt(BS + 1, probeSeed++), maxTokens: 2 });
          return waitFor(() => loads.length > n && used(loads.length - 1) === 0, { timeoutMs: 300 }).then(
            () => true,
            () => false,
          );
        },
        { timeoutMs: 15_000, message: 'ActiveLoad reports reach the subscriber' },
      );

      // stop: blocks come and go inside the window, and no report says so.
      let from = loads.length;
      const stopped = await run(r, { tokenIds: prompt(48, 2000), maxTokens: 20 });
      expect(stopped.tokenIds).toHaveLength(20);
      expect(performance.now() - stopped.sentAt).toBeLessThan(W);
      expect(loads.length).toBe(from);
      await waitFor(() => loads.length > from, { timeoutMs: W + 5000, message: 'reports resume' });
      expect(performance.now() - stopped.sentAt).toBeGreaterThanOrEqual(0.8 * W);
      expect(used(from)).toBe(0);

      // Resumed: a plain request's blocks are reported.
      from = loads.length;
      await run(r, { tokenIds: prompt(64, 2200), maxTokens: 20 });
      await waitFor(() => loads.slice(from).some((l) => Number(l.kv_used_blocks) > 0), { timeoutMs: 5000, message: 'load reported again' });
      await idle();

      // freeze: reports carry the value from before the window (0) while blocks are in use.
      from = loads.length;
      const frozen = await r.client.generate(r.inst, { tokenIds: prompt(80, 2400), maxTokens: 20 });
      await waitFor(() => frozen.stream.tokens.length >= 2, { timeoutMs: 5000 });
      expect(await r.w.metric('dynamo_component_kvstats_active_blocks')).toBeGreaterThan(0);
      expect((await frozen.stream.done).tokenIds).toHaveLength(20);
      expect(performance.now() - frozen.sentAt).toBeLessThan(W);
      // The blocks' coming and going is reported, as the frozen value.
      await waitFor(() => loads.length > from, { timeoutMs: 1000, message: 'reports during the freeze' });
      expect(performance.now() - frozen.sentAt).toBeLessThan(W);
      for (let i = from; i < loads.length; i++) expect(used(i)).toBe(0);
      expect(r.sub.violations).toEqual([]);
      expect(await injected(r.w, 'load_metrics')).toBe(2);
      await finishEvents(r);
    });
  });

  it('determinism: the same seeded probability plan and request order fault the same requests on two workers', async () => {
    const plan: Plan = { seed: 1234, rules: [{ match: { probability: 0.5 }, action: { kind: 'refuse', message: 'coin' } }] };
    const file = planFile(plan);
    const faulted = async (ns: string): Promise<number[]> => {
      const r = await FILE_TCP_14.start(ns, ['--faults', file, '--speedup-ratio', '0']);
      const out: number[] = [];
      for (let i = 0; i < 20; i++) {
        const res = await run(r, { tokenIds: prompt(8, i * 8), maxTokens: 2 });
        if (res.prologueError === 'coin') out.push(i);
        else expect(res.tokenIds).toHaveLength(2);
      }
      expect(await injected(r.w, 'refuse')).toBe(out.length);
      await healthy(r.w);
      await finish(r);
      return out;
    };
    const [first, second] = await Promise.all([faulted('coin-a'), faulted('coin-b')]);
    expect(second).toEqual(first);
    expect(first.length).toBeGreaterThan(0);
    expect(first.length).toBeLessThan(20);
    // And the plan's own matcher, given the same order, picks the same indexes.
    const matcher = new FaultMatcher(parseFaultPlan(plan));
    const expected = Array.from({ length: 20 }, (_, i) => i).filter(() => matcher.next({ dpRank: 0, promptTokens: 8, sinceStartMs: 0 }) !== null);
    expect(first).toEqual(expected);
  });

  describe('control API', () => {
    const base = (w: WorkerProcess) => `http://127.0.0.1:${w.statusPort}`;
    const json = async (res: Response) => ({ status: res.status, body: (await res.json()) as Record<string, any> });
    const patch = async (w: WorkerProcess, body: unknown, headers: Record<string, string> = {}) =>
      json(await fetch(`${base(w)}/mocker/config`, { method: 'PATCH', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) }));

    it('is off without --enable-control-api, and open without DYN_MOCKER_CONTROL_TOKEN', async () => {
      const off = await FILE_TCP_14.start('ctl-off', []);
      expect((await off.w.get('/mocker/config')).status).toBe(404);
      await finish(off);
      const r = await FILE_TCP_14.start('ctl-open', ['--enable-control-api', '--max-num-seqs', '7']);
      const res = await r.w.get('/mocker/config');
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toMatchObject({ speedup_ratio: 1, max_num_seqs: 7, latency_jitter: 0, faults: { seed: 0, rules: [] } });
      await finish(r);
    });

    it('with DYN_MOCKER_CONTROL_TOKEN: 401 without the bearer token or with a wrong one, 200 with it', async () => {
      const token = 'tok-3f9a';
      const r = await FILE_TCP_14.start('ctl-auth', ['--enable-control-api'], { DYN_MOCKER_CONTROL_TOKEN: token });
      const get = (path: string, headers: Record<string, string> = {}) => fetch(`${base(r.w)}${path}`, { headers });
      for (const path of ['/mocker/config', '/mocker/stats']) {
        const bare = await get(path);
        expect(bare.status).toBe(401);
        expect(bare.headers.get('www-authenticate')).toBe('Bearer');
        expect((await get(path, { authorization: 'Bearer wrong' })).status).toBe(401);
        expect((await get(path, { authorization: token })).status).toBe(401);
        expect((await get(path, { authorization: `Bearer ${token}` })).status).toBe(200);
      }
      // A PATCH without the token changes nothing.
      expect((await patch(r.w, { max_num_seqs: 2 })).status).toBe(401);
      expect((await fetch(`${base(r.w)}/mocker/stats/reset`, { method: 'POST' })).status).toBe(401);
      const cfg = await json(await get('/mocker/config', { authorization: `Bearer ${token}` }));
      expect(cfg.body.max_num_seqs).not.toBe(2);
      await finish(r);
    });

    it('PATCH changes the plan for the next request and the settings; bad bodies get 400 naming the field; stats count and reset', async () => {
      const r = await FILE_TCP_14.start('ctl-patch', [
        '--enable-control-api',
        '--faults',
        planFile({ rules: [{ match: { request_index: [0, 0] }, action: { kind: 'cut', after_tokens: 2 } }] }),
      ]);
      const cut = await run(r, { tokenIds: prompt(16), maxTokens: 10 });
      expect(cut.tokenIds).toHaveLength(2);
      expect(cut.completeFinal).toBe(false);

      // A new plan: request indexes count from 0 again.
      const refusePlan = { seed: 5, rules: [{ match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'patched refusal' } }] };
      const patched = await patch(r.w, { faults: refusePlan });
      expect(patched.status).toBe(200);
      expect(patched.body.faults).toEqual({ seed: 5, rules: [{ match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'patched refusal' } }] });
      expect((await run(r, { tokenIds: prompt(16), maxTokens: 10 })).prologueError).toBe('patched refusal');
      const served = await run(r, { tokenIds: prompt(16), maxTokens: 10 });
      expect(served).toMatchObject({ prologueError: null, completeFinal: true });
      expect(served.tokenIds).toHaveLength(10);

      // Invalid plans and bodies: 400 naming the field, and nothing changes.
      const bad = await patch(r.w, { faults: { rules: [{ match: { request_index: [0, 0] }, action: { kind: 'cut', after_tokens: -1 } }] } });
      expect(bad.status).toBe(400);
      expect(bad.body.field).toBe('faults.rules[0].action.after_tokens');
      expect(bad.body.error).toContain('rules[0].action.after_tokens');
      const unknownKind = await patch(r.w, { faults: { rules: [{ action: { kind: 'explode' } }] } });
      expect(unknownKind.status).toBe(400);
      expect(unknownKind.body.field).toBe('faults.rules[0].action.kind');
      const stray = await patch(r.w, { faults: { rules: [{ match: { every_nth: 2, sometimes: true }, action: { kind: 'no_stream' } }] } });
      expect(stray.status).toBe(400);
      expect(stray.body.field).toBe('faults.rules[0].match.sometimes');
      const badSeqs = await patch(r.w, { max_num_seqs: 0, speedup_ratio: 3 });
      expect(badSeqs.status).toBe(400);
      expect(badSeqs.body.field).toBe('max_num_seqs');
      const unknownKey = await patch(r.w, { max_num_seq: 3 });
      expect(unknownKey.status).toBe(400);
      expect(unknownKey.body.error).toMatch(/'max_num_seq'/);
      const notJson = await fetch(`${base(r.w)}/mocker/config`, { method: 'PATCH', body: '{"faults":' });
      expect(notJson.status).toBe(400);
      const unchanged = JSON.parse((await r.w.get('/mocker/config')).body);
      expect(unchanged).toMatchObject({ speedup_ratio: 1, faults: patched.body.faults });

      // Settings read back, and take effect: 3 admission slots, at half speed.
      const settings = await patch(r.w, { max_num_seqs: 3, speedup_ratio: 0.5 });
      expect(settings.status).toBe(200);
      expect(settings.body).toMatchObject({ max_num_seqs: 3, speedup_ratio: 0.5 });
      expect(JSON.parse((await r.w.get('/mocker/config')).body)).toMatchObject({ max_num_seqs: 3, speedup_ratio: 0.5 });
      await tenRequestsThreeSlots(r.w, (i) => r.client.generate(r.inst, { tokenIds: prompt(32, 100 + 32 * i), maxTokens: 40 }));

      // Stats: 13 received, 11 completed, 1 refused, 1 cut; one cut and one refuse fault.
      const stats = JSON.parse((await r.w.get('/mocker/stats')).body);
      expect(stats.requests).toEqual({ received: 13, completed: 11, refused: 1, failed: 0, cancelled: 0, cut: 1 });
      expect(stats.faults_fired).toMatchObject({ cut: 1, refuse: 1, error: 0, stall: 0 });
      expect(stats).toMatchObject({ running: 0, waiting: 0, kv_active_blocks: 0 });
      const reset = await fetch(`${base(r.w)}/mocker/stats/reset`, { method: 'POST' });
      expect(reset.status).toBe(200);
      const zeroed = JSON.parse((await r.w.get('/mocker/stats')).body);
      expect(zeroed.requests).toEqual({ received: 0, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 });
      expect(Object.values(zeroed.faults_fired).every((n) => n === 0)).toBe(true);
      // The Prometheus counter is cumulative: a reset of the stats leaves it alone.
      expect(await injected(r.w, 'cut')).toBe(1);
      expect(await injected(r.w, 'refuse')).toBe(1);
      await healthy(r.w);
      await finish(r);
    });

    it('deregister without ms: withdrawn until a PATCH changes the plan, serving all along', async () => {
      const r = await FILE_TCP_14.start('ctl-dereg', ['--enable-control-api', '--faults', planFile({ rules: [{ match: { request_index: [0, 0] }, action: { kind: 'deregister' } }] })]);
      const ep = EP(r.ns);
      expect((await run(r, { tokenIds: prompt(16), maxTokens: 3 })).tokenIds).toHaveLength(3);
      await waitFor(async () => (await r.client.instances(ep)).length === 0, { timeoutMs: 3000, message: 'instance record withdrawn' });
      // A client that already knows the instance is still served, and the record stays away.
      for (let i = 0; i < 3; i++) expect((await run(r, { tokenIds: prompt(16, 40 * i), maxTokens: 3 })).tokenIds).toHaveLength(3);
      expect(await r.client.instances(ep)).toEqual([]);
      expect(JSON.parse((await r.w.get('/mocker/stats')).body).faults_fired.deregister).toBe(1);
      expect((await patch(r.w, { faults: { rules: [] } })).status).toBe(200);
      await waitFor(async () => (await r.client.instances(ep)).length === 1, { timeoutMs: 5000, message: 'instance record restored by the new plan' });
      expect((await r.client.instances(ep))[0].instanceId).toBe(r.inst.instanceId);
      await healthy(r.w);
      await finish(r);
    });

    it('a bad --faults file makes the worker exit 2 naming the field', async () => {
      const cases: Array<[unknown, RegExp]> = [
        [{ rules: [{ match: { every_nth: 0 }, action: { kind: 'cut' } }] }, /--faults.*rules\[0\]\.match\.every_nth: must be an integer ≥ 1, got 0/],
        [{ rules: [{ action: { kind: 'stall', ms: 5, factor: 2 } }] }, /--faults.*rules\[0\]\.action\.factor: not a key of a stall action/],
        [{ rules: [{ action: { kind: 'slow', factor: 0.5 } }] }, /--faults.*rules\[0\]\.action\.factor: must be a number ≥ 1/],
        [{ rules: [{ match: { request_index: [3, 1] }, action: { kind: 'refuse' } }] }, /--faults.*rules\[0\]\.match\.request_index/],
        [{ seed: 1, rulez: [] }, /--faults.*rulez: unknown key/],
      ];
      await Promise.all(
        cases.map(async ([plan, message], i) => {
          const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
          const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--faults', planFile(plan)], {
            DYN_NAMESPACE: `ctl-bad-${i}`,
            DYN_DISCOVERY_BACKEND: 'file',
            DYN_FILE_KV: root,
          }, { expectServing: false });
          expect(await w.exited).toBe(2);
          expect(w.output()).toMatch(message);
        }),
      );
    });
  });
});

const enabled = haveServers();

describe.skipIf(!enabled)('fault plans on Dynamo 0.6.1 (etcd discovery, NATS request plane)', () => {
  const cluster = useCluster();
  requestPath(() => natsEtcd061(cluster), '061');
  deregisterScenario(() => natsEtcd061(cluster), '061');
});
