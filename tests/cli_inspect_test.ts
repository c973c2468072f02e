/**
 * The views the command line and the monitor share (cli/_inspect.ts), on an app in memory: the
 * tree's size bound, the runners with what they hold, the unserved tasks.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { invocationTree, runnersView, unservedTasks } from "../cli/_inspect.ts";
import { Nenc } from "../core/app.ts";
import { FakeClock } from "./_fake_clock.ts";

test("invocationTree() reads an invocation's descendants breadth first up to its bound, and marks the invocations whose descendants it did not all read", async () => {
  const app = new Nenc({ clock: new FakeClock() });
  const leaf = app.task("leaf", ({ i }: { i: number }) => i);
  const root = await app.task("root", () => 0).call();
  // Children registered as called by root (their parent id), as a running root would call them.
  const registered = await app.orchestrator.store.registerMany([0, 1, 2].map((i) => ({
    id: `01CHILD${i}`,
    taskId: leaf.id,
    callId: `leaf#${i}`,
    args: { i: String(i) },
    parentId: root.id,
    registrationKey: null,
    runningKey: null,
    nowMs: 0,
    runnerId: null,
  })));
  assert.equal(registered.length, 3);
  const whole = await invocationTree(app, root.id);
  assert.deepEqual(whole?.children.map((node) => node.record.id), [
    "01CHILD0",
    "01CHILD1",
    "01CHILD2",
  ]);
  assert.equal(whole?.truncated, false);
  assert.ok(whole?.children.every((node) => !node.truncated && node.children.length === 0));
  const cut = await invocationTree(app, root.id, 3);
  assert.deepEqual(cut?.children.map((node) => node.record.id), ["01CHILD0", "01CHILD1"]);
  assert.equal(cut?.truncated, true);
  assert.ok(cut?.children.every((node) => node.truncated), "not read: the bound was reached");
  assert.equal(await invocationTree(app, "01NOSUCH"), undefined);
});

test("runnersView() and unservedTasks(): runners newest heartbeat first with liveness, tasks and held invocations; queued tasks no live runner defines, none while a live runner does not say", async () => {
  const clock = new FakeClock();
  const app = new Nenc({ clock });
  const store = app.orchestrator.store;
  const a = app.task("a", () => 1);
  const b = app.task("b", () => 2);
  const c = app.task("c", () => 3);
  const held = await a.call();
  await b.call();
  await c.call();
  await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
  const nowMs = clock.now();
  await store.heartbeat("r1", nowMs - 1_000, ["a", "c"]);
  await store.heartbeat("r2", nowMs - 60_000, ["b"]);
  assert.deepEqual(await runnersView(app, nowMs), [
    {
      runnerId: "r1",
      lastSeenMs: nowMs - 1_000,
      alive: true,
      taskIds: ["a", "c"],
      held: [held.id],
    },
    { runnerId: "r2", lastSeenMs: nowMs - 60_000, alive: false, taskIds: ["b"], held: [] },
  ]);
  // b is queued, and only a dead runner defines it; a is claimed (pending), c is queued and served.
  assert.deepEqual(await unservedTasks(app, nowMs), ["b"]);
  await store.heartbeat("r3", nowMs);
  assert.deepEqual(await unservedTasks(app, nowMs), [], "r3 may define b");
});
