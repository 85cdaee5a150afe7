// JSON parse/stringify that keeps u64 values (lease ids, KV block hashes) exact by using BigInt beyond 2^53.

/** Values produced by parseJson. Integers outside the safe range are bigint; everything else as JSON.parse. */
export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | { [key: string]: JsonValue };

/** A SyntaxError that also carries the offending character offset (in UTF-16 code units). */
export class JsonSyntaxError extends SyntaxError {
  readonly position: number;
  constructor(message: string, position: number) {
    super(`${message} at position ${position}`);
    this.name = 'SyntaxError';
    this.position = position;
  }
}

/**
 * serde_json's recursion limit: every array or object entered uses one of 128 levels, and entering
 * the 128th is refused ("recursion limit exceeded"), so at most 127 levels parse, as in Dynamo.
 * Network input is untrusted: without a cap a deeply nested payload would blow the JS stack (here,
 * or in whatever walks the value later) instead of failing with a clean SyntaxError.
 */
export const RECURSION_LIMIT = 128;

// Integer lexemes of up to 15 digits are always below 2^53, so they skip the BigInt round trip.
const SAFE_DIGITS = 15;
const MAX_SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE_BIG = -MAX_SAFE_BIG;
const LONG_DIGIT_RUN = /\d{16}/;

// fatal: serde_json rejects invalid UTF-8; ignoreBOM: keep a BOM so it is rejected like JSON.parse does.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const C_QUOTE = 0x22;
const C_BACKSLASH = 0x5c;
const C_MINUS = 0x2d;
const C_ZERO = 0x30;
const C_NINE = 0x39;

class Parser {
  private pos = 0;
  private depth = 0;
  constructor(private readonly src: string) {}

  parseDocument(): JsonValue {
    this.skipWs();
    const v = this.parseValue();
    this.skipWs();
    if (this.pos < this.src.length) this.fail('Unexpected non-whitespace character after JSON');
    return v;
  }

  private fail(msg: string, at: number = this.pos): never {
    throw new JsonSyntaxError(msg, at);
  }

  private unexpected(): never {
    if (this.pos >= this.src.length) this.fail('Unexpected end of JSON input');
    this.fail(`Unexpected token ${JSON.stringify(this.src[this.pos])}`);
  }

