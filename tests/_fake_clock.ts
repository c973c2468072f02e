import type { Clock } from "../core/clock.ts";

/**
 * A clock for tests: time moves only when `advance()` is called, and sleeps resolve then. No real
 * sleeps, no timers.
 */
export class FakeClock implements Clock {
  #nowMs: number;
  readonly #sleepers = new Set<{ untilMs: number; resolve: () => void }>();

  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.#nowMs = startMs;
  }

  now(): number {
    return this.#nowMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const sleeper = {
        untilMs: this.#nowMs + ms,
        resolve: () => {
          this.#sleepers.delete(sleeper);
          signal?.removeEventListener("abort", sleeper.resolve);
          resolve();
        },
      };
      this.#sleepers.add(sleeper);
      signal?.addEventListener("abort", sleeper.resolve, { once: true });
    });
  }

  /** Moves time forward and wakes the sleepers that are due. */
  advance(ms: number): void {
    this.#nowMs += ms;
    for (const sleeper of [...this.#sleepers]) {
      if (sleeper.untilMs <= this.#nowMs) sleeper.resolve();
    }
  }
}
