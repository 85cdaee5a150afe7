// Reads the resolved card files once and pairs each with its BLAKE3 checksum for the ModelDeploymentCard.
import { readFile } from 'node:fs/promises';
import { ConfigError } from '../config-error.js';
import { CARD_FILE_NAMES, type CardFileKind, type ModelFiles } from './resolve-model.js';

export interface CheckedCardFile {
  path: string;
  /** Dynamo's Checksum display form: "blake3:<64 lowercase hex>" */
  checksum: string;
  bytes: Uint8Array;
}

/**
 * Entries come out in card order (model_info, tokenizer, prompt_formatter, chat template, gen_config),
 * the order mdcsum concatenates them in. The bytes are returned so nothing has to re-read a file that
 * could have changed since it was hashed.
 */
export async function checkedFiles(
  files: ModelFiles,
  blake3Hex: (b: Uint8Array) => string,
): Promise<Map<CardFileKind, CheckedCardFile>> {
  const out = new Map<CardFileKind, CheckedCardFile>();
  for (const [kind] of CARD_FILE_NAMES) {
    const path = files.files.get(kind);
    if (path === undefined) continue;
    let bytes: Uint8Array;
    try {
      const buf = await readFile(path);
      bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (err) {
      throw new ConfigError('--model-path', `cannot read model file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const hex = blake3Hex(bytes);
    if (!/^[0-9a-f]{64}$/.test(hex)) {
      throw new Error(`blake3Hex returned ${JSON.stringify(hex)}; expected 64 lowercase hex digits`);
    }
    out.set(kind, { path, checksum: `blake3:${hex}`, bytes });
  }
  return out;
}