  private skipWs(): void {
    const s = this.src;
    let p = this.pos;
    for (;;) {
      const c = s.charCodeAt(p);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.pos = p;
  }

  private parseValue(): JsonValue {
    const c = this.src.charCodeAt(this.pos);
    switch (c) {
      case C_QUOTE:
        return this.parseString();
      case 0x7b /* { */:
        return this.parseObject();
      case 0x5b /* [ */:
        return this.parseArray();
      case 0x74 /* t */:
        return this.parseLiteral('true', true);
      case 0x66 /* f */:
        return this.parseLiteral('false', false);
      case 0x6e /* n */:
        return this.parseLiteral('null', null);
      default:
        if (c === C_MINUS || (c >= C_ZERO && c <= C_NINE)) return this.parseNumber();
        return this.unexpected();
    }
  }

  private parseLiteral<T extends JsonValue>(word: string, value: T): T {
    if (!this.src.startsWith(word, this.pos)) {
      // Point at the first character that diverges, like engines do.
      let i = 0;
      while (i < word.length && this.src.charCodeAt(this.pos + i) === word.charCodeAt(i)) i++;
      this.pos += i;
      this.unexpected();
    }
    this.pos += word.length;
    return value;
  }

  private enter(): void {
    if (++this.depth >= RECURSION_LIMIT) this.fail(`Recursion limit exceeded: more than ${RECURSION_LIMIT - 1} nested arrays/objects`);
  }

  private parseArray(): JsonValue[] {
    this.enter();
    this.pos++; // [
    const out: JsonValue[] = [];
    this.skipWs();
    if (this.src.charCodeAt(this.pos) === 0x5d /* ] */) {
      this.pos++;
      this.depth--;
      return out;
    }
    for (;;) {
      this.skipWs();
      out.push(this.parseValue());
      this.skipWs();
      const c = this.src.charCodeAt(this.pos);
      if (c === 0x2c /* , */) {
        this.pos++;
        continue;
      }
      if (c === 0x5d /* ] */) {
        this.pos++;
        this.depth--;
        return out;
      }
      this.unexpected();
    }
  }

  private parseObject(): { [key: string]: JsonValue } {
    this.enter();
    this.pos++; // {
    const out: { [key: string]: JsonValue } = {};
    this.skipWs();
    if (this.src.charCodeAt(this.pos) === 0x7d /* } */) {
      this.pos++;
      this.depth--;
      return out;
    }
    for (;;) {
      this.skipWs();
      if (this.src.charCodeAt(this.pos) !== C_QUOTE) this.unexpected();
      const key = this.parseString();
      this.skipWs();
      if (this.src.charCodeAt(this.pos) !== 0x3a /* : */) this.unexpected();
      this.pos++;
      this.skipWs();
      const value = this.parseValue();
      if (key === '__proto__') {
        // Plain assignment would replace the prototype; JSON.parse defines an own property instead.
        Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
      } else {
        out[key] = value;
      }
      this.skipWs();
      const c = this.src.charCodeAt(this.pos);
      if (c === 0x2c /* , */) {
        this.pos++;
        continue;
      }
      if (c === 0x7d /* } */) {
        this.pos++;
        this.depth--;
        return out;
      }
      this.unexpected();
    }
  }

  private parseNumber(): number | bigint {
    const s = this.src;
    const start = this.pos;
    let p = start;
    const negative = s.charCodeAt(p) === C_MINUS;
    if (negative) p++;
    const intStart = p;
    // Accumulated alongside the scan so short integers (token ids) skip slice + Number().
    let acc = 0;
    let c = s.charCodeAt(p);
    if (c === C_ZERO) {
      p++;
    } else if (c >= 0x31 && c <= C_NINE) {
      do {
        acc = acc * 10 + (c - C_ZERO);
        p++;
      } while ((c = s.charCodeAt(p)) >= C_ZERO && c <= C_NINE);
    } else {
      this.pos = p;
      this.unexpected();
    }
    const intDigits = p - intStart;
    let isInteger = true;
    if (s.charCodeAt(p) === 0x2e /* . */) {
      p++;
      c = s.charCodeAt(p);
      if (!(c >= C_ZERO && c <= C_NINE)) {
        this.pos = p;
        this.unexpected();
      }
      do p++;
      while ((c = s.charCodeAt(p)) >= C_ZERO && c <= C_NINE);
      isInteger = false;
    }
    c = s.charCodeAt(p);
    if (c === 0x65 /* e */ || c === 0x45 /* E */) {
      p++;
      c = s.charCodeAt(p);
      if (c === 0x2b /* + */ || c === C_MINUS) p++;
      c = s.charCodeAt(p);
      if (!(c >= C_ZERO && c <= C_NINE)) {
        this.pos = p;
        this.unexpected();
      }
      do p++;
      while ((c = s.charCodeAt(p)) >= C_ZERO && c <= C_NINE);
      isInteger = false;
    }
    this.pos = p;
    if (isInteger && intDigits <= SAFE_DIGITS) return negative ? -acc : acc;
    const lexeme = s.slice(start, p);
    // Only plain integer lexemes can be u64/i64 on the Rust side; fractions/exponents are f64 there too.
    if (!isInteger) return Number(lexeme);
    const big = BigInt(lexeme);
    return big >= MIN_SAFE_BIG && big <= MAX_SAFE_BIG ? Number(big) : big;
  }

  private parseString(): string {
    const s = this.src;
    const len = s.length;
    let p = ++this.pos; // skip opening quote
    const start = p;
    // Fast path: no escapes, just find the closing quote.
    for (;;) {
      if (p >= len) this.fail('Unterminated string in JSON', p);
      const c = s.charCodeAt(p);
      if (c === C_QUOTE) {
        this.pos = p + 1;
        return s.slice(start, p);
      }
      if (c === C_BACKSLASH) break;
      if (c < 0x20) this.fail('Bad control character in string literal in JSON', p);
      p++;
    }
    let out = s.slice(start, p);
    let chunkStart = p;
    for (;;) {
      if (p >= len) this.fail('Unterminated string in JSON', p);
      const c = s.charCodeAt(p);
      if (c === C_QUOTE) {
        out += s.slice(chunkStart, p);
        this.pos = p + 1;
        return out;
      }
      if (c < 0x20) this.fail('Bad control character in string literal in JSON', p);
      if (c !== C_BACKSLASH) {
        p++;
        continue;
      }
      out += s.slice(chunkStart, p);
      const e = s.charCodeAt(p + 1);
      switch (e) {
        case C_QUOTE:
          out += '"';
          break;
        case C_BACKSLASH:
          out += '\\';
          break;
        case 0x2f /* / */:
          out += '/';
          break;
        case 0x62 /* b */:
          out += '\b';
          break;
        case 0x66 /* f */:
          out += '\f';
          break;
        case 0x6e /* n */:
          out += '\n';
          break;
        case 0x72 /* r */:
          out += '\r';
          break;
        case 0x74 /* t */:
          out += '\t';
          break;
        case 0x75 /* u */: {
          let code = 0;
          for (let i = 2; i < 6; i++) {
            const h = s.charCodeAt(p + i);
            let d: number;
            if (h >= C_ZERO && h <= C_NINE) d = h - C_ZERO;
            else if (h >= 0x61 && h <= 0x66) d = h - 0x61 + 10;
            else if (h >= 0x41 && h <= 0x46) d = h - 0x41 + 10;
            else return this.fail('Bad Unicode escape in JSON', p + i);
            code = (code << 4) | d;
          }
          // Surrogate halves are emitted as-is; consecutive escapes recombine, lone ones stay lone (as JSON.parse).
          out += String.fromCharCode(code);
          p += 6;
          chunkStart = p;
          continue;
        }
        default:
          return this.fail('Bad escaped character in JSON', p + 1);
      }
      p += 2;
      chunkStart = p;
    }
  }
}

/**
 * Parses JSON text (or UTF-8 bytes). Integers beyond ±(2^53-1) become bigint; everything else matches JSON.parse.
 * Throws JsonSyntaxError (a SyntaxError) with the position on invalid input, including trailing garbage.
 */
export function parseJson(text: string | Uint8Array): JsonValue {
  let src: string;
  if (typeof text === 'string') {
    src = text;
  } else {
    try {
      src = utf8Decoder.decode(text);
    } catch {
      throw new JsonSyntaxError('Invalid UTF-8 in JSON input', 0);
    }
  }
  // Fast path: without a run of 16+ digits no integer can leave the safe range, so the native parser
  // gives identical values much faster. On failure we re-parse to report a positioned JsonSyntaxError;
  // so do documents nested too deep, which the native parser would accept.
  if (!LONG_DIGIT_RUN.test(src) && !nestsTooDeep(src)) {
    try {
      return JSON.parse(src) as JsonValue;
    } catch {
      // fall through
    }
  }
  return new Parser(src).parseDocument();
}

const C_OPEN_ARRAY = 0x5b;
const C_OPEN_OBJECT = 0x7b;
const C_CLOSE_ARRAY = 0x5d;
const C_CLOSE_OBJECT = 0x7d;

/**
 * True when `src` nests arrays/objects RECURSION_LIMIT deep. Text with fewer opening brackets than
 * that (every request body in practice) is cleared by two native scans; otherwise the brackets outside
 * strings are counted. Invalid JSON may be misjudged either way; the parser reports it regardless.
 */
function nestsTooDeep(src: string): boolean {
  let openers = 0;
  for (const bracket of ['[', '{']) {
    for (let p = src.indexOf(bracket); p !== -1; p = src.indexOf(bracket, p + 1)) {
      if (++openers >= RECURSION_LIMIT) return reachesRecursionLimit(src);
    }
  }
  return false;
}

function reachesRecursionLimit(src: string): boolean {
  const len = src.length;
  let depth = 0;
  for (let p = 0; p < len; p++) {
    const c = src.charCodeAt(p);
    if (c === C_QUOTE) {
      for (p++; p < len; p++) {
        const d = src.charCodeAt(p);
        if (d === C_BACKSLASH) p++;
        else if (d === C_QUOTE) break;
      }
    } else if (c === C_OPEN_ARRAY || c === C_OPEN_OBJECT) {
      if (++depth >= RECURSION_LIMIT) return true;
    } else if (c === C_CLOSE_ARRAY || c === C_CLOSE_OBJECT) {
      depth--;
    }
  }
  return false;
}

export interface StringifyOptions {
  /** 2-space indentation in serde_json `to_vec_pretty` layout (`"key": value`, `[]`, `{}`). */
  pretty?: boolean;
}

class Writer {
  private readonly stack = new Set<object>();
  constructor(private readonly pretty: boolean) {}

