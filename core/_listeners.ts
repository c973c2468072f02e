/**
 * Wake-ups inside one process: a set of listeners that a change calls, and a promise that
 * resolves when it does (or when a signal aborts) — or rejects, when the change is a failure that
 * ends the wait (a closed store). Private to the core and the backends.
 *
 * @module
 */

/**
 * A listener: called without an error to wake its waiter (with `value`, what its wait resolves
 * with), with one to reject it. `Listener` (of `never`) takes no value: any listener is one.
 */
export type Listener<T = never> = (error?: Error, value?: T) => void;

/**
 * The waits of this module on each signal made by {@linkcode quietController}: woken by
 * {@linkcode abortQuietly}, not by an event listener each.
 */
const quietWaits = new WeakMap<AbortSignal, Set<Listener>>();

/**
 * An `AbortController` whose signal the waits of this module ({@linkcode listen},
 * {@linkcode listenFor}) take without adding an event listener to it: abort it with
 * {@linkcode abortQuietly}. For a signal many long waits take and few see aborted (an execution's):
 * an event listener costs several hundred bytes that every wait holds, and the garbage collector
 * copies. Other listeners of its signal (a task's own) hear its abort as usual.
 */
export function quietController(): AbortController {
  const controller = new AbortController();
  quietWaits.set(controller.signal, new Set());
  return controller;
}

/** Aborts `controller` with `reason` and wakes its waits (see {@linkcode quietController}). */
export function abortQuietly(controller: AbortController, reason: unknown): void {
  controller.abort(reason);
  notify(quietWaits.get(controller.signal));
}

/**
 * Calls every listener of `listeners` (each removes itself); with `error`, their waits reject,
 * else they resolve with `value`.
 */
export function notify<T = never>(
  listeners: Set<Listener<T>> | undefined,
  error?: Error,
  value?: T,
): void {
  if (listeners === undefined) return;
  for (const listener of [...listeners]) listener(error, value);
}

/**
 * Resolves when {@linkcode notify} calls `listeners`, or when `signal` aborts; rejects when
 * `notify` passes an error.
 */
export function listen(listeners: Set<Listener>, signal?: AbortSignal): Promise<void> {
  return listenUntil(listeners, signal, undefined);
}

/**
 * {@linkcode listen} on the listeners of `key` in `index`, a set kept only while it has any:
 * resolves with the value {@linkcode notify} passes (`undefined` without one, and on abort).
 */
export function listenFor<T = never>(
  index: Map<string, Set<Listener<T>>>,
  key: string,
  signal?: AbortSignal,
): Promise<T | undefined> {
  let listeners = index.get(key);
  if (listeners === undefined) index.set(key, listeners = new Set());
  return listenUntil(listeners, signal, index, key);
}

/**
 * {@linkcode listen}; with `index`, drops `listeners` from it (under `key`) when the wait ends and
 * leaves them empty. No async frame, and one scope for the whole wait: a wait may last long (a
 * paused invocation's), and what it holds meanwhile is what the garbage collector copies.
 */
function listenUntil<T>(
  listeners: Set<Listener<T>>,
  signal: AbortSignal | undefined,
  index?: Map<string, Set<Listener<T>>>,
  key?: string,
): Promise<T | undefined> {
  if (signal?.aborted) {
    dropIfEmpty(listeners, index, key);
    return Promise.resolve(undefined);
  }
  let resolve!: (value: T | undefined) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T | undefined>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const quiet = signal === undefined ? undefined : quietWaits.get(signal);
  let wake: (() => void) | undefined;
  const done = (error?: Error, value?: T): void => {
    listeners.delete(done);
    quiet?.delete(done);
    if (wake !== undefined) signal?.removeEventListener("abort", wake);
    dropIfEmpty(listeners, index, key);
    if (error === undefined) resolve(value);
    else reject(error);
  };
  listeners.add(done);
  if (quiet !== undefined) {
    quiet.add(done);
  } else if (signal !== undefined) {
    wake = (): void => done();
    signal.addEventListener("abort", wake, { once: true });
  }
  return promise;
}

/** Drops `listeners` from `index` (under `key`) once they are empty. */
function dropIfEmpty<T>(
  listeners: Set<Listener<T>>,
  index: Map<string, Set<Listener<T>>> | undefined,
  key: string | undefined,
): void {
  if (listeners.size === 0 && index !== undefined && index.get(key!) === listeners) {
    index.delete(key!);
  }
}
