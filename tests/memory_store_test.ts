import { test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { MemoryStore } from "../core/memory_store.ts";
import type { ChangeOutcome, StatusChange } from "../core/store.ts";
import { isFinalStatus } from "../core/status.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
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

test("[memory] a child's pick-up enters RUNNING with its call edge in the claim's one step: no change() to RUNNING of its own, history registered → pending → running, the edge parent → child held while it runs", async () => {
  const memory = new MemoryStore();
  const changes: string[][] = [];
  // Records every change() and passes every call through to the memory store.
  const store = new Proxy(memory, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (property !== "change") return value.bind(target);
      return (id: string, change: StatusChange) => {
        changes.push([...change.path]);
        return target.change(id, change);
      };
    },
  });
  const app = new Nenc({ store });
  let seen: { history: string[]; edges: (readonly [string, string])[] } | undefined;
  const child = app.task("child", async (_args: undefined, ctx) => {
    seen = {
      history: (await app.orchestrator.getInvocationHistory({ id: ctx.invocationId }))
        .map((entry) => entry.status),
      edges: [...(await store.graphs()).calls.edges],
    };
    return 1;
  });
  const parent = app.task("parent", async () => (await (await child.call()).result()) + 1);
  await using runner = app.runner({ concurrency: 1 });
  runner.start();
  const invocation = await parent.call();
  assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 2);
  assert.deepEqual(changes.filter((path) => path.includes("running")), []);
  const [childInvocation] = await store.children(invocation.id);
  assert.deepEqual(seen?.history, ["registered", "pending", "running"]);
  assert.deepEqual(seen?.edges, [[invocation.callId, childInvocation!.callId]]);
  assert.deepEqual((await store.graphs()).calls.edges, [], "released once both are final");
});

test("[memory] a pause releases in its own step its wait edge to a child that ended before it: the edge is gone as the change returns, and the outcome says so (no read after it)", async () => {
  const memory = new MemoryStore();
  let askPause!: () => void;
  const pauseAsked = new Promise<void>((resolve) => askPause = resolve);
  let seen: { endedReleased: boolean; waiters: string[] } | undefined;
  // Holds the parent's pause until its child is final: the child ends before the edge is written.
  const store = new Proxy(memory, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (property !== "change") return value.bind(target);
      return async (id: string, change: StatusChange): Promise<ChangeOutcome> => {
        if (!change.path.includes("paused")) return await target.change(id, change);
        askPause();
        const [child] = await target.children(id);
        await waitUntil(async () => isFinalStatus((await target.get(child!.id))!.status), {
          message: "the child's end",
        });
        const outcome = await target.change(id, change);
        seen = {
          endedReleased: outcome.ok && outcome.endedReleased === true,
          waiters: await target.waiters(child!.id),
        };
        return outcome;
      };
    },
  });
  const app = new Nenc({ store });
  const child = app.task("child", async () => {
    await pauseAsked;
    return 1;
  });
  const parent = app.task("parent", async () => (await (await child.call()).result()) + 1);
  await using runner = app.runner({ concurrency: 2 });
  runner.start();
  const invocation = await parent.call();
  assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 2);
  assert.deepEqual(seen, { endedReleased: true, waiters: [] });
  assert.deepEqual(await store.graphs().then(({ waits }) => waits), []);
});
