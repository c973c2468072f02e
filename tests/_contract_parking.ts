import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import type { InvocationStatus } from "../core/status.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import { claimIds, runToSuccess, statusPath } from "./_pickups.ts";

/** The statuses of one refused pick-up, parked then woken, and its run. */
const PARKED_ONCE_THEN_RUN: readonly InvocationStatus[] = [
  "registered",
  "concurrency_controlled",
  "rerouted",
  "pending",
  "running",
  "success",
];

/**
 * Parking (SPEC §7.2): a pick-up refused by a full key parks the invocation on that key, with one
 * history entry, until the key has room; then it is woken, first parked first, with one more.
 */
export function parkingContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] parking: while a key is held for 100 polls, each of 20 refused invocations records one entry and the polls write nothing; freed, they are woken first parked first, 2 entries per refusal in all`, async () => {
    const app = await makeApp();
    const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const holder = await task.call({ n: -1 });
    const parked = await Promise.all(Array.from({ length: 20 }, (_, n) => task.call({ n })));
    assert.deepEqual(await claimIds(app, 5, "r1"), [holder.id]);
    await app.orchestrator.setInvocationRun(undefined, holder, { runnerId: "r1" });
    for (let poll = 0; poll < 100; poll++) assert.deepEqual(await claimIds(app, 5, "r2"), []);
    for (const invocation of parked) {
      assert.deepEqual(await statusPath(invocation), ["registered", "concurrency_controlled"]);
    }
    await app.orchestrator.setInvocationResult(holder, null, { runnerId: "r1" });
    for (const invocation of parked) {
      assert.deepEqual(await claimIds(app, 5, "r2"), [invocation.id]);
      await runToSuccess(app, invocation, "r2");
    }
    for (const invocation of parked) {
      assert.deepEqual(await statusPath(invocation), PARKED_ONCE_THEN_RUN);
    }
  });

  test(`[${backend}] parking: a newcomer cannot take the slot freed for a parked invocation; it parks behind, and runs after it`, async () => {
    const app = await makeApp();
    const task = app.task("t", ({ n }: { n: number }) => n, {
      runningConcurrency: { by: "task", limit: 2 },
    });
    const [h1, h2, p1] = [
      await task.call({ n: 1 }),
      await task.call({ n: 2 }),
      await task.call({
        n: 3,
      }),
    ];
    assert.deepEqual(await claimIds(app, 10, "r1"), [h1.id, h2.id]);
    assert.equal(await p1.status(), "concurrency_controlled");
    await runToSuccess(app, h1, "r1"); // one slot free: p1's
    const newcomer = await task.call({ n: 4 });
    assert.deepEqual(await claimIds(app, 10, "r2"), [p1.id]);
    assert.deepEqual(await statusPath(newcomer), ["registered", "concurrency_controlled"]);
    await runToSuccess(app, h2, "r1");
    assert.deepEqual(await claimIds(app, 10, "r2"), [newcomer.id]);
  });

  test(`[${backend}] parking: cancel() of a parked invocation takes it off its key; the others are still woken in order`, async () => {
    const app = await makeApp();
    const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const holder = await task.call({ n: 0 });
    const [p1, p2, p3] = [
      await task.call({ n: 1 }),
      await task.call({ n: 2 }),
      await task.call({
        n: 3,
      }),
    ];
    assert.deepEqual(await claimIds(app, 10, "r1"), [holder.id]);
    assert.equal(await p2.cancel(), true);
    assert.deepEqual(await statusPath(p2), ["registered", "concurrency_controlled", "canceled"]);
    await runToSuccess(app, holder, "r1");
    assert.deepEqual(await claimIds(app, 10, "r1"), [p1.id]);
    await runToSuccess(app, p1, "r1");
    assert.deepEqual(await claimIds(app, 10, "r1"), [p3.id]);
    await runToSuccess(app, p3, "r1");
    assert.deepEqual(await claimIds(app, 10, "r1"), []);
  });

  test(`[${backend}] parking: two tasks in one group, limit 1 — the second task's invocation parks on the group's key and is woken when the first task's holder is done`, async () => {
    const app = await makeApp();
    const group = { name: "deploys", limit: 1 };
    const deploy = app.task("deploy", ({ n }: { n: number }) => n, { concurrencyGroups: [group] });
    const rollback = app.task("rollback", ({ n }: { n: number }) => n, {
      concurrencyGroups: [group],
    });
    const holder = await deploy.call({ n: 1 });
    const waiting = await rollback.call({ n: 2 });
    assert.deepEqual(await claimIds(app, 10, "r1"), [holder.id]);
    assert.equal(await waiting.status(), "concurrency_controlled");
    assert.deepEqual(await claimIds(app, 10, "r2"), []);
    await runToSuccess(app, holder, "r1");
    assert.deepEqual(await claimIds(app, 10, "r2"), [waiting.id]);
    await runToSuccess(app, waiting, "r2");
    assert.deepEqual(await statusPath(waiting), PARKED_ONCE_THEN_RUN);
  });

  test(`[${backend}] parking: the runner holding the key dies; recovery frees its slot and the parked invocation is woken and runs on a live runner`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 1 } });
    const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const holder = await task.call({ n: 0 });
    const parked = await task.call({ n: 1 });
    assert.deepEqual(await claimIds(app, 10, "dead"), [holder.id]);
    await app.orchestrator.setInvocationRun(undefined, holder, { runnerId: "dead" });
    await app.orchestrator.store.heartbeat("dead", clock.now());
    assert.equal(await parked.status(), "concurrency_controlled");
    clock.advance(2_000);
    await app.orchestrator.store.heartbeat("live", clock.now());
    const recovered = await app.orchestrator.recoverInvocations({ runnerId: "live" });
    assert.deepEqual(recovered.map(({ id }) => id), [holder.id]);
    // The parked one first became available before the recovered holder was re-queued.
    assert.deepEqual(await claimIds(app, 10, "live"), [parked.id]);
    await runToSuccess(app, parked, "live");
    assert.deepEqual(await statusPath(parked), PARKED_ONCE_THEN_RUN);
    assert.deepEqual(await claimIds(app, 10, "live"), [holder.id]);
  });

  test(`[${backend}] parking: a paused invocation's reservation refuses newcomers; when it is killed instead of resumed, the parked are woken without any release`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const [p, q1, q2] = [
      await task.call({ n: 0 }),
      await task.call({ n: 1 }),
      await task.call({
        n: 2,
      }),
    ];
    assert.deepEqual(await claimIds(app, 1, "r1"), [p.id]);
    await o.setInvocationRun(undefined, p, { runnerId: "r1" });
    await o.setInvocationStatus(p, "paused", { runnerId: "r1" }); // gives its slot back
    assert.deepEqual(await claimIds(app, 1, "r2"), [q1.id]);
    await o.setInvocationRun(undefined, q1, { runnerId: "r2" });
    assert.equal(await o.setInvocationStatus(p, "resumed", { runnerId: "r1" }), false); // reserves
    await o.setInvocationResult(q1, 1, { runnerId: "r2" });
    assert.deepEqual(await claimIds(app, 1, "r2"), []); // the free slot is p's
    assert.equal(await q2.status(), "concurrency_controlled");
    await o.setInvocationStatus(p, "killed", { runnerId: "r1" }); // the reservation goes
    assert.deepEqual(await claimIds(app, 1, "r2"), [q2.id]);
  });

  test(`[${backend}] parking: a pick-up that parked some and has slots left looks again at once — an unrelated call behind 120 refused invocations runs with no poll (the clock never moves)`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const holder = await task.call({ n: -1 });
    assert.deepEqual(await claimIds(app, 1, "r0"), [holder.id]);
    await app.orchestrator.setInvocationRun(undefined, holder, { runnerId: "r0" });
    await task.parallelize(Array.from({ length: 120 }, (_, n) => ({ n })));
    const unrelated = await app.task("other", () => "done").call();
    await using runner = app.runner({ concurrency: 2, pollMs: 3_600_000, graceMs: 0 });
    runner.start();
    assert.equal(await within(unrelated.result(), DEADLINE_MS, "the unrelated call"), "done");
    const parked = (await app.orchestrator.store.counts()).get("t")?.get("concurrency_controlled");
    assert.equal(parked, 120);
  });

  test(`[${backend}] parking: two woken invocations that each need the other's key (groups A and B, limit 1) do not park on each other round after round: the next pick-up runs one, then the other`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const [a, b] = [{ name: "A", limit: 1 }, { name: "B", limit: 1 }];
    const both = { runningConcurrency: "task", concurrencyGroups: [a, b] } as const;
    const x = app.task("x", () => "x", both);
    const y = app.task("y", () => "y", both);
    const holdA = app.task("holdA", () => 0, { concurrencyGroups: [a] });
    const holdB = app.task("holdB", () => 0, { concurrencyGroups: [b] });
    const runClaimed = async () => {
      const claimed = await o.getInvocationsToRun(10, { runnerId: "r1" });
      for (const invocation of claimed) {
        await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
      }
      return claimed.map(({ id }) => id);
    };
    const heldB = await holdB.call();
    await runClaimed();
    const waitingY = await y.call();
    await runClaimed(); // y parks on B
    const heldA = await holdA.call();
    await runClaimed();
    const waitingX = await x.call();
    await runClaimed(); // x parks on A
    assert.equal(await waitingX.status(), "concurrency_controlled");
    assert.equal(await waitingY.status(), "concurrency_controlled");
    await o.setInvocationResult(heldA, 0, { runnerId: "r1" });
    await o.setInvocationResult(heldB, 0, { runnerId: "r1" });
    const first = await runClaimed();
    assert.equal(first.length, 1, "one of the two runs at once");
    const [done, other] = first[0] === waitingX.id ? [waitingX, waitingY] : [waitingY, waitingX];
    await o.setInvocationResult(done, "done", { runnerId: "r1" });
    assert.deepEqual(await runClaimed(), [other.id]);
    for (const invocation of [waitingX, waitingY]) {
      assert.ok((await invocation.history()).length <= 8, "no round after round of parking");
    }
  });
}
