// Unit tests for the NPY/NPZ codec and the profile loader, including numpy-written fixtures.
import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeNpy, encodeNpz, parseNpy, parseNpz } from '../../src/npz/npz.js';
import { loadProfileGrid, loadTimingModel } from '../../src/npz/profile-loader.js';

const tmp = mkdtempSync(join(tmpdir(), 'npz-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let fileCounter = 0;
const writeTemp = (bytes: Uint8Array): string => {
  const path = join(tmp, `file-${fileCounter++}.npz`);
  writeFileSync(path, bytes);
  return path;
};

/** Build an NPY by hand so the parser is tested against bytes our encoder never produces. */
function buildNpy(dict: string, body: Uint8Array, major = 1): Uint8Array {
  const header = new TextEncoder().encode(dict + '\n');
  const pre = major === 1 ? 10 : 12;
  const out = new Uint8Array(pre + header.length + body.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const view = new DataView(out.buffer);
  if (major === 1) view.setUint16(8, header.length, true);
  else view.setUint32(8, header.length, true);
  out.set(header, pre);
  out.set(body, pre + header.length);
  return out;
}

function body(size: number, values: number[], write: (v: DataView, o: number, x: number) => void): Uint8Array {
  const bytes = new Uint8Array(values.length * size);
  const view = new DataView(bytes.buffer);
  values.forEach((x, i) => write(view, i * size, x));
  return bytes;
}

const dict = (descr: string, shape: string, fortran = false): string =>
  `{'descr': '${descr}', 'fortran_order': ${fortran ? 'True' : 'False'}, 'shape': ${shape}, }`;

const profile = () => ({
  prefill_isl: { shape: [3], data: Float64Array.from([100, 200, 400]) },
  prefill_ttft_ms: { shape: [3], data: Float64Array.from([10, 20, 60]) },
  decode_active_kv_tokens: { shape: [3], data: Float64Array.from([0, 1000, 3000]) },
  decode_context_length: { shape: [2], data: Float64Array.from([100, 300]) },
  decode_itl: { shape: [3, 2], data: Float64Array.from([2, 4, 6, 10, 10, 20]) },
});

describe('encodeNpy / parseNpy', () => {
  it.each<[number[], number[]]>([
    [[4], [1.5, -0, Number.NaN, 1e300]],
    [[2, 3], [1, 2, 3, 4, 5, 6]],
    [[2, 1, 2], [9, 8, 7, 6]],
    [[], [42]],
    [[0], []],
  ])('round-trips shape %j', (shape, values) => {
    const bytes = encodeNpy(shape, Float64Array.from(values));
    expect((10 + new DataView(bytes.buffer).getUint16(8, true)) % 64).toBe(0); // numpy's alignment
    const parsed = parseNpy(bytes);
    expect(parsed.shape).toEqual(shape);
    expect(parsed.data).toEqual(Float64Array.from(values));
  });

  it('rejects data that does not match the shape', () => {
    expect(() => encodeNpy([2, 2], Float64Array.from([1, 2, 3]))).toThrow(/needs 4 values, got 3/);
  });

  it.each<[string, number, number[], (v: DataView, o: number, x: number) => void]>([
    ['<f4', 4, [1.5, -2.25, 3], (v, o, x) => v.setFloat32(o, x, true)],
    ['<i4', 4, [-1, 2147483647, 0], (v, o, x) => v.setInt32(o, x, true)],
    ['<i2', 2, [-32768, 7, 32767], (v, o, x) => v.setInt16(o, x, true)],
    ['|i1', 1, [-128, 0, 127], (v, o, x) => v.setInt8(o, x)],
    ['|u1', 1, [0, 200, 255], (v, o, x) => v.setUint8(o, x)],
    ['<u2', 2, [0, 1, 65535], (v, o, x) => v.setUint16(o, x, true)],
    ['<u4', 4, [0, 1, 4294967295], (v, o, x) => v.setUint32(o, x, true)],
    ['<i8', 8, [-(2 ** 40), 0, 2 ** 53 - 1], (v, o, x) => v.setBigInt64(o, BigInt(x), true)],
    ['<u8', 8, [0, 2 ** 40, 12345], (v, o, x) => v.setBigUint64(o, BigInt(x), true)],
    ['>f8', 8, [1.25, -1e-300, 7], (v, o, x) => v.setFloat64(o, x, false)],
    ['>f4', 4, [0.5, -8, 3], (v, o, x) => v.setFloat32(o, x, false)],
    ['>i4', 4, [-5, 1 << 30, 3], (v, o, x) => v.setInt32(o, x, false)],
    ['>u2', 2, [258, 1, 65535], (v, o, x) => v.setUint16(o, x, false)],
  ])('parses dtype %s', (descr, size, values, write) => {
    const parsed = parseNpy(buildNpy(dict(descr, '(3,)'), body(size, values, write)));
    expect(parsed.shape).toEqual([3]);
    expect(parsed.data).toEqual(Float64Array.from(values));
  });

  it.each([2, 3])('parses format version %d.0 (uint32 header length)', (major) => {
    const parsed = parseNpy(buildNpy(dict('<f8', '(2,)'), body(8, [3, 4], (v, o, x) => v.setFloat64(o, x, true)), major));
    expect(parsed.data).toEqual(Float64Array.from([3, 4]));
  });

  it('transposes fortran order into C order', () => {
    // [[1,2,3],[4,5,6]] stored column-major is 1,4,2,5,3,6
    const f = (v: DataView, o: number, x: number) => v.setFloat64(o, x, true);
    const parsed = parseNpy(buildNpy(dict('<f8', '(2, 3)', true), body(8, [1, 4, 2, 5, 3, 6], f)));
    expect(parsed.shape).toEqual([2, 3]);
    expect(parsed.data).toEqual(Float64Array.from([1, 2, 3, 4, 5, 6]));
  });

  it('transposes 3-D fortran order', () => {
    // element (i,j,k) = 100i + 10j + k; fortran offset is i + 2j + 6k
    const shape = [2, 3, 4];
    const fortran = new Array<number>(24);
    const c: number[] = [];
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 3; j++)
        for (let k = 0; k < 4; k++) {
          fortran[i + 2 * j + 6 * k] = 100 * i + 10 * j + k;
          c.push(100 * i + 10 * j + k);
        }
    const parsed = parseNpy(buildNpy(dict('<f8', '(2, 3, 4)', true), body(8, fortran, (v, o, x) => v.setFloat64(o, x, true))));
    expect(parsed.shape).toEqual(shape);
    expect(parsed.data).toEqual(Float64Array.from(c));
  });

  it.each<[string, Uint8Array, RegExp]>([
    ['bad magic', new TextEncoder().encode('PK\x03\x04 definitely not numpy'), /bad magic/],
    ['unknown version', buildNpy(dict('<f8', '(0,)'), new Uint8Array(0), 4), /unsupported NPY format version 4/],
    ['unsupported dtype', buildNpy(dict('<c16', '(0,)'), new Uint8Array(0)), /unsupported NPY dtype '<c16'/],
    ['structured dtype', buildNpy(`{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }`, new Uint8Array(8)), /malformed/],
    ['truncated data', buildNpy(dict('<f8', '(3,)'), new Uint8Array(16)), /needs 24 bytes, found 16/],
    ['malformed header', buildNpy(`{'descr': '<f8'}`, new Uint8Array(0)), /malformed/],
  ])('rejects %s', (_label, bytes, message) => {
    expect(() => parseNpy(bytes)).toThrow(message);
  });
});

describe('encodeNpz / parseNpz', () => {
  it.each([false, true])('round-trips (compress=%s) and uses the matching zip method', (compress) => {
    const arrays = profile();
    const bytes = encodeNpz(arrays, compress);
    // local file header: compression method is the uint16 at offset 8 (0 = stored, 8 = deflate)
    expect(new DataView(bytes.buffer, bytes.byteOffset).getUint16(8, true)).toBe(compress ? 8 : 0);
    const parsed = parseNpz(bytes);
    expect([...parsed.keys()].sort()).toEqual(Object.keys(arrays).sort());
    for (const [key, arr] of Object.entries(arrays)) expect(parsed.get(key)).toEqual(arr);
  });

  it('rejects non-zip input', () => {
    expect(() => parseNpz(new Uint8Array([1, 2, 3, 4, 5]))).toThrow(/not a valid NPZ/);
  });
});

describe('numpy-written fixtures', () => {
  const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

  it.each(['profile-numpy.npz', 'profile-numpy-compressed.npz'])('loads %s', (name) => {
    const grid = loadProfileGrid(fixture(name));
    expect(grid.prefillIsl).toEqual(Float64Array.from([128, 1024, 4096])); // int64
    expect(grid.prefillTtftMs).toEqual(Float64Array.from([20, 35.5, 90.25]));
    expect(grid.decodeActiveKvTokens).toEqual(Float64Array.from([0, 10000, 50000])); // int32
    expect(grid.decodeContextLength).toEqual(Float64Array.from([128, 2048])); // float32
    expect(grid.decodeItlMs).toEqual(Float64Array.from([5, 6, 10, 12, 20, 25])); // was fortran order
    const model = loadTimingModel(fixture(name), () => {
      throw new Error('must not log');
    });
    expect(model.name).toBe('interpolated');
    // halfway between 128 and 1024: (20 + 35.5) / 2
    expect(model.prefillMs({ requests: 1, newTokens: 576, meanIsl: 576, meanPrefix: 0 })).toBeCloseTo(27.75, 10);
  });

  it('parses the big-endian float32 extra array', () => {
    const arrays = parseNpz(readFileSync(fixture('profile-numpy.npz')));
    expect(arrays.get('extra_be')).toEqual({ shape: [2], data: Float64Array.from([1.5, -2]) });
  });
});

describe('loadProfileGrid', () => {
  it('loads a valid profile', () => {
    const grid = loadProfileGrid(writeTemp(encodeNpz(profile(), true)));
    expect(grid.decodeItlMs).toEqual(Float64Array.from([2, 4, 6, 10, 10, 20]));
  });

  it('names the file and the missing key', () => {
    const { decode_context_length: _dropped, ...rest } = profile();
    const path = writeTemp(encodeNpz(rest));
    expect(() => loadProfileGrid(path)).toThrow(new RegExp(`${path}.*missing array 'decode_context_length'`));
  });

  it('rejects a decode_itl shape that does not match the axes', () => {
    const arrays = { ...profile(), decode_itl: { shape: [2, 3], data: Float64Array.from([2, 4, 6, 10, 10, 20]) } };
    const path = writeTemp(encodeNpz(arrays));
    expect(() => loadProfileGrid(path)).toThrow(/'decode_itl' must have shape \(3, 2\).*got \(2, 3\)/);
  });

  it('rejects 2-D axes', () => {
    const arrays = { ...profile(), prefill_isl: { shape: [3, 1], data: Float64Array.from([100, 200, 400]) } };
    expect(() => loadProfileGrid(writeTemp(encodeNpz(arrays)))).toThrow(/'prefill_isl' must be 1-D/);
  });

  it('reports validation problems with the file name', () => {
    const arrays = { ...profile(), prefill_isl: { shape: [3], data: Float64Array.from([100, 400, 200]) } };
    const path = writeTemp(encodeNpz(arrays));
    expect(() => loadProfileGrid(path)).toThrow(new RegExp(`${path}: prefill_isl must be strictly increasing`));
  });

  it('reports unreadable files', () => {
    const path = join(tmp, 'does-not-exist.npz');
    expect(() => loadProfileGrid(path)).toThrow(new RegExp(`${path}: cannot read file`));
  });
});

describe('loadTimingModel', () => {
  it('uses the polynomial model without a path, silently', () => {
    const logs: string[] = [];
    expect(loadTimingModel(undefined, (m) => logs.push(m)).name).toBe('polynomial');
    expect(logs).toEqual([]);
  });

  it('uses the interpolated model for a good file', () => {
    const logs: string[] = [];
    expect(loadTimingModel(writeTemp(encodeNpz(profile())), (m) => logs.push(m)).name).toBe('interpolated');
    expect(logs).toEqual([]);
  });

  it.each<[string, () => string]>([
    ['missing file', () => join(tmp, 'nope.npz')],
    ['corrupt file', () => writeTemp(new Uint8Array([0x50, 0x4b, 9, 9, 9]))],
    ['missing key', () => writeTemp(encodeNpz({ prefill_isl: profile().prefill_isl }))],
  ])('falls back to polynomial with one error line (%s)', (_label, makePath) => {
    const path = makePath();
    const logs: string[] = [];
    const model = loadTimingModel(path, (m) => logs.push(m));
    expect(model.name).toBe('polynomial');
    expect(model.prefillMs({ requests: 1, newTokens: 1000, meanIsl: 1000, meanPrefix: 0 })).toBeCloseTo(32.11, 2);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toContain(path);
    expect(logs[0]).toMatch(/falling back to the polynomial/);
  });
});
