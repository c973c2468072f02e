import { claimedCallerAndCallee } from "./_contract_graphs.ts";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { Keys } from "../kv/keys.ts";
import type { KvEntryLike, KvKey, KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { InjectedStoreFault } from "./_faults.ts";

const opened: TestKv[] = [];
const directory = mkdtempSync(join(tmpdir(), "nenc-kv-cycle-"));
after(() => {
  opened.forEach((kv) => kv.close());
  rmSync(directory, { recursive: true, force: true });
});

/** Where a test's KV lives: in memory, or a file of its own. */
type Where = ":memory:" | "a file";
const everywhere: readonly Where[] = [":memory:", "a file"];
let files = 0;

async function openKv(where: Where = ":memory:"): Promise<TestKv> {
  const kv = await openTestKv(where === ":memory:" ? where : join(directory, `${files++}.db`));
  opened.push(kv);
  return kv;
}

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

for (const where of everywhere) {
  test(`KV cycle control: in 20 races where A→B and B→A both pass the check before either commits, exactly one insertion fails with CycleDetectedError and one edge stays (on ${where})`, async () => {
    const kv = await openKv(where);
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
      // Let both reach their gated commit (their walks see no edge yet). Wait for both, not for a
      // number of turns: a racer still reading when the gate opens sees the other's edge in its
      // walk, and the commit's check under test is never exercised.
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
        if (entry.key.length === 5) edges.push(entry.key); // not calls/<call>, the edges version
      }
      assert.equal(edges.length, 1, `race ${race}: edges left: ${JSON.stringify(edges)}`);
    }
  });
}

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
  const kv = await openKv();
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
  const kv = await openKv();
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
  const kv = await openKv();
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
  const kv = await openKv();
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

