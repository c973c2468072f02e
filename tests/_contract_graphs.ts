import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import type { Nenc } from "../core/app.ts";
import type { Invocation } from "../core/invocation.ts";
import type { Orchestrator } from "../core/orchestrator.ts";
import type { LiveGraphs } from "../core/store.ts";
import { captureWarnings } from "./_contract_routing.ts";

/** The graphs in a stable order: calls by call id, edges sorted. */
function sorted(graphs: LiveGraphs): LiveGraphs {
  const byText = (a: readonly string[], b: readonly string[]): number =>
    a.join("\n") < b.join("\n") ? -1 : 1;
  return {
    calls: {
      calls: [...graphs.calls.calls]
        .map((call) => ({ ...call, invocationIds: [...call.invocationIds].sort() }))
        .sort((a, b) => a.callId < b.callId ? -1 : 1),
      edges: [...graphs.calls.edges].sort(byText),
    },
    waits: [...graphs.waits].sort(byText),
  };
}

/**
 * Two invocations of one task, both claimed by runner "r0", the first (the caller) RUNNING: what
 * the tests of a caller, its callee and their edges start from.
 */
export async function claimedCallerAndCallee(app: Nenc): Promise<{
  o: Orchestrator;
  caller: Invocation;
  callee: Invocation;
  actor: { runnerId: string };
}> {
  const o = app.orchestrator;
  const job = app.task("job", ({ n }: { n: number }) => n);
  const caller = await job.call({ n: 0 });
  const callee = await job.call({ n: 1 });
  const actor = { runnerId: "r0" };
  assert.equal((await o.getInvocationsToRun(2, actor)).length, 2);
  await o.setInvocationRun(undefined, caller, actor);
  return { o, caller, callee, actor };
}

const ids = (invocations: readonly { id: string }[]): string[] => invocations.map(({ id }) => id);

const EMPTY: LiveGraphs = { calls: { calls: [], edges: [] }, waits: [] };

