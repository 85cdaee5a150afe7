// ModelDeploymentCard and Instance record bytes as Dynamo 0.6.x serde_json writes them (§1.3, §1.4).
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { instanceRecord } from '../../src/dynamo/discovery-records.js';
import { buildModelCard, objectStoreAuthority, type CardFile } from '../../src/dynamo/model-card.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { requestSubject } from '../../src/dynamo/names.js';
import { createBlake3Hex } from '../../src/hashing/xxh3.js';
import { checkedFiles } from '../../src/model/card-files.js';
import type { CardFileKind } from '../../src/model/resolve-model.js';
import { TINY_MODEL } from '../helpers/worker-process.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const LEASE = 0x694d9981145a61adn;
const RUNTIME = { totalKvBlocks: 16384, maxNumSeqs: 256, maxNumBatchedTokens: 8192, dataParallelSize: 1 };
const RUNTIME_JSON =
  '{"total_kv_blocks":16384,"max_num_seqs":256,"max_num_batched_tokens":8192,"tool_call_parser":null,"reasoning_parser":null,"data_parallel_size":1}';

const sum = (c: string) => `blake3:${c.repeat(64)}`;
const file = (name: string, c: string): CardFile => ({ path: `/models/Qwen3-0.6B/${name}`, checksum: sum(c) });
const fileJson = (name: string, c: string) => `{"path":"/models/Qwen3-0.6B/${name}","checksum":"${sum(c)}"}`;

describe('instance record', () => {
  it('is serde_json pretty output with the exact u64 id (the §1.3 example, byte for byte)', () => {
    const subject = requestSubject(EP, LEASE);
    expect(instanceRecord(EP, LEASE, subject)).toBe(
      [
        '{',
        '  "component": "backend",',
        '  "endpoint": "generate",',
        '  "namespace": "dynamo",',
        '  "instance_id": 7587889726860452269,',
        '  "transport": {',
        '    "nats_tcp": "dynamo_backend.generate-694d9981145a61ad"',
        '  }',
        '}',
      ].join('\n'),
    );
  });
  it('keeps ids above 2^53 and at the top of the u64 range exact', () => {
    const top = 0xffff_ffff_ffff_ffffn;
    const text = instanceRecord(EP, top, 'x');
    expect(text).toContain('"instance_id": 18446744073709551615,');
    expect((parseJson(text) as { instance_id: bigint }).instance_id).toBe(top);
  });
});

