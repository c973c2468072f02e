/**
 * Errors the orchestrator rehydrated from a stored invocation: what a child's `result()` rejects
 * with. A task's retry decision treats them apart (only the classes it lists itself count), so
 * a child's exhausted `RetryError` does not retry its parent by itself. Private to `core/`.
 *
 * @module
 */

const rehydrated = new WeakSet<object>();

/** Remembers `error` as rehydrated from a stored invocation, and returns it. */
export function markRehydrated<E extends Error>(error: E): E {
  rehydrated.add(error);
  return error;
}

/** Whether `error` was rehydrated from a stored invocation (it reached its thrower through `result()`). */
export function isRehydrated(error: unknown): boolean {
  return typeof error === "object" && error !== null && rehydrated.has(error);
}
