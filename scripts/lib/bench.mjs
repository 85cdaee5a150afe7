// What the benchmark scripts share: medians, the figure format, stopping a worker, a streaming load.
import { performance } from 'node:perf_hooks';

export const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** `median M (min a, max b)` with `d` decimals. */
export const fmt = (xs, d = 0) => `median ${median(xs).toFixed(d)} (min ${Math.min(...xs).toFixed(d)}, max ${Math.max(...xs).toFixed(d)})`;

/** SIGTERM to a child started by `start()`, resolved when it has exited. */
export const stopChild = (w) => new Promise((resolve) => (w.child.once('exit', resolve), w.child.kill('SIGTERM')));

/** A 128-token prompt, distinct for every `r` (no block is shared between two of them). */
export const benchPrompt = (r) => Array.from({ length: 128 }, (_, j) => ((r * 131 + j) % 2000) + 10);

/**
 * Sends `concurrency` requests of `maxTokens` tokens at once and waits for all of them; checks that
 * every token arrived. Returns when it started and when the last token came (performance.now ms).
 */
export async function streamLoad(client, inst, { concurrency, maxTokens, label }) {
  const t0 = performance.now();
  const handles = await Promise.all(Array.from({ length: concurrency }, (_, r) => client.generate(inst, { tokenIds: benchPrompt(r), maxTokens })));
  const done = await Promise.all(handles.map((h) => h.stream.done));
  const tokens = done.reduce((s, r) => s + r.tokenIds.length, 0);
  if (tokens !== concurrency * maxTokens) throw new Error(`${label}: expected ${concurrency * maxTokens} tokens, got ${tokens}`);
  const t1 = Math.max(...done.map((r) => r.endedAt));
  return { t0, t1, tokensPerS: tokens / ((t1 - t0) / 1000) };
}