describe('model card', () => {
  it('lists every file in declaration order, whatever order the map has', () => {
    const files = new Map<CardFileKind, CardFile>([
      ['generationConfig', file('generation_config.json', 'e')],
      ['chatTemplate', file('chat_template.jinja', 'd')],
      ['tokenizerConfig', file('tokenizer_config.json', 'c')],
      ['tokenizer', file('tokenizer.json', 'b')],
      ['config', file('config.json', 'a')],
    ]);
    const card = buildModelCard({ displayName: 'Qwen/Qwen3-0.6B', files, contextLength: 40960, blockSize: 64, runtime: RUNTIME });
    expect(card).toBe(
      '{"display_name":"Qwen/Qwen3-0.6B","slug":"qwen_qwen3-0_6b",' +
        `"model_info":{"hf_config_json":${fileJson('config.json', 'a')}},` +
        `"tokenizer":{"hf_tokenizer_json":${fileJson('tokenizer.json', 'b')}},` +
        `"prompt_formatter":{"hf_tokenizer_config_json":${fileJson('tokenizer_config.json', 'c')}},` +
        `"chat_template_file":{"hf_chat_template":${fileJson('chat_template.jinja', 'd')}},` +
        `"gen_config":{"hf_generation_config_json":${fileJson('generation_config.json', 'e')}},` +
        '"context_length":40960,"kv_cache_block_size":64,"migration_limit":0,' +
        '"model_type":"Chat | Completions","model_input":"Tokens",' +
        `"runtime_config":${RUNTIME_JSON}}`,
    );
  });

  it('without files: model_info and tokenizer are null, the optional ones are omitted', () => {
    const card = buildModelCard({
      displayName: 'Qwen/Qwen3-0.6B',
      files: new Map(),
      contextLength: 0,
      blockSize: 64,
      migrationLimit: 3,
      runtime: { totalKvBlocks: 100, maxNumSeqs: 8, maxNumBatchedTokens: null, dataParallelSize: 2 },
    });
    expect(card).toBe(
      '{"display_name":"Qwen/Qwen3-0.6B","slug":"qwen_qwen3-0_6b","model_info":null,"tokenizer":null,' +
        '"context_length":0,"kv_cache_block_size":64,"migration_limit":3,"model_type":"Chat | Completions","model_input":"Tokens",' +
        '"runtime_config":{"total_kv_blocks":100,"max_num_seqs":8,"max_num_batched_tokens":null,"tool_call_parser":null,"reasoning_parser":null,"data_parallel_size":2}}',
    );
  });

  it('matches the §1.4 example shape for a model directory (no chat template file)', async () => {
    const checked = await checkedFiles(
      {
        dir: TINY_MODEL,
        source: 'local',
        files: new Map<CardFileKind, string>([
          ['tokenizer', join(TINY_MODEL, 'tokenizer.json')],
          ['config', join(TINY_MODEL, 'config.json')],
          ['generationConfig', join(TINY_MODEL, 'generation_config.json')],
          ['tokenizerConfig', join(TINY_MODEL, 'tokenizer_config.json')],
        ]),
      },
      await createBlake3Hex(),
    );
    const card = buildModelCard({ displayName: TINY_MODEL, files: checked, contextLength: 4096, blockSize: 64, runtime: RUNTIME });
    const parsed = JSON.parse(card) as Record<string, unknown>;
    expect(Object.keys(parsed)).toEqual([
      'display_name', 'slug', 'model_info', 'tokenizer', 'prompt_formatter', 'gen_config',
      'context_length', 'kv_cache_block_size', 'migration_limit', 'model_type', 'model_input', 'runtime_config',
    ]);
    // Only path and checksum reach the card, never the bytes.
    const c = checked.get('config')!;
    expect(card).toContain(`"model_info":{"hf_config_json":{"path":${JSON.stringify(c.path)},"checksum":"${c.checksum}"}}`);
    expect(c.checksum).toMatch(/^blake3:[0-9a-f]{64}$/);
    // The slug obeys the deserializer's [a-z0-9-_] rule even for an absolute path as the name.
    expect(parsed.slug).toMatch(/^[a-z0-9_-]+$/);
  });

  it('escapes the display name as serde_json does and slugs it per character', () => {
    const card = buildModelCard({ displayName: 'Org/"Modèl"\n', files: new Map(), contextLength: 1, blockSize: 16, runtime: RUNTIME });
    expect(card.startsWith('{"display_name":"Org/\\"Modèl\\"\\n","slug":"org__mod_l__",')).toBe(true);
  });
});

describe('object store URL authority (0.6.0)', () => {
  const nc = (host: string | undefined, port: number | undefined, dialled: string) => ({
    info: host === undefined ? undefined : ({ host, port } as never),
    getServer: () => dialled,
  });
  it("uses the server's announced host and port, like async-nats server_info", () => {
    expect(objectStoreAuthority(nc('10.1.2.3', 4222, 'nats.example:14222'))).toBe('10.1.2.3:4222');
    expect(objectStoreAuthority(nc('fd00::1', 4222, '[fd00::1]:4222'))).toBe('[fd00::1]:4222');
  });
  it('falls back to the dialled address when the server announces a wildcard address', () => {
    expect(objectStoreAuthority(nc('0.0.0.0', 4222, 'nats-host:14222'))).toBe('nats-host:14222');
    expect(objectStoreAuthority(nc('::', 4222, 'nats-host:4222'))).toBe('nats-host:4222');
    expect(objectStoreAuthority(nc(undefined, undefined, 'localhost:4222'))).toBe('localhost:4222');
  });
});
