/**
 * A closed KV handle, told apart from a failing one. After `close()`, `Deno.Kv` rejects every
 * call with `Deno.errors.BadResource` ("Bad resource ID"), and `@deno/kv` (Bun, Node) with
 * `Error: Cannot call '.get' after '.close' is called` (`.getMany`, `.list`, `.commit` likewise);
 * a `@deno/kv` file operation still in flight when `close()` came rejects with
 * `Error: db not found` (followed by a native backtrace). {@linkcode closeAware} turns them all
 * into one {@linkcode StoreClosedError} (the original as its `cause`), so waiters and pollers
 * stop instead of retrying a handle that will never answer again.
 *
 * @module
 */

import { StoreClosedError } from "../core/errors.ts";
import type { KvAtomicLike, KvEntryLike, KvKey, KvLike, KvListSelectorLike } from "./kv_like.ts";

/** Whether `error` is what a KV handle throws once it is closed (see the module doc). */
export function isClosedKvError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  return error.name === "BadResource" ||
    /^Cannot call '\.\w+' after '\.close' is called/.test(error.message) ||
    /^db not found\b/.test(error.message);
}

/**
 * A view of `kv` whose calls reject with a {@linkcode StoreClosedError} (`cause`: the original)
 * where `kv` rejects because it is closed; `onClosed` sees each such error first. Every other
 * error passes through unchanged. The one place KV errors are translated: the store, its group
 * committer and its read coalescer all call through this view.
 */
export function closeAware(kv: KvLike, onClosed: (error: StoreClosedError) => void): KvLike {
  const translate = (what: string) => (error: unknown): never => {
    if (!isClosedKvError(error)) throw error;
    const closed = new StoreClosedError(`Cannot ${what}: the KV store is closed`, {
      cause: error,
    });
    onClosed(closed);
    throw closed;
  };
  const readFailed = translate("read");
  return {
    get: (key) => call(() => kv.get(key), readFailed),
    getMany: (keys) => call(() => kv.getMany(keys), readFailed),
    list: (selector, options) => new ClosedAwareList(kv, selector, options, readFailed),
    atomic: () => new ClosedAwareAtomic(kv.atomic(), translate("commit")),
  };
}

/** Calls `fn`; a synchronous throw or a rejection goes through `failed`. */
async function call<T>(fn: () => Promise<T>, failed: (error: unknown) => never): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    return failed(error);
  }
}

/** A range read whose errors (at the call or while iterating) go through `failed`. */
class ClosedAwareList implements AsyncIterable<KvEntryLike> {
  readonly #start: () => AsyncIterable<KvEntryLike>;
  readonly #failed: (error: unknown) => never;

  constructor(
    kv: KvLike,
    selector: KvListSelectorLike,
    options: { limit?: number; reverse?: boolean } | undefined,
    failed: (error: unknown) => never,
  ) {
    this.#start = () => kv.list(selector, options);
    this.#failed = failed;
  }

  [Symbol.asyncIterator](): AsyncIterator<KvEntryLike> {
    let inner: AsyncIterator<KvEntryLike>;
    try {
      inner = this.#start()[Symbol.asyncIterator]();
    } catch (error) {
      return { next: () => Promise.resolve().then(() => this.#failed(error)) };
    }
    return {
      next: () => inner.next().catch(this.#failed),
      return: async (value?: unknown) =>
        await inner.return?.(value) ?? { done: true, value: undefined },
    };
  }
}

/** An atomic operation whose commit errors go through `failed`. */
class ClosedAwareAtomic implements KvAtomicLike {
  readonly #op: KvAtomicLike;
  readonly #failed: (error: unknown) => never;

  constructor(op: KvAtomicLike, failed: (error: unknown) => never) {
    this.#op = op;
    this.#failed = failed;
  }

  check(...checks: { key: KvKey; versionstamp: string | null }[]): this {
    this.#op.check(...checks);
    return this;
  }

  set(key: KvKey, value: unknown, options?: { expireIn?: number }): this {
    this.#op.set(key, value, options);
    return this;
  }

  delete(key: KvKey): this {
    this.#op.delete(key);
    return this;
  }

  commit(): Promise<{ readonly ok: boolean }> {
    return call(() => this.#op.commit(), this.#failed);
  }
}
