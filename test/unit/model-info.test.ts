// Model facts from card files (context length, vocab, EOS/BOS) and the BLAKE3-checked card file reader.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { blake3, createBLAKE3 } from 'hash-wasm';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config.js';
import { checkedFiles } from '../../src/model/card-files.js';
import { DEFAULT_VOCAB_SIZE, readModelInfo } from '../../src/model/model-info.js';
import { resolveModelFiles, type CardFileKind, type ModelFiles } from '../../src/model/resolve-model.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/tiny-model/', import.meta.url)).replace(/\/$/, '');

let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'model-info-'));
});
afterEach(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const NAMES: Record<CardFileKind, string> = {
  config: 'config.json',
  tokenizer: 'tokenizer.json',
  tokenizerConfig: 'tokenizer_config.json',
  generationConfig: 'generation_config.json',
  chatTemplate: 'chat_template.jinja',
};

/** Writes the given files (objects are JSON-encoded) into a fresh dir and returns a local ModelFiles. */
function modelDir(contents: Partial<Record<CardFileKind, unknown>>): ModelFiles {
  const dir = join(tmp, `m${Math.random().toString(36).slice(2)}`);
  mkdirSync(dir);
  const files = new Map<CardFileKind, string>();
  for (const [kind, value] of Object.entries(contents) as Array<[CardFileKind, unknown]>) {
    const p = join(dir, NAMES[kind]);
    writeFileSync(p, typeof value === 'string' ? value : JSON.stringify(value));
    files.set(kind, p);
  }
  return { dir, files, source: 'local' };
}

const silent = { env: { HF_HUB_OFFLINE: '1' }, log: () => undefined };

describe('readModelInfo on the tiny-model fixture', () => {
  it('reads vocab 2048, EOS [2, 3], BOS 1, context 4096 and the KV shape', async () => {
    const files = await resolveModelFiles(FIXTURE, silent);
    expect(readModelInfo(files)).toEqual({
      contextLength: 4096,
      vocabSize: 2048,
      eosTokenIds: [2, 3],
      bosTokenId: 1,
      kvShape: { layers: 2, kvHeads: 2, hiddenSize: 64, attentionHeads: 4, dtype: 'bfloat16' },
    });
  });

  it('is self-consistent: tokenizer.json has exactly vocab_size ids and the special tokens the configs name', () => {
    const tok = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer.json'), 'utf8'));
    const tc = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer_config.json'), 'utf8'));
    const ids = new Set(Object.values(tok.model.vocab as Record<string, number>));
    expect(ids.size).toBe(2048);
    expect(Math.max(...ids)).toBe(2047);
    const added = Object.fromEntries((tok.added_tokens as Array<{ id: number; content: string }>).map((t) => [t.content, t.id]));
    expect(added[tc.eos_token]).toBe(2);
    expect(added[tc.bos_token]).toBe(1);
    expect(added['<|im_start|>']).toBe(4);
    // Special tokens sit in model.vocab at the same ids, otherwise tokenizers would renumber them on load.
    for (const [content, id] of Object.entries(added)) expect(tok.model.vocab[content]).toBe(id);
    expect(tc.chat_template).toContain('<|im_start|>');
  });

  it('is small', () => {
    const total = Object.values(NAMES)
      .filter((n) => n !== 'chat_template.jinja')
      .reduce((sum, n) => sum + readFileSync(join(FIXTURE, n)).byteLength, 0);
    expect(total).toBeLessThan(50 * 1024);
  });
});

describe('context length', () => {
  it('prefers config.json max_position_embeddings over tokenizer_config model_max_length', () => {
    const info = readModelInfo(modelDir({ config: { max_position_embeddings: 40960 }, tokenizerConfig: { model_max_length: 131072 } }));
    expect(info.contextLength).toBe(40960);
  });

  it('falls back to text_config (multimodal) and then to model_max_length', () => {
    expect(readModelInfo(modelDir({ config: { text_config: { max_position_embeddings: 8192 } } })).contextLength).toBe(8192);
    expect(readModelInfo(modelDir({ config: {}, tokenizerConfig: { model_max_length: 2048 } })).contextLength).toBe(2048);
    expect(readModelInfo(modelDir({ tokenizerConfig: { model_max_length: 2048 } })).contextLength).toBe(2048);
  });

  it('ignores the "unlimited" sentinel and values that do not fit a u32, giving 0', () => {
    // transformers writes int(1e30) = 1000000000000000019884624838656
    expect(readModelInfo(modelDir({ tokenizerConfig: '{"model_max_length": 1000000000000000019884624838656}' })).contextLength).toBe(0);
    expect(readModelInfo(modelDir({ tokenizerConfig: { model_max_length: 1e12 } })).contextLength).toBe(0);
    expect(readModelInfo(modelDir({ tokenizerConfig: { model_max_length: 2 ** 32 } })).contextLength).toBe(0);
    expect(readModelInfo(modelDir({ config: { max_position_embeddings: null }, tokenizerConfig: {} })).contextLength).toBe(0);
    expect(readModelInfo(modelDir({ config: { max_position_embeddings: '4096' } })).contextLength).toBe(0);
  });
});

describe('vocab size', () => {
  it('uses config.json vocab_size (or text_config.vocab_size)', () => {
    expect(readModelInfo(modelDir({ config: { vocab_size: 151936 }, tokenizer: { model: { vocab: { a: 0 } } } })).vocabSize).toBe(151936);
    expect(readModelInfo(modelDir({ config: { text_config: { vocab_size: 262208 } } })).vocabSize).toBe(262208);
  });

  it('else max id + 1 over tokenizer.json model.vocab and added_tokens', () => {
    const tokenizer = { added_tokens: [{ id: 9, content: '<eos>' }], model: { type: 'BPE', vocab: { a: 0, b: 1, c: 2 } } };
    expect(readModelInfo(modelDir({ config: {}, tokenizer })).vocabSize).toBe(10);
    expect(readModelInfo(modelDir({ tokenizer: { model: { vocab: { a: 0, b: 1, c: 2 } } } })).vocabSize).toBe(3);
  });

  it('understands Unigram vocabularies ([piece, score] arrays)', () => {
    const tokenizer = { added_tokens: [], model: { type: 'Unigram', vocab: [['<unk>', 0], ['▁a', -1], ['b', -2]] } };
    expect(readModelInfo(modelDir({ tokenizer })).vocabSize).toBe(3);
  });

  it(`else ${DEFAULT_VOCAB_SIZE}`, () => {
    expect(readModelInfo(modelDir({})).vocabSize).toBe(32000);
    expect(readModelInfo(modelDir({ config: { vocab_size: 0 }, tokenizer: {} })).vocabSize).toBe(32000);
  });
});

describe('EOS and BOS', () => {
  it('unions config.json, generation_config.json and tokenizer_config eos_token, without duplicates', () => {
    const info = readModelInfo(
      modelDir({
        config: { eos_token_id: 151645, bos_token_id: 151643 },
        generationConfig: { eos_token_id: [151645, 151643] },
        tokenizerConfig: { eos_token: { __type: 'AddedToken', content: '<|eot|>' } },
        tokenizer: { added_tokens: [{ id: 151650, content: '<|eot|>' }], model: { vocab: { a: 0 } } },
      }),
    );
    expect(info.eosTokenIds).toEqual([151645, 151643, 151650]);
    expect(info.bosTokenId).toBe(151643);
  });

  it('looks eos_token/bos_token strings up in model.vocab when they are not added tokens', () => {
    const info = readModelInfo(
      modelDir({ tokenizerConfig: { eos_token: '</s>', bos_token: '<s>' }, tokenizer: { model: { vocab: { '<unk>': 0, '<s>': 1, '</s>': 2 } } } }),
    );
    expect(info).toMatchObject({ eosTokenIds: [2], bosTokenId: 1 });
  });

  it('handles config eos arrays, text_config and junk values', () => {
    expect(readModelInfo(modelDir({ config: { eos_token_id: [1, 106] } })).eosTokenIds).toEqual([1, 106]);
    expect(readModelInfo(modelDir({ config: { text_config: { eos_token_id: 7, bos_token_id: 5 } } }))).toMatchObject({ eosTokenIds: [7], bosTokenId: 5 });
    expect(readModelInfo(modelDir({ config: { eos_token_id: null }, generationConfig: { eos_token_id: ['x', -1, 1.5, 4] } })).eosTokenIds).toEqual([4]);
  });

  it('takes BOS from generation_config or tokenizer_config when config.json has none; else null', () => {
    expect(readModelInfo(modelDir({ config: {}, generationConfig: { bos_token_id: 128000 } })).bosTokenId).toBe(128000);
    expect(readModelInfo(modelDir({ tokenizerConfig: { bos_token: 'B' }, tokenizer: { model: { vocab: { A: 0, B: 1 } } } })).bosTokenId).toBe(1);
    expect(readModelInfo(modelDir({ tokenizerConfig: { bos_token: null } })).bosTokenId).toBeNull();
  });

  it('an eos_token missing from the tokenizer adds nothing', () => {
    expect(readModelInfo(modelDir({ tokenizerConfig: { eos_token: '<nope>' }, tokenizer: { model: { vocab: { a: 0 } } } })).eosTokenIds).toEqual([]);
    expect(readModelInfo(modelDir({ tokenizerConfig: { eos_token: '</s>' } })).eosTokenIds).toEqual([]);
  });
});

describe('robustness', () => {
  it('no files at all', () => {
    expect(readModelInfo({ dir: null, files: new Map(), source: 'none' })).toEqual({
      contextLength: 0,
      vocabSize: 32000,
      eosTokenIds: [],
      bosTokenId: null,
      kvShape: null,
    });
  });

  it('a listed file that has since disappeared counts as missing', () => {
    const files = modelDir({ config: { vocab_size: 100, eos_token_id: 1 }, generationConfig: { eos_token_id: 2 } });
    rmSync(files.files.get('generationConfig')!);
    expect(readModelInfo(files)).toMatchObject({ vocabSize: 100, eosTokenIds: [1] });
  });

  it('malformed JSON throws a ConfigError naming --model-path and the file', () => {
    const files = modelDir({ config: { vocab_size: 100 }, generationConfig: '{"eos_token_id": [1, 2' });
    expect(() => readModelInfo(files)).toThrow(ConfigError);
    expect(() => readModelInfo(files)).toThrow(`--model-path: ${files.files.get('generationConfig')!} is not valid JSON: `);
    expect(() => readModelInfo(modelDir({ tokenizer: '[1, 2]' }))).toThrow(/tokenizer\.json.*object/);
    expect(() => readModelInfo(modelDir({ config: '' }))).toThrow(/config\.json/);
  });

  it('tolerates NaN/Infinity literals that Python writes in fields we do not read', () => {
    const config = '{"time_step_limit": [0.0, Infinity], "x": -Infinity, "y": NaN, "note": "NaN and Infinity", "max_position_embeddings": 8192}';
    expect(readModelInfo(modelDir({ config })).contextLength).toBe(8192);
  });

  it('ignores chat_template.jinja (not JSON)', () => {
    expect(readModelInfo(modelDir({ chatTemplate: '{{ not json' })).contextLength).toBe(0);
  });
});

describe('checkedFiles', () => {
  let blake3Hex: (b: Uint8Array) => string;
  beforeAll(async () => {
    const hasher = await createBLAKE3();
    blake3Hex = (b) => hasher.init().update(b).digest('hex');
  });

  it('checksums each fixture file as blake3:<hex> and returns its bytes', async () => {
    const files = await resolveModelFiles(FIXTURE, silent);
    const checked = await checkedFiles(files, blake3Hex);
    // Card order: model_info, tokenizer, prompt_formatter, (chat template), gen_config.
    expect([...checked.keys()]).toEqual(['config', 'tokenizer', 'tokenizerConfig', 'generationConfig']);
    for (const [kind, entry] of checked) {
      const onDisk = readFileSync(files.files.get(kind)!);
      expect(entry.path).toBe(files.files.get(kind));
      expect(Buffer.from(entry.bytes)).toEqual(onDisk);
      expect(entry.checksum).toBe(`blake3:${await blake3(onDisk)}`);
      expect(entry.checksum).toMatch(/^blake3:[0-9a-f]{64}$/);
    }
  });

  it('matches the BLAKE3 test vector for an empty file', async () => {
    const files = modelDir({ chatTemplate: '' });
    const checked = await checkedFiles(files, blake3Hex);
    expect(checked.get('chatTemplate')?.checksum).toBe('blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
  });

  it('hashes each file once', async () => {
    const files = modelDir({ config: '{}', tokenizer: '{}' });
    const seen: number[] = [];
    await checkedFiles(files, (b) => {
      seen.push(b.byteLength);
      return blake3Hex(b);
    });
    expect(seen).toEqual([2, 2]);
  });

  it('rejects a hash function that does not return 64 lowercase hex digits', async () => {
    await expect(checkedFiles(modelDir({ config: '{}' }), () => 'ABC')).rejects.toThrow(/64 lowercase hex/);
  });

  it('a file that vanished after resolution is an error naming it', async () => {
    const files = modelDir({ config: '{}' });
    rmSync(files.files.get('config')!);
    await expect(checkedFiles(files, blake3Hex)).rejects.toThrow(/config\.json/);
  });
});
