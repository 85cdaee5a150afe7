// Rate-limited per-request warnings: the first lines of each kind every second, the rest summarised.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { WarningLimiter, limitedWarn, reasonOf } from '../../src/log-limiter.js';

/** A pino logger that keeps its lines, and a limiter on a hand-driven clock and timer. */
function setup(opts: { perSecond?: number; summaryEveryMs?: number } = {}) {
  const lines: Array<{ level: number; msg: string; request_id?: string; worker?: number }> = [];
  const log = pino({ level: 'info', base: undefined }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  let now = 1_000_000;
  let tick: (() => void) | null = null;
  let timers = 0;
  const limiter = new WarningLimiter({
    log,
    ...opts,
    now: () => now,
    every: (_ms, f) => {
      tick = f;
      timers++;
      return () => {
        tick = null;
      };
    },
  });
  return {
    lines,
    log,
    limiter,
    advance: (ms: number) => (now += ms),
    fire: () => tick?.(),
    running: () => tick !== null,
    timersStarted: () => timers,
  };
}

describe('WarningLimiter', () => {
  it('logs the first N lines of a kind each second as they come, on the caller logger', () => {
    const t = setup({ perSecond: 3 });
    const child = t.log.child({ worker: 2 });
    for (let i = 0; i < 10; i++) t.limiter.warn('refusal', 'invalid request body', child, { request_id: `r${i}` }, `refusing request: invalid request body: ${i}`);
    expect(t.lines.map((l) => l.msg)).toEqual(['refusing request: invalid request body: 0', 'refusing request: invalid request body: 1', 'refusing request: invalid request body: 2']);
    expect(t.lines.every((l) => l.level === 40 && l.worker === 2)).toBe(true);
    expect(t.lines[0].request_id).toBe('r0');
    expect(t.limiter.suppressed('refusal')).toBe(7);
    // The next second has its own N lines.
    t.advance(1000);
    t.limiter.warn('refusal', 'invalid request body', t.log, undefined, 'refusing request: late');
    expect(t.lines.at(-1)!.msg).toBe('refusing request: late');
  });

  it('counts kinds separately', () => {
    const t = setup({ perSecond: 1 });
    t.limiter.warn('refusal', 'a', t.log, undefined, 'r1');
    t.limiter.warn('malformed-request', 'b', t.log, undefined, 'm1');
    t.limiter.warn('refusal', 'a', t.log, undefined, 'r2');
    t.limiter.warn('response-stream', 'c', t.log, undefined, 's1');
    expect(t.lines.map((l) => l.msg)).toEqual(['r1', 'm1', 's1']);
    expect(t.limiter.suppressed('refusal')).toBe(1);
  });

  it('summarises what it suppressed by reason every period, then stops its timer when quiet', () => {
    const t = setup({ perSecond: 2, summaryEveryMs: 5000 });
    expect(t.timersStarted()).toBe(0); // no timer until something is suppressed
    for (let i = 0; i < 7; i++) t.limiter.warn('malformed-request', i % 3 === 0 ? 'bad control header' : 'two-part length mismatch', t.log, undefined, `m${i}`);
    for (let i = 0; i < 4; i++) t.limiter.warn('refusal', 'dp_rank N is out of range', t.log, undefined, `r${i}`);
    expect(t.running()).toBe(true);
    t.advance(5000);
    t.fire();
    const summaries = t.lines.filter((l) => l.msg.startsWith('suppressed'));
    expect(summaries.map((l) => l.msg)).toEqual([
      'suppressed 5 malformed-request warnings in the last 5 s: two-part length mismatch ×3, bad control header ×2',
      'suppressed 2 refusal warnings in the last 5 s: dp_rank N is out of range ×2',
    ]);
    expect(summaries.every((l) => l.level === 40)).toBe(true);
    expect(t.limiter.suppressed('malformed-request')).toBe(0);
    // A quiet period: no line, and the timer stops.
    t.advance(5000);
    t.fire();
    expect(t.lines.filter((l) => l.msg.startsWith('suppressed'))).toHaveLength(2);
    expect(t.running()).toBe(false);
    // Suppression later starts it again.
    t.advance(1000);
    for (let i = 0; i < 3; i++) t.limiter.warn('refusal', 'x', t.log, undefined, 'r');
    expect(t.running()).toBe(true);
    expect(t.timersStarted()).toBe(2);
  });

  it('stop() summarises what is left', () => {
    const t = setup({ perSecond: 1 });
    t.limiter.warn('response-stream', 'cannot connect', t.log, undefined, 'a');
    t.limiter.warn('response-stream', 'cannot connect', t.log, undefined, 'b');
    t.advance(2400);
    t.limiter.stop();
    expect(t.lines.at(-1)!.msg).toBe('suppressed 1 response-stream warnings in the last 2 s: cannot connect ×1');
    expect(t.running()).toBe(false);
  });

  it('keeps at most 16 reasons per kind; the rest count as other', () => {
    const t = setup({ perSecond: 0 });
    for (let i = 0; i < 20; i++) t.limiter.warn('refusal', `reason ${String.fromCharCode(97 + i)}`, t.log, undefined, 'x');
    t.limiter.warn('refusal', 'reason a', t.log, undefined, 'x');
    t.limiter.stop();
    const summary = t.lines.at(-1)!.msg;
    expect(summary).toMatch(/^suppressed 21 refusal warnings/);
    expect(summary).toContain('reason a ×2');
    expect(summary).toContain('other ×4');
    expect(summary.split(', ')).toHaveLength(17);
  });

  it('limitedWarn without a limiter logs every line', () => {
    const t = setup();
    for (let i = 0; i < 30; i++) limitedWarn(undefined, 'refusal', 'x', t.log, { request_id: 'r' }, `line ${i}`);
    expect(t.lines).toHaveLength(30);
  });
});

describe('reasonOf', () => {
  it.each([
    ['two-part length mismatch: header_len=7449361025514038572 + body_len=2 != 5 payload bytes', 'two-part length mismatch'],
    ['invalid request body: Unexpected end of JSON input', 'invalid request body'],
    ['prompt has 5000 tokens, which does not fit the context length of 4096', 'prompt has N tokens, which does not fit the context length of N'],
    ['dp_rank 5 is out of range: this worker has data_parallel_size 2', 'dp_rank N is out of range'],
  ])('%s → %s', (message, reason) => {
    expect(reasonOf(message)).toBe(reason);
  });
});
