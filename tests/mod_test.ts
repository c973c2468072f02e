import { test } from "node:test";
import assert from "node:assert/strict";
import * as nenc from "../mod.ts";
import * as core from "../core/mod.ts";
import * as kvExport from "../kv/mod.ts";
import { CallGraph, CycleDetectedError, Nenc, WaitGraph } from "../mod.ts";
import { type ClaimRequest, MemoryStore, type Store } from "../core/mod.ts";
import { FakeClock } from "./_fake_clock.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";

test("mod.ts exports the graph core and the errors on this runtime", () => {
  const calls = new CallGraph();
  calls.addCall({ callId: "a", invocationId: "1" }, { callId: "b", invocationId: "2" });
  assert.throws(
    () => calls.addCall({ callId: "b", invocationId: "2" }, { callId: "a", invocationId: "3" }),
    CycleDetectedError,
  );
  const waits = new WaitGraph({ clock: { now: () => 0 } });
  waits.waitFor("1", ["2"]);
  assert.deepEqual(waits.blocking(10), ["2"]);
  for (
    const name of [
      "NencError",
      "InvocationStatus",
      "transition",
      "callId",
      "canonicalJson",
      "newInvocationId",
    ]
  ) {
    assert.ok(name in nenc, name);
  }
});

test("the app API is the package's entry; the storage port's helpers are ./core, the KV backend's classes ./kv", () => {
  for (
    const name of ["Nenc", "Runner", "Invocation", "Orchestrator", "CanceledError", "nextTickMs"]
  ) {
    assert.ok(name in nenc, `@nenc/nenc exports ${name}`);
  }
  const backendOnly = [
    "planChange",
    "decideSlots",
    "controlChange",
    "CONTROL_LIMIT",
    "MemoryStore",
  ];
  for (const name of backendOnly) {
    assert.ok(!(name in nenc), `@nenc/nenc does not export ${name}`);
    assert.ok(name in core, `@nenc/nenc/core exports ${name}`);
  }
  for (const name of ["KvStore", "Keys", "KV_SCHEMA_VERSION"]) {
    assert.ok(!(name in nenc), `@nenc/nenc does not export ${name}`);
    assert.ok(name in kvExport, `@nenc/nenc/kv exports ${name}`);
  }
});

test("an app refuses a store that already holds another app id", () => {
  const first = new Nenc({ appId: "alpha" });
  const store = first.orchestrator.store;
  assert.equal(new Nenc({ appId: "alpha", store }).orchestrator.store, store);
  assert.throws(
    () => new Nenc({ appId: "beta", store }),
    /Cannot create app beta: its store already holds app alpha/,
  );
});

test("a runner refuses a heartbeat too slow for the orchestrator's runner timeout", () => {
  const app = new Nenc({ orchestrator: { runnerTimeoutSeconds: 2 } });
  assert.throws(
    () => app.runner({ heartbeatMs: 1_500 }),
    /heartbeatMs \(1500\) must be at most half/,
  );
  assert.equal(app.runner({ heartbeatMs: 1_000 }).concurrency, 1);
});

