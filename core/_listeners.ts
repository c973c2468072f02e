/**
 * Wake-ups inside one process: a set of listeners that a change calls, and a promise that
 * resolves when it does (or when a signal aborts) — or rejects, when the change is a failure that
 * ends the wait (a closed store). Private to the core and the backends.
 *
 * @module
 */

/** A listener: called without an error to wake its waiter, with one to reject it. */
export type Listener = (error?: Error) => void;

/** Calls every listener of `listeners` (each removes itself); with `error`, their waits reject. */
export function notify(listeners: Set<Listener> | undefined, error?: Error): void {
  if (listeners === undefined) return;
  for (const listener of [...listeners]) listener(error);
}

/**
 * Resolves when {@linkcode notify} calls `listeners`, or when `signal` aborts; rejects when
 * `notify` passes an error.
 */
export function listen(listeners: Set<Listener>, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return resolve();
    const done = (error?: Error): void => {
      listeners.delete(done);
      signal?.removeEventListener("abort", wake);
      if (error === undefined) resolve();
      else reject(error);
    };
    const wake = (): void => done();
    listeners.add(done);
    signal?.addEventListener("abort", wake, { once: true });
  });
}

/** {@linkcode listen} on the listeners of `key` in `index`, a set kept only while it has any. */
export async function listenFor(
  index: Map<string, Set<Listener>>,
  key: string,
  signal?: AbortSignal,
): Promise<void> {
  let listeners = index.get(key);
  if (listeners === undefined) index.set(key, listeners = new Set());
  try {
    await listen(listeners, signal);
  } finally {
    if (listeners.size === 0 && index.get(key) === listeners) index.delete(key);
  }
}
