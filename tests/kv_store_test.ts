import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { SerializationError } from "../core/errors.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { KV_SCHEMA_VERSION, KvStore } from "../kv/store.ts";
import { holdingCommits, interceptKv, type KvHooks, openTestKv, type TestKv } from "./_kv.ts";
import { Keys } from "../kv/keys.ts";
import { callRefOf } from "../core/store.ts";
import { type KvConnectFixture, startKvConnectFixture } from "./_kv_connect_fixture.ts";
import { storeContract } from "./store_contract.ts";
import { drainLanes } from "./_contract_fairness.ts";
import { FakeClock } from "./_fake_clock.ts";
import { refusePickUps } from "./_long_history.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { InjectedStoreFault } from "./_faults.ts";

/** Whether `error` is the refusal of a record over Deno KV's value limit, naming the limit. */
const overValueLimit = (error: unknown): boolean =>
  error instanceof SerializationError && /64 KiB\) Deno KV value limit/.test(error.message);

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

const fixtures: KvConnectFixture[] = [];
after(() => Promise.all(fixtures.map((fixture) => fixture.close())));

/** A fresh database of each kind: in memory, a file, or a remote one through KV Connect. */
async function openFresh(where: ":memory:" | "file" | "remote"): Promise<TestKv> {
  if (where === "remote") {
    const fixture = await startKvConnectFixture();
    fixtures.push(fixture);
    return await openTestKv(fixture.url, fixture.accessToken);
  }
  return await openTestKv(where === "file" ? join(directory, `${++files}.db`) : ":memory:");
}

for (const where of [":memory:", "file", "remote"] as const) {
  storeContract(`kv ${where}`, async (options = {}, shareWith) => {
    let kv = shareWith === undefined ? undefined : handles.get(shareWith);
    if (kv === undefined) {
      const handle = await openFresh(where);
      opened.push(handle);
      kv = handle;
    }
    const app = new Nenc({ ...options, kv });
    handles.set(app, kv);
    return app;
  });
}

test("[kv] a result over the 64 KiB value limit fails the invocation with a SerializationError naming the limit", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "big", kv });
  const big = app.task("big", () => "x".repeat(70_000));
  await using runner = app.runner();
  runner.start();
  const invocation = await big.call();
  await assert.rejects(
    within(invocation.result(), DEADLINE_MS, "big's result"),
    overValueLimit,
  );
  assert.equal(await invocation.status(), "failed");
});

test("[kv] routeCalls of 100 calls with 20 KB arguments registers all 100: commits are split by bytes, not only by count", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "bulk", kv });
  const echo = app.task("echo", ({ text }: { text: string; i: number }) => text.length);
  const calls = Array.from({ length: 100 }, (_, i) => ({
    task: echo,
    args: { text: i < 50 ? "x" : "x".repeat(20_000), i },
  }));
  const invocations = await app.orchestrator.routeCalls(calls);
  assert.equal(invocations.length, 100);
  assert.equal((await app.orchestrator.store.counts()).get("echo")?.get("registered"), 100);
});

test("[kv] routeCalls with one record over the 64 KiB value limit registers none of its calls and names the limit", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "bulk-over", kv });
  const echo = app.task("echo", ({ text }: { text: string; i: number }) => text.length);
  const calls = Array.from({ length: 100 }, (_, i) => ({
    task: echo,
    args: { text: i === 99 ? "x".repeat(70_000) : "x", i },
  }));
  await assert.rejects(
    app.orchestrator.routeCalls(calls),
    overValueLimit,
  );
  assert.equal((await app.orchestrator.store.counts()).size, 0);
});

test("[kv] useKv moves an unused app onto KV, where another app on the same KV sees its invocations; a used app refuses", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "moved" });
  const send = app.task("send", ({ to }: { to: string }) => to);
  app.useKv(kv);
  const invocation = await send.call({ to: "ada" });
  const other = new Nenc({ appId: "moved", kv });
  assert.equal((await other.orchestrator.store.get(invocation.id))?.taskId, "send");
  assert.throws(
    () => app.useKv(kv),
    /Cannot change the backend: the app has already used its store/,
  );
});

test("[kv] an app refuses a KvStore built for another app id (its keys would be under that id)", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const store = new KvStore(kv, { appId: "alpha", clock: systemClock });
  assert.equal(new Nenc({ appId: "alpha", store }).orchestrator.store, store);
  assert.throws(
    () =>
      new Nenc({ appId: "beta", store: new KvStore(kv, { appId: "alpha", clock: systemClock }) }),
    /Cannot create app beta: its store already holds app alpha/,
  );
});

