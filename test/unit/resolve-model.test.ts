// Resolution order of --model-path: local dir, HF cache, hub download (fake loopback hub), nothing.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  hubCacheDir,
  isTruthy,
  parseRepoId,
  repoFolderName,
  resolveModelFiles,
  type ResolveOptions,
} from '../../src/model/resolve-model.js';
import { hubFilesFromDir, startFakeHub, type FakeHub } from '../helpers/fake-hub.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/tiny-model/', import.meta.url)).replace(/\/$/, '');
const FIXTURE_FILES = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];

let tmp: string;
let hubs: FakeHub[];
let logs: Array<{ level: string; msg: string }>;

beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'resolve-model-'));
  hubs = [];
  logs = [];
});

afterEach(async () => {
  await Promise.all(hubs.map((h) => h.close()));
  rmSync(tmp, { recursive: true, force: true });
});

/** Options with a hermetic env: HOME points into tmp so the real ~/.cache/huggingface is never consulted. */
function options(env: Record<string, string | undefined>, extra: Partial<ResolveOptions> = {}): ResolveOptions {
  return {
    env: { HOME: join(tmp, 'home'), ...env },
    log: (level, msg) => logs.push({ level, msg }),
    ...extra,
  };
}

const warnings = (): string[] => logs.filter((l) => l.level === 'warn').map((l) => l.msg);

async function hub(files: Record<string, Uint8Array | string>, opts?: Parameters<typeof startFakeHub>[1]): Promise<FakeHub> {
  const h = await startFakeHub(files, opts);
  hubs.push(h);
  return h;
}

/** A snapshot laid out like huggingface_hub does it: files are symlinks into blobs/. */
function makeSnapshot(repoDir: string, rev: string, files: Record<string, string>, mtimeSec?: number): string {
  const snap = join(repoDir, 'snapshots', rev);
  mkdirSync(snap, { recursive: true });
  mkdirSync(join(repoDir, 'blobs'), { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    const blob = join(repoDir, 'blobs', `${rev}-${name}`);
    writeFileSync(blob, content);
    symlinkSync(relative(snap, blob), join(snap, name));
  }
  if (mtimeSec !== undefined) utimesSync(snap, mtimeSec, mtimeSec);
  return snap;
}

describe('local directory', () => {
  it('uses the files that exist in an existing directory', async () => {
    const r = await resolveModelFiles(FIXTURE, options({}));
    expect(r.source).toBe('local');
    expect(r.dir).toBe(FIXTURE);
    expect(Object.fromEntries(r.files)).toEqual({
      config: join(FIXTURE, 'config.json'),
      tokenizer: join(FIXTURE, 'tokenizer.json'),
      tokenizerConfig: join(FIXTURE, 'tokenizer_config.json'),
      generationConfig: join(FIXTURE, 'generation_config.json'),
    });
    expect(warnings()).toEqual([]);
  });

  it('resolves a relative path to absolute paths', async () => {
    const r = await resolveModelFiles(relative(process.cwd(), FIXTURE), options({}));
    expect(r.source).toBe('local');
    expect(r.dir).toBe(FIXTURE);
    expect(r.files.get('config')).toBe(join(FIXTURE, 'config.json'));
  });

  it('takes a partial directory as is, including chat_template.jinja', async () => {
    const dir = join(tmp, 'partial');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), '{}');
    writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages }}');
    mkdirSync(join(dir, 'tokenizer.json')); // a directory is not a file
    const r = await resolveModelFiles(dir, options({}));
    expect(r.source).toBe('local');
    expect([...r.files.keys()].sort()).toEqual(['chatTemplate', 'config']);
    expect(r.files.get('chatTemplate')).toBe(join(dir, 'chat_template.jinja'));
  });

  it('prefers a local directory over a same-named repo id', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE));
    const cwdRepo = join(tmp, 'acme', 'tiny');
    mkdirSync(cwdRepo, { recursive: true });
    writeFileSync(join(cwdRepo, 'config.json'), '{}');
    const prev = process.cwd();
    process.chdir(tmp);
    try {
      const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'cache') }));
      expect(r.source).toBe('local');
      expect(r.dir).toBe(cwdRepo);
    } finally {
      process.chdir(prev);
    }
    expect(h.requests).toEqual([]);
  });
});

