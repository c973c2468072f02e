/**
 * Blocking control on Deno KV, commit by commit: a wait is one commit with the pause, a long one
 * a commit per chunk, and children that end together release their edges without a refused
 * commit.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { Keys } from "../kv/keys.ts";
import { holdingCommits, interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { defineFanOut } from "../bench/_shapes.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

interface Commit {
  readonly ok: boolean;
  readonly keys: readonly KvKey[];
  readonly values: readonly unknown[];
}

/** An app on a fresh KV :memory: whose commits are recorded. */
async function recordedApp(): Promise<{ app: Nenc; commits: Commit[] }> {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const commits: Commit[] = [];
  const view = interceptKv(kv, {
    afterCommit: (ok, sets, values) =>
      void commits.push({ ok, keys: sets.map(({ key }) => key), values }),
  });
  return { app: new Nenc({ appId: "waits", kv: view }), commits };
}

const decoder = new TextDecoder();

/** Whether a commit sets `id`'s record with status `status`. */
function setsStatus(commit: Commit, id: string, status: string): boolean {
  return commit.keys.some((key, i) => {
    if (key[2] !== "inv" || key[3] !== id) return false;
    const stored = JSON.parse(decoder.decode(commit.values[i] as Uint8Array));
    return stored.record.status === status;
  });
}

/** The wait edges waiter → … that a commit sets. */
function edgesSet(commit: Commit, waiterId: string): string[] {
  return commit.keys.flatMap((key) =>
    key[2] === "waits" && key[3] === waiterId ? [String(key[4])] : []
  );
}

test("[kv] a parent awaiting two children with Promise.all pauses in one commit that writes both wait edges, and no other commit writes one", async () => {
  const { app, commits } = await recordedApp();
  const child = app.task("child", ({ n }: { n: number }) => n);
  const parent = app.task("parent", async () => {
    const children = await Promise.all([child.call({ n: 1 }), child.call({ n: 2 })]);
    const results = await Promise.all(children.map((invocation) => invocation.result()));
    return results.reduce((sum, n) => sum + n, 0);
  });
  const invocation = await parent.call();
  await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), 3);
  const children = await app.orchestrator.store.children(invocation.id);
  const withEdges = commits.filter((commit) => edgesSet(commit, invocation.id).length > 0);
  assert.equal(withEdges.length, 1, "one commit writes the parent's wait edges");
  assert.deepEqual(
    edgesSet(withEdges[0]!, invocation.id).sort(),
    children.map(({ id }) => id).sort(),
  );
  assert.ok(setsStatus(withEdges[0]!, invocation.id, "paused"), "the same commit pauses it");
});

test("[kv] a parent awaiting 250 children at once writes its wait edges in 3 commits, the last with its PAUSED, and ends with no wait key left", async () => {
  const { app, commits } = await recordedApp();
  const parent = defineFanOut(app);
  const invocation = await parent.call({ n: 250 });
  // One slot: the parent holds it until its PAUSED, so no child ends before the edges are written
  // (one that ended is not waited on: a child picked up straight to RUNNING may end that soon).
  await within(app.runner({ concurrency: 1 }).drain(), LONG_DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), (250 * 249) / 2);
  const withEdges = commits.filter((commit) => edgesSet(commit, invocation.id).length > 0);
  assert.deepEqual(withEdges.map((commit) => edgesSet(commit, invocation.id).length), [
    100,
    50,
    100,
  ]);
  assert.ok(setsStatus(withEdges[2]!, invocation.id, "paused"));
  assert.equal(new Set(withEdges.flatMap((commit) => edgesSet(commit, invocation.id))).size, 250);
  const left = await app.orchestrator.store.graphs();
  assert.deepEqual(left.waits, []);
});

test("[kv] 200 children of one parent that end together release their wait edges with no refused commit: no key is shared between their releases", async () => {
  const { app, commits } = await recordedApp();
  const parent = defineFanOut(app);
  const invocation = await parent.call({ n: 200 });
  await within(app.runner({ concurrency: 32 }).drain(), LONG_DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), (200 * 199) / 2);
  assert.equal(commits.filter((commit) => !commit.ok).length, 0, "refused commits");
});