test("[kv] a caller awaiting more invocations than one poll slice sees every end made through another KV handle, even while the first awaited never end", async () => {
  // Two handles on one file do not share in-process wake-ups: the caller learns of ends only by
  // polling, a slice at a time. The 100 held invocations, awaited first, fill the first slice.
  const path = join(directory, `${++files}.db`);
  const callerKv = await openTestKv(path);
  const runnerKv = await openTestKv(path);
  opened.push(callerKv, runnerKv);
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const define = (app: Nenc) => ({
    hold: app.task("hold", async ({ i }: { i: number }) => {
      await released;
      return i;
    }),
    quick: app.task("quick", ({ i }: { i: number }) => i),
  });
  const caller = define(new Nenc({ appId: "slices", kv: callerKv }));
  const runnerApp = new Nenc({ appId: "slices", kv: runnerKv });
  define(runnerApp);
  await using runner = runnerApp.runner({ concurrency: 200 });
  runner.start();
  const held = await caller.hold.parallelize(Array.from({ length: 100 }, (_, i) => ({ i })));
  const heldResults = held.results();
  const quick = await caller.quick.parallelize(Array.from({ length: 50 }, (_, i) => ({ i })));
  const quickResults = await within(quick.results(), 20_000, "the quick results");
  assert.deepEqual(quickResults, Array.from({ length: 50 }, (_, i) => i));
  release();
  assert.deepEqual(
    await within(heldResults, DEADLINE_MS, "the held results"),
    Array.from({ length: 100 }, (_, i) => i),
  );
});

test("[kv] the finals poller is quick again as soon as ends made through another KV handle come: its backed-off read budget holds only while none do", async () => {
  // Two handles on one file: the caller learns of the runner's ends only by polling.
  const path = join(directory, `${++files}.db`);
  const callerKv = await openTestKv(path);
  const runnerKv = await openTestKv(path);
  opened.push(callerKv, runnerKv);
  let reads = 0;
  const view = interceptKv(callerKv, {
    beforeGetMany: (keys) => void (reads += keys.filter((key) => key[2] === "inv").length),
  });
  const caller = new Nenc({ appId: "quick-poller", kv: view });
  const job = caller.task("job", ({ n }: { n: number }) => n);
  const runnerApp = new Nenc({ appId: "quick-poller", kv: runnerKv });
  runnerApp.task("job", ({ n }: { n: number }) => n);
  const { invocations } = await job.parallelize(Array.from({ length: 2_000 }, (_, n) => ({ n })));
  const store = caller.orchestrator.store;
  const waits = Promise.all(invocations.map(({ id }) => store.waitFinal(id)));
  // The waiters' own reads (2,000), then the poller's quick rounds while nothing ends (7 of 100):
  // backed off all the way, it reads at most ~1,000 a second.
  await waitUntil(() => reads >= 2_000 + 800, { message: "the poller backed off", intervalMs: 5 });
  reads = 0;
  const start = performance.now();
  await using runner = runnerApp.runner({ concurrency: 32 });
  runner.start();
  await within(waits, DEADLINE_MS, "the ends made through the other handle");
  const seconds = (performance.now() - start) / 1000;
  // Ends kept coming: it read faster than its budget (held to it, a sweep of 2,000 took 2 s).
  assert.ok(reads > 1_000 * seconds + 200, `${reads} reads in ${seconds.toFixed(2)} s`);
});

test("[kv] data written by a newer schema version is refused with a clear error", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  await kv.atomic().set(["nenc", "future", "schema"], new TextEncoder().encode("99")).commit();
  const app = new Nenc({ appId: "future", kv });
  const task = app.task("t", () => 1);
  await assert.rejects(
    task.call(),
    new RegExp(`schema version 99, newer than this nenc's ${KV_SCHEMA_VERSION}`),
  );
});

test("[kv] foreign data under an invocation key is reported, not evaluated", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "foreign", kv });
  await kv.atomic().set(
    ["nenc", "foreign", "inv", "01FOREIGN"],
    new TextEncoder().encode('{"x":1}'),
  )
    .commit();
  await assert.rejects(
    app.orchestrator.getInvocation("01FOREIGN"),
    (error: unknown) =>
      error instanceof SerializationError && /not a nenc invocation/.test(error.message),
  );
});