  // Returns undefined for values JSON.stringify would skip (undefined, functions, symbols).
  write(holderKey: string, input: unknown, indent: string): string | undefined {
    let value = input;
    if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
      value = (value as { toJSON(key: string): unknown }).toJSON(holderKey);
    }
    if (value !== null && typeof value === 'object') {
      if (value instanceof Number) value = Number(value);
      else if (value instanceof String) value = String(value);
      else if (value instanceof Boolean) value = value.valueOf();
      else if (value instanceof BigInt) value = value.valueOf();
    }
    switch (typeof value) {
      case 'string':
        return JSON.stringify(value);
      case 'number':
        return Number.isFinite(value) ? String(value) : 'null';
      case 'bigint':
        return value.toString();
      case 'boolean':
        return value ? 'true' : 'false';
      case 'object':
        if (value === null) return 'null';
        return Array.isArray(value) ? this.writeArray(value, indent) : this.writeObject(value, indent);
      default:
        return undefined;
    }
  }

  private guard(value: object): void {
    if (this.stack.has(value)) throw new TypeError('Converting circular structure to JSON');
    this.stack.add(value);
  }

  private writeArray(arr: readonly unknown[], indent: string): string {
    if (arr.length === 0) return '[]';
    this.guard(arr);
    const inner = this.pretty ? indent + '  ' : '';
    const sep = this.pretty ? ',\n' + inner : ',';
    let out = this.pretty ? '[\n' + inner : '[';
    for (let i = 0; i < arr.length; i++) {
      if (i > 0) out += sep;
      out += this.write(String(i), arr[i], inner) ?? 'null';
    }
    out += this.pretty ? '\n' + indent + ']' : ']';
    this.stack.delete(arr);
    return out;
  }

  private writeObject(obj: object, indent: string): string {
    this.guard(obj);
    const inner = this.pretty ? indent + '  ' : '';
    const colon = this.pretty ? ': ' : ':';
    const sep = this.pretty ? ',\n' + inner : ',';
    let out = '';
    let first = true;
    const rec = obj as Record<string, unknown>;
    for (const key of Object.keys(obj)) {
      const v = this.write(key, rec[key], inner);
      if (v === undefined) continue;
      if (first) first = false;
      else out += sep;
      out += JSON.stringify(key) + colon + v;
    }
    this.stack.delete(obj);
    if (first) return '{}';
    return this.pretty ? '{\n' + inner + out + '\n' + indent + '}' : '{' + out + '}';
  }
}

/**
 * JSON.stringify-compatible serializer that writes bigint as a bare integer.
 * Unlike JSON.stringify, a top-level value with no JSON form (undefined, function, symbol) throws TypeError
 * so the return type can stay `string`.
 */
export function stringifyJson(value: unknown, options?: StringifyOptions): string {
  const out = new Writer(options?.pretty === true).write('', value, '');
  if (out === undefined) throw new TypeError(`Cannot serialize ${typeof value} as JSON`);
  return out;
}
