/**
 * An execution's end and the claim that refills its slot in one commit (kv/_ride.ts, issue #12):
 * what goes together, what does not, and the joint commit under faults.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { InvocationStatus } from "../core/status.ts";
import type { ClaimRequest } from "../core/store.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { FAULT_KINDS, type FaultKind, FaultPlan, ORCHESTRATOR } from "./_faults.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((handle) => handle.close()));

/** The invocation records (`["nenc", app, "inv", id]`) a commit sets. */
const records = (keys: readonly KvKey[]): number => keys.filter((key) => key[2] === "inv").length;

/**
 * On `kv`: an app whose `a` runs (RUNNING, claimed by r1) and whose `b` waits in the queue, and
 * the pick-up request r1 makes.
 */
async function aRunningBQueued(kv: KvLike, options: { concurrency?: "task" } = {}) {
  const app = new Nenc({ appId: "ride", kv });
  const ping = app.task("ping", ({ n }: { n: number }) => n, {
    ...options.concurrency === "task" ? { runningConcurrency: "task" as const } : {},
  });
  const a = await ping.call({ n: 1 });
  const b = await ping.call({ n: 2 });
  const request = {
    runnerId: "r1",
    nowMs: Date.now(),
    max: 1,
    runAtOnce: () => true,
    rerouteOnConcurrencyControl: () => true,
    purgeAtMs: Date.now() + 3_600_000,
  } satisfies ClaimRequest;
  assert.equal((await app.orchestrator.store.claim(request)).claimed[0]?.id, a.id);
  assert.equal(await a.status(), InvocationStatus.RUNNING);
  return { app, a, b, request };
}

/**
 * An app on a fresh KV whose commits are counted; `a` runs (RUNNING, owned by r1) and `b` waits
 * in the queue; `claimB` is r1's pick-up for the slot `a`'s end gives back.
 */
async function setUp(options: { concurrency?: "task" } = {}) {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const commits: number[] = [];
  const kv = interceptKv(handle, {
    beforeCommit: (_values, keys) => void commits.push(records(keys)),
  });
  const { app, a, b, request } = await aRunningBQueued(kv, options);
  const store = app.orchestrator.store;
  let giveBack!: () => void;
  const ready = new Promise<void>((resolve) => giveBack = resolve);
  const claimB = () => store.claim({ ...request, nowMs: Date.now(), ready, freedBy: [a.id] });
  const endA = () => app.orchestrator.setInvocationResult(a, 1, { runnerId: "r1" });
  return { app, a, b, commits, claimB, endA, giveBack };
}

test("[kv] a claim for the slot an end gives back goes in that end's commit: one commit records a's SUCCESS and b's claim (RUNNING), not two in turn", async () => {
  const { a, b, commits, claimB, endA, giveBack } = await setUp();
  commits.length = 0;
  const claiming = claimB();
  await within(endA(), DEADLINE_MS, "a's end");
  assert.deepEqual(commits, [2], "a's end and b's claim in one commit");
  assert.equal(await a.status(), InvocationStatus.SUCCESS);
  assert.equal(await b.status(), InvocationStatus.RUNNING);
  // The runner gives the slot back once a's end returned; the pick-up then hands b over.
  giveBack();
  const { claimed } = await within(claiming, DEADLINE_MS, "b's claim");
  assert.deepEqual(claimed.map((record) => record.id), [b.id]);
  assert.deepEqual(commits, [2]);
});

test("[kv] a claim that must read its slot keys (running concurrency) does not ride: it reads them once the slot is given back, and is claimed, not parked behind the end that frees them", async () => {
  const { a, b, commits, claimB, endA, giveBack } = await setUp({ concurrency: "task" });
  commits.length = 0;
  const claiming = claimB();
  // The end does not wait for a claim that waits for it.
  await within(endA(), DEADLINE_MS, "a's end");
  assert.deepEqual(commits, [1], "a's end alone");
  assert.equal(await b.status(), InvocationStatus.REGISTERED);
  giveBack();
  const { claimed } = await within(claiming, DEADLINE_MS, "b's claim");
  assert.deepEqual(claimed.map((record) => record.id), [b.id]);
  assert.equal(await b.status(), InvocationStatus.RUNNING);
  assert.equal(await a.status(), InvocationStatus.SUCCESS);
  assert.deepEqual(commits, [1, 1]);
});

test("[kv] a claim no end takes (the end was written before the pick-up began) commits on its own once its slot is given back", async () => {
  const { b, commits, claimB, endA, giveBack } = await setUp();
  await endA();
  commits.length = 0;
  const claiming = claimB();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(commits, [], "a claim before its slot was given back");
  giveBack();
  const { claimed } = await within(claiming, DEADLINE_MS, "b's claim");
  assert.deepEqual(claimed.map((record) => record.id), [b.id]);
  assert.deepEqual(commits, [1]);
});

/**
 * The scenario of a joint commit refused by a check: just before the first commit that writes both
 * records, another writer rewrites `moved`'s record (unchanged: its versionstamp moves).
 */