test("[kv] blocking() reads the records of the ready index only as many at a time as it still wants, and never those a runner of this process holds", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  let counting = false;
  const read: string[] = [];
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => {
      if (counting) read.push(...keys.flatMap((key) => key[2] === "inv" ? [String(key[3])] : []));
    },
  });
  const app = new Nenc({ appId: "ready-reads", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const waiter = await job.call({ n: -1 });
  const waited = [];
  for (let n = 0; n < 20; n++) waited.push(await job.call({ n }));
  const store = app.orchestrator.store;
  await store.waitFor(waiter.id, waited.map(({ id }) => id), Date.now());
  counting = true;
  // The oldest waited-on invocation, read alone (a page of the index holds 14 of them).
  assert.deepEqual(await store.blocking(1, Date.now()), [waited[0]!.id]);
  assert.deepEqual(read, [waited[0]!.id]);
  // A pick-up takes the first three (blocking control: what others wait on, oldest first).
  counting = false;
  const taken = await app.orchestrator.getInvocationsToRun(3, { runnerId: "r1" });
  assert.deepEqual(taken.map(({ id }) => id), waited.slice(0, 3).map(({ id }) => id));
  read.length = 0;
  counting = true;
  // Held here: read past without a read of their records.
  assert.deepEqual(await store.blocking(1, Date.now()), [waited[3]!.id]);
  assert.deepEqual(read, [waited[3]!.id]);
});

test("[kv] the finals poller reads an awaited invocation a runner of this process holds every tenth sweep only: its end is written here, and wakes its waiters at once", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const reads = new Map<string, number>();
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => {
      for (const key of keys) {
        if (key[2] === "inv") reads.set(String(key[3]), (reads.get(String(key[3])) ?? 0) + 1);
      }
    },
  });
  const app = new Nenc({ appId: "poller-reads", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const held = await job.call({ n: 1 });
  const queued = await job.call({ n: 2 });
  const [taken] = await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
  assert.equal(taken?.id, held.id);
  reads.clear();
  const stop = new AbortController();
  const store = app.orchestrator.store;
  const waits = [held, queued].map(({ id }) => store.waitFinal(id, stop.signal));
  // Each waiter's own first read, then one read of each per sweep of the poller.
  await waitUntil(() => (reads.get(queued.id) ?? 0) >= 12, {
    message: "eleven sweeps of the poller",
    intervalMs: 5,
  });
  // Sweeps 0 and 10 read it (and the waiter's own read); every sweep read the queued one.
  assert.equal(reads.get(held.id), 3, "the reads of the held one");
  stop.abort();
  await within(Promise.allSettled(waits), DEADLINE_MS, "the waits");
});

test("[kv] the finals poller, backed off, reads at most about 1,000 awaited records a second, however many are awaited", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  let reads = 0;
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => void (reads += keys.filter((key) => key[2] === "inv").length),
  });
  const app = new Nenc({ appId: "poller-budget", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const { invocations } = await job.parallelize(Array.from({ length: 2_000 }, (_, n) => ({ n })));
  const stop = new AbortController();
  const store = app.orchestrator.store;
  const waits = invocations.map(({ id }) => store.waitFinal(id, stop.signal));
  // The waiters' own first reads (2,000) and the poller's quick rounds while it backs off (7 of
  // 100: no end is made elsewhere), then one second of it backed off (real time: its pace is I/O
  // pacing, on real timers). A slower machine reads fewer, never more.
  await waitUntil(() => reads >= 2_000 + 800, { message: "the poller backed off", intervalMs: 5 });
  reads = 0;
  const start = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const seconds = (performance.now() - start) / 1000;
  stop.abort();
  await within(Promise.allSettled(waits), DEADLINE_MS, "the waits");
  // A sweep of 2,000 takes 2 s: a slice of 100 every 100 ms (20,000 a second before, at first).
  assert.ok(reads <= 1_000 * seconds + 100, `${reads} reads in ${seconds.toFixed(2)} s`);
});

