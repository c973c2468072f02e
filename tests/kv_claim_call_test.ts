// The pick-up of a child on Deno KV (ClaimRequest.runWithCall): it goes straight to RUNNING with
// its call edge caller → child in the claim's own commit; a region too big for that commit leaves
// it at PENDING for the runner; a caller that ends meanwhile loses its hold again; the commit's
// faults leave one edge, and nothing once both are final.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { systemClock } from "../core/clock.ts";
import { runInExecution } from "../core/context.ts";
import { callId, serializeArguments } from "../core/ids.ts";
import { Keys } from "../kv/keys.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { InjectedStoreFault } from "./_faults.ts";
import { holdingCommits, interceptKv, type KvHooks, openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
const directory = mkdtempSync(join(tmpdir(), "nenc-kv-claim-call-"));
after(() => {
  opened.forEach((kv) => kv.close());
  rmSync(directory, { recursive: true, force: true });
});

type Where = ":memory:" | "a file";
let files = 0;

async function openKv(where: Where = ":memory:"): Promise<TestKv> {
  const kv = await openTestKv(where === ":memory:" ? where : join(directory, `${files++}.db`));
  opened.push(kv);
  return kv;
}

/**
 * A caller running on `app` (task "parent", started by runner "r0") and its execution context:
 * calls made inside it (`runInExecution`) are its children.
 */
async function runningCaller(app: Nenc) {
  const o = app.orchestrator;
  const parent = app.task("parent", () => 0);
  const actor = { runnerId: "r0" };
  const caller = await parent.call();
  const [started] = await o.startInvocations(1, actor);
  assert.equal(started?.running, true);
  const execution = {
    invocationId: caller.id,
    runnerId: actor.runnerId,
    signal: new AbortController().signal,
    waitFor: () => Promise.resolve(),
  };
  return { o, actor, caller, execution };
}

const same = (a: KvKey, b: KvKey): boolean => JSON.stringify(a) === JSON.stringify(b);

/** The keys of the call graph (edges, reverses, versions, holders) left under an app. */
async function callKeys(kv: KvLike, keys: Keys): Promise<KvKey[]> {
  const found: KvKey[] = [];
  for (const kind of ["calls", "called", "holder", "hver"]) {
    for await (const entry of kv.list({ prefix: [...keys.app, kind] })) found.push(entry.key);
  }
  return found;
}

/** Resolves once no call graph key is left (every hold released), within the deadline. */
function callGraphEmptied(kv: KvLike, keys: Keys): Promise<void> {
  return waitUntil(async () => (await callKeys(kv, keys)).length === 0, {
    message: "the call graph keys were never all removed",
  });
}

/**
 * A KV store whose `change()` and `addCall()` calls are recorded (`change [path]`, `addCall`),
 * every other call passed through.
 */
function recordingStore(kv: KvLike, appId: string, seen: string[]): KvStore {
  const store = new KvStore(kv, { appId, clock: systemClock });
  return new Proxy(store, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      const method = value as (...args: unknown[]) => unknown;
      if (property === "change") {
        return (...args: unknown[]) => {
          seen.push(`change [${(args[1] as { path: string[] }).path.join(", ")}]`);
          return method.apply(target, args);
        };
      }
      if (property === "addCall") {
        return (...args: unknown[]) => {
          seen.push("addCall");
          return method.apply(target, args);
        };
      }
      return method.bind(target);
    },
  });
}

