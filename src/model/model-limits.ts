// Model facts the offline replay needs (vocabulary, context length), read without any download.
import type { ModelLimits } from '../core/engine.js';
import type { KvShape } from '../core/kv-transfer.js';
import { DEFAULT_VOCAB_SIZE, readModelInfo } from './model-info.js';
import { resolveModelFiles } from './resolve-model.js';

export async function loadModelLimits(
  modelPath: string | null,
  env: Record<string, string | undefined>,
  warn: (msg: string) => void,
): Promise<ModelLimits & { kvShape: KvShape | null }> {
  if (modelPath === null) return { vocabSize: DEFAULT_VOCAB_SIZE, contextLength: 0, kvShape: null };
  // Replay is offline by design: a local directory or the HF cache, never the hub.
  const files = await resolveModelFiles(modelPath, { env: { ...env, HF_HUB_OFFLINE: '1' }, log: () => {} });
  if (files.source === 'none') {
    warn(`no local files for model '${modelPath}'; using a ${DEFAULT_VOCAB_SIZE}-token vocabulary and no context limit`);
    return { vocabSize: DEFAULT_VOCAB_SIZE, contextLength: 0, kvShape: null };
  }
  const info = readModelInfo(files);
  return { vocabSize: info.vocabSize, contextLength: info.contextLength, kvShape: info.kvShape };
}
