/**
 * Order statistics of the load scripts' samples (`e2e_memory.ts`, `e2e_kv.ts`).
 *
 * @module
 */

/** The nearest-rank percentile `p` (0–1] of `sorted` (ascending). */
function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]!;
}

/** The median of `values` (the upper one of an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** How the starts of delayed invocations fell after their time, in ms. */
export interface Lateness {
  readonly latenessP50Ms: number;
  readonly latenessP99Ms: number;
  readonly latenessMaxMs: number;
  readonly latenessMinMs: number;
  /** Starts before their time: the bench fails on any. */
  readonly early: number;
}

/** The lateness of each start (its time less the time it was due), summed up. */
export function lateness(latenessMs: readonly number[]): Lateness {
  const sorted = [...latenessMs].sort((a, b) => a - b);
  return {
    latenessP50Ms: percentile(sorted, 0.5),
    latenessP99Ms: percentile(sorted, 0.99),
    latenessMaxMs: sorted[sorted.length - 1]!,
    latenessMinMs: sorted[0]!,
    early: sorted.filter((ms) => ms < 0).length,
  };
}

/** The lateness as a row's note says it. */
export function latenessNote(late: Lateness, pollMs: number): string {
  return `lateness of the starts p50 ${late.latenessP50Ms} ms, p99 ${late.latenessP99Ms} ms, ` +
    `max ${late.latenessMaxMs} ms, ${late.early} early (pollMs ${pollMs})`;
}
