/**
 * Deadlines for the waits of the tests: when a regression means that what a test waits for never
 * comes, the test fails with a message naming the wait instead of hanging the run. They are real
 * wall time and generous: the passing path never comes near them, so they assume no timing.
 */

/** The deadline of an ordinary wait (something in-process, or a few store round trips). */
export const DEADLINE_MS = 30_000;

/**
 * The deadline of a wait on a whole workload (fib(20), 60 keyed runs, the demo): seconds on a
 * remote KV when the machine is idle, many times that under load.
 */
export const LONG_DEADLINE_MS = 120_000;

/**
 * Settles as `promise` does, or rejects once `ms` of real time have passed first, with an error
 * naming `what` was awaited (its stack shows where the wait began).
 */
export function within<T>(promise: PromiseLike<T>, ms: number, what: string): Promise<T> {
  const timedOut = new Error(`Timed out after ${ms} ms waiting for ${what}`);
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timedOut), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** Options of {@linkcode waitUntil}. */
export interface WaitUntilOptions {
  /** What did not happen, for the error once the deadline passed. */
  readonly message: string;
  /** The deadline in real time; {@linkcode DEADLINE_MS} unless given. */
  readonly timeoutMs?: number;
  /** The pause between two checks (a timer turn, so timers and I/O run); 1 ms unless given. */
  readonly intervalMs?: number;
}

/**
 * Checks `predicate` at once, then after each pause, until it holds; rejects with `message` once
 * the deadline has passed.
 */
export async function waitUntil(
  predicate: () => boolean | Promise<boolean>,
  options: WaitUntilOptions,
): Promise<void> {
  const { message, timeoutMs = DEADLINE_MS, intervalMs = 1 } = options;
  const deadline = Date.now() + timeoutMs;
  while (!await predicate()) {
    if (Date.now() >= deadline) throw new Error(`Timed out after ${timeoutMs} ms: ${message}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