test("[kv] a pick-up stamps each claim with the time it commits, not the time its pass began: a history never goes back in time", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const clock = new FakeClock();
  const app = new Nenc({ appId: "stamps", kv, clock });
  const task = app.task("task", () => 1);
  // A pick-up pass takes its time once, then claims candidate after candidate (each a commit,
  // re-read and re-planned on conflicts): by the time it reaches one, that one may be newer.
  const passStartedMs = clock.now();
  clock.advance(50);
  const invocation = await task.call();
  await app.orchestrator.store.claim({
    runnerId: "r1",
    nowMs: passStartedMs,
    max: 1,
    rerouteOnConcurrencyControl: () => true,
    purgeAtMs: passStartedMs + 3_600_000,
  });
  const history = await invocation.history();
  assert.deepEqual(history.map((entry) => entry.status), ["registered", "pending"]);
  assert.ok(
    history[1]!.timestampMs >= history[0]!.timestampMs,
    `pending at ${history[1]!.timestampMs} before registered at ${history[0]!.timestampMs}`,
  );
});

/**
 * A view of `kv` that remembers the `expireIn` of the last committed set of each key (`null`:
 * none); `hooks` see the commits too.
 */
function recordExpiries(
  kv: KvLike,
  hooks: KvHooks = {},
): { view: KvLike; expiries: Map<string, number | null> } {
  const expiries = new Map<string, number | null>();
  const view = interceptKv(kv, {
    ...hooks,
    afterCommit: (ok, sets) => {
      if (!ok) return;
      for (const { key, expireIn } of sets) expiries.set(JSON.stringify(key), expireIn ?? null);
    },
  });
  return { view, expiries };
}

test("[kv] every key of a final invocation gets expireIn, with a long history too, and setUpInvocationAutoPurge re-sets them all to the new horizon", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { view, expiries } = recordExpiries(kv);
  const clock = new FakeClock();
  const app = new Nenc({ appId: "expiry", kv: view, clock });
  const o = app.orchestrator;
  const job = app.task("job", ({ n }: { n: number }) => n);
  const parentTask = app.task(
    "parent",
    async () => (await (await job.call({ n: 1 })).result()) + 1,
  );
  const long = await job.call({ n: 2 });
  await refusePickUps(o.store, long.id, 600, clock.now());
  const parent = await parentTask.call();
  await within(app.runner({ concurrency: 2 }).drain(), DEADLINE_MS, "the drain");
  assert.equal(await within(parent.result(), DEADLINE_MS, "the parent's result"), 2);
  assert.equal(await within(long.result(), DEADLINE_MS, "the long one's result"), 2);
  const [child] = await o.store.children(parent.id);
  assert.ok(child !== undefined);
  /** The keys of `id` in the store, each with the expireIn of its last set. */
  const keysOf = async (id: string): Promise<[string, number | null][]> => {
    const found: [string, number | null][] = [];
    for await (const entry of kv.list({ prefix: ["nenc", "expiry"] })) {
      const key = JSON.stringify(entry.key);
      if (key.includes(id)) found.push([key, expiries.get(key) ?? null]);
    }
    return found;
  };
  const horizonMs = 24 * 3_600_000;
  const assertExpiring = async (id: string, minimumKeys: number): Promise<void> => {
    const keys = await keysOf(id);
    assert.ok(keys.length >= minimumKeys, `${keys.length} keys of ${id}`);
    for (const [key, expireIn] of keys) {
      // The purge entry outlives the rest, for the sweep; everything else expires at the horizon.
      if (key.includes('"purge"')) assert.ok(expireIn !== null && expireIn > horizonMs, key);
      else assert.equal(expireIn, horizonMs, key);
    }
  };
  // record (its history in it), task index, child index, purge entry; the long one's history
  // (1,204 entries) outgrew its record: as many keys, and no child index
  const all = [{ id: child.id, keys: 4 }, { id: parent.id, keys: 3 }, { id: long.id, keys: 1_207 }];
  for (const { id, keys } of all) await assertExpiring(id, keys);
  for (const id of [child.id, parent.id]) {
    assert.deepEqual((await keysOf(id)).filter(([key]) => key.includes('"hist"')), [], id);
    assert.ok((await o.store.history(id)).length >= 4, `the history of ${id}`);
  }
  assert.equal((await o.store.history(long.id)).length, 1_204);
  clock.advance(10 * 3_600_000);
  expiries.clear();
  for (const { id } of all) await o.setUpInvocationAutoPurge({ id });
  for (const { id, keys } of all) await assertExpiring(id, keys);
});

