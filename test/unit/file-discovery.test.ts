// File discovery as Dynamo's FileStore keeps it: names, atomic create-if-absent, keep-alive, expiry, clean-up.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { FILE_TTL_MS, FileDiscovery } from '../../src/adapters/file-discovery.js';
import { fileReader } from '../../src/client/discovery-reader.js';
import { waitFor } from '../helpers/servers.js';

const log = pino({ level: 'silent' });
const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});
function root(): string {
  const r = mkdtempSync(join(tmpdir(), 'file-kv-'));
  roots.push(r);
  return r;
}
const KEY = (hex: string) => `v1/instances/dynamo/backend/generate/${hex}`;

describe('FileDiscovery', () => {
  it('writes one file per record under {root}/{bucket} with the percent-encoded key as its name', async () => {
    const r = root();
    const d = new FileDiscovery(r, log);
    const s = await d.open();
    expect(typeof s.instanceId).toBe('bigint');
    const hex = s.instanceId.toString(16);
    expect(await s.create(KEY(hex), '{"type":"Endpoint"}')).toBe('created');
    expect(await s.create(`v1/mdc/dynamo/backend/generate/${hex}`, '{"type":"Model"}')).toBe('created');
    expect(readdirSync(join(r, 'v1', 'instances'))).toEqual([`dynamo%2Fbackend%2Fgenerate%2F${hex}`]);
    expect(readFileSync(join(r, 'v1', 'instances', `dynamo%2Fbackend%2Fgenerate%2F${hex}`), 'utf8')).toBe('{"type":"Endpoint"}');
    // A frontend-side reader decodes the names back into keys.
    expect([...(await fileReader(r).list('v1/instances/dynamo/'))]).toEqual([[KEY(hex), '{"type":"Endpoint"}']]);
    await s.close();
    await d.stop();
  });

  it('keeps an existing record as it is (create-if-absent) and leaves no temp file behind', async () => {
    const r = root();
    const s = await new FileDiscovery(r, log).open();
    expect(await s.create(KEY('1'), 'first')).toBe('created');
    expect(await s.create(KEY('1'), 'second')).toBe('exists');
    const dir = join(r, 'v1', 'instances');
    expect(readdirSync(dir)).toEqual(['dynamo%2Fbackend%2Fgenerate%2F1']);
    expect(readFileSync(join(dir, 'dynamo%2Fbackend%2Fgenerate%2F1'), 'utf8')).toBe('first');
    await s.close();
  });

  it('gives every worker its own random u64 instance id', async () => {
    const d = new FileDiscovery(root(), log);
    const ids = await Promise.all(Array.from({ length: 50 }, () => d.open().then((s) => s.instanceId)));
    expect(new Set(ids).size).toBe(50);
    expect(ids.every((id) => id >= 0n && id <= 0xffff_ffff_ffff_ffffn)).toBe(true);
    expect(ids.some((id) => id > 2n ** 53n)).toBe(true);
  });

  it('keep-alive touches its own records and sweeps expired files, other processes\' and stale temp files alike', async () => {
    const r = root();
    const d = new FileDiscovery(r, log);
    const s = await d.open();
    await s.create(KEY('a1'), 'mine');
    const dir = join(r, 'v1', 'instances');
    const mine = join(dir, 'dynamo%2Fbackend%2Fgenerate%2Fa1');
    const dead = join(dir, 'dynamo%2Fbackend%2Fgenerate%2Fdead');
    const fresh = join(dir, 'dynamo%2Fbackend%2Fgenerate%2Ffresh');
    const tmp = join(dir, '.tmp_00000000000000ff');
    mkdirSync(join(dir, 'subdir'));
    for (const f of [dead, fresh, tmp]) writeFileSync(f, 'x');
    const now = Date.now();
    const old = new Date(now - FILE_TTL_MS - 5_000);
    for (const f of [mine, dead, tmp]) utimesSync(f, old, old);
    await d.keepAlive(now);
    expect(readdirSync(dir).sort()).toEqual(['dynamo%2Fbackend%2Fgenerate%2Fa1', 'dynamo%2Fbackend%2Fgenerate%2Ffresh', 'subdir']);
    expect(statSync(mine).mtimeMs).toBeGreaterThan(now - 1000);
    await s.close();
    expect(existsSync(mine)).toBe(false);
    expect(existsSync(fresh)).toBe(true);
  });

  it('writes a record again when someone deleted it (e.g. a frontend that thought it expired)', async () => {
    const r = root();
    const d = new FileDiscovery(r, log);
    const s = await d.open();
    await s.create(KEY('b2'), 'value');
    const path = join(r, 'v1', 'instances', 'dynamo%2Fbackend%2Fgenerate%2Fb2');
    rmSync(path);
    await d.keepAlive();
    expect(readFileSync(path, 'utf8')).toBe('value');
    await s.close();
    await d.keepAlive();
    expect(existsSync(path)).toBe(false);
  });

  it('makes a bucket directory once, and again when someone removed it', async () => {
    const r = root();
    const d = new FileDiscovery(r, log);
    const s = await d.open();
    await s.create(KEY('d4'), 'first');
    rmSync(join(r, 'v1'), { recursive: true });
    expect(await s.create(KEY('e5'), 'second')).toBe('created');
    expect(readFileSync(join(r, 'v1', 'instances', 'dynamo%2Fbackend%2Fgenerate%2Fe5'), 'utf8')).toBe('second');
    await s.close();
  });

  it('keeps thousands of records of many sessions alive and sweeps only what is not its own', async () => {
    const r = root();
    const d = new FileDiscovery(r, log);
    const sessions = await Promise.all(Array.from({ length: 300 }, () => d.open()));
    await Promise.all(sessions.flatMap((s, i) => [s.create(KEY(`a${i}`), 'x'), s.create(`v1/mdc/dynamo/backend/generate/a${i}`, 'y')]));
    const dir = join(r, 'v1', 'instances');
    const dead = join(dir, 'dynamo%2Fbackend%2Fgenerate%2Fdead');
    writeFileSync(dead, 'x');
    const now = Date.now();
    const old = new Date(now - FILE_TTL_MS - 5_000);
    for (const name of readdirSync(dir)) utimesSync(join(dir, name), old, old);
    await d.keepAlive(now);
    expect(existsSync(dead)).toBe(false);
    const kept = [...readdirSync(dir).map((n) => join(dir, n)), ...readdirSync(join(r, 'v1', 'mdc')).map((n) => join(r, 'v1', 'mdc', n))];
    expect(kept).toHaveLength(600);
    expect(kept.every((p) => statSync(p).mtimeMs > now - 1000)).toBe(true);
    await Promise.all(sessions.map((s) => s.close()));
    expect(readdirSync(dir)).toEqual([]);
  });

  it('runs its keep-alive well inside the TTL: every ttl/3 (at least 1 s)', async () => {
    const r = root();
    const d = new FileDiscovery(r, log, 3000);
    const s = await d.open();
    await s.create(KEY('c3'), 'v');
    const path = join(r, 'v1', 'instances', 'dynamo%2Fbackend%2Fgenerate%2Fc3');
    const old = new Date(Date.now() - 60_000);
    utimesSync(path, old, old);
    await waitFor(() => statSync(path).mtimeMs > Date.now() - 30_000, { timeoutMs: 2500, message: 'touched within 2.5 s' });
    await s.close();
    await d.stop();
  });
});
