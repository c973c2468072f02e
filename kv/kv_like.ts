/**
 * The members of `Deno.Kv` that nenc uses, as a structural type: `Deno.Kv`, the `@deno/kv` npm
 * package (Bun, Node) and a remote KV opened through KV Connect all fit it.
 *
 * @module
 */

/**
 * One part of a KV key.
 *
 * @example
 * ```ts
 * import { type KvKeyPart } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const parts: KvKeyPart[] = [...new Keys("shop").history("01J0000000000000000000000", 2)];
 * console.log(parts.map((part) => typeof part)); // ["string", "string", "string", "string", "number"]
 * ```
 */
export type KvKeyPart = Uint8Array | string | number | bigint | boolean | symbol;

/**
 * A KV key.
 *
 * @example The kinds of keys an app wrote
 * ```ts
 * import { type KvKey, Nenc } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * await new Nenc({ appId: "shop", kv }).task("ping", () => "pong").call();
 * const prefix: KvKey = new Keys("shop").app;
 * const kinds = new Set<string>();
 * for await (const entry of kv.list({ prefix })) kinds.add(String(entry.key[prefix.length]));
 * console.log([...kinds]); // ["hist", "inv", "q", "schema", "task"]
 * kv.close();
 * ```
 */
export type KvKey = readonly KvKeyPart[];

/**
 * An entry as read: `versionstamp` is `null` when the key is absent.
 *
 * @example
 * ```ts
 * import { type KvEntryMaybeLike } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const entry: KvEntryMaybeLike = await kv.get(new Keys("shop").invocation("01J0000000000000000000000"));
 * console.log(entry.value, entry.versionstamp); // null null
 * kv.close();
 * ```
 */
export interface KvEntryMaybeLike {
  /** The key. */
  readonly key: KvKey;
  /** The value, `null` when absent. */
  readonly value: unknown;
  /** The versionstamp, `null` when absent. */
  readonly versionstamp: string | null;
}

/**
 * An entry listed by a range read.
 *
 * @example
 * ```ts
 * import { type KvEntryLike, Nenc } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const invocation = await new Nenc({ appId: "shop", kv }).task("ping", () => "pong").call();
 * const entries: KvEntryLike[] = await Array.fromAsync(kv.list({ prefix: new Keys("shop").invocations() }));
 * console.log(entries.map((entry) => entry.key.at(-1) === invocation.id)); // [true]
 * kv.close();
 * ```
 */
export interface KvEntryLike {
  /** The key. */
  readonly key: KvKey;
  /** The value. */
  readonly value: unknown;
  /** The versionstamp. */
  readonly versionstamp: string;
}

/**
 * A range read: every key under `prefix`, or from `start` (inclusive) to `end` (exclusive).
 *
 * @example Counting the history entries of an invocation
 * ```ts
 * import { type KvListSelectorLike, Nenc } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const app = new Nenc({ appId: "shop", kv });
 * const invocation = await app.task("ping", () => "pong").call();
 * await app.runner().drain();
 * const selector: KvListSelectorLike = { prefix: new Keys("shop").histories(invocation.id) };
 * console.log((await Array.fromAsync(kv.list(selector))).length); // 4
 * kv.close();
 * ```
 */
export type KvListSelectorLike =
  | { readonly prefix: KvKey }
  | { readonly prefix: KvKey; readonly start: KvKey }
  | { readonly prefix: KvKey; readonly end: KvKey }
  | { readonly start: KvKey; readonly end: KvKey };

/**
 * One atomic operation: checks, then mutations, committed together or not at all.
 *
 * @example Only the first of two creates commits
 * ```ts
 * import type { KvAtomicLike } from "@nenc/nenc";
 *
 * const kv = await Deno.openKv(":memory:");
 * const key = ["locks", "report"];
 * const create = (owner: string): KvAtomicLike =>
 *   kv.atomic().check({ key, versionstamp: null }).set(key, owner);
 * console.log((await create("r1").commit()).ok, (await create("r2").commit()).ok); // true false
 * kv.close();
 * ```
 */
export interface KvAtomicLike {
  /** Commits only if each key still has this versionstamp (`null`: absent). */
  check(...checks: { key: KvKey; versionstamp: string | null }[]): this;
  /** Sets a key; `expireIn` (ms) lets the store delete it after that time. */
  set(key: KvKey, value: unknown, options?: { expireIn?: number }): this;
  /** Deletes a key. */
  delete(key: KvKey): this;
  /**
   * Commits: `ok` is false when a check failed (nothing was written); once committed, the
   * `versionstamp` of what it wrote, where the store tells it (Deno KV does).
   */
  commit(): Promise<{ readonly ok: boolean; readonly versionstamp?: string }>;
}

/**
 * The structural type of the KV store nenc needs.
 *
 * @example `Deno.Kv` is one
 * ```ts
 * import { type KvLike, Nenc } from "@nenc/nenc";
 *
 * const denoKv = await Deno.openKv(":memory:"); // or a file: Deno.openKv("./nenc.db")
 * const kv: KvLike = denoKv;
 * const app = new Nenc({ appId: "shop", kv });
 * console.log(app.appId); // "shop"
 * denoKv.close();
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
    options?: { limit?: number; reverse?: boolean; batchSize?: number },
  ): AsyncIterable<KvEntryLike>;
  /** Starts an atomic operation. */
  atomic(): KvAtomicLike;
}