for (const where of [":memory:", "a file"] as const) {
  test(`[kv] a child's pick-up enters RUNNING with its call edge in the claim's one commit: no change() to RUNNING and no addCall() of its own, one commit sets the child between its registration and its start and it writes the edge parent → child, which is held while the child runs and gone once both are final (on ${where})`, async () => {
    const kv = await openKv(where);
    const appId = "claim-call";
    const keys = new Keys(appId);
    const commits: KvKey[][] = [];
    const view = interceptKv(kv, {
      afterCommit: (ok, sets) => void (ok && commits.push(sets.map(({ key }) => key))),
    });
    const seen: string[] = [];
    const store = recordingStore(view, appId, seen);
    const app = new Nenc({ appId, store });
    let atStart: { history: string[]; edges: string[][]; commits: number } | undefined;
    const child = app.task("child", async ({ n }: { n: number }, ctx) => {
      atStart = {
        history: (await app.orchestrator.getInvocationHistory({ id: ctx.invocationId }))
          .map((entry) => entry.status),
        edges: (await store.graphs()).calls.edges.map((edge) => [...edge]),
        commits: commits.length,
      };
      return n * 2;
    });
    const parent = app.task(
      "parent",
      async ({ n }: { n: number }) => (await (await child.call({ n })).result()) + 1,
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const invocation = await parent.call({ n: 4 });
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 9);
    assert.deepEqual(seen.filter((call) => call === "addCall" || call.includes("running")), []);
    const [record] = await store.children(invocation.id);
    assert.ok(record !== undefined);
    assert.deepEqual(atStart?.history, ["registered", "pending", "running"]);
    assert.deepEqual(atStart?.edges, [[invocation.callId, record.callId]]);
    const setsChild = (sets: KvKey[]): boolean =>
      sets.some((key) => same(key, keys.invocation(record.id)));
    const before = commits.slice(0, atStart!.commits).filter(setsChild);
    assert.equal(before.length, 2, "the child's record: registered, then claimed");
    const edge = keys.callEdge(invocation.callId, record.callId);
    assert.ok(before[1]!.some((key) => same(key, edge)), "the claim's commit writes the edge");
    assert.equal(commits.filter((sets) => sets.some((key) => same(key, edge))).length, 1);
    await callGraphEmptied(kv, keys);
  });
}

test("[kv] a child whose call region is too big to check in the claim's commit (its call already has 9 callees: 10 calls) stops at PENDING, and the runner adds its edge and moves it to RUNNING: it runs and its parent gets its result", async () => {
  const kv = await openKv();
  const appId = "claim-call-big";
  const keys = new Keys(appId);
  const childCall = callId("child", serializeArguments({ n: 4 }));
  const plain = new KvStore(kv, { appId, clock: systemClock });
  for (let i = 0; i < 9; i++) {
    const ref = (call: string, invocationId: string) => ({ callId: call, invocationId });
    await plain.addCall(ref(childCall, "earlier"), ref(`other#${i}`, `o${i}`));
  }
  const seen: string[] = [];
  const store = recordingStore(kv, appId, seen);
  const app = new Nenc({ appId, store });
  const child = app.task("child", ({ n }: { n: number }) => n * 2);
  const parent = app.task(
    "parent",
    async ({ n }: { n: number }) => (await (await child.call({ n })).result()) + 1,
  );
  await using runner = app.runner({ concurrency: 1 });
  runner.start();
  const invocation = await parent.call({ n: 4 });
  assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 9);
  assert.deepEqual(seen.filter((call) => call === "addCall" || call.includes("running")), [
    "addCall",
    "change [running]",
  ]);
  const [record] = await store.children(invocation.id);
  assert.deepEqual(
    (await store.history(record!.id)).map((entry) => entry.status),
    ["registered", "pending", "running", "success"],
  );
  // The edge parent → child went with the ends of both; the earlier holder keeps its own.
  await waitUntil(async () => (await store.graphs()).calls.edges.length === 9, {
    message: "the edge parent → child was never removed",
  });
  assert.equal((await kv.get(keys.callEdge(invocation.callId, childCall))).versionstamp, null);
});

test("[kv] a caller that becomes final while its child's claim commit is under way (its clean-up ran before the holder was written) loses its hold again after the claim: no holder of its call is left", async () => {
  const kv = await openKv();
  const appId = "claim-call-final-caller";
  const keys = new Keys(appId);
  const { kv: view, hold } = holdingCommits(kv);
  const app = new Nenc({ appId, kv: view });
  const child = app.task("child", () => 1);
  const { o, actor, caller, execution } = await runningCaller(app);
  // A call made inside the caller's execution: its child.
  const callee = await runInExecution(execution, () => child.call());
  const held = hold(keys.callHolder(caller.callId, caller.id));
  const claiming = o.startInvocations(1, actor);
  await held.reached;
  // The caller ends through another store of the app (another process: this one's commits wait
  // behind the held claim), and its clean-up finds no holder of its call yet.
  await new Nenc({ appId, kv }).orchestrator.setInvocationResult(caller, 0, actor);
  held.open();
  const [claimed] = await within(claiming, DEADLINE_MS, "the child's claim");
  assert.equal(claimed?.invocation.id, callee.id);
  assert.equal(claimed?.running, true);
  await waitUntil(async () => {
    for await (const _ of kv.list({ prefix: keys.callHolder(caller.callId) })) return false;
    return true;
  }, { message: "the final caller's holder was never released" });
  await o.setInvocationResult(callee, 1, actor);
  await callGraphEmptied(kv, keys);
});

