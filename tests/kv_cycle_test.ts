import { after, test } from "node:test";
import assert from "node:assert/strict";
import { systemClock } from "../core/clock.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { Keys } from "../kv/keys.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

/** A view of `kv` whose first commit waits for `gate`: both racers pass their check first. */
function gated(kv: KvLike, gate: Promise<void>): KvLike {
  let commits = 0;
  return interceptKv(kv, {
    beforeCommit: async () => {
      if (commits++ === 0) await gate;
    },
  });
}

test("KV cycle control: in 20 races where A→B and B→A both pass the check before either commits, exactly one insertion fails with CycleDetectedError and one edge stays", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  for (let race = 0; race < 20; race++) {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => open = resolve);
    const options = { appId: `race${race}`, clock: systemClock };
    const one = new KvStore(gated(kv, gate), options);
    const two = new KvStore(gated(kv, gate), options);
    const a = { callId: "a#1", invocationId: "ia", label: "a()" };
    const b = { callId: "b#1", invocationId: "ib", label: "b()" };
    const first = one.addCall(a, b);
    const second = two.addCall({ ...b, invocationId: "ib2" }, { ...a, invocationId: "ia2" });
    // Let both reach their gated commit (their pre-commit checks see no edge yet).
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 0));
    open();
    const outcomes = await Promise.allSettled([first, second]);
    const rejected = outcomes.filter((outcome) => outcome.status === "rejected");
    assert.equal(rejected.length, 1, `race ${race}: ${JSON.stringify(outcomes)}`);
    const reason = (rejected[0] as PromiseRejectedResult).reason;
    assert.ok(reason instanceof CycleDetectedError);
    assert.equal(reason.callIds.length, 2);
    const edges = [];
    for await (const entry of kv.list({ prefix: ["nenc", `race${race}`, "calls"] })) {
      edges.push(entry.key);
    }
    assert.equal(edges.length, 1, `race ${race}: edges left: ${JSON.stringify(edges)}`);
  }
});

/** A gate: `wait()` blocks until `open()`; `reached` resolves when something first waits. */
function gate(): { wait(): Promise<void>; open(): void; reached: Promise<void> } {
  let open!: () => void;
  let reach!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  const reached = new Promise<void>((resolve) => reach = resolve);
  return {
    wait: () => {
      reach();
      return opened;
    },
    open,
    reached,
  };
}

const call = (callId: string, invocationId: string) => ({ callId, invocationId, label: callId });

async function keysUnder(kv: KvLike, prefix: KvKey): Promise<KvKey[]> {
  const found: KvKey[] = [];
  for await (const entry of kv.list({ prefix })) found.push(entry.key);
  return found;
}

test("KV cycle control: a call's edges survive when a new holder joins while the last old holder is removing it (no missed cycle)", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const options = { appId: "join-during-removal", clock: systemClock };
  const keys = new Keys(options.appId);
  const other = new KvStore(kv, options);
  // The removing process stops once, right after it found no holder of C left, before it reads
  // C's edges to delete them.
  const edgesOfC = gate();
  let gated = false;
  const removing = new KvStore(
    interceptKv(kv, {
      beforeList: async (selector) => {
        const prefix = "prefix" in selector ? selector.prefix : [];
        if (!gated && String(prefix) === String(keys.callEdge("C"))) {
          gated = true;
          await edgesOfC.wait();
        }
      },
    }),
    options,
  );
  await other.addCall(call("C", "x1"), call("D", "d1")); // x1 (call C) runs child D
  const removal = removing.removeCall(call("C", "x1")); // x1 is final: C's last holder, for now
  await edgesOfC.reached;
  await other.addCall(call("C", "x2"), call("E", "e1")); // x2, the same call C, runs child E
  edgesOfC.open();
  await removal;
  // E calling C closes C → E → C while x2 runs.
  await assert.rejects(other.addCall(call("E", "e1"), call("C", "x3")), CycleDetectedError);
  const { edges } = (await other.graphs()).calls;
  assert.deepEqual(edges, [["C", "D"], ["C", "E"]], "x2 still holds C: C keeps its edges");
});

test("KV cycle control: an existing edge a new holder relies on survives the concurrent removal of the call's last old holder (no missed cycle)", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const options = { appId: "rely-during-removal", clock: systemClock };
  const other = new KvStore(kv, options);
  // The inserting process stops once, before its commit: it has already read that C → D exists.
  const commit = gate();
  let gated = false;
  const inserting = new KvStore(
    interceptKv(kv, {
      beforeCommit: async () => {
        if (!gated) {
          gated = true;
          await commit.wait();
        }
      },
    }),
    options,
  );
  await other.addCall(call("C", "x1"), call("D", "d1")); // x1 (call C) runs child D
  const insertion = inserting.addCall(call("C", "x2"), call("D", "d2")); // C → D exists: reuse it
  await commit.reached;
  await other.removeCall(call("C", "x1")); // C's last holder as far as storage knows: edges go
  commit.open();
  await insertion;
  // D calling C closes C → D → C while x2 runs d2.
  await assert.rejects(other.addCall(call("D", "d2"), call("C", "x3")), CycleDetectedError);
  assert.deepEqual((await other.graphs()).calls.edges, [["C", "D"]], "x2 runs d2: C → D is live");
});

test("KV cycle control: the last holder's removal deletes a call's edges written without a holders version key (data of earlier versions), and leaves no key behind", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const options = { appId: "legacy-calls", clock: systemClock };
  const keys = new Keys(options.appId);
  const store = new KvStore(kv, options);
  const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  // What an earlier nenc wrote for x1 (call C) running d1 (call D): holders and the edge only.
  await kv.atomic()
    .set(keys.callHolder("C", "x1"), bytes("C"))
    .set(keys.callHolder("D", "d1"), bytes("D"))
    .set(keys.callEdge("C", "D"), bytes(null))
    .set(keys.calledEdge("D", "C"), bytes(null))
    .commit();
  await store.removeCall(call("C", "x1"));
  assert.deepEqual((await store.graphs()).calls.edges, []);
  await store.addCall(call("D", "d1"), call("C", "x2")); // C is gone: D → C closes nothing
  await store.removeCall(call("C", "x2"));
  await store.removeCall(call("D", "d1"));
  for (const kind of ["holder", "hver", "calls", "called"]) {
    assert.deepEqual(await keysUnder(kv, [...keys.app, kind]), [], `${kind} keys left`);
  }
});

test("KV cycle control: the last holder's removal deletes all 600 edges of a call, in several commits (KV allows 1000 mutations per commit)", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const options = { appId: "wide-call", clock: systemClock };
  const keys = new Keys(options.appId);
  const store = new KvStore(kv, options);
  // p1 (call P) starts 600 children it does not wait for; it finishes first.
  for (let i = 0; i < 600; i++) await store.addCall(call("P", "p1"), call(`c${i}`, `i${i}`));
  await store.removeCall(call("P", "p1"));
  assert.deepEqual((await store.graphs()).calls.edges, []);
  assert.deepEqual(await keysUnder(kv, [...keys.app, "called"]), []);
  assert.equal((await kv.get(keys.callHolders("P"))).versionstamp, null);
});
