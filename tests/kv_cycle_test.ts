import { claimedCallerAndCallee } from "./_contract_graphs.ts";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { Keys } from "../kv/keys.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

/**
 * A view of `kv` whose first commit counts itself in `arrived` and waits for `gate`: both racers
 * pass their check first.
 */
function gated(kv: KvLike, gate: Promise<void>, arrived: { count: number }): KvLike {
  let commits = 0;
  return interceptKv(kv, {
    beforeCommit: async () => {
      if (commits++ === 0) {
        arrived.count++;
        await gate;
      }
    },
  });
}

test("KV cycle control: in 20 races where A→B and B→A both pass the check before either commits, exactly one insertion fails with CycleDetectedError and one edge stays", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  for (let race = 0; race < 20; race++) {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => open = resolve);
    const arrived = { count: 0 };
    const options = { appId: `race${race}`, clock: systemClock };
    const one = new KvStore(gated(kv, gate, arrived), options);
    const two = new KvStore(gated(kv, gate, arrived), options);
    const a = { callId: "a#1", invocationId: "ia", label: "a()" };
    const b = { callId: "b#1", invocationId: "ib", label: "b()" };
    const first = one.addCall(a, b);
    const second = two.addCall({ ...b, invocationId: "ib2" }, { ...a, invocationId: "ia2" });
    // Let both reach their gated commit (their pre-commit checks see no edge yet). Wait for both,
    // not for a number of turns: a racer still reading when the gate opens sees the other's edge
    // in its pre-commit check, and the post-commit verification under test is never exercised.
    await waitUntil(() => arrived.count >= 2, {
      timeoutMs: 10_000,
      message: `race ${race}: the racers never both reached their commit`,
    });
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

/**
 * A gate: `wait()` blocks until `open()`; `reached` resolves when something first waits (each
 * read of it rejects once {@linkcode DEADLINE_MS} passed before).
 */
function gate(): { wait(): Promise<void>; open(): void; readonly reached: Promise<void> } {
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
    get reached() {
      return within(reached, DEADLINE_MS, "a gated store to reach its gate");
    },
  };
}