describe('HF cache', () => {
  const fixtureText = (name: string): string => readFileSync(join(FIXTURE, name), 'utf8');
  const allFixtureFiles = (): Record<string, string> => Object.fromEntries(FIXTURE_FILES.map((n) => [n, fixtureText(n)]));

  it('finds the refs/main snapshot under HF_HUB_CACHE, even when another snapshot is newer', async () => {
    const cache = join(tmp, 'hub-cache');
    const repoDir = join(cache, 'models--acme--tiny');
    const pinned = makeSnapshot(repoDir, 'a'.repeat(40), allFixtureFiles(), 1_000_000);
    makeSnapshot(repoDir, 'b'.repeat(40), { 'config.json': '{}' }, 2_000_000);
    mkdirSync(join(repoDir, 'refs'), { recursive: true });
    writeFileSync(join(repoDir, 'refs', 'main'), 'a'.repeat(40)); // no trailing newline, as huggingface_hub writes it

    const r = await resolveModelFiles('acme/tiny', options({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' }));
    expect(r.source).toBe('hf-cache');
    expect(r.dir).toBe(pinned);
    expect(r.files.get('tokenizer')).toBe(join(pinned, 'tokenizer.json'));
    expect(readFileSync(r.files.get('tokenizer')!, 'utf8')).toBe(fixtureText('tokenizer.json'));
    expect(r.files.size).toBe(4);
  });

  it('uses $HF_HOME/hub and, without refs/main, the newest snapshot that has config.json', async () => {
    const hfHome = join(tmp, 'hf-home');
    const repoDir = join(hfHome, 'hub', 'models--acme--tiny');
    makeSnapshot(repoDir, 'old', allFixtureFiles(), 1_000_000);
    const newest = makeSnapshot(repoDir, 'new', allFixtureFiles(), 2_000_000);
    makeSnapshot(repoDir, 'newer-but-no-config', { 'tokenizer.json': fixtureText('tokenizer.json') }, 3_000_000);

    const r = await resolveModelFiles('acme/tiny', options({ HF_HOME: hfHome, HF_HUB_OFFLINE: '1' }));
    expect(r.source).toBe('hf-cache');
    expect(r.dir).toBe(newest);
  });

  it('falls back to the newest snapshot when refs/main names a snapshot that is missing', async () => {
    const cache = join(tmp, 'c');
    const repoDir = join(cache, 'models--acme--tiny');
    const snap = makeSnapshot(repoDir, 'present', allFixtureFiles());
    mkdirSync(join(repoDir, 'refs'), { recursive: true });
    writeFileSync(join(repoDir, 'refs', 'main'), 'gone\n');
    const r = await resolveModelFiles('acme/tiny', options({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' }));
    expect(r.dir).toBe(snap);
  });

  it('ignores a dangling symlink (blob deleted) as a missing file', async () => {
    const cache = join(tmp, 'c');
    const repoDir = join(cache, 'models--acme--tiny');
    const snap = makeSnapshot(repoDir, 'r1', allFixtureFiles());
    rmSync(join(repoDir, 'blobs', 'r1-generation_config.json'));
    const r = await resolveModelFiles('acme/tiny', options({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' }));
    expect(r.dir).toBe(snap);
    expect(r.files.has('generationConfig')).toBe(false);
    expect(r.files.size).toBe(3);
  });

  it('supports single-segment repo ids (models--gpt2)', async () => {
    const cache = join(tmp, 'c');
    const snap = makeSnapshot(join(cache, 'models--gpt2'), 'r', { 'config.json': '{}' });
    const r = await resolveModelFiles('gpt2', options({ HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' }));
    expect(r).toMatchObject({ source: 'hf-cache', dir: snap });
  });

  it('HF_HUB_CACHE wins over HF_HOME, which wins over HOME', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b', HOME: '/h' })).toBe('/a');
    expect(hubCacheDir({ HF_HOME: '/b', HOME: '/h' })).toBe('/b/hub');
    expect(hubCacheDir({ HOME: '/h' })).toBe('/h/.cache/huggingface/hub');
    expect(hubCacheDir({ HOME: '/h', XDG_CACHE_HOME: '/x' })).toBe('/x/huggingface/hub');
    expect(hubCacheDir({ HF_HOME: '~/hf', HOME: '/h' })).toBe('/h/hf/hub');
  });
});

describe('hub download', () => {
  it('downloads into the cache layout with the bearer token, then a second start finds it offline', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny-model', FIXTURE), { requireToken: 'hf_secret' });
    const cache = join(tmp, 'cache');
    const env = { HF_ENDPOINT: h.url, HF_TOKEN: 'hf_secret', HF_HUB_CACHE: cache };

    const r = await resolveModelFiles('acme/tiny-model', options(env));
    const snap = join(cache, 'models--acme--tiny-model', 'snapshots', 'main');
    expect(r.source).toBe('hub');
    expect(r.dir).toBe(snap);
    expect([...r.files.keys()].sort()).toEqual(['config', 'generationConfig', 'tokenizer', 'tokenizerConfig']);
    for (const name of FIXTURE_FILES) {
      expect(readFileSync(join(snap, name))).toEqual(readFileSync(join(FIXTURE, name)));
    }
    expect(readFileSync(join(cache, 'models--acme--tiny-model', 'refs', 'main'), 'utf8')).toBe('main');
    expect(warnings()).toEqual([]);

    // Every card file was asked for once, always with the token; chat_template.jinja is a 404 and so absent.
    expect(h.requests.map((q) => q.path).sort()).toEqual(
      ['chat_template.jinja', ...FIXTURE_FILES].map((n) => `/acme/tiny-model/resolve/main/${n}`).sort(),
    );
    expect(h.requests.every((q) => q.auth === 'Bearer hf_secret')).toBe(true);
    expect(existsSync(join(snap, 'chat_template.jinja'))).toBe(false);

    const before = h.requests.length;
    const again = await resolveModelFiles('acme/tiny-model', options({ ...env, HF_HUB_OFFLINE: '1' }));
    expect(again).toEqual({ ...r, source: 'hf-cache' });
    // Online too: the cache is consulted before the hub.
    const online = await resolveModelFiles('acme/tiny-model', options(env));
    expect(online.source).toBe('hf-cache');
    expect(h.requests.length).toBe(before);
  });

  it('fetches the optional chat_template.jinja when the repo has one, and sends no token when none is set', async () => {
    const files = hubFilesFromDir('acme/tiny', FIXTURE);
    files['/acme/tiny/resolve/main/chat_template.jinja'] = new TextEncoder().encode('{{ messages }}');
    const h = await hub(files);
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: `${h.url}/`, HF_HUB_CACHE: join(tmp, 'c') }));
    expect(r.source).toBe('hub');
    expect(r.files.size).toBe(5);
    expect(readFileSync(r.files.get('chatTemplate')!, 'utf8')).toBe('{{ messages }}');
    expect(h.requests.every((q) => q.auth === null)).toBe(true);
    // The trailing slash of HF_ENDPOINT does not produce "//acme".
    expect(h.requests.every((q) => q.path.startsWith('/acme/tiny/resolve/main/'))).toBe(true);
  });

  it('stores under $HF_HOME/hub when only HF_HOME is set', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE));
    const hfHome = join(tmp, 'hf-home');
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HOME: hfHome }));
    expect(r.dir).toBe(join(hfHome, 'hub', 'models--acme--tiny', 'snapshots', 'main'));
  });

  it('with HF_HUB_OFFLINE=1 and nothing cached: none, without a single request', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE));
    for (const offline of ['1', 'true', 'YES', 'on']) {
      const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'c'), HF_HUB_OFFLINE: offline }));
      expect(r).toEqual({ dir: null, files: new Map(), source: 'none' });
    }
    expect(h.requests).toEqual([]);
    expect(warnings()).toEqual([]);
  });

  it('treats HF_HUB_OFFLINE=0 as online', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE));
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'c'), HF_HUB_OFFLINE: '0' }));
    expect(r.source).toBe('hub');
  });

  it('on HTTP 500: one warning, none, and nothing left in the cache', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE), { statusFor: () => 500 });
    const cache = join(tmp, 'c');
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: cache }));
    expect(r).toEqual({ dir: null, files: new Map(), source: 'none' });
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatch(/acme\/tiny.*config\.json: HTTP 500/);
    expect(existsSync(cache)).toBe(false);
  });

  it('a 500 on an optional file fails the whole download rather than caching an incomplete snapshot', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE), { statusFor: (p) => (p.endsWith('/generation_config.json') ? 503 : undefined) });
    const cache = join(tmp, 'c');
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: cache }));
    expect(r.source).toBe('none');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toContain('generation_config.json: HTTP 503');
    expect(existsSync(cache)).toBe(false);
  });

  it('a missing tokenizer.json (404) is a failure', async () => {
    const files = hubFilesFromDir('acme/tiny', FIXTURE);
    delete files['/acme/tiny/resolve/main/tokenizer.json'];
    const h = await hub(files);
    const cache = join(tmp, 'c');
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: cache }));
    expect(r.source).toBe('none');
    expect(warnings()).toEqual([expect.stringContaining('tokenizer.json: not found')]);
    expect(existsSync(cache)).toBe(false);
  });

  it('an unknown repo costs one request (config.json) and one warning', async () => {
    const h = await hub({});
    const r = await resolveModelFiles('acme/nope', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'c') }));
    expect(r.source).toBe('none');
    expect(h.requests.map((q) => q.path)).toEqual(['/acme/nope/resolve/main/config.json']);
    expect(warnings()).toHaveLength(1);
  });

  it('a gated repo without HF_TOKEN: 401 and a hint', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE), { requireToken: 't' });
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'c') }));
    expect(r.source).toBe('none');
    expect(warnings()).toEqual([expect.stringMatching(/HTTP 401.*HF_TOKEN/)]);
  });

  it('bounds each file with the timeout', async () => {
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE), { hang: (p) => p.endsWith('/tokenizer.json') });
    const cache = join(tmp, 'c');
    const t0 = Date.now();
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: cache }, { timeoutMs: 200 }));
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(r.source).toBe('none');
    expect(warnings()).toEqual([expect.stringContaining('tokenizer.json: timed out after 200 ms')]);
    expect(existsSync(cache)).toBe(false);
  });

  it('an unreachable endpoint: one warning naming the cause', async () => {
    const h = await startFakeHub({});
    const url = h.url;
    await h.close(); // nothing listens on that port now
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: url, HF_HUB_CACHE: join(tmp, 'c') }));
    expect(r.source).toBe('none');
    expect(warnings()).toEqual([expect.stringContaining('ECONNREFUSED')]);
  });

  it('uses fetchImpl and https://huggingface.co by default (stubbed: no network)', async () => {
    const urls: string[] = [];
    const fetchImpl: typeof fetch = async (input) => {
      urls.push(String(input));
      return new Response(null, { status: 404 });
    };
    const r = await resolveModelFiles('Qwen/Qwen3-0.6B', options({ HF_HUB_CACHE: join(tmp, 'c') }, { fetchImpl }));
    expect(r.source).toBe('none');
    expect(urls).toEqual(['https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main/config.json']);
  });

  it('replaces an incomplete cached snapshot and drops its stale optional files', async () => {
    const cache = join(tmp, 'c');
    const snap = join(cache, 'models--acme--tiny', 'snapshots', 'main');
    mkdirSync(snap, { recursive: true });
    writeFileSync(join(snap, 'chat_template.jinja'), 'stale'); // no config.json: not a cache hit
    const h = await hub(hubFilesFromDir('acme/tiny', FIXTURE));
    const r = await resolveModelFiles('acme/tiny', options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: cache }));
    expect(r.source).toBe('hub');
    expect(r.files.has('chatTemplate')).toBe(false);
    expect(existsSync(join(snap, 'chat_template.jinja'))).toBe(false);
  });
});

