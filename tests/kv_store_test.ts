import { after } from "node:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { openTestKv } from "./_kv.ts";
import { storeContract } from "./store_contract.ts";

// The whole contract on Deno KV: in memory, and on a file (the SQLite backend many processes
// share). Apps that share a backend share one KV handle, as processes share one file.
const opened: { close(): void }[] = [];
const directory = mkdtempSync(join(tmpdir(), "nenc-kv-test-"));
after(() => {
  for (const kv of opened) kv.close();
  rmSync(directory, { recursive: true, force: true });
});

const handles = new WeakMap<Nenc, KvLike>();
let files = 0;

for (const where of [":memory:", "file"] as const) {
  storeContract(`kv ${where}`, async (options = {}, shareWith) => {
    let kv = shareWith === undefined ? undefined : handles.get(shareWith);
    if (kv === undefined) {
      const handle = await openTestKv(
        where === "file" ? join(directory, `${++files}.db`) : ":memory:",
      );
      opened.push(handle);
      kv = handle;
    }
    const app = new Nenc({ ...options, kv });
    handles.set(app, kv);
    return app;
  });
}