async function refusedJoint(moved: "end" | "claim") {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const commits: number[] = [];
  // Known once both are registered and a is claimed.
  const ids = { a: "", b: "" };
  let refused = false;
  // Reads of a's record after the refusal, until the next commit.
  let readsOfA = 0;
  let readsOfABeforeNextCommit: number | undefined;
  const kv = interceptKv(handle, {
    beforeGetMany: (keys) => {
      if (refused && keys.some((key) => key[2] === "inv" && key[3] === ids.a)) readsOfA++;
    },
    beforeCommit: async (_values, keys) => {
      if (refused) readsOfABeforeNextCommit ??= readsOfA;
      commits.push(records(keys));
      if (records(keys) === 2 && !refused && ids.a !== "") {
        refused = true;
        const id = moved === "end" ? ids.a : ids.b;
        const key = keys.find((key) => key[2] === "inv" && key[3] === id)!;
        const entry = await handle.get(key);
        await handle.atomic().set(key, entry.value).commit();
      }
    },
  });
  const { app, a, b, request } = await aRunningBQueued(kv);
  Object.assign(ids, { a: a.id, b: b.id });
  let giveBack!: () => void;
  const ready = new Promise<void>((resolve) => giveBack = resolve);
  commits.length = 0;
  const claiming = app.orchestrator.store.claim({ ...request, ready, freedBy: [a.id] });
  await within(
    app.orchestrator.setInvocationResult(a, 1, { runnerId: "r1" }),
    DEADLINE_MS,
    "a's end",
  );
  assert.ok(refused, "no joint commit");
  assert.equal(await a.status(), InvocationStatus.SUCCESS);
  assert.equal(await b.status(), InvocationStatus.REGISTERED, "b claimed before its slot was free");
  const endCommits = [...commits];
  giveBack();
  const { claimed } = await within(claiming, DEADLINE_MS, "b's claim");
  assert.deepEqual(claimed.map((record) => record.id), [b.id]);
  assert.equal(await b.status(), InvocationStatus.RUNNING);
  return { endCommits, commits, readsOfABeforeNextCommit };
}

test("[kv] a joint commit refused by the claim's check (b's record moved meanwhile): a's end commits at once on its own, without reading again, and b's claim reads again and commits once the slot is given back", async () => {
  const { endCommits, commits, readsOfABeforeNextCommit } = await refusedJoint("claim");
  assert.deepEqual(endCommits, [2, 1], "the joint commit, then a's end");
  assert.equal(readsOfABeforeNextCommit, 0, "a's end read its record again");
  assert.deepEqual(commits, [2, 1, 1], "then b's claim");
});

test("[kv] a joint commit refused by the end's check (a's record moved meanwhile): neither is written; a's end reads again and commits alone, and b's claim commits on its own once the slot is given back", async () => {
  const { endCommits, commits, readsOfABeforeNextCommit } = await refusedJoint("end");
  assert.equal(readsOfABeforeNextCommit, 0, "a's end as planned goes first");
  // The end as planned (refused again), the end planned again, then the claim.
  assert.deepEqual(endCommits, [2, 1, 1]);
  assert.deepEqual(commits, [2, 1, 1, 1]);
});

/**
 * A one-slot runner works through 12 queued invocations while the commit of the second joint
 * end-and-claim meets `fault`; the function of each counts its runs and how many run at once.
 */
async function oneSlotUnderFault(fault: FaultKind) {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  // The fault contract's plan (its faults and its outage), fired on the second joint commit.
  const plan = new FaultPlan("success", fault);
  plan.arm();
  let joint = 0;
  let jointAfterFault = 0;
  /** The commit under way is the one the plan checks again once applied (`applied`). */
  let faulting = false;
  const kv = interceptKv(handle, {
    beforeGet: () => plan.throwIfDown("get"),
    beforeGetMany: () => plan.throwIfDown("getMany"),
    beforeList: () => plan.throwIfDown("list"),
    beforeCommit: (_values, keys) => {
      plan.throwIfDown("commit");
      if (records(keys) < 2) return;
      if (plan.firedAtMs !== undefined) return void jointAfterFault++;
      if (++joint < 2) return;
      faulting = plan.before(true, "a joint end-and-claim commit");
    },
    afterCommit: (ok) => {
      if (!faulting) return;
      faulting = false;
      plan.after(ok, "a joint end-and-claim commit");
    },
  });
  const app = new Nenc({ appId: "ride", kv, orchestrator: ORCHESTRATOR });
  const runs = new Map<number, number>();
  let active = 0;
  let most = 0;
  const ping = app.task("ping", async ({ n }: { n: number }) => {
    runs.set(n, (runs.get(n) ?? 0) + 1);
    most = Math.max(most, ++active);
    await new Promise((resolve) => setTimeout(resolve, 1));
    active--;
    return n;
  });
  const { invocations } = await ping.parallelize(
    Array.from({ length: 12 }, (_, n) => ({ n })),
  );
  await using runner = app.runner({ concurrency: 1, pollMs: 20, heartbeatMs: 200 });
  runner.start();
  const results = await within(
    Promise.all(invocations.map((invocation) => invocation.result())),
    DEADLINE_MS * 2,
    "the 12 results",
  );
  await runner.stop();
  return { results, runs, most, fired: plan.firedAtMs !== undefined, jointAfterFault };
}

