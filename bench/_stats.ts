/**
 * Order statistics of the load scripts' samples (`e2e_memory.ts`, `e2e_kv.ts`).
 *
 * @module
 */

/** The nearest-rank percentile `p` (0–1] of `sorted` (ascending). */
export function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]!;
}

/** The median of `values` (the upper one of an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}
