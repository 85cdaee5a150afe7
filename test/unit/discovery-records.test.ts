// Discovery values per generation, byte for byte: 0.6.x untagged records, 1.x tagged DiscoveryInstance and card.
import { describe, expect, it } from 'vitest';
import { deviceTypeFromEnv } from '../../src/config.js';
import { endpointRecord, instanceRecord, modelRecord } from '../../src/dynamo/discovery-records.js';
import { generationOf, type CardInput } from '../../src/dynamo/generation.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { buildModelCard, buildModelCard1x, type CardFile } from '../../src/dynamo/model-card.js';
import { fileStoreName, natsTransportSubject, requestSubject, splitBucketKey, tcpRoutingKey } from '../../src/dynamo/names.js';
import { cardLocations, selfHostedPath } from '../../src/model/card-locations.js';
import type { CheckedCardFile } from '../../src/model/card-files.js';
import type { CardFileKind } from '../../src/model/resolve-model.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const ID = 0x694d9981145a61adn; // 7587889726860452269, above 2^53
const sum = (c: string) => `blake3:${c.repeat(64)}`;
const RUNTIME = { totalKvBlocks: 16384, maxNumSeqs: 256, maxNumBatchedTokens: 8192, dataParallelSize: 1 };

describe('names', () => {
  it('1.x NATS transport keeps the raw names; the subscription subject is slugified', () => {
    expect(natsTransportSubject(EP, ID)).toBe('dynamo_backend.generate-694d9981145a61ad');
    const upper = { namespace: 'Team.A', component: 'backend', endpoint: 'generate' };
    expect(natsTransportSubject(upper, ID)).toBe('Team.A_backend.generate-694d9981145a61ad');
    expect(requestSubject(upper, ID)).toBe('team_a_backend.generate-694d9981145a61ad');
  });

  it('TCP routing key is {hex}/{endpoint}', () => {
    expect(tcpRoutingKey(EP, ID)).toBe('694d9981145a61ad/generate');
    expect(tcpRoutingKey(EP, 0xabcn)).toBe('abc/generate');
  });

  it('file names percent-encode every byte outside [A-Za-z0-9] with uppercase hex', () => {
    expect(fileStoreName('dynamo/backend/generate/694d9981145a61ad')).toBe('dynamo%2Fbackend%2Fgenerate%2F694d9981145a61ad');
    expect(fileStoreName('my-ns/back_end/gen.x/1')).toBe('my%2Dns%2Fback%5Fend%2Fgen%2Ex%2F1');
    expect(fileStoreName('é')).toBe('%C3%A9');
    expect(decodeURIComponent(fileStoreName('my-ns/back_end/é'))).toBe('my-ns/back_end/é');
  });

  it('splits a key into its bucket directory and the key inside it', () => {
    expect(splitBucketKey('v1/instances/dynamo/backend/generate/abc')).toEqual({ bucket: 'v1/instances', key: 'dynamo/backend/generate/abc' });
    expect(splitBucketKey('v1/mdc/dynamo/backend/generate/abc')).toEqual({ bucket: 'v1/mdc', key: 'dynamo/backend/generate/abc' });
    expect(() => splitBucketKey('v1/instances')).toThrow(RangeError);
  });
});

describe('1.x Endpoint record', () => {
  it('is compact, tagged first, fields in declaration order, exact u64 id, TCP transport', () => {
    expect(endpointRecord(EP, ID, { tcp: '10.0.0.5:41235/694d9981145a61ad/generate' }, 'cuda')).toBe(
      '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo","instance_id":7587889726860452269,' +
        '"transport":{"tcp":"10.0.0.5:41235/694d9981145a61ad/generate"},"device_type":"cuda"}',
    );
  });

  it('NATS transport and cpu device type; no request_plane_codec (the frontend then speaks JSON)', () => {
    const text = endpointRecord(EP, 0xffff_ffff_ffff_ffffn, { nats_tcp: natsTransportSubject(EP, 0xffff_ffff_ffff_ffffn) }, 'cpu');
    expect(text).toBe(
      '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo","instance_id":18446744073709551615,' +
        '"transport":{"nats_tcp":"dynamo_backend.generate-ffffffffffffffff"},"device_type":"cpu"}',
    );
    expect((parseJson(text) as { instance_id: bigint }).instance_id).toBe(0xffff_ffff_ffff_ffffn);
    expect(text).not.toContain('request_plane_codec');
  });
});