const FAULTS = {
  refuse: "refused and not applied",
  applied: "applied, then reported failed",
  down: "applied as the store goes down for 1 s",
} as const;

// The one step under test: the claim's commit that writes the edge parent → child; with two
// children of equal arguments, the claim of the second waits for it (and reuses the edge at the
// versionstamp of that commit when it committed, or reads it again when it did not).
for (const fault of ["refuse", "applied", "down"] as const) {
  for (const siblings of [1, 2]) {
    test(
      `[kv] a child's claim commit with its call edge ${FAULTS[fault]}${
        siblings === 2 ? ", its sibling of equal arguments claimed beside it" : ""
      }: each child runs once, its parent gets its result, the edge is written once (applied, the claim after the runner's orphan recovery reuses its own; refused, the sibling's claim inserts it), and once all are final no call key is left`,
      async () => {
        const kv = await openKv();
        const appId = `claim-call-${fault}-${siblings}`;
        const keys = new Keys(appId);
        let armed = true;
        let downUntilMs = 0;
        const throwIfDown = (): void => {
          if (Date.now() < downUntilMs) throw new InjectedStoreFault("down");
        };
        const setsEdge = (sets: readonly KvKey[]): boolean =>
          sets.some((key) => key[2] === "calls" && key.length === 5);
        let edgeWrites = 0;
        const hooks: KvHooks = {
          beforeGet: throwIfDown,
          beforeGetMany: throwIfDown,
          beforeList: throwIfDown,
          beforeCommit: (_values, setKeys) => {
            throwIfDown();
            if (!armed || fault !== "refuse" || !setsEdge(setKeys)) return;
            armed = false;
            throw new InjectedStoreFault(fault);
          },
          afterCommit: (ok, sets) => {
            if (!ok || !setsEdge(sets.map(({ key }) => key))) return;
            edgeWrites++;
            if (!armed || fault === "refuse") return;
            armed = false;
            if (fault === "down") downUntilMs = Date.now() + 1_000;
            throw new InjectedStoreFault(fault);
          },
        };
        const app = new Nenc({
          appId,
          kv: interceptKv(kv, hooks),
          orchestrator: { maxPendingSeconds: 1, runnerTimeoutSeconds: 6 },
        });
        let runs = 0;
        const child = app.task("child", ({ n }: { n: number }) => {
          runs++;
          return n * 2;
        });
        const parent = app.task("parent", async ({ n }: { n: number }) => {
          const calls = await Promise.all(
            Array.from({ length: siblings }, () => child.call({ n })),
          );
          const results = await Promise.all(calls.map((call) => call.result()));
          return results.reduce((sum, result) => sum + result, 1);
        });
        await using runner = app.runner({ concurrency: 3, pollMs: 10, heartbeatMs: 100 });
        runner.start();
        const invocation = await parent.call({ n: 4 });
        assert.equal(
          await within(invocation.result(), DEADLINE_MS, "the parent's result"),
          8 * siblings + 1,
        );
        assert.equal(armed, false, "the fault was never injected");
        assert.equal(runs, siblings);
        // Refused beside a sibling: the sibling inserts the edge instead, and the child, claimed
        // in a later pick-up, reuses it — or inserts it again if the sibling ended (and its end
        // took the edge away) before.
        if (fault === "refuse" && siblings === 2) assert.ok(edgeWrites === 1 || edgeWrites === 2);
        else assert.equal(edgeWrites, 1);
        // Applied, the claim's answer was lost: the runner's orphan recovery hands the child back,
        // and its next claim finds its own edge and reuses it. (A sibling's claim goes on as usual.)
        const claimed = ["registered", "pending", "running"];
        const histories = await Promise.all(
          (await app.orchestrator.store.children(invocation.id)).map(async ({ id }) =>
            (await app.orchestrator.store.history(id)).map((entry) => entry.status).join(" ")
          ),
        );
        const recovered = [...claimed, "running_recovery", "rerouted", "pending", "running"];
        assert.deepEqual(
          histories.sort(),
          [
            ...(fault === "refuse" ? [] : [[...recovered, "success"].join(" ")]),
            ...Array(fault === "refuse" ? siblings : siblings - 1).fill(
              [...claimed, "success"].join(" "),
            ),
          ].sort(),
        );
        await callGraphEmptied(kv, keys);
      },
    );
  }
}