test("[kv] a late re-expiry of a long history yields to a setUpInvocationAutoPurge made meanwhile: the history keeps its record's deadline", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const clock = new FakeClock();
  let hold: (() => Promise<void>) | undefined;
  // The first commit that sets only history entries (the re-expiry after the final commit) waits
  // until the test lets it go.
  const { view, expiries } = recordExpiries(kv, {
    beforeCommit: async (_values, keys) => {
      if (hold !== undefined && keys.length > 0 && keys.every((key) => key.includes("hist"))) {
        const wait = hold;
        hold = undefined;
        await wait();
      }
    },
  });
  const app = new Nenc({ appId: "late-expiry", kv: view, clock });
  const o = app.orchestrator;
  const job = app.task("job", ({ n }: { n: number }) => n);
  const long = await job.call({ n: 1 });
  await refusePickUps(o.store, long.id, 100, clock.now());
  let reached!: () => void;
  const atHold = new Promise<void>((resolve) => reached = resolve);
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  hold = () => {
    reached();
    return released;
  };
  const [claimed] = await o.getInvocationsToRun(1, { runnerId: "r1" });
  await o.setInvocationRun(undefined, claimed!, { runnerId: "r1" });
  const finishing = o.setInvocationResult(claimed!, 1, { runnerId: "r1" });
  // final commit done, its history re-expiry (24 h from the finish) waits
  await within(atHold, DEADLINE_MS, "the held re-expiry");
  clock.advance(3_600_000);
  await o.setUpInvocationAutoPurge(long); // 24 h from now: 25 h from the finish
  expiries.clear();
  release();
  await finishing;
  // The held re-expiry, planned for the old deadline, did not land on the new one.
  const late = [...expiries.keys()].filter((key) => key.includes('"hist"'));
  assert.deepEqual(late, [], "a late re-expiry overwrote the history's new deadline");
});

test("[kv] parking costs one commit per refused invocation: 100 polls while its key is held commit nothing, and waking one is one commit", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  let commits = 0;
  let parkCommits = 0;
  const view = interceptKv(kv, {
    afterCommit: (ok, written) => {
      if (!ok) return;
      commits++;
      if (written.some(({ key }) => key[2] === "park")) parkCommits++;
    },
  });
  const app = new Nenc({ appId: "parking-writes", kv: view });
  const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
  const claim = (runnerId: string) => app.orchestrator.getInvocationsToRun(5, { runnerId });
  const holder = await task.call({ n: -1 });
  const parked = await task.parallelize(Array.from({ length: 200 }, (_, n) => ({ n })));
  assert.deepEqual((await claim("r1")).map(({ id }) => id), [holder.id]);
  await app.orchestrator.setInvocationRun(undefined, holder, { runnerId: "r1" });
  // Polls park the 200 as they reach them, one commit each (with its one history entry).
  const registered = async () =>
    (await app.orchestrator.store.counts()).get("t")?.get("registered");
  for (let poll = 0; poll < 50 && await registered() !== undefined; poll++) {
    assert.deepEqual(await claim("r2"), []);
  }
  assert.equal(await registered(), undefined, "every invocation parked within 50 polls");
  assert.equal(parkCommits, 200);
  const quiet = commits;
  for (let poll = 0; poll < 100; poll++) assert.deepEqual(await claim("r2"), []);
  assert.equal(commits - quiet, 0, "polls while the key is held commit nothing");
  // Freed: the next pick-up wakes the first parked (one commit) and claims it (one more); the
  // wake marker goes with a third.
  await app.orchestrator.setInvocationResult(holder, null, { runnerId: "r1" });
  const freed = commits;
  assert.deepEqual((await claim("r2")).map(({ id }) => id), [parked.invocations[0]!.id]);
  assert.equal(commits - freed, 3);
  assert.deepEqual(
    (await parked.invocations[0]!.history()).map(({ status }) => status),
    ["registered", "concurrency_controlled", "rerouted", "pending"],
  );
  for (const invocation of parked.invocations.slice(1)) {
    assert.deepEqual(
      (await invocation.history()).map(({ status }) => status),
      ["registered", "concurrency_controlled"],
    );
  }
});

test("[kv] lanes, parking and wake markers leave no key behind: after 3 keys × 8 invocations with limit 1 per key and 2 in all, some canceled, drain to the end, no slot, lane, park or wake key and no lane token remain", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "lanes-clean", kv });
  await drainLanes(app, [4]);
  assert.equal((await app.orchestrator.store.counts()).get("sync")?.get("success"), 21);
  const left: string[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", "lanes-clean"] })) {
    const [kind] = entry.key.slice(2).map(String);
    const lane = kind === "q" && String(entry.key[3]).includes("~");
    if (["slot", "lane", "park", "wake", "reserve"].includes(kind!) || lane) {
      left.push(entry.key.map(String).join("/"));
    }
  }
  assert.deepEqual(left, []);
});

