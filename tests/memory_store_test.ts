import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { MemoryStore } from "../core/memory_store.ts";
import { storeContract } from "./store_contract.ts";

// A memory store holds one app's data; apps sharing a "backend" share the store of their appId,
// as apps on one Deno KV share the keys under their app id.
const backends = new WeakMap<Nenc, Map<string, MemoryStore>>();

storeContract("memory", (options = {}, shareWith) => {
  const stores = shareWith === undefined
    ? new Map<string, MemoryStore>()
    : backends.get(shareWith)!;
  const appId = options.appId ?? "nenc";
  let store = stores.get(appId);
  // The store reads purge deadlines on the app's clock, as the one `new Nenc()` builds does.
  const clock = options.clock ?? systemClock;
  if (store === undefined) stores.set(appId, store = new MemoryStore({ clock }));
  const app = new Nenc({ ...options, store });
  backends.set(app, stores);
  return app;
});
