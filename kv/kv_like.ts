/**
 * The members of `Deno.Kv` that nenc uses, as a structural type: `Deno.Kv`, the `@deno/kv` npm
 * package (Bun, Node) and a remote KV opened through KV Connect all fit it.
 *
 * @module
 */

/** One part of a KV key. */
export type KvKeyPart = Uint8Array | string | number | bigint | boolean | symbol;

/** A KV key. */
export type KvKey = readonly KvKeyPart[];

/** An entry as read: `versionstamp` is `null` when the key is absent. */
export interface KvEntryMaybeLike {
  /** The key. */
  readonly key: KvKey;
  /** The value, `null` when absent. */
  readonly value: unknown;
  /** The versionstamp, `null` when absent. */
  readonly versionstamp: string | null;
}

/** An entry listed by a range read. */
export interface KvEntryLike {
  /** The key. */
  readonly key: KvKey;
  /** The value. */
  readonly value: unknown;
  /** The versionstamp. */
  readonly versionstamp: string;
}

/** A range read: every key under `prefix`, or from `start` (inclusive) to `end` (exclusive). */
export type KvListSelectorLike =
  | { readonly prefix: KvKey }
  | { readonly prefix: KvKey; readonly start: KvKey }
  | { readonly prefix: KvKey; readonly end: KvKey }
  | { readonly start: KvKey; readonly end: KvKey };

/** One atomic operation: checks, then mutations, committed together or not at all. */
export interface KvAtomicLike {
  /** Commits only if each key still has this versionstamp (`null`: absent). */
  check(...checks: { key: KvKey; versionstamp: string | null }[]): this;
  /** Sets a key; `expireIn` (ms) lets the store delete it after that time. */
  set(key: KvKey, value: unknown, options?: { expireIn?: number }): this;
  /** Deletes a key. */
  delete(key: KvKey): this;
  /** Commits: `ok` is false when a check failed (nothing was written). */
  commit(): Promise<{ readonly ok: boolean }>;
}

/**
 * The structural type of the KV store nenc needs.
 *
 * @example
 * ```ts ignore
 * import { Nenc } from "@nenc/nenc";
 *
 * const kv = await Deno.openKv("./nenc.db");
 * const app = new Nenc({ appId: "shop", kv });
 * ```
 */
export interface KvLike {
  /** Reads one key. */
  get(key: KvKey): Promise<KvEntryMaybeLike>;
  /** Reads up to 10 keys at once. */
  getMany(keys: readonly KvKey[]): Promise<readonly KvEntryMaybeLike[]>;
  /** Reads a range of keys in key order. */
  list(
    selector: KvListSelectorLike,
    options?: { limit?: number; reverse?: boolean },
  ): AsyncIterable<KvEntryLike>;
  /** Starts an atomic operation. */
  atomic(): KvAtomicLike;
}