describe('1.x Model record', () => {
  it('wraps the card as an object in card_json, after the tag and the endpoint fields', () => {
    expect(modelRecord(EP, ID, '{"display_name":"m"}')).toBe(
      '{"type":"Model","namespace":"dynamo","component":"backend","endpoint":"generate","instance_id":7587889726860452269,"card_json":{"display_name":"m"}}',
    );
  });
});

describe('1.4 card', () => {
  const files = new Map<CardFileKind, CardFile>([
    ['generationConfig', { path: '/m/generation_config.json', checksum: sum('e'), size: 5 }],
    ['chatTemplate', { path: '/m/chat_template.jinja', checksum: sum('d'), size: 4 }],
    ['tokenizerConfig', { path: '/m/tokenizer_config.json', checksum: sum('c'), size: 3 }],
    ['tokenizer', { path: '/m/tokenizer.json', checksum: sum('b'), size: 2 }],
    ['config', { path: '/m/config.json', checksum: sum('a'), size: 1 }],
  ]);
  const cf = (name: string, c: string, size: number) => `{"path":"/m/${name}","checksum":"${sum(c)}","size":${size}}`;

  it("is serialized in Dynamo 1.4's declaration order with the legacy context_length and the readiness fields", () => {
    const card = buildModelCard1x({
      displayName: 'Qwen/Qwen3-0.6B',
      sourcePath: 'Qwen/Qwen3-0.6B',
      files,
      architecturalContextLength: 40960,
      runtimeContextLength: 32768,
      blockSize: 64,
      runtime: RUNTIME,
      enableLocalIndexer: false,
      kvEventPublishingEnabled: true,
    });
    expect(card).toBe(
      '{"display_name":"Qwen/Qwen3-0.6B","slug":"qwen_qwen3-0_6b","source_path":"Qwen/Qwen3-0.6B",' +
        `"model_info":{"hf_config_json":${cf('config.json', 'a', 1)}},` +
        `"tokenizer":{"hf_tokenizer_json":${cf('tokenizer.json', 'b', 2)}},` +
        `"prompt_formatter":{"hf_tokenizer_config_json":${cf('tokenizer_config.json', 'c', 3)}},` +
        `"chat_template_file":{"hf_chat_template":{"is_custom":false,"file":${cf('chat_template.jinja', 'd', 4)}}},` +
        `"gen_config":{"hf_generation_config_json":${cf('generation_config.json', 'e', 5)}},` +
        '"architectural_max_context_length":40960,"context_length":32768,"kv_cache_block_size":64,"migration_limit":0,' +
        '"model_type":"Chat | Completions","model_input":"Tokens","worker_type":"aggregated","needs":[],' +
        '"runtime_config":{"context_length":32768,"total_kv_blocks":16384,"max_num_seqs":256,"max_num_batched_tokens":8192,' +
        '"tool_call_parser":null,"reasoning_parser":null,"tool_call_arguments_format":"json_string",' +
        '"structural_tag_mode":"off","structural_tag_scope":"auto","structural_tag_schema":"auto",' +
        '"exclude_tools_when_tool_choice_none":true,"data_parallel_start_rank":0,"data_parallel_size":1,' +
        '"enable_local_indexer":false,"kv_event_publishing_enabled":true,"enable_eagle":false},' +
        '"media_decoder":null,"media_fetcher":null}',
    );
  });

  it('without files or a known context length: null model_info/tokenizer, no context fields', () => {
    const card = buildModelCard1x({
      displayName: 'acme/missing',
      sourcePath: 'acme/missing',
      files: new Map(),
      architecturalContextLength: null,
      runtimeContextLength: null,
      blockSize: 16,
      runtime: { ...RUNTIME, maxNumBatchedTokens: null, dataParallelSize: 2 },
      enableLocalIndexer: false,
      kvEventPublishingEnabled: false,
    });
    expect(card).toBe(
      '{"display_name":"acme/missing","slug":"acme_missing","source_path":"acme/missing","model_info":null,"tokenizer":null,' +
        '"kv_cache_block_size":16,"migration_limit":0,"model_type":"Chat | Completions","model_input":"Tokens","worker_type":"aggregated","needs":[],' +
        '"runtime_config":{"total_kv_blocks":16384,"max_num_seqs":256,"max_num_batched_tokens":null,"tool_call_parser":null,"reasoning_parser":null,' +
        '"tool_call_arguments_format":"json_string","structural_tag_mode":"off","structural_tag_scope":"auto","structural_tag_schema":"auto",' +
        '"exclude_tools_when_tool_choice_none":true,"data_parallel_start_rank":0,"data_parallel_size":2,"enable_local_indexer":false,"kv_event_publishing_enabled":false,"enable_eagle":false},' +
        '"media_decoder":null,"media_fetcher":null}',
    );
  });
});

