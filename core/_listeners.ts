/**
 * Wake-ups inside one process: a set of listeners that a change calls, and a promise that
 * resolves when it does (or when a signal aborts). Private to the core and the backends.
 *
 * @module
 */

/** Calls every listener of `listeners` (each removes itself). */
export function notify(listeners: Set<() => void> | undefined): void {
  if (listeners === undefined) return;
  for (const listener of [...listeners]) listener();
}

/** Resolves when {@linkcode notify} calls `listeners`, or when `signal` aborts. */
export function listen(listeners: Set<() => void>, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      listeners.delete(done);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    listeners.add(done);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** {@linkcode listen} on the listeners of `key` in `index`, a set kept only while it has any. */
export async function listenFor(
  index: Map<string, Set<() => void>>,
  key: string,
  signal?: AbortSignal,
): Promise<void> {
  let listeners = index.get(key);
  if (listeners === undefined) index.set(key, listeners = new Set());
  await listen(listeners, signal);
  if (listeners.size === 0 && index.get(key) === listeners) index.delete(key);
}
