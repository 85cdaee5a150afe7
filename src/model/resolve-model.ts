// Resolves --model-path (local dir, HF cache, or HF hub download) to the model's card files.
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, readFile, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { redactCredentials } from '../redact.js';

export type CardFileKind = 'config' | 'tokenizer' | 'tokenizerConfig' | 'generationConfig' | 'chatTemplate';

export interface ModelFiles {
  dir: string | null;
  files: Map<CardFileKind, string /* absolute path */>;
  source: 'local' | 'hf-cache' | 'hub' | 'none';
}

export interface ResolveOptions {
  env: Record<string, string | undefined>;
  log: (level: 'info' | 'warn', msg: string) => void;
  fetchImpl?: typeof fetch;
  /** Per-file download timeout (headers and body), default 10 s. */
  timeoutMs?: number;
}

/** File names in the order the card lists them (model_info, tokenizer, prompt_formatter, chat template, gen_config). */
export const CARD_FILE_NAMES: ReadonlyArray<readonly [CardFileKind, string]> = [
  ['config', 'config.json'],
  ['tokenizer', 'tokenizer.json'],
  ['tokenizerConfig', 'tokenizer_config.json'],
  ['chatTemplate', 'chat_template.jinja'],
  ['generationConfig', 'generation_config.json'],
];

/** Without these two the frontend cannot build a Tokens+Chat pipeline, so a download lacking them is a failure. */
const REQUIRED_FOR_DOWNLOAD: ReadonlySet<CardFileKind> = new Set<CardFileKind>(['config', 'tokenizer']);

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_ENDPOINT = 'https://huggingface.co';

export async function resolveModelFiles(modelPath: string, opts: ResolveOptions): Promise<ModelFiles> {
  if (typeof modelPath !== 'string' || modelPath.length === 0) {
    throw new TypeError('resolveModelFiles: modelPath must be a non-empty string');
  }

  // (a) An existing directory wins even if it also looks like a repo id, as in Dynamo and huggingface_hub.
  const localDir = resolve(modelPath);
  if (await isDirectory(localDir)) {
    const files = await presentCardFiles(localDir);
    opts.log('info', `model files for ${modelPath}: local directory ${localDir} (${describe(files)})`);
    return { dir: localDir, files, source: 'local' };
  }

  const repoId = parseRepoId(modelPath);
  if (repoId === null) return none();

  // (b) HF cache
  const repoDir = join(hubCacheDir(opts.env), repoFolderName(repoId));
  const snapshot = await findCachedSnapshot(repoDir);
  if (snapshot !== null) {
    const files = await presentCardFiles(snapshot);
    opts.log('info', `model files for ${repoId}: HF cache ${snapshot} (${describe(files)})`);
    return { dir: snapshot, files, source: 'hf-cache' };
  }

  // (c) hub download
  if (isTruthy(opts.env.HF_HUB_OFFLINE || opts.env.TRANSFORMERS_OFFLINE)) return none();
  const downloaded = await downloadToCache(repoId, repoDir, opts);
  if (downloaded !== null) {
    opts.log('info', `model files for ${repoId}: downloaded to ${downloaded.dir} (${describe(downloaded.files)})`);
    return downloaded;
  }

  // (d) the caller owns the single "no model files" warning
  return none();
}

function none(): ModelFiles {
  return { dir: null, files: new Map(), source: 'none' };
}

function describe(files: Map<CardFileKind, string>): string {
  return files.size === 0 ? 'no card files' : CARD_FILE_NAMES.filter(([k]) => files.has(k)).map(([, n]) => n).join(', ');
}

/** huggingface_hub's `_is_true`. */
export function isTruthy(value: string | undefined): boolean {
  return value !== undefined && ['1', 'true', 'yes', 'on'].includes(value.trim().toLowerCase());
}

/**
 * Accepts `name` or `org/name` with huggingface_hub's validate_repo_id rules, so that a mistyped local
 * path such as `./models/foo` or `/data/x` is never sent to the hub or turned into a cache folder name.
 */