/** A view of `kv` that counts in `done.lists` the lists it read to their end. */
function countingLists(kv: KvLike, done: { lists: number }): KvLike {
  return {
    get: (key) => kv.get(key),
    getMany: (keys) => kv.getMany(keys),
    atomic: () => kv.atomic(),
    list: (selector, options) =>
      (async function* (): AsyncGenerator<KvEntryLike> {
        yield* kv.list(selector, options);
        done.lists++;
      })(),
  };
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

/**
 * The regions of the scenarios below: "small", A and B call nothing else, and every insertion
 * walks once (the region of B is B); "large", A and B each call 9 other calls first (regions of
 * 10 calls), and every insertion commits, then verifies.
 */
type RegionSize = "small" | "large";
const sizes: Record<RegionSize, string> = {
  small: "regions of 1 call: one walk",
  large: "regions of 10 calls: commit, then verify",
};

/** Gives A and B 9 callees each for a "large" scenario (held by a0 and b0). */
async function widen(store: KvStore, size: RegionSize): Promise<void> {
  if (size === "small") return;
  for (let i = 0; i < 9; i++) {
    await store.addCall(call("A", "a0"), call(`a.${i}`, `a.${i}`));
    await store.addCall(call("B", "b0"), call(`b.${i}`, `b.${i}`));
  }
}

/** The edges between A and B. */
async function edgesAB(store: KvStore): Promise<(readonly [string, string])[]> {
  const { edges } = (await store.graphs()).calls;
  return edges.filter(([, callee]) => callee === "A" || callee === "B");
}

// Three processes: X (an invocation x1 of call A) inserts A → B; Z (zb, of call B) inserts B → A;
// Y (y1, another invocation of call A) also calls B, and finds X's edge A → B there: it reuses it.
// Y and X read the region before Z commits, Z before X commits; Z commits first, so X's A → B is
// the newest edge of the cycle A → B → A. `y` says when Y commits and verifies relative to X's
// verification (which withdraws A → B and fails). In small regions X's commit fails instead (Z's
// rewrote the edges version of B, which X's walk read) and X re-plans, so Y finds no edge and
// inserts it: every step the test waits for still comes, and every outcome is the same.
for (const size of ["small", "large"] as const) {
  for (
    const [y, when] of [
      ["verifies", "Y commits and verifies before X verifies"],
      ["commits", "Y commits before X withdraws the edge and verifies after"],
      ["late", "Y commits after X withdrew the edge"],
    ] as const
  ) {
    test(
      `KV cycle control: an invocation that reuses the newest edge of a cycle fails with CycleDetectedError too (no missed cycle): ${when} (${
        sizes[size]
      })`,
      async () => {
        const kv = await openKv();
        const options = { appId: `reuse-newest-${y}`, clock: systemClock };
        await widen(new KvStore(kv, options), size);
        const stages = {
          yRead: gate(),
          yCommit: gate(),
          yVerify: gate(),
          xCommit: gate(),
          xVerify: gate(),
          zCommit: gate(),
        };
        const yWalk = { lists: 0 };
        const Y = new KvStore(
          staged(countingLists(kv, yWalk), {
            read: stages.yRead,
            ...(y === "late" ? { commit: stages.yCommit } : {}),
            ...(y === "commits" ? { verify: stages.yVerify } : {}),
          }),
          options,
        );
        const X = new KvStore(
          staged(kv, { commit: stages.xCommit, verify: stages.xVerify }),
          options,
        );
        const Z = new KvStore(staged(kv, { commit: stages.zCommit }), options);

        const reusing = Y.addCall(call("A", "y1"), call("B", "y2"));
        await stages.yRead.reached; // Y is about to read A → B
        const region = size === "small" ? 1 : 10;
        await waitUntil(() => yWalk.lists === region, { message: "Y's walk of the region of B" });
        // Y's walk found no B → A.
        const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
        await stages.xCommit.reached; // X's walk found no B → A
        const closing = Z.addCall(call("B", "z1"), call("A", "z2"));
        await stages.zCommit.reached; // Z's walk found no A → B
        stages.zCommit.open();
        await closing; // B → A committed: Z succeeds
        stages.xCommit.open();
        await stages.xVerify.reached; // large: A → B committed, newer than B → A; small: X re-plans
        stages.yRead.open(); // large: Y reads A → B: it exists, Y reuses it
        if (y === "verifies") {
          assert.ok(await settles(reusing), "Y's addCall settles before X verifies");
        }
        // (Without a verification, Y's addCall returns right after its commit.)
        if (y === "commits") await Promise.race([stages.yVerify.reached, reusing.catch(() => {})]);
        if (y === "late") await stages.yCommit.reached;
        stages.xVerify.open();
        await assert.rejects(inserting, CycleDetectedError); // large: X withdraws A → B
        stages.yVerify.open();
        stages.yCommit.open();
        const error = await reusing.then(() => undefined, (error: unknown) => error);
        assert.ok(
          error instanceof CycleDetectedError,
          `Y's call A → B closes A → B → A, yet Y's addCall ${
            error ? `threw ${error}` : "succeeded"
          }`,
        );
        assert.deepEqual(error.callIds, ["A", "B"]);
        assert.deepEqual(await edgesAB(Z), [["B", "A"]], "z1 runs z2: B → A is live");
      },
    );
  }

  test(
    `KV cycle control: an invocation that reuses an edge older than the edge closing the cycle succeeds: only the closing insertion fails (no extra error) (${
      sizes[size]
    })`,
    async () => {
      const kv = await openKv();
      const options = { appId: "reuse-older", clock: systemClock };
      await widen(new KvStore(kv, options), size);
      const stages = { yRead: gate(), xCommit: gate(), zCommit: gate(), zVerify: gate() };
      const yWalk = { lists: 0 };
      const Y = new KvStore(staged(countingLists(kv, yWalk), { read: stages.yRead }), options);
      const X = new KvStore(staged(kv, { commit: stages.xCommit }), options);
      const Z = new KvStore(
        staged(kv, { commit: stages.zCommit, verify: stages.zVerify }),
        options,
      );

      const reusing = Y.addCall(call("A", "y1"), call("B", "y2"));
      await stages.yRead.reached;
      const region = size === "small" ? 1 : 10;
      await waitUntil(() => yWalk.lists === region, { message: "Y's walk of the region of B" });
      const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
      await stages.xCommit.reached;
      const closing = Z.addCall(call("B", "z1"), call("A", "z2"));
      await stages.zCommit.reached;
      stages.xCommit.open();
      await inserting; // A → B committed first; X's verification saw no B → A: X succeeds
      stages.zCommit.open();
      // Large: B → A committed, the newest edge of A → B → A; small: Z's commit failed its check (X
      // rewrote the edges version of A, which Z's walk read), and Z re-plans.
      await stages.zVerify.reached;
      stages.yRead.open(); // Y reuses A → B (large: and verifies while B → A is still there)
      await reusing; // not the newest edge: Y succeeds
      stages.zVerify.open();
      await assert.rejects(closing, CycleDetectedError); // large: Z withdraws B → A
      assert.deepEqual(await edgesAB(X), [["A", "B"]], "x1 and y1 run B: A → B is live");
    },
  );
}

test("KV cycle control: a caller that becomes final while its call edge is being added (its clean-up ran before the holder was written) leaves no holder of its call behind", async () => {
  const kv = await openKv();
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

/** The calls whose edges a view's lists read (`calls/<call>` ranges and prefixes), in order. */
function callsListed(selector: Parameters<KvLike["list"]>[0]): string | undefined {
  const key = "prefix" in selector ? selector.prefix : selector.start;
  return key[2] === "calls" ? String(key[3]) : undefined;
}

test("KV cycle control: an insertion into a region of at most 9 calls walks it once (one range read per call, none after the commit), in one read of the edge and one commit", async () => {
  const kv = await openKv();
  const options = { appId: "one-walk", clock: systemClock };
  await new KvStore(kv, options).addCall(call("B", "b1"), call("C", "c1"));
  await new KvStore(kv, options).addCall(call("C", "c1"), call("D", "d1"));
  const seen = { walked: [] as string[], otherLists: 0, getMany: 0, get: 0, commits: 0 };
  const store = new KvStore(
    interceptKv(kv, {
      beforeList: (selector) => {
        const callId = callsListed(selector);
        if (callId === undefined) seen.otherLists++;
        else seen.walked.push(callId);
      },
      beforeGetMany: () => void seen.getMany++,
      beforeGet: () => void seen.get++,
      beforeCommit: () => void seen.commits++,
    }),
    options,
  );
  // A new callee: its region is itself, with no edges.
  await store.addCall(call("X", "x1"), call("Y", "y1"));
  assert.deepEqual(seen, { walked: ["Y"], otherLists: 0, getMany: 1, get: 0, commits: 1 });
  // The region of B is B, C and D: each read once.
  Object.assign(seen, { walked: [], otherLists: 0, getMany: 0, get: 0, commits: 0 });
  await store.addCall(call("A", "a1"), call("B", "b2"));
  assert.deepEqual(seen, {
    walked: ["B", "C", "D"],
    otherLists: 0,
    getMany: 1,
    get: 0,
    commits: 1,
  });
  assert.deepEqual((await store.graphs()).calls.edges, [["A", "B"], ["B", "C"], ["C", "D"], [
    "X",
    "Y",
  ]]);
});

test("KV cycle control: the walk reads the calls of one level together (each list starts before the other ends)", async () => {
  const kv = await openKv();
  const options = { appId: "one-level", clock: systemClock };
  await new KvStore(kv, options).addCall(call("B", "b1"), call("C1", "c1"));
  await new KvStore(kv, options).addCall(call("B", "b1"), call("C2", "c2"));
  // Each list of C1 and C2 waits until both began: read one after the other, the first never ends.
  const started = new Set<string>();
  let bothBegan!: () => void;
  const both = new Promise<void>((resolve) => bothBegan = resolve);
  const store = new KvStore(
    interceptKv(kv, {
      beforeList: async (selector) => {
        const callId = callsListed(selector);
        if (callId !== "C1" && callId !== "C2") return;
        started.add(callId);
        if (started.size === 2) bothBegan();
        await within(both, DEADLINE_MS, "the lists of C1 and C2 to begin together");
      },
    }),
    options,
  );
  await store.addCall(call("A", "a1"), call("B", "b2"));
  assert.deepEqual([...started].sort(), ["C1", "C2"]);
});

/** The gates of a store: its first commit, and its first list after a commit. */
function gatedStore(kv: KvLike, appId: string, stages: Stages): KvStore {
  return new KvStore(staged(kv, stages), { appId, clock: systemClock });
}

// X inserts A → B, into the region of B: B and 9 callees of B (commit, then verify). Z inserts
// B → A, into the region of A: A alone (one walk). Both walk before either commits.
for (const where of everywhere) {
  for (
    const [first, outcome] of [
      ["X", "Z's commit fails its check (X rewrote the edges version of A), Z re-plans and throws"],
      ["Z", "X's verification finds A → B the newest edge of A → B → A, withdraws it and throws"],
    ] as const
  ) {
    test(`KV cycle control: a small-region insertion racing a large-region one that closes a cycle with it: exactly one CycleDetectedError when ${first} commits first (${outcome}) (on ${where})`, async () => {
      const kv = await openKv(where);
      const appId = `small-large-${first}`;
      const plain = gatedStore(kv, appId, {});
      for (let i = 0; i < 9; i++) await plain.addCall(call("B", "b0"), call(`b.${i}`, `b.${i}`));
      const stages = { xCommit: gate(), zCommit: gate() };
      const X = gatedStore(kv, appId, { commit: stages.xCommit });
      const Z = gatedStore(kv, appId, { commit: stages.zCommit });
      const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
      const closing = Z.addCall(call("B", "z1"), call("A", "z2"));
      await stages.xCommit.reached;
      await stages.zCommit.reached;
      const [winner, loser] = first === "X"
        ? [{ stage: stages.xCommit, addCall: inserting }, {
          stage: stages.zCommit,
          addCall: closing,
        }]
        : [{ stage: stages.zCommit, addCall: closing }, {
          stage: stages.xCommit,
          addCall: inserting,
        }];
      winner.stage.open();
      await winner.addCall;
      loser.stage.open();
      const error = await loser.addCall.then(() => undefined, (error: unknown) => error);
      assert.ok(error instanceof CycleDetectedError, `the second insertion: ${error}`);
      assert.deepEqual(error.callIds, first === "X" ? ["B", "A"] : ["A", "B"]);
      assert.deepEqual(await edgesAB(plain), first === "X" ? [["A", "B"]] : [["B", "A"]]);
    });
  }
}

test("KV cycle control: a withdrawal commits only while the cycle it saw stands: when a removal broke it and another invocation reused the edge meanwhile, the edge stays (no missed cycle)", async () => {
  const kv = await openKv();
  const appId = "withdrawal-checks";
  const plain = gatedStore(kv, appId, {});
  // B calls C and 8 more: the region of B has 10 calls, so X commits, then verifies.
  await plain.addCall(call("B", "b0"), call("C", "c0"));
  for (let i = 0; i < 8; i++) await plain.addCall(call("B", "b0"), call(`b.${i}`, `b.${i}`));
  // X stops before its first commit (the edge) and before its second (the withdrawal).
  const commits = [gate(), gate()];
  let commit = 0;
  const X = new KvStore(
    interceptKv(kv, {
      beforeCommit: async () => {
        await commits[commit++]?.wait();
      },
    }),
    { appId, clock: systemClock },
  );
  const inserting = X.addCall(call("A", "x1"), call("B", "x2"));
  await commits[0]!.reached; // X's walk found no A
  await plain.addCall(call("C", "z1"), call("A", "z2")); // C → A: the region of A is A
  commits[0]!.open();
  await commits[1]!.reached; // A → B closed A → B → C → A, and is its newest edge
  // C's last holders finish: C's edges go, the cycle is broken.
  await plain.removeCall(call("C", "c0"));
  await plain.removeCall(call("C", "z1"));
  // r1, another invocation of A, calls B: A → B is on no cycle now, r1 relies on it.
  await plain.addCall(call("A", "r1"), call("B", "r2"));
  commits[1]!.open();
  await inserting; // the cycle X saw is gone: X keeps its edge and succeeds
  assert.deepEqual(await edgesAB(plain), [["A", "B"]], "r1 runs r2: A → B is live");
  // r2 (B) calls C, which calls A: A → B → C → A while r1 runs.
  await plain.addCall(call("B", "r2"), call("C", "c5"));
  await assert.rejects(plain.addCall(call("C", "c5"), call("A", "a6")), CycleDetectedError);
});

// Faults of the commit that writes an edge: refused (not applied), applied then reported failed
// (as over KV Connect), applied and the store down from then on until the test brings it back. The
// insertion rejects with the store's error; tried again (as the runner does), it ends as it would
// have without the fault: with the edge, or — when B → A came between its walk and its commit —
// with CycleDetectedError and without its edge, whether its commit was applied or not (tried again,
// it recognises its own edge: in a large region it verifies and withdraws it).
const faults = {
  refuse: "refused",
  applied: "applied, then reported failed",
  down: "applied as the store goes down",
} as const;
const endings = {
  plain: "adds its edge once",
  closing: "closing a cycle fails with CycleDetectedError and leaves no edge",
} as const;
for (const fault of ["refuse", "applied", "down"] as const) {
  for (const size of ["small", "large"] as const) {
    for (const ending of ["plain", "closing"] as const) {
      const name = `the commit of an edge ${faults[fault]}: tried again, the insertion ${
        endings[ending]
      } (${sizes[size]})`;
      test(`KV cycle control: ${name}`, async () => {
        const kv = await openKv();
        const appId = `fault-${fault}-${size}-${ending}`;
        const plain = gatedStore(kv, appId, {});
        await widen(plain, size);
        const edge = String(new Keys(appId).callEdge("A", "B"));
        const isEdge = (key: KvKey): boolean => String(key) === edge;
        let armed = true;
        let down = false;
        const throwIfDown = (): void => {
          if (down) throw new InjectedStoreFault("down");
        };
        const X = new KvStore(
          interceptKv(kv, {
            beforeGet: throwIfDown,
            beforeGetMany: throwIfDown,
            beforeList: throwIfDown,
            beforeCommit: async (_values, keys) => {
              throwIfDown();
              if (!armed || !keys.some(isEdge)) return;
              // Between X's walk and its commit, Z's B → A commits: X's edge closes A → B → A.
              if (ending === "closing") await plain.addCall(call("B", "z1"), call("A", "z2"));
              if (fault !== "refuse") return;
              armed = false;
              throw new InjectedStoreFault(fault);
            },
            afterCommit: (_ok, sets) => {
              if (!armed || !sets.some(({ key }) => isEdge(key))) return;
              armed = false;
              down = fault === "down";
              throw new InjectedStoreFault(fault);
            },
          }),
          { appId, clock: systemClock },
        );
        const insert = (): Promise<void> => X.addCall(call("A", "x1"), call("B", "x2"));
        await assert.rejects(insert(), InjectedStoreFault);
        if (fault === "down") {
          await assert.rejects(insert(), InjectedStoreFault); // still down
          down = false;
        }
        if (ending === "closing") {
          const error = await insert().then(() => undefined, (error: unknown) => error);
          assert.ok(error instanceof CycleDetectedError, `tried again: ${error}`);
          assert.deepEqual(error.callIds, ["A", "B"]);
          assert.deepEqual(await edgesAB(plain), [["B", "A"]], "z1 runs z2: B → A is live");
        } else {
          await insert();
          assert.deepEqual(await edgesAB(plain), [["A", "B"]]);
          // x2 (B) calling A closes A → B → A while x1 runs.
          await assert.rejects(plain.addCall(call("B", "x2"), call("A", "x3")), CycleDetectedError);
        }
      });
    }
  }
}

test("KV cycle control: a child whose call edge commit was applied but reported failed runs when its runner tries again, and its parent gets its result", async () => {
  const kv = await openKv();
  let faulted = false;
  const app = new Nenc({
    appId: "edge-applied",
    kv: interceptKv(kv, {
      afterCommit: (ok, sets) => {
        if (faulted || !ok || !sets.some(({ key }) => key[2] === "calls" && key.length === 5)) {
          return;
        }
        faulted = true;
        throw new InjectedStoreFault("applied");
      },
    }),
  });
  const child = app.task("child", ({ n }: { n: number }) => n * 2);
  const parent = app.task(
    "parent",
    async ({ n }: { n: number }) => (await (await child.call({ n })).result()) + 1,
  );
  await using runner = app.runner({ concurrency: 2, pollMs: 10 });
  runner.start();
  const invocation = await parent.call({ n: 4 });
  assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 9);
  assert.ok(faulted, "the commit of the edge parent → child was reported failed");
});

/**
 * The removals of holds of call C through a store over `kv` whose next commit, once armed, meets
 * `fault`: `remove(...holders)` asks for them together, sees them reject with the fault (and once
 * more while the store stays down), then asks again, as the orchestrator's clean-up does, to the end.
 */
function faultedRemovals(
  kv: KvLike,
  appId: string,
  fault: keyof typeof faults,
): (...holders: string[]) => Promise<void> {
  let armed = false;
  let down = false;
  const throwIfDown = (): void => {
    if (down) throw new InjectedStoreFault("down");
  };
  const removing = new KvStore(
    interceptKv(kv, {
      beforeGet: throwIfDown,
      beforeGetMany: throwIfDown,
      beforeList: throwIfDown,
      // Each removal below makes one commit: a release, or a deletion.
      beforeCommit: () => {
        throwIfDown();
        if (!armed || fault !== "refuse") return;
        armed = false;
        throw new InjectedStoreFault(fault);
      },
      afterCommit: () => {
        if (!armed) return;
        armed = false;
        down = fault === "down";
        throw new InjectedStoreFault(fault);
      },
    }),
    { appId, clock: systemClock },
  );
  const together = (holders: string[]) =>
    Promise.all(holders.map((holder) => removing.removeCall(call("C", holder))));
  return async (...holders) => {
    armed = true;
    await assert.rejects(together(holders), InjectedStoreFault);
    if (fault === "down") {
      await assert.rejects(together(holders), InjectedStoreFault);
      down = false;
    }
    await together(holders);
  };
}

// Faults of the two commits of a call's removal: the release of a holder while another one holds
// the call, and the deletion by the last one (each the removal's one commit). The removal
// rejects with the store's error; tried again (as the orchestrator's clean-up is), it ends as it
// would have: the released holder gone and the call's edges kept, then none of the call's keys
// left — also when the faulted commit was applied, so that the holder is already gone.
for (const fault of ["refuse", "applied", "down"] as const) {
  test(
    `KV cycle control: the release of a call's holder and the deletion by its last one, each ${
      faults[fault]
    }: tried again, the removals end as without the fault`,
    async () => {
      const kv = await openKv();
      const appId = `remove-${fault}`;
      const keys = new Keys(appId);
      const plain = gatedStore(kv, appId, {});
      await plain.addCall(call("C", "x1"), call("D", "d1"));
      await plain.addCall(call("C", "x2"), call("D", "d2"));
      const remove = faultedRemovals(kv, appId, fault);
      await remove("x1"); // x2 still holds C
      assert.deepEqual(await keysUnder(kv, keys.callHolder("C")), [keys.callHolder("C", "x2")]);
      assert.deepEqual(
        (await plain.graphs()).calls.edges,
        [["C", "D"]],
        "x2 runs d2: C → D is live",
      );
      await remove("x2"); // the last holder
      assert.deepEqual((await plain.graphs()).calls.edges, []);
      for (const kind of ["holder", "hver", "calls"]) {
        assert.deepEqual(await keysUnder(kv, [...keys.app, kind, "C"]), [], `${kind}/C… left`);
      }
      assert.equal((await kv.get(keys.callHolders("C"))).versionstamp, null, "hver/C left");
      assert.equal((await kv.get(keys.callEdgesVersion("C"))).versionstamp, null, "calls/C left");
    },
  );
}

test("KV cycle control: removals of one call's holders asked together go as one (siblings with equal arguments): one commit, none refused — the deletion when they are its last holders, else one release keeping the edges", async () => {
  const kv = await openKv();
  const appId = "joint-removal";
  const keys = new Keys(appId);
  const plain = gatedStore(kv, appId, {});
  // C is held by x1 and x2 (each calls D), E by y1, y2 and y3 (each calls F).
  for (const holder of ["x1", "x2"]) {
    await plain.addCall(call("C", holder), call("D", `d-${holder}`));
  }
  for (const holder of ["y1", "y2", "y3"]) {
    await plain.addCall(call("E", holder), call("F", `f-${holder}`));
  }
  const commits: boolean[] = [];
  const store = new KvStore(
    interceptKv(kv, { afterCommit: (ok) => void commits.push(ok) }),
    { appId, clock: systemClock },
  );
  await Promise.all([store.removeCall(call("C", "x1")), store.removeCall(call("C", "x2"))]);
  assert.deepEqual(commits, [true], "one deleting commit for both holders of C");
  for (const kind of ["holder", "hver", "calls"]) {
    assert.deepEqual(await keysUnder(kv, [...keys.app, kind, "C"]), [], `${kind}/C… left`);
  }
  commits.length = 0;
  await Promise.all([store.removeCall(call("E", "y1")), store.removeCall(call("E", "y3"))]);
  assert.deepEqual(commits, [true], "one release of y1 and y3 (checking y2's hold)");
  assert.deepEqual(await keysUnder(kv, keys.callHolder("E")), [keys.callHolder("E", "y2")]);
  assert.deepEqual((await plain.graphs()).calls.edges, [["E", "F"]], "y2 still calls F");
  // Asked again, a released holder has nothing left to do: no commit.
  commits.length = 0;
  await store.removeCall(call("E", "y1"));
  assert.deepEqual(commits, []);
});

test("KV cycle control: a removal asked again for the same holder while the first one reads goes on its own: a hold a claim wrote after that read is released (as #releaseIfEnded relies on)", async () => {
  const kv = await openKv();
  const appId = "join-race";
  const keys = new Keys(appId);
  const holder = JSON.stringify(keys.callHolder("p", "P"));
  const read = gate();
  let armed = true;
  // The first removal's read of P's holder (absent then) is answered only once the gate opens.
  const view: KvLike = {
    get: (key) => kv.get(key),
    getMany: async (keysRead) => {
      const entries = await kv.getMany(keysRead);
      if (armed && keysRead.some((key) => JSON.stringify(key) === holder)) {
        armed = false;
        await read.wait();
      }
      return entries;
    },
    list: (selector, options) => kv.list(selector, options),
    atomic: () => kv.atomic(),
  };
  const store = new KvStore(view, { appId, clock: systemClock });
  // P ended: its clean-up reads hver/p and holder/p/P, both absent.
  const afterFinal = store.removeCall(call("p", "P"));
  await read.reached;
  // A claim of P's child, which read P still running, writes P's hold with the edge p → c; it
  // reads P again, finds it final, and asks for the removal of P's hold again.
  await gatedStore(kv, appId, {}).addCall(call("p", "P"), call("c", "C"));
  const releaseIfEnded = store.removeCall(call("p", "P"));
  read.open();
  await within(Promise.all([afterFinal, releaseIfEnded]), DEADLINE_MS, "both removals");
  assert.deepEqual(await keysUnder(kv, keys.callHolder("p")), [], "P's hold left behind");
  assert.deepEqual(await keysUnder(kv, keys.callEdge("p")), [], "p's edges left behind");
});

test("KV cycle control: a joint deletion cut short between its commits leaves every released holder (they go in its last commit, with hver/<call>): tried again, it ends", async () => {
  const kv = await openKv();
  const appId = "joint-chunks";
  const keys = new Keys(appId);
  const plain = gatedStore(kv, appId, {});
  // 249 callees of C: 498 edge keys and calls/C, one commit's 500 deletions but for one — the
  // first commit ends where the released holders would begin.
  for (let i = 0; i < 248; i++) await plain.addCall(call("C", "x1"), call(`D${i}`, `d${i}`));
  await plain.addCall(call("C", "x2"), call("E", "e"));
  let commits = 0;
  let failSecond = true;
  const removing = new KvStore(
    interceptKv(kv, {
      beforeCommit: () => {
        if (++commits === 2 && failSecond) {
          failSecond = false;
          throw new InjectedStoreFault("down");
        }
      },
    }),
    { appId, clock: systemClock },
  );
  const together = () =>
    Promise.all(["x1", "x2"].map((holder) => removing.removeCall(call("C", holder))));
  await assert.rejects(together(), InjectedStoreFault);
  assert.deepEqual(await keysUnder(kv, keys.callHolder("C")), [
    keys.callHolder("C", "x1"),
    keys.callHolder("C", "x2"),
  ]);
  await together();
  for (const kind of ["holder", "hver", "calls"]) {
    assert.deepEqual(await keysUnder(kv, [...keys.app, kind, "C"]), [], `${kind}/C… left`);
  }
});

// The joint removal's commits under faults: the release of two holders while a third holds the
// call, then the deletion by the last two. Tried again (both asked together again), it ends as
// without the fault.
for (const fault of ["refuse", "applied", "down"] as const) {
  test(
    `KV cycle control: a joint removal's release and deletion, each ${
      faults[fault]
    }: tried again, they end as without the fault`,
    async () => {
      const kv = await openKv();
      const appId = `joint-${fault}`;
      const keys = new Keys(appId);
      const plain = gatedStore(kv, appId, {});
      for (const holder of ["x1", "x2", "x3", "x4"]) {
        await plain.addCall(call("C", holder), call("D", `d-${holder}`));
      }
      const remove = faultedRemovals(kv, appId, fault);
      await remove("x1", "x3"); // x2 and x4 still hold C
      assert.deepEqual(await keysUnder(kv, keys.callHolder("C")), [
        keys.callHolder("C", "x2"),
        keys.callHolder("C", "x4"),
      ]);
      assert.deepEqual((await plain.graphs()).calls.edges, [["C", "D"]]);
      await remove("x2", "x4"); // the last two
      assert.deepEqual((await plain.graphs()).calls.edges, []);
      for (const kind of ["holder", "hver", "calls"]) {
        assert.deepEqual(await keysUnder(kv, [...keys.app, kind, "C"]), [], `${kind}/C… left`);
      }
    },
  );
}

for (const where of everywhere) {
  test(`KV cycle control: two holders of a call removed together, each listing the other: the second release fails its check, reads again, finds itself the last and deletes the call's edges (on ${where})`, async () => {
    const kv = await openKv(where);
    const appId = "two-releases";
    const keys = new Keys(appId);
    const plain = gatedStore(kv, appId, {});
    await plain.addCall(call("C", "x1"), call("D", "d1"));
    await plain.addCall(call("C", "x2"), call("D", "d2"));
    const commits = { one: gate(), two: gate() };
    const one = gatedStore(kv, appId, { commit: commits.one });
    const two = gatedStore(kv, appId, { commit: commits.two });
    const first = one.removeCall(call("C", "x1"));
    const second = two.removeCall(call("C", "x2"));
    await commits.one.reached; // x1 listed x2
    await commits.two.reached; // x2 listed x1
    commits.one.open();
    await first; // x1 released: x2 held C then
    commits.two.open();
    await second; // x1 is gone: x2 is the last, and deletes C's edges
    assert.deepEqual((await plain.graphs()).calls.edges, []);
    for (const kind of ["holder", "hver", "calls"]) {
      assert.deepEqual(await keysUnder(kv, [...keys.app, kind, "C"]), [], `${kind}/C… left`);
    }
    assert.equal((await kv.get(keys.callHolders("C"))).versionstamp, null, "hver/C left");
  });
}

test("KV cycle control: a release whose other holder starts a child meanwhile reads again and releases (the call keeps its edges)", async () => {
  const kv = await openKv();
  const appId = "witness-rewritten";
  const plain = gatedStore(kv, appId, {});
  await plain.addCall(call("C", "x1"), call("D", "d1"));
  await plain.addCall(call("C", "x2"), call("D", "d2"));
  const commit = gate();
  const removing = gatedStore(kv, appId, { commit });
  const removal = removing.removeCall(call("C", "x1"));
  await commit.reached; // x1 listed x2
  await plain.addCall(call("C", "x2"), call("E", "e1")); // x2's holder key is written again
  commit.open();
  await removal;
  const { calls, edges } = (await plain.graphs()).calls;
  assert.deepEqual(calls.find((c) => c.callId === "C")?.invocationIds, ["x2"]);
  assert.deepEqual(edges, [["C", "D"], ["C", "E"]]);
});
