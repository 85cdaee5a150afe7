// Frontend side of discovery: list the records under a key prefix, from etcd or from DYN_FILE_KV files.
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { splitBucketKey } from '../dynamo/names.js';

export interface DiscoveryReader {
  /** Records whose key starts with `prefix`: key → value text. */
  list(prefix: string): Promise<Map<string, string>>;
}

export function etcdReader(etcd: Etcd3): DiscoveryReader {
  return {
    async list(prefix) {
      return new Map(Object.entries(await etcd.getAll().prefix(prefix).strings()));
    },
  };
}

/** Reads the file backend as a Dynamo frontend's FileStore does: one file per key, temp files skipped. */
export function fileReader(root: string): DiscoveryReader {
  return {
    async list(prefix) {
      const { bucket } = splitBucketKey(`${prefix}/x`);
      const dir = join(root, bucket);
      const out = new Map<string, string>();
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        return out;
      }
      for (const name of names) {
        if (name.startsWith('.tmp_')) continue;
        let key: string;
        try {
          key = `${bucket}/${decodeURIComponent(name)}`;
        } catch {
          continue;
        }
        if (!key.startsWith(prefix)) continue;
        try {
          out.set(key, await readFile(join(dir, name), 'utf8'));
        } catch {
          // Deleted between the listing and the read.
        }
      }
      return out;
    },
  };
}
