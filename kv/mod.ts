/**
 * The Deno KV backend of nenc: `new Nenc({ appId, kv })` with a `Deno.Kv` (a local file, Deno
 * Deploy KV, or a denokv server through KV Connect) or the `@deno/kv` npm package on Bun and
 * Node.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const kv = await Deno.openKv(":memory:"); // or a file that processes share: "./nenc.db"
 * const app = new Nenc({ appId: "shop", kv });
 * const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
 * const invocation = await add.call({ x: 1, y: 2 });
 * await app.runner().drain();
 * console.log(await invocation.result()); // 3
 * kv.close();
 * ```
 *
 * @module
 */

export * from "./keys.ts";
export * from "./kv_like.ts";
export * from "./store.ts";