/**
 * A view of `kv` whose next `getMany` of the record of `holdId` (once set) waits until `release()`
 * (`atHold` resolves when it does), and that names what it reads in `read`: each key's kind, and
 * each listed prefix as `kind/id`.
 */
function holdingRecordRead(kv: KvLike) {
  const state = { holdId: undefined as string | undefined };
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let reached!: () => void;
  const atHold = new Promise<void>((resolve) => reached = resolve);
  const read: string[] = [];
  const view = interceptKv(kv, {
    beforeGetMany: async (keys) => {
      read.push(...keys.map((key) => String(key[2])));
      const held = state.holdId;
      if (held !== undefined && keys.some((key) => key[2] === "inv" && key[3] === held)) {
        state.holdId = undefined;
        reached();
        await released;
      }
    },
    beforeList: (selector) => {
      const prefix = "prefix" in selector ? selector.prefix : undefined;
      if (prefix !== undefined) read.push(prefix.slice(2).join("/"));
    },
  });
  return { view, read, state, atHold, release };
}

test("[kv] the end of an invocation whose wait edges this process wrote lists its edges while its record is read, not after", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { view, read: listed, state, atHold, release } = holdingRecordRead(kv);
  const app = new Nenc({ appId: "early-edges", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const parent = await job.call({ n: 1 });
  const child = await job.call({ n: 2 });
  const o = app.orchestrator;
  await o.store.waitFor(parent.id, [child.id], Date.now());
  // Claimed through another view (as by another process): the end reads the record it did not
  // commit itself.
  const other = new Nenc({ appId: "early-edges", kv: interceptKv(kv, {}) });
  other.task("job", ({ n }: { n: number }) => n);
  const [started] = await other.orchestrator.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.invocation.id, child.id, "blocking control runs the waited-on child");
  listed.length = 0;
  state.holdId = child.id;
  const ending = o.setInvocationResult(started.invocation, 2, {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  await within(atHold, DEADLINE_MS, "the read of the child's record");
  // Its edges, both ways, are being listed while its record is read.
  await waitUntil(
    () => listed.includes(`waited/${child.id}`) && listed.includes(`waits/${child.id}`),
    { message: "the child's edges listed while its record is held", timeoutMs: 5_000 },
  );
  release();
  await within(ending, DEADLINE_MS, "the child's end");
  assert.deepEqual(await o.store.waiters(child.id), [], "its edges released with it");
});

test("[kv] a pause reads what its wait edges are planned from (the edges there, the ends' markers, its own ready entries) while its record is read, not after", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { view, read, state, atHold, release } = holdingRecordRead(kv);
  const app = new Nenc({ appId: "early-waits", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const parent = await job.call({ n: 1 });
  const child = await job.call({ n: 2 });
  const o = app.orchestrator;
  // Claimed through another view (as by another process): the pause reads the record it did not
  // commit itself.
  const other = new Nenc({ appId: "early-waits", kv: interceptKv(kv, {}) });
  other.task("job", ({ n }: { n: number }) => n);
  const [started] = await other.orchestrator.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.invocation.id, parent.id);
  read.length = 0;
  state.holdId = parent.id;
  const pausing = o.pauseForResults(started.invocation, [child], {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  await within(atHold, DEADLINE_MS, "the read of the parent's record");
  await waitUntil(
    () =>
      ["waits", "wnode", "waited"].every((kind) =>
        read.some((what) => what === kind || what.startsWith(`${kind}/`))
      ),
    { message: "the wait reads made while the parent's record is held", timeoutMs: 5_000 },
  );
  release();
  await within(pausing, DEADLINE_MS, "the pause");
  assert.equal((await o.store.get(parent.id))?.status, "paused");
  assert.deepEqual(await o.store.waiters(child.id), [parent.id]);
});

test("[kv] result() of a final invocation reads its record once, in one getMany: the wait's own read is the outcome", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const reads: string[][] = [];
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => {
      const records = keys.flatMap((key) => key[2] === "inv" ? [String(key[3])] : []);
      if (records.length > 0) reads.push(records);
    },
  });
  const app = new Nenc({ appId: "result-reads", kv: view });
  const ping = app.task("ping", () => "pong");
  const invocation = await ping.call();
  const [started] = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
  await app.orchestrator.setInvocationResult(started!.invocation, "pong", {
    runnerId: "r1",
    claimSeq: started!.claimSeq,
    expectSeq: started!.seq,
  });
  reads.length = 0;
  assert.equal(await invocation.result(), "pong");
  assert.deepEqual(reads, [[invocation.id]]);
});

/** A view of `kv` that names, while `on`, every record read (`inv/<id>`) and listed prefix. */
function namingReads(kv: KvLike) {
  const state = { on: false };
  const read: string[] = [];
  const view = interceptKv(kv, {
    beforeGetMany: (keys) => {
      if (state.on) read.push(...keys.map((key) => key.slice(2).join("/")));
    },
    beforeList: (selector) => {
      const prefix = "prefix" in selector ? selector.prefix : undefined;
      if (state.on && prefix !== undefined) read.push(`${prefix.slice(2).join("/")}/…`);
    },
  });
  return { view, read, state };
}

/** The child claimed and ended here ("r1"): every edge into it released with its end. */
async function endHereReleasingAll(o: Nenc["orchestrator"], childId: string): Promise<void> {
  const [started] = await o.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.invocation.id, childId);
  await o.setInvocationResult(started.invocation, 2, {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  assert.deepEqual(await o.store.waiters(childId), [], "both edges released with it");
  assert.deepEqual((await o.store.graphs()).waits, [], "no wait edge left");
}

/**
 * Registers waiter and waited, claims the waiter here ("r1") and pauses it on the waited: here, or
 * through `pausedBy` (another process's app on the same store).
 */
async function pausedOnChild(app: Nenc, pausedBy: Nenc = app) {
  const job = app.task("job", ({ n }: { n: number }) => n);
  const parent = await job.call({ n: 1 });
  const child = await job.call({ n: 2 });
  const o = app.orchestrator;
  const [claimed] = await o.startInvocations(1, { runnerId: "r1" });
  assert.equal(claimed?.invocation.id, parent.id);
  const actor = { runnerId: "r1", claimSeq: claimed.claimSeq };
  await pausedBy.orchestrator.pauseForResults(claimed.invocation, [child], {
    ...actor,
    expectSeq: claimed.seq,
  });
  return { o, parent, child, claimed, actor };
}

test("[kv] the end of an invocation whose wait edges a pause here wrote reads neither them nor its marker nor its record (both committed here): its commit checks the marker as that pause left it, and releases the edges", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { view, read, state } = namingReads(kv);
  const app = new Nenc({ appId: "known-edges", kv: view });
  const { o, parent, child } = await pausedOnChild(app);
  const [started] = await o.startInvocations(1, { runnerId: "r1" });
  assert.equal(started?.invocation.id, child.id);
  state.on = true;
  await o.setInvocationResult(started.invocation, 2, {
    runnerId: "r1",
    claimSeq: started.claimSeq,
    expectSeq: started.seq,
  });
  state.on = false;
  const its = [
    `inv/${child.id}`,
    `wnode/${child.id}`,
    `waited/${child.id}/…`,
    `waits/${child.id}/…`,
  ];
  assert.deepEqual(read.filter((what) => its.includes(what)), []);
  assert.deepEqual(await o.store.waiters(child.id), [], "its edge released with it");
  assert.deepEqual((await o.store.graphs()).waits, [], "no wait edge left");
  assert.equal((await o.store.get(parent.id))?.status, "paused");
});

test("[kv] an edge into an invocation inserted by another process after a pause here wrote its edges is released with its end all the same: the marker known here is checked, found moved, and the edges listed", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "moved-marker", kv: interceptKv(kv, {}) });
  const { o, child } = await pausedOnChild(app);
  // Another process (its own view of the store) waits on the child too.
  const other = new Nenc({ appId: "moved-marker", kv: interceptKv(kv, {}) });
  const otherWaiter = await other.task("job", ({ n }: { n: number }) => n).call({ n: 3 });
  await other.orchestrator.store.waitFor(otherWaiter.id, [child.id], Date.now());
  await endHereReleasingAll(o, child.id);
});