export function parseRepoId(s: string): string | null {
  if (s.includes('--') || s.includes('..') || s.endsWith('.git')) return null;
  const seg = '[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?';
  const m = new RegExp(`^(?:${seg}/)?(${seg})$`).exec(s);
  return m !== null && m[1].length <= 96 ? s : null;
}

export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}

/** Same precedence as huggingface_hub.constants (the HUGGINGFACE_HUB_CACHE / XDG names are its legacy fallbacks). */
export function hubCacheDir(env: Record<string, string | undefined>): string {
  const explicit = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
  if (explicit) return resolve(expandHome(explicit, env));
  if (env.HF_HOME) return resolve(expandHome(env.HF_HOME, env), 'hub');
  const xdg = env.XDG_CACHE_HOME ? expandHome(env.XDG_CACHE_HOME, env) : join(home(env), '.cache');
  return resolve(xdg, 'huggingface', 'hub');
}

function home(env: Record<string, string | undefined>): string {
  return env.HOME || homedir();
}

function expandHome(p: string, env: Record<string, string | undefined>): string {
  return p === '~' || p.startsWith('~/') ? join(home(env), p.slice(1)) : p;
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** stat follows symlinks: HF cache snapshots are symlinks into blobs/, and a dangling one counts as absent. */
async function isReadableFile(p: string): Promise<boolean> {
  try {
    if (!(await stat(p)).isFile()) return false;
    await access(p, fsConstants.R_OK);
    return true;
  } catch {
    return false;
  }
}

async function presentCardFiles(dir: string): Promise<Map<CardFileKind, string>> {
  const files = new Map<CardFileKind, string>();
  for (const [kind, name] of CARD_FILE_NAMES) {
    const p = join(dir, name);
    if (await isReadableFile(p)) files.set(kind, p);
  }
  return files;
}

/** refs/main's snapshot if it is usable, else the newest snapshot holding config.json; null when none qualifies. */
async function findCachedSnapshot(repoDir: string): Promise<string | null> {
  const snapshotsDir = join(repoDir, 'snapshots');
  let ref: string | null = null;
  try {
    ref = (await readFile(join(repoDir, 'refs', 'main'), 'utf8')).trim();
  } catch {
    ref = null;
  }
  // A ref is a bare commit hash or branch name; anything path-like would escape the snapshots dir.
  if (ref && /^[A-Za-z0-9._-]+$/.test(ref) && ref !== '.' && ref !== '..') {
    const dir = join(snapshotsDir, ref);
    if (await isReadableFile(join(dir, 'config.json'))) return dir;
  }

  let entries: string[];
  try {
    entries = await readdir(snapshotsDir);
  } catch {
    return null;
  }
  let best: { dir: string; mtimeMs: number } | null = null;
  for (const name of entries) {
    if (name.startsWith('.')) continue;
    const dir = join(snapshotsDir, name);
    let mtimeMs: number;
    try {
      const st = await stat(dir);
      if (!st.isDirectory()) continue;
      mtimeMs = st.mtimeMs;
    } catch {
      continue;
    }
    if (!(await isReadableFile(join(dir, 'config.json')))) continue;
    // Ties broken by name so the choice is deterministic.
    if (best === null || mtimeMs > best.mtimeMs || (mtimeMs === best.mtimeMs && dir > best.dir)) {
      best = { dir, mtimeMs };
    }
  }
  return best?.dir ?? null;
}

class DownloadError extends Error {}

/**
 * Fetches the card files (never weights) into `models--…/snapshots/main` with refs/main = "main".
 * Everything is fetched before anything is written, so a failed download never leaves a snapshot that
 * a later start would mistake for a complete cache entry; config.json is renamed into place last because
 * its presence is what marks a snapshot as usable.
 */
async function downloadToCache(repoId: string, repoDir: string, opts: ResolveOptions): Promise<ModelFiles | null> {
  const fetchImpl = opts.fetchImpl ?? globalThis.fetch;
  const endpoint = (opts.env.HF_ENDPOINT || DEFAULT_ENDPOINT).replace(/\/+$/, '');
  const token = opts.env.HF_TOKEN || opts.env.HUGGING_FACE_HUB_TOKEN;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const headers: Record<string, string> = { 'user-agent': 'dynamo-mocker' };
  if (token) headers.authorization = `Bearer ${token}`;

  const fetchOne = async (name: string): Promise<Uint8Array | null> => {
    const url = `${endpoint}/${repoId}/resolve/main/${name}`;
    let res: Response;
    try {
      // The signal also bounds the body read, so a stalled transfer cannot hang startup.
      res = await fetchImpl(url, { headers, redirect: 'follow', signal: AbortSignal.timeout(timeoutMs) });
      if (res.status === 404) {
        await res.body?.cancel().catch(() => undefined);
        return null;
      }
      if (!res.ok) {
        await res.body?.cancel().catch(() => undefined);
        const hint = res.status === 401 || res.status === 403 ? (token ? ' (gated or private repo?)' : ' (set HF_TOKEN?)') : '';
        throw new DownloadError(`${name}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}${hint}`);
      }
      return new Uint8Array(await res.arrayBuffer());
    } catch (err) {
      if (err instanceof DownloadError) throw err;
      throw new DownloadError(`${name}: ${errorText(err, timeoutMs)}`);
    }
  };

  let fetched: Array<[CardFileKind, string, Uint8Array | null]>;
  try {
    // config.json first: an unknown repo or an unreachable hub then costs one request, not five.
    const [firstKind, firstName] = CARD_FILE_NAMES[0];
    const first = await fetchOne(firstName);
    if (first === null) throw new DownloadError(`${firstName}: not found (HTTP 404)`);
    const rest = await Promise.all(
      CARD_FILE_NAMES.slice(1).map(async ([kind, name]) => [kind, name, await fetchOne(name)] as [CardFileKind, string, Uint8Array | null]),
    );
    fetched = [[firstKind, firstName, first], ...rest];
    for (const [kind, name, bytes] of fetched) {
      if (bytes === null && REQUIRED_FOR_DOWNLOAD.has(kind)) throw new DownloadError(`${name}: not found (HTTP 404)`);
    }
  } catch (err) {
    opts.log('warn', redactCredentials(`could not download model files for ${repoId} from ${endpoint}: ${err instanceof Error ? err.message : String(err)}`));
    return null;
  }

  const snapshot = join(repoDir, 'snapshots', 'main');
  try {
    await mkdir(snapshot, { recursive: true });
    await mkdir(join(repoDir, 'refs'), { recursive: true });
    const ordered = [...fetched.filter(([k]) => k !== 'config'), ...fetched.filter(([k]) => k === 'config')];
    const files = new Map<CardFileKind, string>();
    for (const [kind, name, bytes] of ordered) {
      const dest = join(snapshot, name);
      if (bytes === null) {
        // A stale optional file from an older snapshot would otherwise be published as part of this revision.
        await unlink(dest).catch(() => undefined);
        continue;
      }
      await writeAtomic(dest, bytes);
      files.set(kind, dest);
    }
    await writeAtomic(join(repoDir, 'refs', 'main'), new TextEncoder().encode('main'));
    return { dir: snapshot, files: await presentCardFiles(snapshot), source: 'hub' };
  } catch (err) {
    opts.log('warn', `downloaded model files for ${repoId} but could not store them under ${repoDir}: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  }
}

/** Rename is the only synchronisation point, so concurrent workers starting together cannot see half a file. */
async function writeAtomic(dest: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${dest}.tmp.${process.pid}.${Math.random().toString(36).slice(2)}`;
  try {
    await writeFile(tmp, bytes);
    await rename(tmp, dest);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

function errorText(err: unknown, timeoutMs: number): string {
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return `timed out after ${timeoutMs} ms`;
    // undici reports "fetch failed" and hides the useful part (ECONNREFUSED, ENOTFOUND…) in cause.
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error && cause.message) return `${err.message} (${cause.message})`;
    return err.message;
  }
  return String(err);
}