/** `store` with some of its methods replaced: a store that fails or stalls on cue. */
function storeWith(store: MemoryStore, overrides: Partial<Store>): Store {
  return new Proxy(store, {
    get(target, name) {
      const own = overrides[name as keyof Store];
      if (own !== undefined) return own;
      const value = Reflect.get(target, name, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

test("a runner keeps writing its heartbeat while its pick-up is stuck: a slow claim pass does not make a live runner look dead", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore({ clock });
  let claims = 0;
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => release = resolve);
  // The memory store, with a claim that hangs until released (a loaded machine, a remote KV).
  const store = storeWith(memory, {
    claim: async (request) => {
      claims++;
      await stuck;
      return await memory.claim(request);
    },
  });
  const app = new Nenc({ clock, store });
  const runner = app.runner({ runnerId: "slow", heartbeatMs: 1_000 });
  runner.start();
  const lastSeen = async (): Promise<number | undefined> =>
    (await store.runners()).find(({ runnerId }) => runnerId === "slow")?.lastSeenMs;
  await waitUntil(() => claims > 0, { intervalMs: 0, message: "no pick-up started" });
  assert.equal(claims, 1);
  for (let second = 1; second <= 5; second++) {
    clock.advance(1_000);
    await waitUntil(async () => await lastSeen() === clock.now(), {
      intervalMs: 0,
      message: `no heartbeat at ${second} s`,
    });
  }
  assert.equal(claims, 1, "the pick-up was stuck all along");
  release();
  await within(runner.stop(), DEADLINE_MS, "the runner to stop");
  assert.equal(await lastSeen(), undefined);
});

test("a runner whose resume write fails (a store error) tries it again: the paused invocation does not stay PAUSED on a live runner", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore({ clock });
  let resumes = 0;
  const store = storeWith(memory, {
    change: (id, change) => {
      if (change.path.includes("resumed") && resumes++ === 0) {
        return Promise.reject(new Error("connection reset"));
      }
      return memory.change(id, change);
    },
  });
  const app = new Nenc({ clock, store });
  const child = app.task("child", () => 1);
  const parent = app.task("parent", async () => (await (await child.call()).result()) + 1);
  const runner = app.runner({ concurrency: 1, pollMs: 100 });
  runner.start();
  const invocation = await parent.call();
  let settled = false;
  const result = invocation.result().finally(() => settled = true);
  // The retry waits a back-off on the (fake) clock: move it on until the parent settles.
  for (let step = 0; step < 100 && !settled; step++) {
    await new Promise((resolve) => setTimeout(resolve, 0));
    clock.advance(100);
  }
  assert.ok(settled, `the parent is still ${await invocation.status()}`);
  assert.equal(await result, 2);
  assert.equal(resumes, 2, "one failed resume, then one that went through");
  await within(runner.stop(), DEADLINE_MS, "the runner to stop");
});

/** A promise and its resolve. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  return { opened, open };
}

test("a runner gives an execution's slot back once the write that ends it is committed: the next invocation starts while the clean-ups of the first (its waiters, its calls) are still under way", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore({ clock });
  const cleanUp = gate();
  let cleanUps = 0;
  const store = storeWith(memory, {
    removeCall: async (ref) => {
      cleanUps++;
      await cleanUp.opened;
      return await memory.removeCall(ref);
    },
  });
  const app = new Nenc({ clock, store });
  const ping = app.task("ping", ({ n }: { n: number }) => n);
  const [first, second] = [await ping.call({ n: 1 }), await ping.call({ n: 2 })];
  const runner = app.runner({ concurrency: 1 });
  runner.start();
  assert.equal(await within(second.result(), DEADLINE_MS, "the second result"), 2);
  assert.equal(await first.status(), "success");
  assert.ok(cleanUps >= 1, "the first's clean-up never began");
  cleanUp.open();
  await within(runner.stop(), DEADLINE_MS, "the runner to stop");
});

test("the recovery of orphans leaves alone what a pick-up ahead has claimed but not answered yet: nothing runs twice", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore({ clock });
  const functions = [gate(), gate(), gate(), gate()];
  const answered = gate(); // the pick-up ahead, after it claimed
  let aheads = 0;
  let recoveries = 0;
  const store = storeWith(memory, {
    claim: async (request) => {
      const outcome = await memory.claim(request);
      if (request.ready !== undefined && aheads++ === 0) await answered.opened;
      return outcome;
    },
    recoverable: (query) => {
      recoveries++;
      return memory.recoverable(query);
    },
  });
  const app = new Nenc({ clock, store });
  const runs = [0, 0, 0, 0];
  const hold = app.task("hold", async ({ n }: { n: number }) => {
    runs[n]!++;
    await functions[n]!.opened;
    return n;
  });
  const invocations = [];
  for (let n = 0; n < 4; n++) invocations.push(await hold.call({ n }));
  const runner = app.runner({ concurrency: 2, heartbeatMs: 1_000, pollMs: 100 });
  runner.start();
  await waitUntil(() => runs[0] === 1 && runs[1] === 1, { message: "a and b do not run" });
  // a ends: its slot goes to a pick-up ahead (more waits), which claims c once a's end is
  // committed, and does not answer yet.
  functions[0]!.open();
  const c = invocations[2]!;
  await waitUntil(async () => (await c.status()) === "running", { message: "c not claimed" });
  assert.equal(aheads, 1);
  // A heartbeat later the loop looks for orphans: c is the runner's in the store, not yet here.
  const before = recoveries;
  for (let step = 0; step < 50 && recoveries === before; step++) {
    clock.advance(100);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  assert.ok(recoveries > before, "no recovery pass");
  for (let step = 0; step < 10; step++) await new Promise((resolve) => setTimeout(resolve, 0));
  answered.open();
  for (const function_ of functions.slice(1)) function_.open();
  assert.deepEqual(
    await within(Promise.all(invocations.map((x) => x.result())), DEADLINE_MS, "the results"),
    [0, 1, 2, 3],
  );
  assert.deepEqual(runs, [1, 1, 1, 1]);
  assert.deepEqual(
    (await c.history()).map((entry) => entry.status),
    ["registered", "pending", "running", "success"],
  );
  await within(runner.stop(), DEADLINE_MS, "the runner to stop");
});
test("a runner picks up for a slot while the end that frees it is written: the pick-up is under way before that end is committed, and claims only after it", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore({ clock });
  const end = gate();
  let ends = 0;
  const aheads: ClaimRequest[] = [];
  const store = storeWith(memory, {
    change: async (id, change) => {
      if (change.path.includes("success") && ends++ === 0) await end.opened;
      return await memory.change(id, change);
    },
    claim: (request) => {
      if (request.ready !== undefined) aheads.push(request);
      return memory.claim(request);
    },
  });
  const app = new Nenc({ clock, store });
  const seen: string[] = [];
  const first = app.task("first", () => 1);
  const second = app.task("second", async () => {
    seen.push(await a.status());
    return 2;
  });
  const a = await first.call();
  const b = await second.call();
  const runner = app.runner({ concurrency: 1 });
  runner.start();
  await waitUntil(() => aheads.length > 0, { message: "no pick-up while a's end is written" });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(await a.status(), "running", "a's end is still held");
  assert.equal(await b.status(), "registered", "b is claimed before a's slot is given back");
  end.open();
  assert.equal(await within(b.result(), DEADLINE_MS, "b's result"), 2);
  assert.deepEqual(seen, ["success"]);
  await within(runner.stop(), DEADLINE_MS, "the runner to stop");
});