describe('nothing found', () => {
  it('a missing path that is not a repo id is never sent to the hub', async () => {
    const h = await hub({});
    for (const p of [join(tmp, 'does-not-exist'), './models/x', '../x', 'a/b/c', 'org--x/y', 'x/y.git']) {
      const r = await resolveModelFiles(p, options({ HF_ENDPOINT: h.url, HF_HUB_CACHE: join(tmp, 'c') }));
      expect(r).toEqual({ dir: null, files: new Map(), source: 'none' });
    }
    expect(h.requests).toEqual([]);
    expect(warnings()).toEqual([]);
  });

  it('throws only for programming errors', async () => {
    await expect(resolveModelFiles('', options({}))).rejects.toThrow(TypeError);
  });
});

describe('helpers', () => {
  it('parseRepoId follows huggingface_hub validate_repo_id', () => {
    for (const ok of ['gpt2', 'Qwen/Qwen3-0.6B', 'meta-llama/Llama-3.1-8B-Instruct', 'a_b/c.d-e']) expect(parseRepoId(ok)).toBe(ok);
    for (const bad of ['', '/abs', './rel', 'a/', '/a', 'a/b/c', 'a--b/c', 'a/b..c', '.hidden/x', 'a/b.', `a/${'x'.repeat(97)}`]) {
      expect(parseRepoId(bad)).toBeNull();
    }
  });

  it('repoFolderName and isTruthy', () => {
    expect(repoFolderName('Qwen/Qwen3-0.6B')).toBe('models--Qwen--Qwen3-0.6B');
    expect(repoFolderName('gpt2')).toBe('models--gpt2');
    expect(['1', 'true', 'TRUE', 'yes', 'on', ' 1 '].every(isTruthy)).toBe(true);
    expect(['0', 'false', 'no', 'off', '', undefined].some(isTruthy)).toBe(false);
  });

  it('FIXTURE is where the tests expect it', () => {
    expect(resolve(FIXTURE)).toBe(FIXTURE);
    for (const n of FIXTURE_FILES) expect(existsSync(join(FIXTURE, n))).toBe(true);
  });
});
