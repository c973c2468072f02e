/**
 * Store faults: which errors of a storage backend are transient (the network, a locked file, a
 * store that is down for a while) and are tried again, and the one loop that tries again.
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import { NencError } from "./errors.ts";

/**
 * Whether `error`, thrown by a store step, is a fault of the store to try again after a pause:
 * anything but nenc's own verdicts (`NencError`: a refused transition, a value over a limit, a
 * closed store), a `RangeError` or `SyntaxError` (a bug, or corrupt data), and an abort.
 */
export function isStoreFault(error: unknown): boolean {
  // A TypeError is a fault: the network fails with one ("fetch failed" over KV Connect); the
  // store steps take no input a caller could get wrong (that is checked before, and is a
  // RangeError or a NencError).
  return !(error instanceof NencError || error instanceof RangeError ||
    error instanceof SyntaxError ||
    (error instanceof DOMException &&
      (error.name === "AbortError" || error.name === "TimeoutError")));
}

/** The pause before trying a failed store step again: doubling from `baseMs`, at most 5 s. */
export function faultPauseMs(baseMs: number, failures: number): number {
  return Math.min(5_000, baseMs * 2 ** Math.min(failures, 16));
}

/** Options of {@linkcode retryFaults}. */
export interface RetryFaultsOptions {
  /** Where the pauses are slept. */
  readonly clock: Clock;
  /** The first pause [`50`] ms; it doubles up to 5 s. */
  readonly baseMs?: number;
  /** Gives up (rethrows the last fault) once aborted. */
  readonly signal?: AbortSignal | undefined;
  /** Told of every fault before the pause (to log it). */
  readonly onFault?: (error: unknown, failures: number) => void;
}

/**
 * Runs `step` until it returns or throws something other than a store fault; a store fault is
 * tried again after a growing pause, until `signal` aborts. With `then`, resolves to what it makes
 * of `step`'s value.
 */
export function retryFaults<T>(step: () => Promise<T>, options: RetryFaultsOptions): Promise<T>;
export function retryFaults<T, U>(
  step: () => Promise<T>,
  options: RetryFaultsOptions,
  then: (value: T) => U | PromiseLike<U>,
): Promise<U>;
export function retryFaults<T, U>(
  step: () => Promise<T>,
  options: RetryFaultsOptions,
  then?: (value: T) => U | PromiseLike<U>,
): Promise<T | U> {
  // The first try holds no frame while it is pending, and one step with `then`: a wait (a paused
  // invocation's) may last long, and the garbage collector copies what it holds meanwhile.
  const retry = (error: unknown): Promise<T | U> => {
    const retried = retryFaultsAfter(error, step, options);
    return then === undefined ? retried : retried.then(then);
  };
  return attempt(step).then(then, retry);
}

/**
 * {@linkcode retryFaults} once its first try failed with `error`: rethrows it unless it is a store
 * fault, else tries `step` again after each fault, after a growing pause, until `signal` aborts.
 */
export async function retryFaultsAfter<T>(
  error: unknown,
  step: () => Promise<T>,
  options: RetryFaultsOptions,
): Promise<T> {
  for (let failures = 0;; failures++) {
    if (!isStoreFault(error) || options.signal?.aborted) throw error;
    options.onFault?.(error, failures);
    await options.clock.sleep(faultPauseMs(options.baseMs ?? 50, failures), options.signal);
    if (options.signal?.aborted) throw error;
    try {
      return await step();
    } catch (next) {
      error = next;
    }
  }
}

/** `step()`, its synchronous throw turned into a rejection. */
function attempt<T>(step: () => Promise<T>): Promise<T> {
  try {
    return step();
  } catch (error) {
    return Promise.reject(error);
  }
}