test("[kv] a pick-up claims its blocking candidates together: with the claim of one child held at its commit, the other child waited on is claimed meanwhile, straight to RUNNING", async () => {
  const kv = await openKv();
  const appId = "claim-call-blocking";
  const keys = new Keys(appId);
  const { kv: view, hold } = holdingCommits(kv);
  const app = new Nenc({ appId, kv: view });
  const child = app.task("child", ({ n }: { n: number }) => n);
  const { o, actor, caller, execution } = await runningCaller(app);
  const [first, second] = await runInExecution(
    execution,
    () => Promise.all([child.call({ n: 1 }), child.call({ n: 2 })]),
  );
  await o.waitingForResults(caller, [first!, second!]);
  assert.deepEqual(
    (await o.getBlockingInvocations(2)).map(({ id }) => id).sort(),
    [first!.id, second!.id].sort(),
  );
  const held = hold(keys.invocation(first!.id));
  const claiming = o.startInvocations(2, actor);
  await held.reached;
  const plain = new Nenc({ appId, kv }).orchestrator.store;
  await waitUntil(async () => (await plain.get(second!.id))?.status === "running", {
    message: "the second child was not claimed while the first one's claim was held",
  });
  held.open();
  const claimed = await within(claiming, DEADLINE_MS, "the pick-up");
  assert.deepEqual(claimed.map(({ running }) => running), [true, true]);
});

test("[kv] two children of one caller with equal arguments picked up together: the first claim inserts their call edge, the second waits for it and reuses it at the versionstamp of that commit — no refused commit, the edge read once for both, written once and not read again, both straight to RUNNING", async () => {
  const kv = await openKv();
  const appId = "claim-call-same-edge";
  const commits: { ok: boolean; keys: KvKey[] }[] = [];
  const reads: KvKey[] = [];
  const view = interceptKv(kv, {
    afterCommit: (ok, sets) => void commits.push({ ok, keys: sets.map(({ key }) => key) }),
    beforeGet: (key) => void reads.push(key),
    beforeGetMany: (keys) => void reads.push(...keys),
  });
  const app = new Nenc({ appId, kv: view });
  const child = app.task("child", ({ n }: { n: number }) => n);
  const { o, actor, caller, execution } = await runningCaller(app);
  const [first] = await runInExecution(
    execution,
    () => Promise.all([child.call({ n: 1 }), child.call({ n: 1 })]),
  );
  commits.length = 0;
  reads.length = 0;
  const claimed = await within(o.startInvocations(2, actor), DEADLINE_MS, "the pick-up");
  assert.deepEqual(claimed.map(({ running }) => running), [true, true]);
  assert.deepEqual(commits.filter(({ ok }) => !ok), [], "refused commits");
  const edge = new Keys(appId).callEdge(caller.callId, first!.callId);
  assert.equal(commits.filter(({ keys }) => keys.some((key) => same(key, edge))).length, 1);
  // One read, made ahead with their records (this process holds the caller and registered them)
  // and shared by both claims; none after the insert.
  assert.equal(reads.filter((key) => same(key, edge)).length, 1, "reads of the edge");
});

test("[kv] a pick-up claims a child waited on from the blocking index's own reads: the child's record is read once, with its caller's, its call edge (this process holds the caller and registered the child) and the check that it waits on nothing, then the commit", async () => {
  const kv = await openKv();
  const appId = "claim-call-read-ahead";
  const reads: KvKey[][] = [];
  const view = interceptKv(kv, { beforeGetMany: (keys) => void reads.push([...keys]) });
  const app = new Nenc({ appId, kv: view });
  const child = app.task("child", ({ n }: { n: number }) => n);
  const { o, actor, caller, execution } = await runningCaller(app);
  const callee = await runInExecution(execution, () => child.call({ n: 1 }));
  await o.waitingForResults(caller, [callee]);
  const keys = new Keys(appId);
  reads.length = 0;
  const [claimed] = await within(o.startInvocations(1, actor), DEADLINE_MS, "the pick-up");
  assert.equal(claimed?.invocation.id, callee.id);
  assert.equal(claimed?.running, true);
  const calleeReads = reads.filter((read) =>
    read.some((key) => same(key, keys.invocation(callee.id)))
  );
  // Before, its record was read again for the pick-up's batch, and again by the claim.
  assert.equal(calleeReads.length, 1, "reads of the child's record");
  assert.ok(
    calleeReads[0]!.some((key) => same(key, keys.invocation(caller.id))),
    "the caller's record is read with the child's",
  );
  const edge = keys.callEdge(caller.callId, callee.callId);
  assert.deepEqual(
    reads.filter((read) => read.some((key) => same(key, edge))),
    calleeReads,
    "the call edge is read with the child's record, once",
  );
});

