import type { KvLike } from "../kv/kv_like.ts";

/** A KV handle and its close(). */
export type TestKv = KvLike & { close(): void };

/**
 * Opens a KV store on this runtime: `Deno.openKv` on Deno, the `@deno/kv` npm package on Bun and
 * Node (which needs explicit encoders on Bun; nenc stores only `Uint8Array` values).
 */
export async function openTestKv(path: string): Promise<TestKv> {
  const deno = (globalThis as { Deno?: { openKv?: (path: string) => Promise<TestKv> } }).Deno;
  if (deno?.openKv !== undefined) return await deno.openKv(path);
  const { openKv } = await import("@deno/kv");
  return await openKv(path, {
    encodeV8: (value: unknown) => value as Uint8Array,
    decodeV8: (bytes: Uint8Array) => bytes,
  }) as unknown as TestKv;
}
