// Synthetic trace lines shared by the replay tests.

/**
 * `n` Mooncake-style lines every 37 ms with spread input/output lengths and shared prefixes (three
 * families of two blocks each), deterministic by construction.
 */
export function mixedTraceLines(n: number): Array<{ timestamp: number; input_length: number; output_length: number; hash_ids: number[] }> {
  return Array.from({ length: n }, (_, i) => ({
    timestamp: i * 37,
    input_length: 200 + ((i * 7919) % 3000),
    output_length: 1 + ((i * 104729) % 150),
    hash_ids: Array.from({ length: Math.ceil((200 + ((i * 7919) % 3000)) / 512) }, (_, k) => (k < 2 ? k + (i % 3) * 10 : 1000 + i * 10 + k)),
  }));
}
