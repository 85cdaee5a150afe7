// Minimal NumPy .npy/.npz reader and writer for numeric arrays (profile grids and test fixtures).
import { unzipSync, zipSync, type Zippable } from 'fflate';

export interface NpyArray {
  shape: number[];
  data: Float64Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

type Reader = (view: DataView, offset: number, littleEndian: boolean) => number;

// Only plain numeric dtypes: profile grids never need bool, complex or structured arrays.
const DTYPES: Record<string, { size: number; read: Reader }> = {
  f8: { size: 8, read: (v, o, le) => v.getFloat64(o, le) },
  f4: { size: 4, read: (v, o, le) => v.getFloat32(o, le) },
  // 64-bit integers lose precision above 2^53; acceptable for token counts and timings.
  i8: { size: 8, read: (v, o, le) => Number(v.getBigInt64(o, le)) },
  i4: { size: 4, read: (v, o, le) => v.getInt32(o, le) },
  i2: { size: 2, read: (v, o, le) => v.getInt16(o, le) },
  i1: { size: 1, read: (v, o) => v.getInt8(o) },
  u8: { size: 8, read: (v, o, le) => Number(v.getBigUint64(o, le)) },
  u4: { size: 4, read: (v, o, le) => v.getUint32(o, le) },
  u2: { size: 2, read: (v, o, le) => v.getUint16(o, le) },
  u1: { size: 1, read: (v, o) => v.getUint8(o) },
};

function parseHeader(header: string): { descr: string; fortran: boolean; shape: number[] } {
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`NPY header is malformed: ${header.trim()}`);
  const dims = shape[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => {
      const n = Number(s.replace(/L$/, '')); // Python 2 era files may write "3L"
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`NPY header has an invalid shape: (${shape[1]})`);
      return n;
    });
  return { descr: descr[1], fortran: fortran[1] === 'True', shape: dims };
}

/** Reorder a column-major buffer into row-major so callers only ever see C order. */
function fortranToC(shape: number[], src: Float64Array): Float64Array {
  if (shape.length < 2) return src;
  const out = new Float64Array(src.length);
  const fStrides: number[] = [];
  let s = 1;
  for (const d of shape) {
    fStrides.push(s);
    s *= d;
  }
  const idx = new Array<number>(shape.length).fill(0);
  for (let c = 0; c < out.length; c++) {
    let f = 0;
    for (let k = 0; k < shape.length; k++) f += idx[k] * fStrides[k];
    out[c] = src[f];
    // Advance the multi-index in C order (last axis fastest).
    for (let k = shape.length - 1; k >= 0; k--) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  return out;
}

/** Parse one .npy file (format 1.0, 2.0 or 3.0) into a C-ordered Float64Array. */
export function parseNpy(bytes: Uint8Array): NpyArray {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new Error('not an NPY file: bad magic (expected \\x93NUMPY)');
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerStart: number;
  let headerLen: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error('NPY file truncated in header length');
    headerLen = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new Error(`unsupported NPY format version ${major}.${bytes[7]}`);
  }
  const dataStart = headerStart + headerLen;
  if (dataStart > bytes.length) throw new Error('NPY file truncated in header');
  // Version 3.0 only differs by allowing UTF-8 in the header; 1.0/2.0 are latin1.
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(headerStart, dataStart));
  const { descr, fortran, shape } = parseHeader(header);

  const m = /^([<>|=])?([a-z]\d+)$/.exec(descr);
  const dtype = m ? DTYPES[m[2]] : undefined;
  if (!m || !dtype) {
    throw new Error(`unsupported NPY dtype '${descr}' (supported: f8 f4 i8 i4 i2 i1 u8 u4 u2 u1)`);
  }
  const littleEndian = m[1] !== '>';

  const count = shape.reduce((a, b) => a * b, 1);
  const expected = count * dtype.size;
  const available = bytes.length - dataStart;
  if (available !== expected) {
    throw new Error(`NPY data size mismatch: shape (${shape.join(', ')}) of '${descr}' needs ${expected} bytes, found ${available}`);
  }
  const data = new Float64Array(count);
  for (let i = 0; i < count; i++) data[i] = dtype.read(view, dataStart + i * dtype.size, littleEndian);
  return { shape, data: fortran ? fortranToC(shape, data) : data };
}

/** Parse an .npz (zip of .npy entries, stored or deflated); keys are entry names without ".npy". */
export function parseNpz(bytes: Uint8Array): Map<string, NpyArray> {
  let entries: Record<string, Uint8Array>;
  try {
    entries = unzipSync(bytes);
  } catch (err) {
    throw new Error(`not a valid NPZ (zip) archive: ${(err as Error).message}`);
  }
  const out = new Map<string, NpyArray>();
  for (const [name, content] of Object.entries(entries)) {
    if (!name.endsWith('.npy')) continue; // directories or stray files are not arrays
    const key = name.slice(0, -'.npy'.length);
    try {
      out.set(key, parseNpy(content));
    } catch (err) {
      throw new Error(`NPZ entry '${name}': ${(err as Error).message}`);
    }
  }
  return out;
}

/** Encode a C-ordered little-endian float64 array as NPY format 1.0 (2.0 if the header is huge). */
export function encodeNpy(shape: number[], data: Float64Array): Uint8Array {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new Error(`shape (${shape.join(', ')}) needs ${count} values, got ${data.length}`);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '<f8', 'fortran_order': False, 'shape': ${shapeText}, }`;
  // numpy pads the whole preamble to a multiple of 64 so the data is aligned for memory mapping.
  let preamble = 10;
  let padded = Math.ceil((preamble + dict.length + 1) / 64) * 64;
  const v1 = padded - preamble <= 0xffff; // 1.0 stores the header length as uint16
  if (!v1) {
    preamble = 12;
    padded = Math.ceil((preamble + dict.length + 1) / 64) * 64;
  }
  const header = dict + ' '.repeat(padded - preamble - dict.length - 1) + '\n';
  const out = new Uint8Array(padded + data.length * 8);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[6] = v1 ? 1 : 2;
  out[7] = 0;
  if (v1) view.setUint16(8, header.length, true);
  else view.setUint32(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[preamble + i] = header.charCodeAt(i);
  for (let i = 0; i < data.length; i++) view.setFloat64(padded + i * 8, data[i], true);
  return out;
}

/** Encode arrays as an .npz; compress=false mirrors np.savez (stored), true mirrors np.savez_compressed. */
export function encodeNpz(arrays: Record<string, NpyArray>, compress = false): Uint8Array {
  const files: Zippable = {};
  for (const [key, arr] of Object.entries(arrays)) files[`${key}.npy`] = encodeNpy(arr.shape, arr.data);
  return zipSync(files, { level: compress ? 6 : 0 });
}
