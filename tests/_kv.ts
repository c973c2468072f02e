import type { KvEntryLike, KvKey, KvLike, KvListSelectorLike } from "../kv/kv_like.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";

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

/**
 * Opens a KV file shared with other processes, again (a while) when the open itself says
 * "database is locked": processes starting together on one file can meet in Deno's own open of
 * it, which does not wait for the lock (about one start in 40 of the cycle test's pair failed
 * so) — before any nenc code runs.
 */
export async function openSharedTestKv(path: string): Promise<TestKv> {
  for (let tries = 0;; tries++) {
    try {
      return await openTestKv(path);
    } catch (error) {
      if (!/database is locked/i.test(String(error)) || tries >= 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 20));
    }
  }
}

/** Hooks of {@linkcode interceptKv}; a hook that throws makes the call reject. */
export interface KvHooks {
  /**
   * Runs before every commit, with the values and the keys the operation sets (may delay the
   * commit).
   */
  beforeCommit?(values: readonly unknown[], keys: readonly KvKey[]): Promise<void> | void;
  /** Sees every set of an atomic operation. */
  onSet?(value: unknown, key: KvKey, options?: { expireIn?: number }): void;
  /**
   * Runs after every commit that returned, with its verdict, the keys it set (and expiry) and
   * the values it set; a throw here rejects a commit that was applied.
   */
  afterCommit?(
    ok: boolean,
    sets: readonly { key: KvKey; expireIn?: number }[],
    values: readonly unknown[],
  ): void;
  /** Runs before every `get`. */
  beforeGet?(key: KvKey): Promise<void> | void;
  /** Runs before every `getMany`, with its keys. */
  beforeGetMany?(keys: readonly KvKey[]): Promise<void> | void;
  /** Runs before every `list` reads its first entry (may delay the read). */
  beforeList?(selector: KvListSelectorLike): Promise<void> | void;
  /** Sees every entry a `list` yields. */
  onListed?(entry: KvEntryLike): void;
}

/**
 * A view of `kv` whose atomic operations, `getMany` and `list` calls run `hooks`: for counting,
 * delaying, gating or failing them.
 */
export function interceptKv(kv: KvLike, hooks: KvHooks): KvLike {
  return {
    get: (key) => {
      if (hooks.beforeGet === undefined) return kv.get(key);
      const before = hooks.beforeGet.bind(hooks);
      return (async () => {
        await before(key);
        return await kv.get(key);
      })();
    },
    getMany: async (keys) => {
      await hooks.beforeGetMany?.(keys);
      return await kv.getMany(keys);
    },
    list: (selector, options) => {
      if (hooks.beforeList === undefined && hooks.onListed === undefined) {
        return kv.list(selector, options);
      }
      return (async function* (): AsyncGenerator<KvEntryLike> {
        await hooks.beforeList?.(selector);
        for await (const entry of kv.list(selector, options)) {
          hooks.onListed?.(entry);
          yield entry;
        }
      })();
    },
    atomic: () => {
      const op = kv.atomic();
      const set = op.set.bind(op);
      const commit = op.commit.bind(op);
      const values: unknown[] = [];
      const keys: KvKey[] = [];
      const sets: { key: KvKey; expireIn?: number }[] = [];
      op.set = (key, value, options) => {
        hooks.onSet?.(value, key, options);
        values.push(value);
        keys.push(key);
        sets.push(options?.expireIn === undefined ? { key } : { key, expireIn: options.expireIn });
        return set(key, value, options);
      };
      op.commit = async () => {
        await hooks.beforeCommit?.(values, keys);
        const result = await commit();
        hooks.afterCommit?.(result.ok, sets, values);
        return result;
      };
      return op;
    },
  };
}

/** A commit held until `open()`: `reached` resolves when it is (rejects after DEADLINE_MS). */
export interface HeldCommit {
  readonly reached: Promise<void>;
  open(): void;
}

/**
 * A view of `kv` whose next commit that sets a given key waits until the test opens it: the
 * transition has done its reads and built its checks, and stays between read and commit.
 */
export function holdingCommits(kv: KvLike): { kv: KvLike; hold(key: KvKey): HeldCommit } {
  const held = new Map<string, { reach(): void; opened: Promise<void> }>();
  const view = interceptKv(kv, {
    beforeCommit: async (_values, keys) => {
      for (const key of keys) {
        const hold = held.get(JSON.stringify(key));
        if (hold === undefined) continue;
        held.delete(JSON.stringify(key)); // once
        hold.reach();
        await hold.opened;
      }
    },
  });
  const hold = (key: KvKey): HeldCommit => {
    let reach!: () => void;
    let open!: () => void;
    const reached = new Promise<void>((resolve) => reach = resolve);
    const opened = new Promise<void>((resolve) => open = resolve);
    held.set(JSON.stringify(key), { reach, opened });
    return {
      get reached() {
        return within(reached, DEADLINE_MS, `the commit that sets ${JSON.stringify(key)}`);
      },
      open,
    };
  };
  return { kv: view, hold };
}