/** The live call graph and wait graph, read through the storage port, on one backend. */
export function graphsContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] graphs(): a caller waiting on two running callees shows both call edges and both wait edges; once all are final both graphs are empty`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const caller = await job.call({ n: 0 });
    const a = await job.call({ n: 1 });
    const b = await job.call({ n: 2 });
    assert.equal((await o.getInvocationsToRun(3, { runnerId: "r0" })).length, 3);
    const actor = { runnerId: "r0" };
    await o.setInvocationRun(undefined, caller, actor);
    await o.setInvocationRun(caller, a, actor);
    await o.setInvocationRun(caller, b, actor);
    await o.waitingForResults(caller, [a, b]);

    const call = (invocation: { callId: string; id: string }, n: number) => ({
      callId: invocation.callId,
      label: `job({"n":${n}})`,
      invocationIds: [invocation.id],
    });
    assert.deepEqual(
      sorted(await o.store.graphs()),
      sorted({
        calls: {
          calls: [call(caller, 0), call(a, 1), call(b, 2)],
          edges: [[caller.callId, a.callId], [caller.callId, b.callId]],
        },
        waits: [[caller.id, a.id], [caller.id, b.id]],
      }),
    );

    await o.setInvocationResult(a, 1, actor);
    const afterA = await o.store.graphs();
    assert.deepEqual(afterA.calls.edges, [[caller.callId, b.callId]]);
    assert.deepEqual(afterA.waits, [[caller.id, b.id]]);
    await o.setInvocationResult(b, 2, actor);
    await o.setInvocationResult(caller, 3, actor);
    assert.deepEqual(await o.store.graphs(), { calls: { calls: [], edges: [] }, waits: [] });
  });

  test(`[${backend}] a task awaiting an invocation that is already final records no wait edge to it, only to what is still pending`, async () => {
    const app = await makeApp();
    let release!: () => void;
    const released = new Promise<void>((resolve) => release = resolve);
    const quick = app.task("quick", () => 1);
    const slow = app.task("slow", async () => {
      await released;
      return 2;
    });
    let quickSeen!: () => void;
    const quickDone = new Promise<void>((resolve) => quickSeen = resolve);
    const parent = app.task("parent", async () => {
      const done = await quick.call();
      await done.result();
      quickSeen();
      const pending = await slow.call();
      // One wait on both at once (as a group's results() does).
      const results = await app.orchestrator.waitForResults<number>([done, pending]);
      return results.reduce((sum, n) => sum + n);
    });
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const invocation = await parent.call();
    // Its second pause, on [quick, slow]: it records its wait edges before it pauses.
    await within(quickDone, DEADLINE_MS, "quick's result inside the parent");
    await waitUntil(async () => await invocation.status() === "paused", {
      message: "the parent never paused on [quick, slow]",
    });
    const waits = (await app.orchestrator.store.graphs()).waits;
    assert.equal(waits.length, 1, JSON.stringify(waits));
    const [waiter, waited] = waits[0]!;
    assert.equal(waiter, invocation.id);
    assert.equal((await app.orchestrator.getInvocation(waited))?.taskId, "slow");
    release();
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 3);
  });

  test(`[${backend}] waitingForResults() on an invocation that ended before its edge was written leaves no wait edge (the race of a waiter and a finisher)`, async () => {
    const { o, caller, callee, actor } = await claimedCallerAndCallee(await makeApp());
    await o.setInvocationRun(caller, callee, actor);
    // The callee ends and releases its waiters — none yet — before the caller's edge is written.
    await o.setInvocationResult(callee, 1, actor);
    await o.waitingForResults(caller, [callee]);
    assert.deepEqual((await o.store.graphs()).waits, []);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
  });
  // --- blocking control off ----------------------------------------------------------------------

  test(`[${backend}] blockingControl off: getBlockingInvocations() returns [] and waitingForResults() records no wait edge (an empty list still warns); on again, waits are recorded and read`, async () => {
    const app = await makeApp({ orchestrator: { blockingControl: false } });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const caller = await job.call({ n: 0 });
    const first = await job.call({ n: 1 });
    const second = await job.call({ n: 2 });
    await o.waitingForResults(caller, [first]);
    await o.blockingControl.waitingForResults(caller, [second]);
    assert.deepEqual(await o.store.graphs(), EMPTY);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    const warnings = await captureWarnings(() => o.waitingForResults(caller, []));
    assert.equal(warnings.length, 1, "an empty list still warns");

    o.options.blockingControl = true;
    await o.waitingForResults(caller, [first]);
    assert.deepEqual((await o.store.graphs()).waits, [[caller.id, first.id]]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [first.id]);
    // Off again at runtime: the recorded edge stays, but nothing is blocking and nothing is added.
    o.options.blockingControl = false;
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    assert.deepEqual(await o.blockingControl.getBlockingInvocations(10), []);
    await o.waitingForResults(caller, [second]);
    assert.deepEqual((await o.store.graphs()).waits, [[caller.id, first.id]]);
  });

  // --- cycle control with a final caller ---------------------------------------------------------

  test(`[${backend}] a callee started after its caller finished adds no call edge and no hold for the caller: the call graph is empty throughout`, async () => {
    const { o, caller, callee, actor } = await claimedCallerAndCallee(await makeApp());
    // The caller returns without awaiting its callee; the callee starts afterwards.
    await o.setInvocationResult(caller, 0, actor);
    await o.setInvocationRun(caller, callee, actor);
    assert.deepEqual(await o.store.graphs(), EMPTY);
    await o.cycleControl.addCallAndCheckCycles(caller, callee);
    assert.deepEqual(await o.store.graphs(), EMPTY);
    await o.setInvocationResult(callee, 1, actor);
    assert.deepEqual(await o.store.graphs(), EMPTY, "no call is left held by the final caller");
  });
}
