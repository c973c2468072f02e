import type { Clock } from "../core/clock.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";

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

/**
 * A {@linkcode FakeClock} that also tells when something sleeps on it for a given time: an idle
 * runner waits on `clock.sleep(pollMs)` (its heartbeat on `clock.sleep(heartbeatMs)`, always).
 * Advancing the clock only while the runner sleeps keeps the test from moving time between a
 * pick-up's clock read and its store step.
 */
export class WatchedClock extends FakeClock {
  readonly #sleeping = new Map<object, { untilMs: number; ms: number }>();
  readonly #onSleep = new Set<(ms: number) => void>();

  override sleep(ms: number, signal?: AbortSignal): Promise<void> {
    const promise = super.sleep(ms, signal);
    if (signal?.aborted) return promise;
    const token = {};
    this.#sleeping.set(token, { untilMs: this.now() + ms, ms });
    signal?.addEventListener("abort", () => this.#sleeping.delete(token), { once: true });
    void promise.then(() => this.#sleeping.delete(token));
    for (const notify of [...this.#onSleep]) notify(ms);
    return promise;
  }

  override advance(ms: number): void {
    super.advance(ms);
    for (const [token, { untilMs }] of this.#sleeping) {
      if (untilMs <= this.now()) this.#sleeping.delete(token);
    }
  }

  /**
   * Resolves when `count` things sleep `ms` on the clock at once (at once if they already do):
   * the idle loops of `count` runners, say.
   */
  sleeping(ms: number, count = 1): Promise<void> {
    const asleep = (): boolean =>
      [...this.#sleeping.values()].filter((sleeper) => sleeper.ms === ms).length >= count;
    if (asleep()) return Promise.resolve();
    const sleeping = new Promise<void>((resolve) => {
      const done = (slept: number): void => {
        if (slept !== ms || !asleep()) return;
        this.#onSleep.delete(done);
        resolve();
      };
      this.#onSleep.add(done);
    });
    return within(sleeping, DEADLINE_MS, `${count} thing(s) to sleep ${ms} ms on the clock`);
  }
}