test("[kv] lanes of priorities other than 0 leave no key behind: 3 keys × 3 priorities (-5, 0, 5) drained with limit 1 per key, and no slot, lane or queue key remains", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "priority-lanes", kv });
  const send = app.task("send", ({ to, n }: { to: string; n: number }) => `${to}${n}`, {
    runningConcurrency: "keys",
    keyArguments: ["to"],
  });
  for (const priority of [-5, 0, 5]) {
    await send.parallelize(["a", "b", "c"].flatMap((to) => [{ to, n: 1 }, { to, n: 2 }]), {
      priority,
    });
  }
  await within(app.runner({ concurrency: 3 }).drain(), DEADLINE_MS, "the drain");
  assert.equal((await app.orchestrator.store.counts()).get("send")?.get("success"), 18);
  const left: string[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", "priority-lanes"] })) {
    if (["slot", "lane", "park", "wake", "q", "qd"].includes(String(entry.key[2]))) {
      left.push(entry.key.map(String).join("/"));
    }
  }
  assert.deepEqual(left, []);
});

test("[kv] registerMany settles every lane's commit before it rejects: a caller that retries what is missing cannot race a chunk still in flight", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const laneOf = (keys: readonly KvKey[], task: string) =>
    keys.some((key) => key[2] === "lane" && String(key[3]).startsWith(task));
  const view = interceptKv(kv, {
    beforeCommit: async (_values, keys) => {
      if (laneOf(keys, "child-a")) throw new Error("injected: lane a's commit refused");
      if (laneOf(keys, "child-b")) await new Promise((resolve) => setTimeout(resolve, 200));
    },
  });
  const app = new Nenc({ appId: "register-many-settles", kv: view });
  const keyed = { runningConcurrency: "keys", keyArguments: ["k"] } as const;
  const a = app.task("child-a", ({ n }: { k: string; n: number }) => n, keyed);
  const b = app.task("child-b", ({ n }: { k: string; n: number }) => n, keyed);
  await assert.rejects(
    app.orchestrator.routeCalls<{ k: string; n: number }, number>([
      ...[0, 1].map((n) => ({ task: a, args: { k: "x", n } })),
      ...[0, 1].map((n) => ({ task: b, args: { k: "x", n } })),
    ]),
    /lane a's commit refused/,
  );
  // Lane b's chunk had landed by then: its two invocations are counted, once.
  const slots: unknown[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", "register-many-settles", "slot"] })) {
    slots.push(JSON.parse(new TextDecoder().decode(entry.value as Uint8Array)));
  }
  assert.deepEqual(slots.map((slot) => (slot as { queued: number }).queued), [2]);
});

test("[kv] a pick-up of a task with every kind of key — a registration key, a running key, four groups, a rate limit key and a lane of a priority — checks 10 keys in its commit, Deno KV's limit", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const checks: number[] = [];
  const counting: KvLike = {
    get: (key) => kv.get(key),
    getMany: (keys) => kv.getMany(keys),
    list: (selector, options) => kv.list(selector, options),
    atomic: () => {
      const op = kv.atomic();
      let count = 0;
      const check = op.check.bind(op);
      const commit = op.commit.bind(op);
      op.check = (...list) => {
        count += list.length;
        return check(...list);
      };
      op.commit = () => {
        checks.push(count);
        return commit();
      };
      return op;
    },
  };
  const app = new Nenc({ appId: "every-key", kv: counting });
  const task = app.task("t", ({ k }: { k: string }) => k, {
    registrationConcurrency: "arguments",
    runningConcurrency: "keys",
    keyArguments: ["k"],
    concurrencyGroups: ["a", "b", "c", "d"].map((name) => ({ name, limit: 2 })),
    rateLimit: { by: "keys", limit: 5, intervalMs: 1_000 },
    priority: 5, // its lane ("x" at priority 5) is no slot key: one key more
  });
  const invocation = await task.call({ k: "x" });
  checks.length = 0;
  // Straight through PENDING to RUNNING: the step frees the registration key too.
  const started = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
  assert.deepEqual(started.map((start) => [start.invocation.id, start.running]), [
    [invocation.id, true],
  ]);
  assert.equal(Math.max(...checks), 10);
});

test("[kv] a rate limit key's log is kept while invocations are parked on it, and set to expire a minute after it stops counting once none are", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const expiries = new Map<string, (number | undefined)[]>();
  const view = interceptKv(kv, {
    onSet: (_value, key, options) => {
      if (key[2] !== "slot") return;
      const list = expiries.get(String(key[3])) ?? [];
      list.push(options?.expireIn);
      expiries.set(String(key[3]), list);
    },
  });
  const clock = new FakeClock();
  const app = new Nenc({ appId: "rate-expiry", kv: view, clock });
  const task = app.task("t", ({ n }: { n: number }) => n, {
    rateLimit: { limit: 1, intervalMs: 1_000 },
  });
  const [first, second] = [await task.call({ n: 1 }), await task.call({ n: 2 })];
  await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" }); // first runs, second parks
  assert.equal(await second.status(), "concurrency_controlled");
  clock.advance(1_000);
  await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" }); // woken, then picked up
  assert.equal(await first.status(), "pending");
  assert.equal(await second.status(), "pending");
  // The first pick-up; the park; the wake; the second pick-up, 1,000 ms later: its log stops
  // counting 1,000 ms after it, and goes a minute after that.
  assert.deepEqual(expiries.get("#rate#t"), [61_000, undefined, undefined, 61_000]);
});