/** `promise`, or a failure naming `what` after `ms` of real time: a hang becomes a failure. */
function withDeadline<T>(promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Timed out waiting for ${what}`)), ms);
    }),
  ]);
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

/** Where one store stops once: its first `getMany`, its first commit, its first list after it. */
interface Stages {
  read?: ReturnType<typeof gate>;
  commit?: ReturnType<typeof gate>;
  verify?: ReturnType<typeof gate>;
}

function staged(kv: KvLike, stages: Stages): KvLike {
  let reads = 0;
  let commits = 0;
  let verifies = 0;
  return interceptKv(kv, {
    beforeGetMany: async () => {
      if (reads++ === 0) await stages.read?.wait();
    },
    beforeCommit: async () => {
      if (commits++ === 0) await stages.commit?.wait();
    },
    beforeList: async () => {
      if (commits > 0 && verifies++ === 0) await stages.verify?.wait();
    },
  });
}

/**
 * Whether `promise` settles while the gated stores stay held (without awaiting it). A deadline of
 * 10 s, not a number of event-loop turns: the reads and commits it takes need more turns when
 * KV operations are slow (at 10 ms each, 50 turns were not enough under Node and Bun).
 */
async function settles(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  promise.then(() => settled = true, () => settled = true);
  for (const deadline = Date.now() + 10_000; !settled && Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return settled;
}

// Three processes: X (an invocation x1 of call A) inserts A → B; Z (zb, of call B) inserts B → A;
// Y (y1, another invocation of call A) also calls B, and finds X's edge A → B there: it reuses it.
// Y and X read the region before Z commits, Z before X commits; Z commits first, so X's A → B is
// the newest edge of the cycle A → B → A. `y` says when Y commits and verifies relative to X's
// verification (which withdraws A → B and fails).
for (
  const [y, when] of [
    ["verifies", "Y commits and verifies before X verifies"],
    ["commits", "Y commits before X withdraws the edge and verifies after"],
    ["late", "Y commits after X withdrew the edge"],
  ] as const
) {
  test(`KV cycle control: an invocation that reuses the newest edge of a cycle fails with CycleDetectedError too (no missed cycle): ${when}`, async () => {
    const kv = await openTestKv(":memory:");
    opened.push(kv);
    const options = { appId: `reuse-newest-${y}`, clock: systemClock };
    const stages = {
      yRead: gate(),
      yCommit: gate(),
      yVerify: gate(),
      xCommit: gate(),
      xVerify: gate(),
      zCommit: gate(),
    };
    const Y = new KvStore(
      staged(kv, {
        read: stages.yRead,
        ...(y === "late" ? { commit: stages.yCommit } : {}),
        ...(y === "commits" ? { verify: stages.yVerify } : {}),
      }),
      options,
    );
    const X = new KvStore(staged(kv, { commit: stages.xCommit, verify: stages.xVerify }), options);
    const Z = new KvStore(staged(kv, { commit: stages.zCommit }), options);

    const reusing = Y.addCall(call("A", "y1"), call("B", "y2"));
    await stages.yRead.reached; // Y's pre-check found no B → A; it is about to read A → B
    const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
    await stages.xCommit.reached; // X's pre-check found no B → A
    const closing = Z.addCall(call("B", "z1"), call("A", "z2"));
    await stages.zCommit.reached; // Z's pre-check found no A → B
    stages.zCommit.open();
    await closing; // B → A committed; Z's verification saw no A → B: Z succeeds
    stages.xCommit.open();
    await stages.xVerify.reached; // A → B committed, newer than B → A
    stages.yRead.open(); // Y reads A → B: it exists, Y reuses it
    if (y === "verifies") {
      assert.ok(await settles(reusing), "Y's addCall settles before X verifies");
    }
    // (Without a verification, Y's addCall returns right after its commit.)
    if (y === "commits") await Promise.race([stages.yVerify.reached, reusing.catch(() => {})]);
    if (y === "late") await stages.yCommit.reached;
    stages.xVerify.open();
    await assert.rejects(inserting, CycleDetectedError); // X withdraws A → B
    stages.yVerify.open();
    stages.yCommit.open();
    const error = await reusing.then(() => undefined, (error: unknown) => error);
    assert.ok(
      error instanceof CycleDetectedError,
      `Y's call A → B closes A → B → A, yet Y's addCall ${error ? `threw ${error}` : "succeeded"}`,
    );
    assert.deepEqual(error.callIds, ["A", "B"]);
    assert.deepEqual((await Z.graphs()).calls.edges, [["B", "A"]], "z1 runs z2: B → A is live");
  });
}

test("KV cycle control: an invocation that reuses an edge older than the edge closing the cycle succeeds: only the closing insertion fails (no extra error)", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const options = { appId: "reuse-older", clock: systemClock };
  const stages = { yRead: gate(), xCommit: gate(), zCommit: gate(), zVerify: gate() };
  const Y = new KvStore(staged(kv, { read: stages.yRead }), options);
  const X = new KvStore(staged(kv, { commit: stages.xCommit }), options);
  const Z = new KvStore(staged(kv, { commit: stages.zCommit, verify: stages.zVerify }), options);

  const reusing = Y.addCall(call("A", "y1"), call("B", "y2"));
  await stages.yRead.reached;
  const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
  await stages.xCommit.reached;
  const closing = Z.addCall(call("B", "z1"), call("A", "z2"));
  await stages.zCommit.reached;
  stages.xCommit.open();
  await inserting; // A → B committed first; X's verification saw no B → A: X succeeds
  stages.zCommit.open();
  await stages.zVerify.reached; // B → A committed: the newest edge of A → B → A
  stages.yRead.open(); // Y reuses A → B, and verifies while B → A is still there
  await reusing; // not the newest edge: Y succeeds
  stages.zVerify.open();
  await assert.rejects(closing, CycleDetectedError); // Z withdraws B → A
  assert.deepEqual((await X.graphs()).calls.edges, [["A", "B"]], "x1 and y1 run B: A → B is live");
});

test("KV cycle control: a caller that becomes final while its call edge is being added (its clean-up ran before the holder was written) leaves no holder of its call behind", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const appId = "final-caller-race";
  const keys = new Keys(appId);
  // The commit that writes the caller's holder stops until the caller has finished.
  const holderWrite = gate();
  let holderKey: KvKey | undefined;
  const app = new Nenc({
    appId,
    kv: interceptKv(kv, {
      beforeCommit: async (_values, setKeys) => {
        if (holderKey !== undefined && setKeys.some((key) => String(key) === String(holderKey))) {
          holderKey = undefined;
          await holderWrite.wait();
        }
      },
    }),
  });
  const { o, caller, callee, actor } = await claimedCallerAndCallee(app);
  holderKey = keys.callHolder(caller.callId, caller.id);
  const run = o.setInvocationRun(caller, callee, actor);
  await withDeadline(holderWrite.reached, "the caller's holder commit");
  // The caller finishes now: its clean-up finds no holder of its call yet.
  await o.setInvocationResult(caller, 0, actor);
  holderWrite.open();
  await withDeadline(run, "setInvocationRun()");
  assert.deepEqual(await keysUnder(kv, keys.callHolder(caller.callId)), []);
  assert.deepEqual((await o.store.graphs()).calls.edges, []);
  await o.setInvocationResult(callee, 1, actor);
  assert.deepEqual(await o.store.graphs(), { calls: { calls: [], edges: [] }, waits: [] });
});
