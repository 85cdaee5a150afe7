#!/usr/bin/env node
// Event-plane benchmark (Dynamo 1.4): KV events per second a worker publishes on ZMQ and on NATS while
// streaming at --speedup-ratio 0, as a router-side subscriber receives them, and the token-throughput
// cost of publishing (the same load with --no-kv-events). Configurations alternate round by round.
// Usage: node scripts/bench-events.mjs [--runs 7] [--concurrency 256] [--max-tokens 400] [--block-size 16]
import { performance } from 'node:perf_hooks';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Unpackr } from 'msgpackr';
import { connect } from 'nats';
import * as zmq from 'zeromq';
import { benchPrompt, fmt, median, stopChild as stop, streamLoad } from './lib/bench.mjs';
import { start, startLocalServers, waitFor } from './lib/local-servers.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '7' },
    concurrency: { type: 'string', default: '256' },
    'max-tokens': { type: 'string', default: '400' },
    'block-size': { type: 'string', default: '16' },
  },
});
const runs = Number(values.runs);
const concurrency = Number(values.concurrency);
const maxTokens = Number(values['max-tokens']);
const blockSize = values['block-size'];

const servers = await startLocalServers();
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const client = await DynamoClient.connect({ env: servers });
const nc = await connect({ servers: servers.NATS_SERVER });
const unpackr = new Unpackr({ int64AsType: 'bigint', mapsAsObjects: true });
const model = join(root, 'test', 'fixtures', 'tiny-model');
const bin = join(root, 'bin', 'dynamo-mocker');