describe('role cards (disaggregation)', () => {
  const base = {
    displayName: 'm',
    sourcePath: 'm',
    files: new Map(),
    architecturalContextLength: null,
    runtimeContextLength: null,
    blockSize: 16,
    runtime: { totalKvBlocks: 10, maxNumSeqs: 2, maxNumBatchedTokens: 64, dataParallelSize: 1 },
    enableLocalIndexer: false,
  };
  const topology = (card: string) => /"model_type":.*"needs":\[[^{]*?\],/.exec(card)?.[0];

  it('1.4 prefill: empty model_type, worker_type prefill needing decode, the bootstrap endpoint after the KV flag', () => {
    const card = buildModelCard1x({ ...base, kvEventPublishingEnabled: true, workerType: 'prefill', disaggregatedEndpoint: { host: '10.0.0.7', port: 7010 } });
    expect(topology(card)).toBe('"model_type":"","model_input":"Tokens","worker_type":"prefill","needs":[["decode"]],');
    expect(card).toContain('"kv_event_publishing_enabled":true,"disaggregated_endpoint":{"bootstrap_host":"10.0.0.7","bootstrap_port":7010},"enable_eagle":false}');
  });

  it('1.4 decode: chat and completions, worker_type decode needing prefill, no bootstrap endpoint', () => {
    const card = buildModelCard1x({ ...base, kvEventPublishingEnabled: false, workerType: 'decode', disaggregatedEndpoint: null });
    expect(topology(card)).toBe('"model_type":"Chat | Completions","model_input":"Tokens","worker_type":"decode","needs":[["prefill"]],');
    expect(card).not.toContain('disaggregated_endpoint');
  });

  it("0.6.x prefill: model_type Prefill, the marker 0.6.1's frontend activates its prefill router on", () => {
    const card = buildModelCard({ displayName: 'm', files: new Map(), contextLength: 0, blockSize: 16, runtime: base.runtime, workerType: 'prefill' });
    expect(card).toContain('"model_type":"Prefill","model_input":"Tokens"');
    expect(buildModelCard({ displayName: 'm', files: new Map(), contextLength: 0, blockSize: 16, runtime: base.runtime, workerType: 'decode' })).toContain(
      '"model_type":"Chat | Completions"',
    );
  });
});

describe('generations', () => {
  const input: CardInput = {
    displayName: 'm',
    sourcePath: '/models/m',
    files: new Map(),
    modelContextLength: 4096,
    engineContextLength: 2048,
    blockSize: 64,
    runtime: RUNTIME,
    kvEvents: true,
    workerType: 'aggregated',
    migrationLimit: 0,
    bootstrap: null,
  };

  it('0.6.1: the bare card under v1/mdc and the pretty untagged instance record with the slugified subject', () => {
    const g = generationOf('0.6.1', 'cuda');
    expect(g.modelRecord(EP, ID, '{"c":1}')).toBe('{"c":1}');
    const transport = { nats_tcp: g.natsTransport(EP, ID) };
    expect(g.endpointRecord(EP, ID, transport)).toBe(instanceRecord(EP, ID, 'dynamo_backend.generate-694d9981145a61ad'));
    expect(() => g.endpointRecord(EP, ID, { tcp: 'x' })).toThrow(/no TCP request plane/);
    // The 0.6.x card keeps the model's own context length, as before.
    expect(JSON.parse(g.card(input)).context_length).toBe(4096);
    expect(g).toMatchObject({ runtimeVersion: '0.6.1', sentinelAfterStop: true, events: 'jetstream', cardFiles: 'local-paths' });
    expect(generationOf('0.6.0', 'cuda')).toMatchObject({ runtimeVersion: '0.6.0', cardFiles: 'object-store' });
  });

  it('1.4: tagged records, the raw NATS subject, the 1.x card, no sentinel after stop', () => {
    const g = generationOf('1.4', 'cpu');
    expect(g.modelRecord(EP, ID, '{"c":1}')).toBe(modelRecord(EP, ID, '{"c":1}'));
    expect(g.endpointRecord(EP, ID, { tcp: 'a:1/b/generate' })).toBe(endpointRecord(EP, ID, { tcp: 'a:1/b/generate' }, 'cpu'));
    expect(g.natsTransport(EP, ID)).toBe(natsTransportSubject(EP, ID));
    const card = JSON.parse(g.card(input));
    expect(card).toMatchObject({ architectural_max_context_length: 4096, context_length: 2048, worker_type: 'aggregated', needs: [] });
    expect(card.runtime_config).toMatchObject({ context_length: 2048, enable_local_indexer: false, kv_event_publishing_enabled: true });
    expect(g).toMatchObject({ runtimeVersion: '1.4.2', sentinelAfterStop: false, events: 'event-plane', cardFiles: 'v1' });
  });
});

describe('device type (Dynamo endpoint_device_type)', () => {
  it.each([
    [{}, 'cuda'],
    [{ CUDA_VISIBLE_DEVICES: '0,1' }, 'cuda'],
    [{ CUDA_VISIBLE_DEVICES: '' }, 'cpu'],
    [{ CUDA_VISIBLE_DEVICES: '-1' }, 'cpu'],
    [{ CUDA_VISIBLE_DEVICES: 'None' }, 'cpu'],
    [{ CUDA_VISIBLE_DEVICES: 'void' }, 'cpu'],
    [{ NVIDIA_VISIBLE_DEVICES: 'none' }, 'cpu'],
    [{ NVIDIA_VISIBLE_DEVICES: 'all' }, 'cuda'],
  ])('%j → %s', (env, expected) => {
    expect(deviceTypeFromEnv(env)).toBe(expected);
  });
});

describe('1.x card file locations', () => {
  const bytes = new TextEncoder().encode('{"x":1}');
  const checked = new Map<CardFileKind, CheckedCardFile>([['config', { path: '/snap/abc/config.json', checksum: sum('a'), bytes }]]);
  const opts = { repoId: 'acme/model', endpoint: EP, slug: 'acme_model' };

  it('a model directory keeps absolute paths', () => {
    const { files, served } = cardLocations(checked, { source: 'local' }, { ...opts, selfHostBase: null });
    expect(files.get('config')).toEqual({ path: '/snap/abc/config.json', checksum: sum('a'), size: 7 });
    expect(served.size).toBe(0);
  });

  it('a hub model points at hf://{repo}/{file}', () => {
    const { files } = cardLocations(checked, { source: 'hf-cache' }, { ...opts, selfHostBase: null });
    expect(files.get('config')!.path).toBe('hf://acme/model/config.json');
  });

  it('self-hosting serves every file under /v1/metadata/{ns}/{cp}/{ep}/{slug}/_base/{file}', () => {
    const { files, served } = cardLocations(checked, { source: 'hf-cache' }, { ...opts, selfHostBase: 'http://10.0.0.5:8081' });
    const path = '/v1/metadata/dynamo/backend/generate/acme_model/_base/config.json';
    expect(selfHostedPath(EP, 'acme_model', 'config.json')).toBe(path);
    expect(files.get('config')).toEqual({ path: `http://10.0.0.5:8081${path}`, checksum: sum('a'), size: 7 });
    expect(served.get(path)).toBe(bytes);
  });
});