test("[kv] a pick-up reads the wake markers, the due delayed entries, the ready queue and the blocking index together: no range read waits for another", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const app = new Nenc({ appId: "together", kv: handle });
  const ping = app.task("ping", () => "pong");
  const invocation = await ping.call();
  // Each range read of the pick-up is held until all five have begun: read one after the other,
  // the first would never end.
  const begun = new Set<string>();
  let allBegun!: () => void;
  const together = new Promise<void>((resolve) => allBegun = resolve);
  const kv = interceptKv(handle, {
    beforeList: async (selector) => {
      const prefix = "prefix" in selector ? selector.prefix : selector.start;
      begun.add(String(prefix[2]));
      if (begun.size === 5) allBegun();
      await within(together, DEADLINE_MS, `all five reads, begun: ${[...begun].join(", ")}`);
    },
  });
  const store = new KvStore(kv, { appId: "together", clock: systemClock });
  const { claimed } = await store.claim({
    runnerId: "r1",
    nowMs: Date.now(),
    max: 1,
    blocking: true,
    rerouteOnConcurrencyControl: () => true,
    purgeAtMs: Date.now() + 3_600_000,
  });
  assert.deepEqual(claimed.map((record) => record.id), [invocation.id]);
  assert.deepEqual([...begun].sort(), ["q", "qd", "ready", "wake", "wakeat"]);
});

test("[kv] a runner's final write reads the wait graph marker, its call hold and the side index hints (for the pick-up that follows) in one getMany, then commits, and that is all: its record as its claim here committed it, a short history in the record, no key to read or re-expire, and a hold checked absent leaves no call to release", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const steps: string[] = [];
  const kv: KvLike = {
    get: (key) => handle.get(key),
    list: (selector, options) => handle.list(selector, options),
    getMany: (keys) => {
      steps.push(`read ${keys.map((key) => key.slice(2, 3).join("/")).sort().join(" ")}`);
      return handle.getMany(keys);
    },
    atomic: () => {
      const op = handle.atomic();
      const commit = op.commit.bind(op);
      op.commit = () => {
        steps.push("commit");
        return commit();
      };
      return op;
    },
  };
  const app = new Nenc({ appId: "ahead", kv });
  const ping = app.task("ping", () => "pong");
  await ping.call();
  const [started] = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.running, true);
  steps.length = 0;
  await app.orchestrator.setInvocationResult(started.invocation, "pong", {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  // REGISTERED, PENDING, RUNNING are in the record, which the commit sets with its expiry.
  assert.deepEqual(steps, ["read hint hint hint holder wnode", "commit"]);
  assert.deepEqual((await started.invocation.history()).map(({ status }) => status), [
    "registered",
    "pending",
    "running",
    "success",
  ]);
});

test("[kv] a call hold written between a final write's read and its commit (a child claimed late) fails that commit's check: tried again, the final write sees the hold and it is released, none left behind", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const { kv, hold } = holdingCommits(handle);
  const app = new Nenc({ appId: "late", kv });
  const ping = app.task("ping", ({ n }: { n: number }) => n);
  await ping.call({ n: 1 });
  const child = await ping.call({ n: 2 });
  const [started] = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.running, true);
  const keys = new Keys("late");
  const held = hold(keys.invocation(started.invocation.id));
  const ended = app.orchestrator.setInvocationResult(started.invocation, "1", {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  await held.reached;
  // The final write has read the hold absent; now a child's call edge adds it.
  const [parentRecord, childRecord] = await app.orchestrator.store.getMany([
    started.invocation.id,
    child.id,
  ]);
  await app.orchestrator.store.addCall(callRefOf(parentRecord!), callRefOf(childRecord!));
  const holdKey = keys.callHolder(parentRecord!.callId, parentRecord!.id);
  assert.notEqual((await handle.get(holdKey)).versionstamp, null);
  held.open();
  await ended;
  assert.equal(await started.invocation.status(), "success");
  assert.equal((await handle.get(holdKey)).versionstamp, null, "the parent's hold is released");
});