/** Counts what a router receives on the endpoint's kv-events topic: envelopes, RouterEvents, blocks. */
class KvCounter {
  envelopes = 0;
  events = 0;
  blocks = 0;
  lastAt = 0;
  gaps = 0;
  #lastId = new Map();
  #close = [];
  receive(envelope) {
    const env = unpackr.unpack(envelope);
    const batch = unpackr.unpack(env.payload);
    this.envelopes++;
    this.events += batch.length;
    for (const e of batch) {
      // A router forgets a rank at any gap in its event ids: count them, the run fails if any.
      const id = BigInt(e.event.event_id);
      const last = this.#lastId.get(e.event.dp_rank);
      if (last !== undefined && id !== last + 1n) this.gaps++;
      this.#lastId.set(e.event.dp_rank, id);
      this.blocks += e.event.data.stored?.blocks.length ?? e.event.data.removed?.block_hashes.length ?? 0;
    }
    this.lastAt = performance.now();
  }
  async subscribe(channel) {
    const t = channel.transport;
    if (t.kind === 'Zmq') {
      const s = new zmq.Subscriber();
      s.connect(t.config.endpoint);
      s.subscribe('kv-events');
      this.#close.push(() => s.close());
      void (async () => {
        try {
          // Frames: topic, publisher id, sequence, then a 1-byte version and 4-byte length before the envelope.
          for await (const frames of s) this.receive(frames[3].subarray(5));
        } catch {
          // closed
        }
      })();
    } else {
      const sub = nc.subscribe(`${t.config.subject_prefix}.kv-events`);
      this.#close.push(() => sub.unsubscribe());
      void (async () => {
        for await (const m of sub) this.receive(m.data);
      })();
      await nc.flush();
    }
  }
  close() {
    for (const c of this.#close) c();
  }
}

const configs = {
  'ZMQ, KV events': { env: { DYN_EVENT_PLANE: 'zmq' }, args: [] },
  'NATS, KV events': { env: { DYN_EVENT_PLANE: 'nats', NATS_SERVER: servers.NATS_SERVER }, args: [] },
  'ZMQ, --no-kv-events': { env: { DYN_EVENT_PLANE: 'zmq' }, args: ['--no-kv-events'] },
};
// Warm-up prompts count down where measured ones count up, so they share no block with them.
const warmup = (k) => Array.from({ length: 128 }, (_, j) => 2040 - ((k * 131 + j) % 2000));
const results = Object.fromEntries(Object.keys(configs).map((k) => [k, { tput: [], events: [], envelopes: [], blocks: [] }]));
let round = 0;
for (let i = 0; i < runs; i++) {
  for (const [name, c] of Object.entries(configs)) {
    const ns = `events${round++}`;
    const endpoint = { namespace: ns, component: 'backend', endpoint: 'generate' };
    const w = start(process.execPath, [bin, '--model-path', model, '--dynamo-version', '1.4', '--block-size', blockSize, '--speedup-ratio', '0', '--max-num-seqs', String(concurrency), ...c.args], {
      ETCD_ENDPOINTS: servers.ETCD_ENDPOINTS,
      DYN_TCP_RPC_HOST: '127.0.0.1',
      DYN_EVENT_PLANE_HOST: '127.0.0.1',
      DYN_NAMESPACE: ns,
      ...c.env,
    });
    const [inst] = await client.waitForInstances(endpoint, 1, 20000);
    const counter = new KvCounter();
    const publishes = !c.args.includes('--no-kv-events');
    if (publishes) {
      const prefix = `v1/event_channels/namespace/${ns}/component/backend/endpoint/generate/topic/kv-events/`;
      let records = {};
      await waitFor(async () => ((records = await client.etcd.getAll().prefix(prefix).strings()), Object.keys(records).length === 1), 'the kv-events channel record');
      await counter.subscribe(JSON.parse(Object.values(records)[0].replace(/:(\d{16,})/g, ':"$1"')));
      // A ZMQ subscription goes live a moment after connecting: warm up until events arrive.
      let warm = 0;
      await waitFor(async () => {
        await (await client.generate(inst, { tokenIds: warmup(warm++), maxTokens: 1 })).stream.done;
        return counter.events > 0;
      }, 'the first KV event');
    }
    const before = { events: counter.events, envelopes: counter.envelopes, blocks: counter.blocks };
    const { t0, t1, tokensPerS } = await streamLoad(client, inst, { concurrency, maxTokens, label: name });
    if (publishes) {
      // Every block of every request is stored once: wait until the subscriber has them all.
      const expected = concurrency * Math.floor((128 + maxTokens - 1) / Number(blockSize));
      await waitFor(() => counter.blocks - before.blocks >= expected, `${expected} stored blocks`, 30_000);
      if (counter.gaps) throw new Error(`${name}: ${counter.gaps} gaps in the event ids`);
    }
    const elapsed = (Math.max(t1, counter.lastAt) - t0) / 1000;
    const r = results[name];
    r.tput.push(tokensPerS);
    r.events.push((counter.events - before.events) / elapsed);
    r.envelopes.push((counter.envelopes - before.envelopes) / elapsed);
    r.blocks.push(counter.blocks - before.blocks);
    counter.close();
    await stop(w);
  }
}
await client.close();
await nc.close();

console.log(`event-plane benchmark: ${runs} runs per configuration, alternated; ${concurrency} concurrent × ${maxTokens} tokens, 128-token prompts, block size ${blockSize}, --speedup-ratio 0`);
for (const [name, r] of Object.entries(results)) {
  console.log(`  ${name}`);
  console.log(`    tokens/s streamed        ${fmt(r.tput)}`);
  if (r.events.some((x) => x > 0)) {
    console.log(`    KV events/s received     ${fmt(r.events)}  (${median(r.blocks)} blocks per run)`);
    console.log(`    envelopes/s received     ${fmt(r.envelopes)}`);
  }
}
const off = results['ZMQ, --no-kv-events'].tput;
for (const on of ['ZMQ, KV events', 'NATS, KV events']) {
  const ratios = results[on].tput.map((t, i) => t / off[i]);
  console.log(`  ${on} / --no-kv-events tokens/s, pair by pair: median ${median(ratios).toFixed(2)}× (${ratios.map((x) => x.toFixed(2)).join(', ')})`);
}
process.exit(0);