test("[kv] a child waited on that another runner claims between the blocking index's read and this pick-up's commit: the commit's check refuses the claim, the record is read again and the child left to the other runner", async () => {
  const kv = await openKv();
  const appId = "claim-call-read-ahead-stale";
  let refused = 0;
  let other: Promise<unknown> | undefined;
  const keys = new Keys(appId);
  let calleeId = "";
  const view = interceptKv(kv, {
    beforeCommit: async (_values, setKeys) => {
      if (other !== undefined || !setKeys.some((key) => same(key, keys.invocation(calleeId)))) {
        return;
      }
      // This pick-up's claim of the child, planned from the index's read: another runner first.
      other = new Nenc({ appId, kv }).orchestrator.startInvocations(1, { runnerId: "r2" });
      await within(other, DEADLINE_MS, "the other runner's claim");
    },
    afterCommit: (ok) => void (ok || refused++),
  });
  const app = new Nenc({ appId, kv: view });
  const child = app.task("child", ({ n }: { n: number }) => n);
  const { o, actor, caller, execution } = await runningCaller(app);
  const callee = await runInExecution(execution, () => child.call({ n: 1 }));
  calleeId = callee.id;
  await o.waitingForResults(caller, [callee]);
  const claimed = await within(o.startInvocations(1, actor), DEADLINE_MS, "the pick-up");
  assert.deepEqual(claimed.map(({ invocation }) => invocation.id), []);
  assert.equal(refused, 1, "refused commits");
  const [theirs] = (await other) as { invocation: { id: string }; running: boolean }[];
  assert.equal(theirs?.invocation.id, callee.id);
  assert.equal((await app.orchestrator.store.get(callee.id))?.ownerId, "r2");
});

test("[kv] a child's claim planned from its call region read ahead (with its record), which another process changed before the commit: the commit's check refuses it, and the next attempt reads the region again and claims it", async () => {
  const kv = await openKv();
  const appId = "claim-call-ahead-stale";
  const keys = new Keys(appId);
  let refused = 0;
  let armed = false;
  let calleeCall = "";
  const view = interceptKv(kv, {
    beforeCommit: async (_values, setKeys) => {
      if (!armed || !setKeys.some((key) => key[2] === "exec")) return;
      armed = false;
      // Another process adds an edge out of the child's call: its region's version moves.
      const plain = new KvStore(kv, { appId, clock: systemClock });
      await plain.addCall({ callId: calleeCall, invocationId: "elsewhere" }, {
        callId: "other",
        invocationId: "o1",
      });
    },
    afterCommit: (ok) => void (ok || refused++),
  });
  const reads: KvKey[][] = [];
  const app = new Nenc({
    appId,
    kv: interceptKv(view, { beforeGetMany: (read) => void reads.push([...read]) }),
  });
  const child = app.task("child", ({ n }: { n: number }) => n);
  const { o, actor, caller, execution } = await runningCaller(app);
  const callee = await runInExecution(execution, () => child.call({ n: 1 }));
  calleeCall = callee.callId;
  reads.length = 0;
  armed = true;
  const [claimed] = await within(o.startInvocations(1, actor), DEADLINE_MS, "the pick-up");
  assert.equal(claimed?.invocation.id, callee.id);
  assert.equal(claimed?.running, true);
  assert.equal(refused, 1, "refused commits");
  const edge = keys.callEdge(caller.callId, callee.callId);
  const edgeReads = reads.filter((read) => read.some((key) => same(key, edge)));
  // Read ahead with the child's record, then again for the second attempt.
  assert.equal(edgeReads.length, 2, "reads of the edge");
  assert.ok(edgeReads[0]!.some((key) => same(key, keys.invocation(callee.id))));
  assert.notEqual((await kv.get(edge)).versionstamp, null);
});