for (const { kind, fault } of FAULT_KINDS) {
  test(
    `[kv] a one-slot runner's joint end-and-claim commit ${fault}: every invocation succeeds, each function runs once, never two at once, and later ends ride again`,
    async () => {
      const { results, runs, most, fired, jointAfterFault } = await oneSlotUnderFault(kind);
      assert.ok(fired, "no joint commit met the fault");
      assert.deepEqual(results, Array.from({ length: 12 }, (_, n) => n));
      assert.deepEqual([...runs.values()], Array(12).fill(1), "a function ran twice, or never");
      assert.equal(most, 1, "two ran at once on one slot");
      assert.ok(jointAfterFault > 0, "no end rode again after the fault");
    },
  );
}

test("[kv] a one-slot runner makes one commit per invocation for a queue of work: each end carries the next claim", async () => {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  let commits = 0;
  const kv = interceptKv(handle, { beforeCommit: () => void commits++ });
  const app = new Nenc({ appId: "ride", kv });
  const ping = app.task("ping", ({ n }: { n: number }) => n);
  const { invocations } = await ping.parallelize(
    Array.from({ length: 40 }, (_, n) => ({ n })),
  );
  const before = commits;
  await using runner = app.runner({ concurrency: 1, pollMs: 20 });
  runner.start();
  await waitUntil(
    async () => (await invocations.at(-1)!.status()) === InvocationStatus.SUCCESS,
    { message: "the last invocation's end" },
  );
  // 40 claims and 40 ends: 80 commits in turn without the ride, 41 with it (the first claim
  // has no end to go with), and a few for the runner's own upkeep.
  const made = commits - before;
  assert.ok(made <= 48, `${made} commits for 40 invocations`);
});

/**
 * A store whose pick-ups' queue reads wait at a gate while `held` says so; `a` runs (RUNNING,
 * owned by r1) and `b` waits in the queue.
 */
async function gatedQueue(options: { concurrency?: "task" } = {}) {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  let gate: Promise<void> | undefined;
  const kv = interceptKv(handle, {
    beforeList: async () => {
      if (gate !== undefined) await gate;
    },
  });
  const { app, a, b, request } = await aRunningBQueued(kv, options);
  let open!: () => void;
  gate = new Promise<void>((resolve) => open = resolve);
  const release = (): void => {
    gate = undefined;
    open();
  };
  return { app, a, b, request, release };
}

test("[kv] an end that gives back slot keys (running concurrency) does not wait for its runner's pick-up: it commits while the pick-up's queue read is still held", async () => {
  const { app, a, b, request, release } = await gatedQueue({ concurrency: "task" });
  let giveBack!: () => void;
  const ready = new Promise<void>((resolve) => giveBack = resolve);
  const claiming = app.orchestrator.store.claim({ ...request, ready, freedBy: [a.id] });
  try {
    await within(
      app.orchestrator.setInvocationResult(a, 1, { runnerId: "r1" }),
      DEADLINE_MS,
      "a's end while its runner's pick-up reads",
    );
    assert.equal(await a.status(), InvocationStatus.SUCCESS);
  } finally {
    release();
  }
  giveBack();
  const { claimed } = await within(claiming, DEADLINE_MS, "b's claim");
  assert.deepEqual(claimed.map((record) => record.id), [b.id]);
});

test("[kv] a runner that stops while its pick-up reads claims nothing: the end waiting for that pick-up's claims commits alone, and the claim offered after the stop is not taken", async () => {
  const { app, a, b, request, release } = await gatedQueue();
  let stop!: (error: unknown) => void;
  const ready = new Promise<void>((_, reject) => stop = reject);
  ready.catch(() => {});
  const claiming = app.orchestrator.store.claim({ ...request, ready, freedBy: [a.id] });
  // a's end waits for the pick-up's first claims; then the runner stops, then the reads go on.
  const ending = app.orchestrator.setInvocationResult(a, 1, { runnerId: "r1" });
  await waitUntil(async () => (await a.status()) === InvocationStatus.RUNNING, {
    message: "a running",
  });
  stop(new Error("Cannot pick up: the runner is stopping"));
  await new Promise((resolve) => setTimeout(resolve, 10));
  release();
  await within(ending, DEADLINE_MS, "a's end");
  const { claimed } = await within(claiming, DEADLINE_MS, "the pick-up").catch(() => ({
    claimed: [],
  }));
  assert.deepEqual(claimed, []);
  assert.equal(await a.status(), InvocationStatus.SUCCESS);
  assert.equal(await b.status(), InvocationStatus.REGISTERED, "b claimed after the stop");
});
