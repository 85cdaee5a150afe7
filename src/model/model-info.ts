// Derives context length, vocab size and EOS/BOS ids from a model's card files (Dynamo's rules).
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config-error.js';
import type { KvShape } from '../core/kv-transfer.js';
import type { CardFileKind, ModelFiles } from './resolve-model.js';

export interface ModelInfo {
  contextLength: number;
  vocabSize: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
  /** The attention shape for KV-size estimates; null when config.json lacks it. */
  kvShape: KvShape | null;
}

/** Used when neither config.json nor tokenizer.json says; the Llama/Mistral size, a harmless guess for a mock. */
export const DEFAULT_VOCAB_SIZE = 32000;

/**
 * context_length is a u32 in the card; transformers writes int(1e30) as a "no limit" sentinel for
 * model_max_length, and anything beyond u32 would make the frontend reject the card.
 */
const MAX_CONTEXT_LENGTH = 0xffff_ffff;

type Json = Record<string, unknown>;

export function readModelInfo(files: ModelFiles): ModelInfo {
  const config = readJson(files, 'config');
  const tokenizer = readJson(files, 'tokenizer');
  const tokenizerConfig = readJson(files, 'tokenizerConfig');
  const generationConfig = readJson(files, 'generationConfig');
  // Multimodal configs (Llama 4, Gemma 3, Qwen-VL…) keep the language model's fields under text_config.
  const textConfig = config && isObject(config.text_config) ? config.text_config : null;
  const fromConfig = (key: string): unknown => config?.[key] ?? textConfig?.[key];

  const vocab = tokenizer ? tokenizerVocab(tokenizer) : null;

  return {
    contextLength: contextLength(fromConfig('max_position_embeddings'), tokenizerConfig?.model_max_length),
    vocabSize: asCount(fromConfig('vocab_size'), MAX_CONTEXT_LENGTH) ?? vocab?.size ?? DEFAULT_VOCAB_SIZE,
    eosTokenIds: unique([
      ...tokenIds(fromConfig('eos_token_id')),
      ...tokenIds(generationConfig?.eos_token_id),
      ...tokenIds(lookupToken(vocab, tokenizerConfig?.eos_token)),
    ]),
    bosTokenId:
      tokenIds(fromConfig('bos_token_id'))[0] ??
      tokenIds(generationConfig?.bos_token_id)[0] ??
      tokenIds(lookupToken(vocab, tokenizerConfig?.bos_token))[0] ??
      null,
    kvShape: kvShape(config && textConfig ? textConfig : config),
  };
}

/** Dynamo reads the text sub-config when there is one (`get_text_config()`), else the config itself. */
function kvShape(config: Json | null): KvShape | null {
  if (!config) return null;
  const count = (key: string): number | undefined => asCount(config[key], 1 << 30);
  const layers = count('num_hidden_layers');
  const attentionHeads = count('num_attention_heads');
  const hiddenSize = count('hidden_size');
  const kvHeads = count('num_key_value_heads') ?? count('num_kv_heads') ?? attentionHeads;
  if (layers === undefined || attentionHeads === undefined || hiddenSize === undefined || kvHeads === undefined) return null;
  const dtype = config.dtype ?? config.torch_dtype;
  return { layers, kvHeads, hiddenSize, attentionHeads, dtype: typeof dtype === 'string' ? dtype : null };
}

function contextLength(maxPositionEmbeddings: unknown, modelMaxLength: unknown): number {
  return asCount(maxPositionEmbeddings, MAX_CONTEXT_LENGTH) ?? asCount(modelMaxLength, MAX_CONTEXT_LENGTH) ?? 0;
}

/** A positive integer not above `max`, else undefined (so the next source is consulted). */
function asCount(v: unknown, max: number): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= max ? v : undefined;
}

function tokenIds(v: unknown): number[] {
  const list = Array.isArray(v) ? v : [v];
  return list.filter((x): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 0xffff_ffff);
}

function unique(ids: number[]): number[] {
  return [...new Set(ids)];
}

interface TokenizerVocab {
  ids: Map<string, number>;
  /** max id + 1 over model.vocab and added_tokens */
  size: number | undefined;
}

function tokenizerVocab(tokenizer: Json): TokenizerVocab {
  const ids = new Map<string, number>();
  let maxId = -1;
  const add = (token: unknown, id: unknown): void => {
    if (typeof token !== 'string' || typeof id !== 'number' || !Number.isInteger(id) || id < 0) return;
    ids.set(token, id);
    if (id > maxId) maxId = id;
  };
  const model = isObject(tokenizer.model) ? tokenizer.model : null;
  const vocab = model?.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: [[piece, score], …], the id is the position.
    vocab.forEach((entry, i) => add(Array.isArray(entry) ? entry[0] : undefined, i));
  } else if (isObject(vocab)) {
    // BPE / WordLevel / WordPiece: {token: id}
    for (const [token, id] of Object.entries(vocab)) add(token, id);
  }
  // Added tokens go last so they win, as in tokenizers where the added vocabulary is consulted first.
  if (Array.isArray(tokenizer.added_tokens)) {
    for (const t of tokenizer.added_tokens) if (isObject(t)) add(t.content, t.id);
  }
  return { ids, size: maxId >= 0 ? maxId + 1 : undefined };
}

/** tokenizer_config tokens are either "text" or an AddedToken object {"content": "text", …}. */
function lookupToken(vocab: TokenizerVocab | null, token: unknown): number | undefined {
  const text = typeof token === 'string' ? token : isObject(token) && typeof token.content === 'string' ? token.content : null;
  return text === null || vocab === null ? undefined : vocab.ids.get(text);
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Missing files are normal (every file is optional here); unreadable or malformed ones are errors worth
 * stopping for: a ConfigError naming --model-path and the file (the CLI exits 2 with that one line).
 */
function readJson(files: ModelFiles, kind: CardFileKind): Json | null {
  const path = files.files.get(kind);
  if (path === undefined) return null;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ConfigError('--model-path', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(sanitizeNonFinite(text));
  } catch (err) {
    throw new ConfigError('--model-path', `${path} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!isObject(parsed)) throw new ConfigError('--model-path', `${path} is not valid JSON: expected an object at the top level`);
  return parsed;
}

/**
 * Python's json.dump writes NaN/Infinity, and some real configs (e.g. Nemotron-H's time_step_limit) carry
 * them; Dynamo reads config.json with a JSON5 parser for that reason. Replacing the bare literals with null
 * outside strings keeps such configs loadable without affecting any field we read.
 */
function sanitizeNonFinite(text: string): string {
  if (!/NaN|Infinity/.test(text)) return text;
  return text.replace(/"(?:[^"\\]|\\.)*"|-?\bInfinity\b|\bNaN\b/g, (m) => (m.startsWith('"') ? m : 'null'));
}
