/**
 * The Deno KV backend of nenc: `new Nenc({ appId, kv })` with a `Deno.Kv` (a local file, Deno
 * Deploy KV, or a denokv server through KV Connect) or the `@deno/kv` npm package on Bun and
 * Node.
 *
 * @example
 * ```ts ignore
 * import { Nenc } from "@nenc/nenc";
 *
 * const kv = await Deno.openKv("./nenc.db");
 * const app = new Nenc({ appId: "shop", kv });
 * ```
 *
 * @module
 */

export * from "./keys.ts";
export * from "./kv_like.ts";
export * from "./store.ts";
