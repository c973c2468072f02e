/**
 * Time enters nenc through a {@linkcode Clock}, so tests control it.
 *
 * @module
 */

/**
 * Where nenc reads the time and waits: epoch milliseconds and a cancellable sleep.
 *
 * @example A clock that runs ten times faster than the system clock
 * ```ts
 * import type { Clock } from "@nenc/nenc";
 *
 * const start = Date.now();
 * const fast: Clock = {
 *   now: () => start + (Date.now() - start) * 10,
 *   sleep: (ms, signal) => new Promise((resolve) => {
 *     const timer = setTimeout(resolve, ms / 10);
 *     signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
 *   }),
 * };
 * await fast.sleep(10);
 * ```
 */
export interface Clock {
  /** The current time in epoch milliseconds. */
  now(): number;
  /** Resolves after `ms` milliseconds of this clock, or as soon as `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/**
 * The clock of the machine: `Date.now()` and `setTimeout`.
 *
 * @example
 * ```ts
 * import { systemClock } from "@nenc/nenc";
 *
 * const before = systemClock.now();
 * await systemClock.sleep(1);
 * console.log(systemClock.now() >= before); // true
 * ```
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener("abort", done, { once: true });
    }),
};
