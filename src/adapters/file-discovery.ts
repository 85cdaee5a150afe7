// File discovery (DYN_DISCOVERY_BACKEND=file): one file per record under DYN_FILE_KV, kept alive by its mtime.
//
// As Dynamo's FileStore (lib/runtime/src/storage/kv/file.rs) does it: a bucket is a directory
// (`{root}/v1/instances`), a record is one file in it named by the percent-encoded key, with the
// compact record JSON as its only content. A new record is written to `.tmp_{16 hex}` and published
// with link() (create-if-absent: an existing record is left as it is, as Dynamo ≥ 1.3 does), so a
// watcher never sees a half-written file. Every max(ttl/3, 1 s) the owner touches its files' mtime
// and deletes any file in its buckets older than the TTL, its own stale temp files and other
// processes' dead records alike. On close the owner deletes its files. The instance id is a random
// u64 per worker (Dynamo: one per DistributedRuntime).
import { randomBytes } from 'node:crypto';
import { link, mkdir, readdir, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { fileStoreName, splitBucketKey } from '../dynamo/names.js';
import type { Discovery, DiscoverySession } from '../dynamo/registration.js';

/** Dynamo's DEFAULT_TTL: "same as our etcd lease expiry". */
export const FILE_TTL_MS = 10_000;

const randomU64 = (): bigint => randomBytes(8).readBigUInt64BE(0);

interface OwnedRecord {
  path: string;
  dir: string;
  value: string;
}

export class FileDiscovery implements Discovery {
  private readonly owned = new Set<OwnedRecord>();
  private readonly buckets = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;

  constructor(
    readonly root: string,
    private readonly log: Logger,
    private readonly ttlMs = FILE_TTL_MS,
  ) {}

  /** The path a key's record lives at. */
  pathOf(key: string): { dir: string; path: string } {
    const { bucket, key: rel } = splitBucketKey(key);
    const dir = join(this.root, bucket);
    return { dir, path: join(dir, fileStoreName(rel)) };
  }

  async open(): Promise<DiscoverySession> {
    const mine = new Set<OwnedRecord>();
    const session: DiscoverySession = {
      instanceId: randomU64(),
      create: async (key, value) => {
        const { dir, path } = this.pathOf(key);
        await mkdir(dir, { recursive: true });
        this.buckets.add(dir);
        const outcome = await publish(dir, path, value);
        if (outcome === 'created') {
          const record = { path, dir, value };
          mine.add(record);
          this.owned.add(record);
          this.startKeepAlive();
        }
        return outcome;
      },
      remove: async (key) => {
        const { path } = this.pathOf(key);
        for (const record of mine) {
          if (record.path !== path) continue;
          mine.delete(record);
          this.owned.delete(record);
          await unlink(path).catch(() => {});
        }
      },
      close: async () => {
        for (const record of mine) {
          this.owned.delete(record);
          await unlink(record.path).catch(() => {});
        }
        mine.clear();
      },
    };
    return session;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
  }

  private startKeepAlive(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.ticking ??= this.keepAlive().finally(() => (this.ticking = null));
    }, Math.max(this.ttlMs / 3, 1000));
    this.timer.unref();
  }

  /** Touches every owned record (re-creating one that someone deleted), then sweeps expired files. */
  async keepAlive(nowMs = Date.now()): Promise<void> {
    const now = new Date(nowMs);
    for (const record of this.owned) {
      try {
        await utimes(record.path, now, now);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !this.owned.has(record)) continue;
        this.log.warn(`discovery record ${record.path} was deleted by someone else; writing it again`);
        await mkdir(record.dir, { recursive: true }).catch(() => {});
        await publish(record.dir, record.path, record.value).catch((e: Error) => this.log.warn(`cannot rewrite ${record.path}: ${e.message}`));
      }
    }
    for (const dir of this.buckets) await this.sweep(dir, nowMs);
  }

  private async sweep(dir: string, nowMs: number): Promise<void> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const path = join(dir, name);
      try {
        const st = await stat(path);
        if (st.isFile() && st.mtimeMs < nowMs - this.ttlMs) await unlink(path);
      } catch {
        // Gone already, or not ours to read: the next sweep will see.
      }
    }
  }
}

/** Writes a temp file in `dir` and links it to `path` unless `path` exists. */
async function publish(dir: string, path: string, value: string): Promise<'created' | 'exists'> {
  const tmp = join(dir, `.tmp_${randomBytes(8).toString('hex')}`);
  await writeFile(tmp, value, { flag: 'wx' });
  try {
    await link(tmp, path);
    return 'created';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return 'exists';
    throw err;
  } finally {
    await unlink(tmp).catch(() => {});
  }
}
