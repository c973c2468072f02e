import { Nenc } from "../core/app.ts";
import type { KvLike } from "../kv/kv_like.ts";
const N = 1000;
try {
  for (const f of ["", "-shm", "-wal"]) Deno.removeSync("/tmp/count.db" + f);
} catch { /* none */ }
const raw = await Deno.openKv("/tmp/count.db");
const counts: Record<string, number> = {};
const bump = (k: string) => counts[k] = (counts[k] ?? 0) + 1;
const kv: KvLike = {
  get: (key) => {
    bump("get " + String(key[2]));
    return raw.get(key);
  },
  getMany: (keys) => {
    bump("getMany " + String(keys[0]?.[2]));
    return raw.getMany(keys);
  },
  list: (sel, o) => {
    bump("list " + String(("prefix" in sel ? sel.prefix : sel.start)[2]));
    return raw.list(sel as never, o);
  },
  atomic: () => {
    bump("commit");
    return raw.atomic();
  },
};
const app = new Nenc({ appId: "bench", kv });
const noop = app.task("noop", ({ i }: { i: number }) => i);
await using runner = app.runner({ concurrency: 32, pollMs: 20 });
runner.start();
const invs: Awaited<ReturnType<typeof noop.call>>[] = [];
await Promise.all(Array.from({ length: 32 }, async (_, c) => {
  for (let i = c; i < N; i += 32) invs[i] = await noop.call({ i });
}));
await Promise.all(invs.map((x) => x.result()));
await runner.stop();
for (const [k, v] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
  console.log(k.padEnd(20), (v / N).toFixed(2));
}
raw.close();