test("[kv] a resume after a pause made here reads no record: it plans from the entry the pause committed, and its commit checks it", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { view, read, state } = namingReads(kv);
  const app = new Nenc({ appId: "known-entry", kv: view });
  const { o, parent, claimed, actor } = await pausedOnChild(app);
  state.on = true;
  await o.setInvocationStatus(claimed.invocation, "resumed", {
    ...actor,
    expectSeq: claimed.seq + 1,
  });
  state.on = false;
  assert.deepEqual(read.filter((what) => what === `inv/${parent.id}`), []);
  assert.equal((await o.store.get(parent.id))?.status, "resumed");
});

test("[kv] a resume planned from the entry a pause here committed, after another process canceled the invocation, is refused by its check and sees the cancel: the record stays canceled", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "stale-entry", kv: interceptKv(kv, {}) });
  const { o, parent, claimed, actor } = await pausedOnChild(app);
  const other = new Nenc({ appId: "stale-entry", kv: interceptKv(kv, {}) });
  other.task("job", ({ n }: { n: number }) => n);
  assert.deepEqual(await other.orchestrator.cancel([parent], { cascade: false }), [true]);
  await assert.rejects(
    o.setInvocationStatus(claimed.invocation, "resumed", { ...actor, expectSeq: claimed.seq + 1 }),
  );
  assert.equal((await o.store.get(parent.id))?.status, "canceled");
});