test("[kv] two pick-ups of one store at once (a runner's refill beside its pick-up) take disjoint candidates: no claim of one is refused for the other's", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  let refused = 0;
  const kv = interceptKv(handle, { afterCommit: (ok) => void (ok || refused++) });
  const app = new Nenc({ appId: "beside", kv });
  const ping = app.task("ping", ({ n }: { n: number }) => n);
  const { invocations } = await ping.parallelize([1, 2, 3, 4].map((n) => ({ n })));
  const request = {
    nowMs: Date.now(),
    max: 2,
    rerouteOnConcurrencyControl: () => true,
    purgeAtMs: Date.now() + 3_600_000,
  };
  const store = app.orchestrator.store;
  const [first, second] = await Promise.all([
    store.claim({ ...request, runnerId: "r1" }),
    store.claim({ ...request, runnerId: "r1" }),
  ]);
  assert.equal(first.claimed.length, 2);
  assert.equal(second.claimed.length, 2);
  assert.deepEqual(
    [...first.claimed, ...second.claimed].map((record) => record.id).sort(),
    invocations.map((invocation) => invocation.id).sort(),
  );
  assert.equal(refused, 0);
});

test("[kv] a pick-up given a `ready` promise reads the queue and its candidate at once, and commits its claim only once that resolves", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  let reads = 0;
  let commits = 0;
  const kv = interceptKv(handle, {
    beforeGetMany: () => void reads++,
    beforeCommit: () => void commits++,
  });
  const app = new Nenc({ appId: "ready", kv });
  const invocation = await app.task("ping", () => "pong").call();
  let open!: () => void;
  const ready = new Promise<void>((resolve) => open = resolve);
  const [readsBefore, commitsBefore] = [reads, commits];
  const claiming = app.orchestrator.store.claim({
    runnerId: "r1",
    nowMs: Date.now(),
    max: 1,
    ready,
    rerouteOnConcurrencyControl: () => true,
    purgeAtMs: Date.now() + 3_600_000,
  });
  await waitUntil(() => reads > readsBefore, { message: "the candidate's record is not read" });
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(commits, commitsBefore, "a commit before ready");
  assert.equal(await invocation.status(), "registered");
  open();
  const { claimed } = await within(claiming, DEADLINE_MS, "the claim");
  assert.deepEqual(claimed.map((record) => record.id), [invocation.id]);
});

for (const waited of [false, true]) {
  test(
    `[kv] a pick-up takes the slots freed while it read (ClaimRequest.widen), asked once it has read what it may claim: max 1 widened by 2 claims 3 ${
      waited ? "invocations others wait on" : "queued invocations"
    }`,
    async () => {
      const handle = await openTestKv(":memory:");
      opened.push(handle);
      const app = new Nenc({ appId: "widen", kv: handle });
      const ping = app.task("ping", ({ n }: { n: number }) => n);
      const waiter = await ping.call({ n: 0 });
      const { invocations } = await ping.parallelize([1, 2, 3, 4].map((n) => ({ n })));
      const store = app.orchestrator.store;
      // The waiter runs (out of the way); with blocking control, the four are waited on.
      const [first] = await store.claim({
        runnerId: "r1",
        nowMs: Date.now(),
        max: 1,
        rerouteOnConcurrencyControl: () => true,
        purgeAtMs: Date.now() + 3_600_000,
      }).then(({ claimed }) => claimed);
      assert.equal(first?.id, waiter.id);
      if (waited) await store.waitFor(waiter.id, invocations.map(({ id }) => id), Date.now());
      let freed = 2;
      const { claimed } = await store.claim({
        runnerId: "r1",
        nowMs: Date.now(),
        max: 1,
        blocking: waited,
        widen: () => {
          const more = freed;
          freed = 0;
          return more;
        },
        rerouteOnConcurrencyControl: () => true,
        purgeAtMs: Date.now() + 3_600_000,
      });
      assert.deepEqual(
        claimed.map(({ id }) => id),
        invocations.slice(0, 3).map(({ id }) => id),
      );
    },
  );
}

