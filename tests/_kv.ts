import type { KvLike } from "../kv/kv_like.ts";

/** A KV handle and its close(). */
export type TestKv = KvLike & { close(): void };

/**
 * Opens a KV store on this runtime: `Deno.openKv` on Deno, the `@deno/kv` npm package on Bun and
 * Node (which needs explicit encoders on Bun; nenc stores only `Uint8Array` values). An
 * `http://` path with an access token opens a remote KV through KV Connect.
 */
export async function openTestKv(path: string, accessToken?: string): Promise<TestKv> {
  const deno = (globalThis as {
    Deno?: {
      openKv?: (path: string) => Promise<TestKv>;
      env: { set(name: string, value: string): void };
    };
  }).Deno;
  if (deno?.openKv !== undefined) {
    // Deno reads the KV Connect token from the environment.
    if (accessToken !== undefined) deno.env.set("DENO_KV_ACCESS_TOKEN", accessToken);
    return await deno.openKv(path);
  }
  const { openKv } = await import("@deno/kv");
  return await openKv(path, {
    encodeV8: (value: unknown) => value as Uint8Array,
    decodeV8: (bytes: Uint8Array) => bytes,
    ...(accessToken !== undefined ? { accessToken } : {}),
  }) as unknown as TestKv;
}