test("[kv] an edge into an end inserted by another process between a pause's reads and its commit fails the pause's check of that end's marker: planned again, and the end's edges, both, released with it", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const { kv: view, hold } = holdingCommits(kv);
  const app = new Nenc({ appId: "raced-marker", kv: view });
  const job = app.task("job", ({ n }: { n: number }) => n);
  const parent = await job.call({ n: 1 });
  const child = await job.call({ n: 2 });
  const o = app.orchestrator;
  const [claimed] = await o.startInvocations(1, { runnerId: "r1" });
  assert.equal(claimed?.invocation.id, parent.id);
  const held = hold(new Keys("raced-marker").invocation(parent.id));
  const pausing = o.pauseForResults(claimed.invocation, [child], {
    runnerId: "r1",
    claimSeq: claimed.claimSeq,
    expectSeq: claimed.seq,
  });
  await held.reached;
  // The pause has read the child's marker absent; another process now waits on the child.
  const other = new Nenc({ appId: "raced-marker", kv: interceptKv(kv, {}) });
  const otherWaiter = await other.task("job", ({ n }: { n: number }) => n).call({ n: 3 });
  await other.orchestrator.store.waitFor(otherWaiter.id, [child.id], Date.now());
  held.open();
  await within(pausing, DEADLINE_MS, "the pause");
  assert.deepEqual((await o.store.waiters(child.id)).sort(), [parent.id, otherWaiter.id].sort());
  await endHereReleasingAll(o, child.id);
});

test("[kv] a change whose entry committed here went stale (another process changed the record since) is not refused by that entry: a resume after a pause another process wrote reads the record afresh and is applied", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "stale-seq", kv: interceptKv(kv, {}) });
  const other = new Nenc({ appId: "stale-seq", kv: interceptKv(kv, {}) });
  other.task("job", ({ n }: { n: number }) => n);
  // Claimed here (the claim's entry is kept here); the pause written through another process's
  // store: the entry kept here is stale now.
  const { o, parent, claimed, actor } = await pausedOnChild(app, other);
  await o.setInvocationStatus(claimed.invocation, "resumed", {
    ...actor,
    expectSeq: claimed.seq + 1,
  });
  assert.equal((await o.store.get(parent.id))?.status, "resumed");
});