test("[kv] a runner's pick-up takes the slot an execution frees while it reads (ClaimRequest.widen): with 2 slots, one held and one picking up, the end of the first lets that pick-up claim two", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const store = new KvStore(handle, { appId: "widen-runner", clock: systemClock });
  let claims = 0;
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  const claimed: number[] = [];
  const gated = new Proxy(store, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (property !== "claim") return value.bind(target);
      return async (request: Parameters<KvStore["claim"]>[0]) => {
        // The runner's second pick-up waits here (its reads not begun) until the test opens it.
        if (++claims === 2) await within(gate, DEADLINE_MS, "the gate");
        const outcome = await target.claim(request);
        claimed.push(outcome.claimed.length);
        return outcome;
      };
    },
  });
  const app = new Nenc({ appId: "widen-runner", store: gated });
  let release!: () => void;
  const latch = new Promise<void>((resolve) => release = resolve);
  const hold = app.task("hold", () => latch);
  const ping = app.task("ping", ({ n }: { n: number }) => n);
  const held = await hold.call();
  await using runner = app.runner({ concurrency: 2, pollMs: 10 });
  runner.start();
  await waitUntil(() => claims === 2, { message: "the second pick-up" });
  const pings = [await ping.call({ n: 1 }), await ping.call({ n: 2 })];
  release();
  await within(held.result(), DEADLINE_MS, "the held one's end");
  open();
  await within(Promise.all(pings.map((invocation) => invocation.result())), DEADLINE_MS, "pings");
  // The first pick-up claimed the held one; the second, for one slot, claimed both pings.
  assert.deepEqual(claimed.slice(0, 2), [1, 2]);
});

test("[kv] a call from a task reads no record of its caller: the caller's cancel request is checked absent in the registration's commit", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  let counting = false;
  const read: string[] = [];
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => {
      if (counting) read.push(...keys.flatMap((key) => key[2] === "inv" ? [String(key[3])] : []));
    },
    beforeGet: (key) => void (counting && key[2] === "inv" && read.push(String(key[3]))),
  });
  const app = new Nenc({ appId: "call-reads", kv: view });
  const child = app.task("child", () => 1);
  const parent = app.task("parent", async () => {
    counting = true;
    const called = await child.call();
    counting = false;
    return called.id;
  });
  const invocation = await parent.call();
  await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
  const childId = await invocation.result();
  assert.equal((await app.orchestrator.store.get(childId))?.parentId, invocation.id);
  assert.ok(!read.includes(invocation.id), `read ${read.join(", ")}`);
});

test("[kv] a call from a canceled invocation's context, before its runner saw the cancel, is refused by the registration's commit with CanceledError, and registers nothing", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "canceled-calls", kv });
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const child = app.task("child", () => 1);
  let outcome = "";
  const parent = app.task("parent", async () => {
    await gate;
    try {
      outcome = `routed ${(await child.call()).id}`;
    } catch (error) {
      outcome = `rejected ${(error as Error).name}`;
    }
    return 0;
  });
  // Its cancel requests are read every 2 s: the function calls before the runner aborts it.
  const runner = app.runner({ pollMs: 2_000, concurrency: 2 });
  runner.start();
  try {
    const invocation = await parent.call();
    await waitUntil(async () => (await invocation.status()) === "running", {
      message: "the parent running",
    });
    assert.equal(await invocation.cancel(), true);
    release();
    await waitUntil(() => outcome !== "", { message: "the parent's call" });
    assert.equal(outcome, "rejected CanceledError");
    assert.deepEqual(await app.orchestrator.store.children(invocation.id), []);
  } finally {
    await runner.stop({ graceMs: 0 });
  }
});

for (
  const kind of [
    "refused and not applied",
    "applied then reported failed",
    "with the store down for 300 ms",
  ]
) {
  test(`[kv] a call from a task whose registration commit (its caller's cancel request checked) is ${kind}: registered once, and the task goes on`, async () => {
    const kv = await openTestKv(":memory:");
    opened.push(kv);
    let armed = true;
    let downUntil = 0;
    const down = (): void => {
      if (Date.now() < downUntil) throw new InjectedStoreFault("store down");
    };
    const registersChild = (keys: readonly KvKey[]): boolean =>
      keys.some((key) => key[2] === "child");
    const view = interceptKv(kv, {
      beforeGet: down,
      beforeGetMany: down,
      beforeList: down,
      beforeCommit: (_values, keys) => {
        down();
        if (!armed || !registersChild(keys) || kind.startsWith("applied")) return;
        armed = false;
        if (kind.startsWith("with")) downUntil = Date.now() + 300;
        throw new InjectedStoreFault(kind);
      },
      afterCommit: (ok, sets) => {
        if (!armed || !ok || !kind.startsWith("applied")) return;
        if (!registersChild(sets.map(({ key }) => key))) return;
        armed = false;
        throw new InjectedStoreFault(kind);
      },
    });
    const app = new Nenc({ appId: "call-faults", kv: view });
    const child = app.task("child", () => 1);
    const parent = app.task("parent", async () => (await child.call()).id);
    const invocation = await parent.call();
    await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
    assert.equal(armed, false, "the fault fired");
    const childId = await invocation.result();
    assert.deepEqual(
      (await app.orchestrator.store.children(invocation.id)).map(({ id }) => id),
      [childId],
    );
  });
}
