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
        // A bucket's directory is made once (N workers write thousands of records into a few), and
        // again if someone removed it.
        if (!this.buckets.has(dir)) await mkdir(dir, { recursive: true });
        this.buckets.add(dir);
        const outcome = await publish(dir, path, value).catch(async (err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
          await mkdir(dir, { recursive: true });
          return publish(dir, path, value);
        });
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

  /**
   * Touches every owned record (re-creating one that someone deleted), then sweeps expired files.
   * With --num-workers 1024 that is ~6,000 records: they are touched a few dozen at a time (a
   * third of the CPU of one at a time), and the sweep stats only files that are not its own.
   */
  async keepAlive(nowMs = Date.now()): Promise<void> {
    const now = new Date(nowMs);
    await eachConcurrently([...this.owned], FS_CONCURRENCY, async (record) => {
      try {
        await utimes(record.path, now, now);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !this.owned.has(record)) return;
        this.log.warn(`discovery record ${record.path} was deleted by someone else; writing it again`);
        await mkdir(record.dir, { recursive: true }).catch(() => {});
        await publish(record.dir, record.path, record.value).catch((e: Error) => this.log.warn(`cannot rewrite ${record.path}: ${e.message}`));
      }
    });
    const mine = new Set([...this.owned].map((record) => record.path));
    for (const dir of this.buckets) await this.sweep(dir, nowMs, mine);
  }

  /** Deletes expired files in `dir`; `mine` (just touched) are not looked at. */
  private async sweep(dir: string, nowMs: number, mine: ReadonlySet<string>): Promise<void> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    const others = names.map((name) => join(dir, name)).filter((path) => !mine.has(path));
    await eachConcurrently(others, FS_CONCURRENCY, async (path) => {
      try {
        const st = await stat(path);
        if (st.isFile() && st.mtimeMs < nowMs - this.ttlMs) await unlink(path);
      } catch {
        // Gone already, or not ours to read: the next sweep will see.
      }
    });
  }
}

/** File operations a keep-alive keeps in flight at once. */
const FS_CONCURRENCY = 32;

/** Runs `fn` on every item, at most `width` at a time; `fn` must not reject. */
async function eachConcurrently<T>(items: readonly T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane));
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
