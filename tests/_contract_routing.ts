import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import { refusePickUps } from "./_long_history.ts";
import { claimOne, runToSuccess, statusPath } from "./_pickups.ts";
import type { Nenc } from "../core/app.ts";
import {
  BatchProcessingError,
  ConcurrencyControlledError,
  InvocationConcurrencyWithDifferentArgumentsError,
  InvocationStatusOwnershipError,
  InvocationStatusTransitionError,
  RetryError,
} from "../core/errors.ts";
import { runInExecution } from "../core/context.ts";
import { type Invocation, ReusedInvocation } from "../core/invocation.ts";
import { type InvocationStatus, isValidHistory } from "../core/status.ts";
import type { Call, Task } from "../core/task.ts";

const HOUR_MS = 3_600_000;
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;

/** Every item of an async iterable, in order (`Array.fromAsync`, which Node 20 lacks). */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** The invocations of `task` matching `filter`, through the public query. */
function existing<Args, Result>(
  app: Nenc,
  task: Task<Args, Result>,
  filter: { keyArguments?: Partial<Args>; statuses?: readonly InvocationStatus[] } = {},
): Promise<Invocation<Result>[]> {
  return collect(app.orchestrator.getExistingInvocations(task, filter));
}

async function countOf<Args, Result>(app: Nenc, task: Task<Args, Result>): Promise<number> {
  return (await existing(app, task)).length;
}

function ids(invocations: readonly { id: string }[]): string[] {
  return invocations.map(({ id }) => id);
}

/** The pick-up, by hand. */
function claim(app: Nenc, max: number, runnerId: string): Promise<Invocation[]> {
  return app.orchestrator.getInvocationsToRun(max, { runnerId });
}

/** Calls of `task` for `routeCalls()`. */
function calls<Args, Result>(
  task: Task<Args, Result>,
  argsList: readonly Args[],
): Call<Args, Result>[] {
  return argsList.map((args) => ({ task, args }));
}

/**
 * A parent and its child run to SUCCESS by hand (both finish now), and a sibling the parent also
 * called that stays REGISTERED.
 */
async function finishedFamily(
  app: Nenc,
): Promise<{ parent: Invocation; child: Invocation; sibling: Invocation }> {
  const o = app.orchestrator;
  const parentTask = app.task("parent", () => 0);
  const childTask = app.task("child", ({ n }: { n: number }) => n);
  const parent = await parentTask.call();
  await claimOne(app, "r1", parent);
  await o.setInvocationRun(undefined, parent, { runnerId: "r1" });
  const inParent = {
    invocationId: parent.id,
    runnerId: "r1",
    signal: new AbortController().signal,
    waitFor: () => Promise.resolve(),
  };
  const child = await runInExecution(inParent, () => childTask.call({ n: 1 }));
  const sibling = await runInExecution(inParent, () => childTask.call({ n: 2 }));
  await claimOne(app, "r1", child);
  await runToSuccess(app, child, "r1");
  await o.setInvocationResult(parent, 0, { runnerId: "r1" });
  return { parent, child, sibling };
}

/** What every read of the store shows of a {@linkcode finishedFamily}. */
async function familyReads(
  app: Nenc,
  { parent, child }: { parent: Invocation; child: Invocation },
): Promise<Record<string, unknown>> {
  const o = app.orchestrator;
  const counts = await o.store.counts();
  return {
    get: [(await o.getInvocation(parent.id))?.id, (await o.store.get(child.id))?.id],
    getMany: ids(await o.store.getMany([parent.id, child.id])),
    find: ids(await collect(o.store.find({ taskId: "child" }))),
    children: ids(await o.store.children(parent.id)),
    counts: Object.fromEntries(
      [...counts].map(([taskId, perStatus]) => [taskId, Object.fromEntries(perStatus)]),
    ),
    history: [(await o.store.history(parent.id)).length, (await o.store.history(child.id)).length],
  };
}

/** {@linkcode familyReads} while the finished parent and child are readable. */
function familyVisible(
  { parent, child, sibling }: { parent: Invocation; child: Invocation; sibling: Invocation },
): Record<string, unknown> {
  return {
    get: [parent.id, child.id],
    getMany: [parent.id, child.id],
    find: [child.id, sibling.id],
    children: [child.id, sibling.id],
    counts: { parent: { success: 1 }, child: { success: 1, registered: 1 } },
    history: [4, 4],
  };
}

/** {@linkcode familyReads} once the finished parent and child are gone: only the sibling is left. */
function familyGone({ sibling }: { sibling: Invocation }): Record<string, unknown> {
  return {
    get: [undefined, undefined],
    getMany: [],
    find: [sibling.id],
    children: [sibling.id],
    counts: { child: { registered: 1 } },
    history: [0, 0],
  };
}

/** The warnings `fn` writes with `console.warn`. */
export async function captureWarnings(fn: () => Promise<void>): Promise<unknown[][]> {
  const original = console.warn;
  const warnings: unknown[][] = [];
  console.warn = (...args: unknown[]) => void warnings.push(args);
  try {
    await fn();
  } finally {
    console.warn = original;
  }
  return warnings;
}

/** Routing, registration concurrency, queries and the status machine, on one backend. */
export function routingContract(backend: string, makeApp: AppFactory): void {
  // --- default routing ---------------------------------------------------------------------------

  test(`[${backend}] routeCall() registers a new invocation: REGISTERED, one history entry (registered, runnerId null, clock timestamp, seq 1), parentId null`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const invocation = await add.call({ x: 1, y: 2 });
    assert.equal(invocation instanceof ReusedInvocation, false);
    assert.match(invocation.id, ULID);
    assert.equal(invocation.taskId, "add");
    assert.deepEqual(invocation.args, { x: 1, y: 2 });
    assert.equal(invocation.parentId, null);
    assert.equal(await invocation.status(), "registered");
    assert.equal(await invocation.retries(), 0);
    assert.deepEqual(await invocation.history(), [
      { status: "registered", runnerId: null, timestampMs: clock.now(), seq: 1 },
    ]);
  });

  test(`[${backend}] getInvocation() returns a registered invocation by id, and undefined for an unknown id`, async () => {
    const app = await makeApp();
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const invocation = await add.call({ x: 1, y: 2 });
    const found = await app.orchestrator.getInvocation(invocation.id);
    assert.ok(found !== undefined);
    assert.equal(found.id, invocation.id);
    assert.equal(found.taskId, "add");
    assert.equal(found.callId, invocation.callId);
    assert.deepEqual(found.args, { x: 1, y: 2 });
    assert.equal(found.parentId, null);
    assert.equal(await found.status(), "registered");
    assert.equal(await app.orchestrator.getInvocation("01ARZ3NDEKTSV4RRFFQ69G5FAV"), undefined);
    assert.equal(await app.orchestrator.getInvocation("no-such-invocation"), undefined);
  });

  test(`[${backend}] invocation ids sort by creation order, and equal arguments in any key order give equal call ids`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const first = await add.call({ x: 1, y: 2 });
    const second = await add.call({ y: 2, x: 1 });
    clock.advance(1);
    const third = await add.call({ x: 2, y: 1 });
    assert.ok(first.id < second.id && second.id < third.id, "ids sort by creation");
    assert.notEqual(first.id, second.id);
    assert.equal(first.callId, second.callId);
    assert.notEqual(first.callId, third.callId);
  });

  test(`[${backend}] a call made inside a running task records the task's invocation as parentId and its runner in the registration entry`, async () => {
    const app = await makeApp();
    const child = app.task("child", () => "child");
    const parent = app.task("parent", async () => {
      const invocation = await child.call();
      return { id: invocation.id, parentId: invocation.parentId };
    });
    await using runner = app.runner({ concurrency: 1, runnerId: "runner-a" });
    runner.start();
    const invocation = await parent.call();
    const seen = await within(invocation.result(), DEADLINE_MS, "the parent's result");
    assert.equal(seen.parentId, invocation.id);
    const stored = await app.orchestrator.getInvocation(seen.id);
    assert.equal(stored?.parentId, invocation.id);
    const [registration] = await stored!.history();
    assert.equal(registration?.status, "registered");
    assert.equal(registration?.runnerId, "runner-a");
  });

  test(`[${backend}] the trace context of a call is stored with its invocation, single or in a batch, and kept through its claim and every status change to SUCCESS`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const caller = await app.task("caller", () => "caller").call();
    await claimOne(app, "r0", caller);
    await o.setInvocationRun(undefined, caller, { runnerId: "r0" });
    const single = app.task("single", () => "single");
    const batched = app.task("batched", ({ n }: { n: number }) => n);
    const bare = app.task("bare", () => "bare");
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const inCaller = {
      invocationId: caller.id,
      runnerId: "r0",
      trace: traceparent,
      signal: new AbortController().signal,
      waitFor: () => Promise.resolve(),
    };
    const [one, [first, second]] = await runInExecution(
      inCaller,
      () => Promise.all([single.call(), o.routeCalls(calls(batched, [{ n: 1 }, { n: 2 }]))]),
    );
    const without = await bare.call();
    const invocations = [one, first!, second!, without];
    const traces = async (): Promise<(string | undefined)[]> =>
      (await o.store.getMany(ids(invocations))).map(({ trace }) => trace);
    const expected = [traceparent, traceparent, traceparent, undefined];
    assert.deepEqual(await traces(), expected);
    const started = await o.startInvocations(10, { runnerId: "r1" });
    const claimed = new Map(started.map(({ invocation, trace }) => [invocation.id, trace]));
    assert.deepEqual(invocations.map(({ id }) => claimed.get(id)), expected);
    for (const { invocation, running } of started) {
      if (!running) await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
      await o.setInvocationResult(invocation, null, { runnerId: "r1" });
    }
    for (const invocation of invocations) assert.equal(await invocation.status(), "success");
    assert.deepEqual(await traces(), expected);
  });

  // --- registration concurrency ------------------------------------------------------------------

  test(`[${backend}] registrationConcurrency "disabled" (default): two equal calls create two invocations`, async () => {
    const app = await makeApp();
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const first = await add.call({ x: 1, y: 2 });
    const second = await add.call({ x: 1, y: 2 });
    assert.notEqual(first.id, second.id);
    assert.equal(second instanceof ReusedInvocation, false);
    assert.equal(await countOf(app, add), 2);
  });

  test(`[${backend}] registrationConcurrency "task": a call reuses any REGISTERED invocation of the task (diffArgs = new args when different, undefined when equal), without a new history entry`, async () => {
    const app = await makeApp();
    const sync = app.task("sync", ({ id }: { id: number }) => id, {
      registrationConcurrency: "task",
    });
    const first = await sync.call({ id: 1 });
    assert.equal(first instanceof ReusedInvocation, false);
    const different = await sync.call({ id: 2 });
    assert.ok(different instanceof ReusedInvocation);
    assert.equal(different.id, first.id);
    assert.deepEqual(different.diffArgs, { id: 2 });
    assert.deepEqual(different.args, { id: 1 }, "the reused invocation keeps its own arguments");
    const equal = await sync.call({ id: 1 });
    assert.ok(equal instanceof ReusedInvocation);
    assert.equal(equal.id, first.id);
    assert.equal(equal.diffArgs, undefined);
    assert.equal(await countOf(app, sync), 1);
    assert.deepEqual(await statusPath(first), ["registered"]);
  });

  test(`[${backend}] registrationConcurrency "arguments": equal arguments reuse the invocation whatever their key order; different arguments create a new one`, async () => {
    const app = await makeApp();
    const job = app.task(
      "job",
      ({ a, b }: { a: number; b?: { x: number; y: number } | undefined }) => a + (b?.x ?? 0),
      { registrationConcurrency: "arguments" },
    );
    const first = await job.call({ a: 1, b: { x: 1, y: 2 } });
    const reordered = await job.call({ b: { y: 2, x: 1 }, a: 1 });
    assert.ok(reordered instanceof ReusedInvocation);
    assert.equal(reordered.id, first.id);
    assert.equal(reordered.diffArgs, undefined);
    const other = await job.call({ a: 2, b: { x: 1, y: 2 } });
    assert.equal(other instanceof ReusedInvocation, false);
    assert.notEqual(other.id, first.id);
    // An argument whose value is undefined is no argument at all.
    const bare = await job.call({ a: 3 });
    const withUndefined = await job.call({ a: 3, b: undefined });
    assert.equal(withUndefined.id, bare.id);
    assert.equal(await countOf(app, job), 3);
  });

  test(`[${backend}] registrationConcurrency "keys": equal key arguments reuse the invocation with diffArgs; a different key creates a new one`, async () => {
    const app = await makeApp();
    const notify = app.task(
      "notify",
      ({ user, body }: { user: { org: string; name: string }; body: string }) =>
        `${user.name}: ${body}`,
      { registrationConcurrency: "keys", keyArguments: ["user"] },
    );
    const first = await notify.call({ user: { org: "o", name: "ada" }, body: "hi" });
    const sameKey = await notify.call({ user: { name: "ada", org: "o" }, body: "hello" });
    assert.ok(sameKey instanceof ReusedInvocation);
    assert.equal(sameKey.id, first.id);
    assert.deepEqual(sameKey.diffArgs, { user: { name: "ada", org: "o" }, body: "hello" });
    const identical = await notify.call({ body: "hi", user: { name: "ada", org: "o" } });
    assert.ok(identical instanceof ReusedInvocation);
    assert.equal(identical.id, first.id);
    assert.equal(identical.diffArgs, undefined, "equal arguments in another key order");
    const otherKey = await notify.call({ user: { org: "o", name: "bob" }, body: "hi" });
    assert.equal(otherKey instanceof ReusedInvocation, false);
    assert.notEqual(otherKey.id, first.id);
    assert.equal(await countOf(app, notify), 2);
  });

  test(`[${backend}] onDiffNonKeyArgsRaise: reuse with different non-key arguments throws InvocationConcurrencyWithDifferentArgumentsError with the serialized diff, and routes nothing`, async () => {
    const app = await makeApp();
    const notify = app.task(
      "notify",
      ({ user, body }: { user: string; body: string; urgent?: boolean }) => `${user}:${body}`,
      { registrationConcurrency: "keys", keyArguments: ["user"], onDiffNonKeyArgsRaise: true },
    );
    const first = await notify.call({ user: "ada", body: "hi" });
    await assert.rejects(
      notify.call({ user: "ada", body: "hello", urgent: true }),
      (error: unknown) => {
        assert.ok(error instanceof InvocationConcurrencyWithDifferentArgumentsError);
        assert.equal(error.name, "InvocationConcurrencyWithDifferentArgumentsError");
        assert.equal(error.taskId, "notify");
        assert.equal(error.existingInvocationId, first.id);
        assert.deepEqual({ ...error.diff }, {
          body: { existing: '"hi"', requested: '"hello"' },
          urgent: { existing: undefined, requested: "true" },
        });
        return true;
      },
    );
    assert.equal(await countOf(app, notify), 1);
    // Identical arguments are still reused, without an error.
    const identical = await notify.call({ user: "ada", body: "hi" });
    assert.ok(identical instanceof ReusedInvocation);
    assert.equal(identical.id, first.id);
    assert.equal(identical.diffArgs, undefined);
    // A different key is a new invocation, not a conflict.
    const bob = await notify.call({ user: "bob", body: "hello" });
    assert.notEqual(bob.id, first.id);
    assert.equal(await countOf(app, notify), 2);
  });

  test(`[${backend}] onDiffNonKeyArgsRaise with registrationConcurrency "task" throws for different arguments`, async () => {
    const app = await makeApp();
    const sync = app.task("sync", ({ id }: { id: number }) => id, {
      registrationConcurrency: "task",
      onDiffNonKeyArgsRaise: true,
    });
    const first = await sync.call({ id: 1 });
    await assert.rejects(sync.call({ id: 2 }), (error: unknown) => {
      assert.ok(error instanceof InvocationConcurrencyWithDifferentArgumentsError);
      assert.equal(error.existingInvocationId, first.id);
      assert.deepEqual({ ...error.diff }, { id: { existing: "1", requested: "2" } });
      return true;
    });
    assert.equal(await countOf(app, sync), 1);
  });

  test(`[${backend}] registration reuse holds until the invocation first runs: a PENDING one is reused; once RUNNING, an equal call creates a new invocation, which later calls reuse`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    const first = await job.call({ n: 1 });
    await claimOne(app, "r1", first);
    assert.equal(await first.status(), "pending");
    const whilePending = await job.call({ n: 1 });
    assert.ok(whilePending instanceof ReusedInvocation);
    assert.equal(whilePending.id, first.id);
    await o.setInvocationRun(undefined, first, { runnerId: "r1" });
    const second = await job.call({ n: 1 });
    assert.equal(second instanceof ReusedInvocation, false);
    assert.notEqual(second.id, first.id);
    const third = await job.call({ n: 1 });
    assert.ok(third instanceof ReusedInvocation);
    assert.equal(third.id, second.id);
    await o.setInvocationResult(first, 1, { runnerId: "r1" });
    assert.equal(await countOf(app, job), 2);
  });

  test(`[${backend}] registration reuse: a never-run invocation parked by running concurrency, woken, or re-routed by recovery is reused by an equal call`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
      runningConcurrency: "task",
    });
    const holder = await job.call({ n: 0 });
    const blocked = await job.call({ n: 1 });
    assert.deepEqual(ids(await claim(app, 10, "r1")), [holder.id]);
    assert.equal(await blocked.status(), "concurrency_controlled");
    const again = await job.call({ n: 1 });
    assert.ok(again instanceof ReusedInvocation);
    assert.equal(again.id, blocked.id);
    // The holder done, it is woken (at once in memory, by the next pick-up on KV): still reused.
    await runToSuccess(app, holder, "r1");
    assert.equal((await job.call({ n: 1 })).id, blocked.id);
    // Recovery re-routes a claim that never ran (pending → pending_recovery → rerouted): still
    // reused.
    await claimOne(app, "dead", blocked);
    clock.advance(5_001);
    assert.deepEqual(ids(await o.recoverInvocations({ runnerId: "live" })), [blocked.id]);
    assert.deepEqual(await statusPath(blocked), [
      "registered",
      "concurrency_controlled",
      "rerouted",
      "pending",
      "pending_recovery",
      "rerouted",
    ]);
    const afterRecovery = await job.call({ n: 1 });
    assert.ok(afterRecovery instanceof ReusedInvocation);
    assert.equal(afterRecovery.id, blocked.id);
    // Once it runs, the key is free: the next equal call registers a new invocation.
    await claimOne(app, "live", blocked);
    await o.setInvocationRun(undefined, blocked, { runnerId: "live" });
    const fresh = await job.call({ n: 1 });
    assert.equal(fresh instanceof ReusedInvocation, false);
    assert.notEqual(fresh.id, blocked.id);
  });

  test(`[${backend}] 10 identical calls with registrationConcurrency "arguments" and runningConcurrency "task", made while the running key is held and pick-ups keep coming, give 1 invocation (parked once: 2 history entries) and 1 run`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const runs: number[] = [];
    const job = app.task("job", ({ n }: { n: number }) => void runs.push(n), {
      registrationConcurrency: "arguments",
      runningConcurrency: "task",
    });
    const holder = await job.call({ n: 0 });
    await claimOne(app, "r1", holder);
    await o.setInvocationRun(undefined, holder, { runnerId: "r1" });
    const calls: Invocation[] = [];
    for (let i = 0; i < 10; i++) {
      calls.push(await job.call({ n: 1 }));
      assert.deepEqual(await claim(app, 10, "r2"), []); // parks the one waiting, once
    }
    assert.equal(new Set(ids(calls)).size, 1);
    assert.equal(calls.filter((call) => !(call instanceof ReusedInvocation)).length, 1);
    assert.deepEqual(await statusPath(calls[0]!), ["registered", "concurrency_controlled"]);
    assert.equal(await countOf(app, job), 2);
    await o.setInvocationResult(holder, null, { runnerId: "r1" });
    await within(app.runner().drain(), DEADLINE_MS, "the drain");
    assert.equal(await calls[0]!.status(), "success");
    assert.deepEqual(runs, [1]);
    assert.equal(await countOf(app, job), 2);
  });

  test(`[${backend}] 200 concurrent identical calls with registrationConcurrency "arguments", from two apps on one backend, produce exactly one invocation`, async () => {
    const clock = new FakeClock();
    const appA = await makeApp({ clock });
    const appB = await makeApp({ clock }, appA);
    const define = (app: Nenc) =>
      app.task("job", ({ n, tags }: { n: number; tags: string[] }) => n + tags.length, {
        registrationConcurrency: "arguments",
      });
    const jobA = define(appA);
    const jobB = define(appB);
    const invocations = await Promise.all(
      Array.from(
        { length: 200 },
        (_, i) => (i % 2 === 0 ? jobA : jobB).call({ n: 7, tags: ["a", "b"] }),
      ),
    );
    assert.equal(new Set(ids(invocations)).size, 1);
    assert.equal(invocations.filter((inv) => !(inv instanceof ReusedInvocation)).length, 1);
    assert.equal(await countOf(appA, jobA), 1);
    assert.equal(await countOf(appB, jobB), 1);
    assert.deepEqual(await statusPath(invocations[0]!), ["registered"]);
  });

  test(`[${backend}] 200 concurrent calls with registrationConcurrency "keys" and one key produce exactly one invocation; the others are reused with their own diffArgs`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ key, n }: { key: string; n: number }) => `${key}${n}`, {
      registrationConcurrency: "keys",
      keyArguments: ["key"],
    });
    const invocations = await Promise.all(
      Array.from({ length: 200 }, (_, n) => job.call({ key: "k", n })),
    );
    assert.equal(new Set(ids(invocations)).size, 1);
    const created = invocations.filter((inv) => !(inv instanceof ReusedInvocation));
    assert.equal(created.length, 1);
    const createdN = created[0]!.args.n;
    for (const [n, invocation] of invocations.entries()) {
      if (invocation instanceof ReusedInvocation) {
        if (n === createdN) assert.equal(invocation.diffArgs, undefined);
        else assert.deepEqual(invocation.diffArgs, { key: "k", n });
      }
    }
    assert.equal(await countOf(app, job), 1);
  });

  // --- getExistingInvocations --------------------------------------------------------------------

  test(`[${backend}] getExistingInvocations() ANDs keyArguments, compared as serialized JSON (1 ≠ "1", object key order irrelevant)`, async () => {
    const app = await makeApp();
    const job = app.task(
      "job",
      (_: { a: number | string; b: string; c?: { x: number; y: number } }) => 0,
    );
    const a1x = await job.call({ a: 1, b: "x", c: { x: 1, y: 2 } });
    const a1y = await job.call({ a: 1, b: "y" });
    const aString1x = await job.call({ a: "1", b: "x" });
    const a2x = await job.call({ a: 2, b: "x" });
    const sorted = (invocations: readonly Invocation<unknown>[]) => ids(invocations).sort();
    assert.deepEqual(
      sorted(await existing(app, job, { keyArguments: { a: 1 } })),
      [a1x.id, a1y.id].sort(),
    );
    assert.deepEqual(ids(await existing(app, job, { keyArguments: { a: "1" } })), [aString1x.id]);
    assert.deepEqual(
      sorted(await existing(app, job, { keyArguments: { b: "x" } })),
      [a1x.id, aString1x.id, a2x.id].sort(),
    );
    assert.deepEqual(ids(await existing(app, job, { keyArguments: { a: 1, b: "x" } })), [
      a1x.id,
    ]);
    assert.deepEqual(ids(await existing(app, job, { keyArguments: { c: { y: 2, x: 1 } } })), [
      a1x.id,
    ]);
    assert.deepEqual(await existing(app, job, { keyArguments: { a: 3 } }), []);
    assert.deepEqual(await existing(app, job, { keyArguments: { a: 2, b: "y" } }), []);
  });

  test(`[${backend}] getExistingInvocations() ORs statuses, and combines statuses with keyArguments by AND`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number; group: string }) => n);
    const registered = await job.call({ n: 1, group: "g" });
    const pending = await job.call({ n: 2, group: "g" });
    const done = await job.call({ n: 3, group: "g" });
    const otherGroup = await job.call({ n: 4, group: "h" });
    // Claim three in queue order, leave otherGroup REGISTERED, then drive them.
    assert.deepEqual(ids(await claim(app, 3, "r1")), [registered.id, pending.id, done.id]);
    await app.orchestrator.rerouteInvocations([registered], { runnerId: "r1" });
    await runToSuccess(app, done, "r1", 3);
    const sorted = (invocations: readonly Invocation<unknown>[]) => ids(invocations).sort();
    assert.deepEqual(ids(await existing(app, job, { statuses: ["pending"] })), [pending.id]);
    assert.deepEqual(
      sorted(await existing(app, job, { statuses: ["pending", "success", "registered"] })),
      [pending.id, done.id, otherGroup.id].sort(),
    );
    assert.deepEqual(ids(await existing(app, job, { statuses: ["rerouted"] })), [registered.id]);
    assert.deepEqual(await existing(app, job, { statuses: ["failed", "running"] }), []);
    assert.deepEqual(
      sorted(
        await existing(app, job, {
          keyArguments: { group: "g" },
          statuses: ["pending", "success"],
        }),
      ),
      [pending.id, done.id].sort(),
    );
    assert.deepEqual(
      ids(
        await existing(app, job, {
          keyArguments: { group: "g" },
          statuses: ["registered", "rerouted"],
        }),
      ),
      [registered.id],
    );
    assert.deepEqual(
      await existing(app, job, { keyArguments: { group: "h" }, statuses: ["success"] }),
      [],
    );
  });

  test(`[${backend}] getExistingInvocations() without a filter yields every invocation of the task, and none of another task`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number }) => n);
    const other = app.task("other", ({ n }: { n: number }) => n);
    const mine = [await job.call({ n: 1 }), await job.call({ n: 2 }), await job.call({ n: 1 })];
    await other.call({ n: 1 });
    await claim(app, 1, "r1");
    assert.deepEqual(ids(await existing(app, job)).sort(), ids(mine).sort());
    assert.equal(await countOf(app, other), 1);
    const unused = app.task("unused", () => 0);
    assert.deepEqual(await existing(app, unused), []);
  });

  // --- routeCalls and parallelize -----------------------------------------------------------------

  test(`[${backend}] routeCalls() registers a batch: each invocation REGISTERED with one history entry, queued in call order`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const mul = app.task("mul", ({ x, y }: { x: number; y: number }) => x * y);
    const routed = await app.orchestrator.routeCalls([
      ...calls(add, [{ x: 1, y: 2 }, { x: 1, y: 2 }]),
      ...calls(mul, [{ x: 3, y: 4 }]),
    ]);
    assert.equal(routed.length, 3);
    assert.equal(new Set(ids(routed)).size, 3, "a batch does not dedup");
    assert.deepEqual(routed.map((inv) => inv.taskId), ["add", "add", "mul"]);
    assert.deepEqual(routed.map((inv) => inv.args), [{ x: 1, y: 2 }, { x: 1, y: 2 }, {
      x: 3,
      y: 4,
    }]);
    for (const invocation of routed) {
      assert.equal(invocation.parentId, null);
      assert.deepEqual(await invocation.history(), [
        { status: "registered", runnerId: null, timestampMs: clock.now(), seq: 1 },
      ]);
    }
    assert.deepEqual(ids(await claim(app, 10, "r1")), ids(routed));
    assert.deepEqual(await app.orchestrator.routeCalls([]), []);
  });

  test(`[${backend}] routeCalls() throws BatchProcessingError for a task with registration concurrency and routes nothing of the batch`, async () => {
    const app = await makeApp();
    const plain = app.task("plain", ({ n }: { n: number }) => n);
    const deduped = app.task("deduped", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    await assert.rejects(
      app.orchestrator.routeCalls([
        ...calls(plain, [{ n: 1 }]),
        ...calls(deduped, [{ n: 1 }]),
      ]),
      (error: unknown) => {
        assert.ok(error instanceof BatchProcessingError);
        assert.match(error.message, /deduped/);
        return true;
      },
    );
    assert.equal(await countOf(app, plain), 0);
    assert.equal(await countOf(app, deduped), 0);
  });

  test(`[${backend}] parallelize() routes in batches of parallelBatchSize and merges commonArgs into every call`, async () => {
    const app = await makeApp();
    const scale = app.task("scale", ({ n, factor }: { n: number; factor: number }) => n * factor, {
      parallelBatchSize: 2,
    });
    const batches: number[] = [];
    const routeCalls = app.orchestrator.routeCalls.bind(app.orchestrator);
    app.orchestrator.routeCalls = (batch) => {
      batches.push(batch.length);
      return routeCalls(batch);
    };
    const group = await scale.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }], {
      commonArgs: { factor: 10 },
    });
    assert.deepEqual(batches, [2, 2, 1]);
    assert.equal(group.invocations.length, 5);
    assert.deepEqual(
      group.invocations.map((inv) => inv.args),
      [1, 2, 3, 4, 5].map((n) => ({
        n,
        factor: 10,
      })),
    );
    for (const invocation of group.invocations) {
      assert.equal(await invocation.status(), "registered");
    }
    assert.equal(await countOf(app, scale), 5);
    assert.deepEqual(ids(await claim(app, 10, "r1")), ids(group.invocations));
  });

  test(`[${backend}] parallelize() of a task with registration concurrency routes call by call (no BatchProcessingError) and dedups`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    const group = await job.parallelize([{ n: 1 }, { n: 2 }, { n: 1 }]);
    assert.equal(group.invocations.length, 3);
    assert.equal(group.invocations[2]!.id, group.invocations[0]!.id);
    assert.ok(group.invocations[2] instanceof ReusedInvocation);
    assert.notEqual(group.invocations[1]!.id, group.invocations[0]!.id);
    assert.equal(await countOf(app, job), 2);
  });

  // --- bad input -----------------------------------------------------------------------------------

  test(`[${backend}] app.task() rejects a duplicate task name at definition time and keeps the first task`, async () => {
    const app = await makeApp();
    const first = app.task("job", ({ n }: { n: number }) => n);
    assert.throws(() => app.task("job", ({ n }: { n: number }) => n * 2), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /job/);
      return true;
    });
    assert.equal(app.getTask("job"), first);
    assert.equal(app.tasks().length, 1);
  });

  test(`[${backend}] app.task() rejects an unknown option, a bad concurrency mode, "keys" without keyArguments and a task id containing "#", naming the task`, async () => {
    const app = await makeApp();
    const fn = ({ n }: { n: number }) => n;
    const rejects = (define: () => unknown, pattern: RegExp) =>
      assert.throws(define, (error: unknown) => {
        assert.ok(error instanceof TypeError, String(error));
        assert.match(error.message, pattern);
        return true;
      });
    rejects(
      () => app.task("a", fn, { registrationConcurency: "task" } as never),
      /a:.*registrationConcurency/,
    );
    rejects(
      () => app.task("b", fn, { registrationConcurrency: "always" } as never),
      /b:.*registrationConcurrency/,
    );
    rejects(
      () => app.task("c", fn, { runningConcurrency: "per-key" } as never),
      /c:.*runningConcurrency/,
    );
    rejects(() => app.task("d", fn, { registrationConcurrency: "keys" }), /d:.*keyArguments/);
    rejects(
      () => app.task("e", fn, { runningConcurrency: "keys", keyArguments: [] }),
      /e:.*keyArguments/,
    );
    rejects(() => app.task("f#1", fn), /f#1.*"#"/);
    rejects(() => app.task("", fn), /task id/);
    assert.throws(() => app.task("g", fn, { maxRetries: -1 }), RangeError);
    assert.throws(() => app.task("h", fn, { parallelBatchSize: 0 }), RangeError);
    // A refused definition leaves its name free.
    assert.equal(app.tasks().length, 0);
    assert.equal(app.task("a", fn).id, "a");
  });

  test(`[${backend}] keyArguments naming an argument the task lacks is a type error at definition`, async () => {
    const app = await makeApp();
    const define = () =>
      app.task("t", ({ a }: { a: number }) => a, {
        registrationConcurrency: "keys",
        // @ts-expect-error: "b" is not an argument of the task
        keyArguments: ["b"],
      });
    // The check is the type error above (deno check); at runtime the definition is refused or
    // accepted, but never half-made.
    let defined: Task<{ a: number }, number> | undefined;
    try {
      defined = define();
    } catch (error) {
      assert.ok(error instanceof TypeError);
    }
    assert.equal(app.getTask("t"), defined);
  });

  test(`[${backend}] new Nenc() rejects an unknown app option and unknown or bad orchestrator options`, async () => {
    await assert.rejects(async () => await makeApp({ bogus: true } as never), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /bogus/);
      return true;
    });
    await assert.rejects(
      async () => await makeApp({ orchestrator: { maxPendingSecs: 1 } as never }),
      (error: unknown) => {
        assert.ok(error instanceof TypeError);
        assert.match(error.message, /maxPendingSecs/);
        return true;
      },
    );
    await assert.rejects(
      async () => await makeApp({ orchestrator: { autoFinalInvocationPurgeHours: -1 } }),
      RangeError,
    );
    await assert.rejects(
      async () => await makeApp({ orchestrator: { blockingControl: "yes" as never } }),
      TypeError,
    );
  });

  test(`[${backend}] call() with an unserializable argument (function, Date, NaN, nested) rejects with a TypeError naming the task and the argument path, and routes nothing`, async () => {
    const app = await makeApp();
    const stamp = app.task("stamp", (_: Record<string, unknown>) => 0);
    const deduped = app.task("deduped", (_: Record<string, unknown>) => 0, {
      registrationConcurrency: "arguments",
    });
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ callback: () => 1 }, /args\.callback/],
      [{ when: new Date(0) }, /args\.when/],
      [{ n: NaN }, /args\.n\b/],
      [{ ok: 1, items: [1, Infinity] }, /args\.items\[1\]/],
      [{ deep: { inner: { at: new Map() } } }, /args\.deep\.inner\.at/],
      [{ big: 1n }, /args\.big/],
    ];
    for (const task of [stamp, deduped]) {
      for (const [args, path] of cases) {
        await assert.rejects(task.call(args), (error: unknown) => {
          assert.ok(error instanceof TypeError, String(error));
          assert.ok(error.message.includes(task.id), error.message);
          assert.match(error.message, path);
          return true;
        });
      }
    }
    assert.equal(await countOf(app, stamp), 0);
    assert.equal(await countOf(app, deduped), 0);
    assert.deepEqual(await claim(app, 10, "r1"), []);
  });

  test(`[${backend}] routeCalls() with one unserializable argument rejects with a TypeError and routes nothing of the batch`, async () => {
    const app = await makeApp();
    const stamp = app.task("stamp", (_: Record<string, unknown>) => 0);
    await assert.rejects(
      app.orchestrator.routeCalls(calls(stamp, [{ n: 1 }, { n: 2 }, { when: new Date(0) }])),
      (error: unknown) => {
        assert.ok(error instanceof TypeError);
        assert.match(error.message, /stamp/);
        assert.match(error.message, /args\.when/);
        return true;
      },
    );
    assert.equal(await countOf(app, stamp), 0);
  });

  test(`[${backend}] parallelize() with an unserializable argument in a later batch rejects and routes nothing`, async () => {
    const app = await makeApp();
    const stamp = app.task("stamp", (_: Record<string, unknown>) => 0, { parallelBatchSize: 2 });
    await assert.rejects(
      stamp.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }, { when: new Date(0) }]),
      (error: unknown) => {
        assert.ok(error instanceof TypeError);
        assert.match(error.message, /stamp/);
        assert.match(error.message, /args\.when/);
        return true;
      },
    );
    assert.equal(
      await countOf(app, stamp),
      0,
      "no invocation of a refused parallelize() is routed",
    );
  });

  // --- running concurrency -----------------------------------------------------------------------

  const sameKeyPairs = {
    task: [{ k: "a", v: 1 }, { k: "b", v: 2 }],
    arguments: [{ k: "a", v: 1 }, { k: "a", v: 1 }],
    keys: [{ k: "a", v: 1 }, { k: "a", v: 2 }],
  } as const;

  for (const mode of ["task", "arguments", "keys"] as const) {
    test(`[${backend}] runningConcurrency "${mode}": of two REGISTERED invocations with the same key, getInvocationsToRun(10) claims the older; the other is parked (registered → concurrency_controlled), and later pick-ups write nothing for it`, async () => {
      const app = await makeApp();
      const job = app.task("job", ({ v }: { k: string; v: number }) => v, {
        runningConcurrency: mode,
        keyArguments: ["k"],
      });
      const [firstArgs, secondArgs] = sameKeyPairs[mode];
      const first = await job.call(firstArgs);
      const second = await job.call(secondArgs);
      assert.equal(await app.orchestrator.isCandidateToRunByConcurrencyControl(second), true);
      const claimed = await claim(app, 10, "r1");
      assert.deepEqual(ids(claimed), [first.id]);
      assert.equal(await first.status(), "pending");
      assert.deepEqual(await statusPath(second), ["registered", "concurrency_controlled"]);
      assert.equal(await app.orchestrator.isCandidateToRunByConcurrencyControl(second), false);
      // While the slot is held, pick-ups leave it parked: no history entry, no write.
      const history = await second.history();
      assert.deepEqual(await claim(app, 10, "r2"), []);
      assert.deepEqual(await second.history(), history);
      assert.ok(isValidHistory(history));
    });

    test(`[${backend}] runningConcurrency "${mode}" with rerouteOnConcurrencyControl false: the blocked invocation becomes CONCURRENCY_CONTROLLED_FINAL and result() rejects with ConcurrencyControlledError`, async () => {
      const app = await makeApp();
      const job = app.task("job", ({ v }: { k: string; v: number }) => v, {
        runningConcurrency: mode,
        keyArguments: ["k"],
        rerouteOnConcurrencyControl: false,
      });
      const [firstArgs, secondArgs] = sameKeyPairs[mode];
      const first = await job.call(firstArgs);
      const second = await job.call(secondArgs);
      assert.deepEqual(ids(await claim(app, 10, "r1")), [first.id]);
      assert.equal(await second.status(), "concurrency_controlled_final");
      assert.deepEqual(await statusPath(second), ["registered", "concurrency_controlled_final"]);
      const refusal = within(second.result(), DEADLINE_MS, "the refusal");
      await assert.rejects(refusal, (error: unknown) => {
        assert.ok(error instanceof ConcurrencyControlledError);
        assert.equal(error.taskId, "job");
        assert.equal(error.invocationId, second.id);
        return true;
      });
      assert.deepEqual(await app.orchestrator.filterFinal([first, second]), [second]);
    });
  }

  test(`[${backend}] running concurrency: invocations with different keys both run`, async () => {
    const app = await makeApp();
    const byArgs = app.task("byArgs", ({ v }: { k: string; v: number }) => v, {
      runningConcurrency: "arguments",
    });
    const byKey = app.task("byKey", ({ v }: { k: string; v: number }) => v, {
      runningConcurrency: "keys",
      keyArguments: ["k"],
    });
    const byTaskA = app.task("byTaskA", ({ v }: { v: number }) => v, {
      runningConcurrency: "task",
    });
    const byTaskB = app.task("byTaskB", ({ v }: { v: number }) => v, {
      runningConcurrency: "task",
    });
    const all = [
      await byArgs.call({ k: "a", v: 1 }),
      await byArgs.call({ k: "a", v: 2 }),
      await byKey.call({ k: "a", v: 1 }),
      await byKey.call({ k: "b", v: 1 }),
      await byTaskA.call({ v: 1 }),
      await byTaskB.call({ v: 1 }),
    ];
    assert.deepEqual(ids(await claim(app, 10, "r1")), ids(all));
    for (const invocation of all) {
      assert.equal(await invocation.status(), "pending");
      assert.equal(await app.orchestrator.isAuthorizedToRunByConcurrencyControl(invocation), true);
    }
  });

  test(`[${backend}] isCandidateToRunByConcurrencyControl / isAuthorizedToRunByConcurrencyControl before and after a claim, and after the holder finishes`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const free = app.task("free", ({ n }: { n: number }) => n);
    const a = await sync.call({ n: 1 });
    const b = await sync.call({ n: 2 });
    const f = await free.call({ n: 1 });
    assert.equal(await o.isCandidateToRunByConcurrencyControl(a), true);
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), true);
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(a), false, "a holds no slot yet");
    assert.equal(await o.isCandidateToRunByConcurrencyControl(f), true);
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(f), true, "f needs no slot");
    assert.deepEqual(ids(await claim(app, 10, "r1")), [a.id, f.id]);
    assert.equal(await o.isCandidateToRunByConcurrencyControl(a), true, "its own slot");
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(a), true);
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), false);
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(b), false);
    // A PENDING set by hand is refused too: false for a queued one, a transition error for the
    // parked one, and nothing recorded.
    const c = await sync.call({ n: 3 });
    const historyOfC = await c.history();
    assert.equal(await o.setInvocationStatus(c, "pending", { runnerId: "r2" }), false);
    assert.deepEqual(await c.history(), historyOfC);
    const historyOfB = await b.history();
    await assert.rejects(
      o.setInvocationStatus(b, "pending", { runnerId: "r2" }),
      InvocationStatusTransitionError,
    );
    assert.deepEqual(await b.history(), historyOfB);
    await runToSuccess(app, a, "r1");
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(a), false, "released when final");
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), true);
    // The parked invocation is woken and picked up first once the slot is free.
    assert.deepEqual(ids(await claim(app, 10, "r2")), [b.id]);
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(b), true);
    assert.deepEqual(await statusPath(b), [
      "registered",
      "concurrency_controlled",
      "rerouted",
      "pending",
    ]);
  });

  test(`[${backend}] a PAUSED invocation releases its running slot; resuming returns false while another holds it and true once that one finishes`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const a = await sync.call({ n: 1 });
    const b = await sync.call({ n: 2 });
    assert.deepEqual(ids(await claim(app, 10, "r1")), [a.id]);
    await o.setInvocationRun(undefined, a, { runnerId: "r1" });
    assert.equal(await o.setInvocationStatus(a, "paused", { runnerId: "r1" }), true);
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(a), false);
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), true);
    assert.deepEqual(ids(await claim(app, 10, "r2")), [b.id]);
    await o.setInvocationRun(undefined, b, { runnerId: "r2" });
    const historyBefore = await a.history();
    assert.equal(await o.setInvocationStatus(a, "resumed", { runnerId: "r1" }), false);
    assert.equal(await a.status(), "paused");
    assert.deepEqual(await a.history(), historyBefore, "a refused resume records nothing");
    await o.setInvocationResult(b, 2, { runnerId: "r2" });
    assert.equal(await o.setInvocationStatus(a, "resumed", { runnerId: "r1" }), true);
    assert.equal(await a.status(), "resumed");
    assert.equal(await o.isAuthorizedToRunByConcurrencyControl(a), true);
    // RESUMED holds the slot again: a third invocation is parked.
    const c = await sync.call({ n: 3 });
    assert.deepEqual(await claim(app, 10, "r2"), []);
    assert.equal(await c.status(), "concurrency_controlled");
    await o.setInvocationResult(a, 1, { runnerId: "r1" });
    assert.deepEqual(await statusPath(a), [
      "registered",
      "pending",
      "running",
      "paused",
      "resumed",
      "success",
    ]);
    assert.deepEqual(ids(await claim(app, 10, "r2")), [c.id]);
  });

  // --- pick-up -----------------------------------------------------------------------------------

  test(`[${backend}] concurrent getInvocationsToRun() calls from six runners on two apps sharing the backend hand out each of 300 invocations exactly once, PENDING and owned by its claimer`, async () => {
    const clock = new FakeClock();
    const appA = await makeApp({ clock });
    const appB = await makeApp({ clock }, appA);
    const jobA = appA.task("job", ({ n }: { n: number }) => n);
    appB.task("job", ({ n }: { n: number }) => n);
    const group = await jobA.parallelize(Array.from({ length: 300 }, (_, n) => ({ n })));
    const runners = ["r1", "r2", "r3", "r4", "r5", "r6"];
    const claimedBy = await Promise.all(runners.map(async (runnerId, i) => {
      const app = i % 2 === 0 ? appA : appB;
      const mine: Invocation[] = [];
      for (;;) {
        const got = await app.orchestrator.getInvocationsToRun(7, { runnerId });
        assert.ok(got.length <= 7);
        if (got.length === 0) return mine;
        mine.push(...got);
        assert.ok(mine.length <= 300, `${runnerId} was handed out more than the 300 invocations`);
      }
    }));
    const all = claimedBy.flat();
    assert.equal(all.length, 300, "each invocation is handed out once");
    assert.equal(new Set(ids(all)).size, 300, "no invocation is handed out twice");
    assert.deepEqual(ids(all).sort(), ids(group.invocations).sort());
    for (const [i, mine] of claimedBy.entries()) {
      for (const invocation of mine) {
        const history = await invocation.history();
        assert.equal(history.length, 2);
        assert.deepEqual(history[1], {
          status: "pending",
          runnerId: runners[i],
          timestampMs: clock.now(),
          seq: 2,
        });
        assert.equal(await invocation.status(), "pending");
      }
    }
    // Ownership: the claimer may start it, another runner may not. (Which runners got work
    // depends on timing; at least one did.)
    const owner = claimedBy.findIndex((mine) => mine.length > 0);
    const claimed = claimedBy[owner]![0]!;
    const other = runners[(owner + 1) % runners.length]!;
    await assert.rejects(
      appB.orchestrator.setInvocationRun(undefined, claimed, { runnerId: other }),
      InvocationStatusOwnershipError,
    );
    await appA.orchestrator.setInvocationRun(undefined, claimed, { runnerId: runners[owner]! });
    assert.equal(await claimed.status(), "running");
  });

  test(`[${backend}] getInvocationsToRun() returns at most max, in queue (creation) order, and max 0 claims nothing`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number }) => n);
    const queued = [];
    for (let n = 0; n < 5; n++) queued.push(await job.call({ n }));
    assert.deepEqual(await claim(app, 0, "r1"), []);
    assert.equal(await queued[0]!.status(), "registered");
    assert.deepEqual(ids(await claim(app, 2, "r1")), ids(queued.slice(0, 2)));
    assert.deepEqual(ids(await claim(app, 2, "r2")), ids(queued.slice(2, 4)));
    assert.deepEqual(ids(await claim(app, 2, "r3")), ids(queued.slice(4)));
    assert.deepEqual(await claim(app, 2, "r1"), []);
  });

  test(`[${backend}] a fresh invocation is claimable at once by a process whose clock is behind the caller's (clock skew does not delay the pick-up)`, async () => {
    const start = Date.UTC(2026, 0, 1);
    const callerApp = await makeApp({ clock: new FakeClock(start + 2_000) });
    const runnerApp = await makeApp({ clock: new FakeClock(start) }, callerApp);
    const job = callerApp.task("job", ({ n }: { n: number }) => n);
    runnerApp.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    assert.deepEqual(ids(await claim(runnerApp, 1, "r1")), [invocation.id]);
  });

  // --- blocking control --------------------------------------------------------------------------

  /** A RUNNING caller (claimed by "r0"), an older queued invocation, then x and y. */
  async function blockingSetup(makeOptions: { clock: FakeClock }) {
    const app = await makeApp(makeOptions);
    const { clock } = makeOptions;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const caller = await job.call({ n: 0 });
    await claimOne(app, "r0", caller);
    await app.orchestrator.setInvocationRun(undefined, caller, { runnerId: "r0" });
    clock.advance(1);
    const old = await job.call({ n: 1 });
    clock.advance(1);
    const x = await job.call({ n: 2 });
    clock.advance(1);
    const y = await job.call({ n: 3 });
    return { app, job, caller, old, x, y };
  }

  test(`[${backend}] getBlockingInvocations() orders waited-on invocations by first wait (not by id), and getInvocationsToRun(1) claims them before older queued invocations`, async () => {
    const clock = new FakeClock();
    const { app, caller, old, x, y } = await blockingSetup({ clock });
    const o = app.orchestrator;
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    await o.waitingForResults(caller, [y]);
    clock.advance(10);
    await o.waitingForResults(caller, [x, y]); // y keeps its first-wait time
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [y.id, x.id]);
    assert.deepEqual(ids(await o.getBlockingInvocations(1)), [y.id]);
    assert.deepEqual(ids(await claim(app, 1, "r1")), [y.id]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [x.id], "claimed: not available");
    assert.deepEqual(ids(await claim(app, 1, "r1")), [x.id]);
    assert.deepEqual(ids(await claim(app, 1, "r1")), [old.id]);
  });

  test(`[${backend}] a pick-up that took all it could says more is queued behind it (startInvocations' more), and one that took the last says not`, async () => {
    const app = await makeApp();
    const add = app.task("add", ({ x }: { x: number }) => x);
    await add.parallelize([{ x: 1 }, { x: 2 }, { x: 3 }]);
    const first = await app.orchestrator.startInvocations(2, { runnerId: "r1" });
    assert.equal(first.length, 2);
    assert.equal(first.more, true);
    const second = await app.orchestrator.startInvocations(2, { runnerId: "r1" });
    assert.equal(second.length, 1);
    assert.equal(second.more, false);
  });

  test(`[${backend}] getBlockingInvocations() breaks first-wait ties by id; getInvocationsToRun(10) returns the blocking ones, then the queue, each once`, async () => {
    const clock = new FakeClock();
    const { app, caller, old, x, y } = await blockingSetup({ clock });
    await app.orchestrator.waitingForResults(caller, [y, x]);
    assert.deepEqual(ids(await app.orchestrator.getBlockingInvocations(10)), [x.id, y.id]);
    assert.deepEqual(ids(await claim(app, 10, "r1")), [x.id, y.id, old.id]);
  });

  test(`[${backend}] a waited-on invocation in retry back-off is not blocking until its back-off has passed`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      maxRetries: 1,
      retryBackoffMs: 1000,
    });
    const caller = await job.call({ n: 0 });
    const x = await job.call({ n: 1 });
    assert.deepEqual(ids(await claim(app, 2, "r0")), [caller.id, x.id]);
    await o.setInvocationRun(undefined, caller, { runnerId: "r0" });
    await o.setInvocationRun(undefined, x, { runnerId: "r0" });
    await o.setInvocationRetry(x, new RetryError("busy"), { runnerId: "r0" });
    await o.waitingForResults(caller, [x]);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    assert.deepEqual(await claim(app, 10, "r1"), []);
    clock.advance(1000);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [x.id]);
    assert.deepEqual(ids(await claim(app, 10, "r1")), [x.id]);
  });

  test(`[${backend}] blockingControl toggled off at runtime: getInvocationsToRun() follows the queue order; toggled on again, blocking invocations come first`, async () => {
    const clock = new FakeClock();
    const { app, caller, old, x, y } = await blockingSetup({ clock });
    const o = app.orchestrator;
    await o.waitingForResults(caller, [y]);
    o.options.blockingControl = false;
    assert.deepEqual(ids(await claim(app, 1, "r1")), [old.id]);
    o.options.blockingControl = true;
    assert.deepEqual(ids(await claim(app, 1, "r1")), [y.id]);
    assert.deepEqual(ids(await claim(app, 1, "r1")), [x.id]);
  });

  test(`[${backend}] a blocking invocation refused by running concurrency does not starve the queue: a runner with one free slot still gets the next queued invocation`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const caller = await job.call({ n: 0 });
    const holder = await sync.call({ n: 1 });
    assert.deepEqual(ids(await claim(app, 2, "r0")), [caller.id, holder.id]);
    await o.setInvocationRun(undefined, caller, { runnerId: "r0" });
    await o.setInvocationRun(undefined, holder, { runnerId: "r0" });
    const blocked = await sync.call({ n: 2 });
    const free = await job.call({ n: 3 });
    await o.waitingForResults(caller, [blocked]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [blocked.id]);
    const claimed: Invocation[] = [];
    for (let poll = 0; poll < 3 && claimed.length === 0; poll++) {
      claimed.push(...await claim(app, 1, "r1"));
    }
    assert.deepEqual(ids(claimed), [free.id], "the free invocation is not starved");
    assert.notEqual(await blocked.status(), "pending");
  });

  test(`[${backend}] blocking graph through the orchestrator: chain 1→2→3 gives [3], after releasing 3 [2], after releasing 2 []`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const one = await job.call({ n: 1 });
    const two = await job.call({ n: 2 });
    const three = await job.call({ n: 3 });
    await o.waitingForResults(one, [two]);
    await o.waitingForResults(two, [three]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [three.id]);
    await o.releaseWaiters(three);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [two.id]);
    await o.blockingControl.releaseWaiters(two);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
  });

  test(`[${backend}] blocking graph through the orchestrator: a chain whose middle waits before anyone waits on it (2→3, then 1→2) gives [3], after releasing 3 [2]`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const one = await job.call({ n: 1 });
    const two = await job.call({ n: 2 });
    const three = await job.call({ n: 3 });
    await o.waitingForResults(two, [three]);
    await o.waitingForResults(one, [two]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [three.id]);
    await o.releaseWaiters(three);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [two.id]);
  });

  test(`[${backend}] getBlockingInvocations() keeps the time an invocation was first waited on when the waiter that first waited on it ends before it; a wait after all its waiters ended starts anew`, async () => {
    const clock = new FakeClock();
    const { app, job, caller, x, y } = await blockingSetup({ clock });
    const o = app.orchestrator;
    const other = await job.call({ n: 4 });
    await o.waitingForResults(other, [x]); // x first waited on now
    clock.advance(10);
    await o.waitingForResults(caller, [y]);
    clock.advance(10);
    await o.waitingForResults(caller, [x]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [x.id, y.id]);
    // The first waiter ends: x is still waited on (by the caller), since its first wait.
    await o.setInvocationStatus(other, "concurrency_controlled_final");
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [x.id, y.id]);
    // Every waiter of y ends: waited on again later, it queues behind x by its new first wait.
    await o.releaseWaiters(caller);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    await o.waitingForResults(other, [y]);
    clock.advance(10);
    await o.waitingForResults(other, [x]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [y.id, x.id]);
  });

  test(`[${backend}] blocking graph through the orchestrator: a diamond gives its sink, a circular wait gives []`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const [one, two, three, four, five] = [
      await job.call({ n: 1 }),
      await job.call({ n: 2 }),
      await job.call({ n: 3 }),
      await job.call({ n: 4 }),
      await job.call({ n: 5 }),
    ];
    await o.waitingForResults(one, [two]);
    await o.waitingForResults(two, [three]);
    await o.waitingForResults(one, [three]);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [three.id]);
    await o.blockingControl.waitingForResults(four, [five]);
    await o.blockingControl.waitingForResults(five, [four]);
    assert.deepEqual(ids(await o.blockingControl.getBlockingInvocations(10)), [three.id]);
  });

  test(`[${backend}] getBlockingInvocations() skips waited-on invocations that are not available, and a final status releases its waiters`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const one = await job.call({ n: 1 });
    const two = await job.call({ n: 2 });
    const three = await job.call({ n: 3 });
    await o.waitingForResults(one, [two]);
    await o.waitingForResults(two, [three]);
    await claimOne(app, "r1", three); // blocking first: three, although one is older
    assert.deepEqual(await o.getBlockingInvocations(10), [], "three is PENDING, two waits");
    await runToSuccess(app, three, "r1", 3);
    assert.deepEqual(ids(await o.getBlockingInvocations(10)), [two.id]);
    await claimOne(app, "r1", two);
    await o.setInvocationRun(undefined, two, { runnerId: "r1" });
    await o.setInvocationException(two, new Error("boom"), { runnerId: "r1" });
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    assert.deepEqual(ids(await claim(app, 10, "r1")), [one.id]);
  });

  test(`[${backend}] blocking control: available blockers behind many running ones are still found, oldest first`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const caller = await job.call({ n: -1 });
    await claimOne(app, "r0", caller);
    await o.setInvocationRun(undefined, caller, { runnerId: "r0" });
    const children: Invocation[] = [];
    for (let n = 0; n < 40; n++) children.push(await job.call({ n }));
    // Waited on newest first, so first-wait order is the reverse of id order.
    const byFirstWait = [...children].reverse();
    for (const child of byFirstWait) {
      clock.advance(1);
      await o.waitingForResults(caller, [child]);
    }
    // The 30 waited on first are claimed (blocking first) and run: not available any more.
    const running = byFirstWait.slice(0, 30);
    assert.deepEqual(ids(await claim(app, 30, "r1")), ids(running));
    for (const child of running) await o.setInvocationRun(undefined, child, { runnerId: "r1" });
    const available = byFirstWait.slice(30);
    assert.deepEqual(ids(await o.getBlockingInvocations(1)), ids(available.slice(0, 1)));
    assert.deepEqual(ids(await o.getBlockingInvocations(3)), ids(available.slice(0, 3)));
    assert.deepEqual(ids(await o.getBlockingInvocations(50)), ids(available));
    assert.deepEqual(ids(await claim(app, 2, "r2")), ids(available.slice(0, 2)));
  });

  test(`[${backend}] waitingForResults() with an empty list warns and records nothing; with caller undefined it records nothing`, async () => {
    const clock = new FakeClock();
    const { app, caller, old, x } = await blockingSetup({ clock });
    const o = app.orchestrator;
    const emptyWarnings = await captureWarnings(() => o.waitingForResults(caller, []));
    assert.equal(emptyWarnings.length, 1);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    const undefinedWarnings = await captureWarnings(() => o.waitingForResults(undefined, [x]));
    assert.equal(undefinedWarnings.length, 0);
    assert.deepEqual(await o.getBlockingInvocations(10), []);
    assert.deepEqual(ids(await claim(app, 1, "r1")), [old.id], "queue order: nothing blocks");
  });

  test(`[${backend}] getBlockingInvocations() is a read: two reads are equal and nothing is claimed`, async () => {
    const clock = new FakeClock();
    const { app, caller, x, y } = await blockingSetup({ clock });
    const o = app.orchestrator;
    await o.waitingForResults(caller, [x, y]);
    const first = ids(await o.getBlockingInvocations(10));
    const second = ids(await o.getBlockingInvocations(10));
    assert.deepEqual(first, [x.id, y.id]);
    assert.deepEqual(second, first);
    assert.equal(await x.status(), "registered");
    assert.equal(await y.status(), "registered");
  });

  // --- status machine ----------------------------------------------------------------------------

  test(`[${backend}] a final status is final: every further change throws InvocationStatusTransitionError and leaves status, result and history unchanged`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const done = await job.call({ n: 1 });
    const failed = await job.call({ n: 2 });
    await claim(app, 2, "r1");
    await runToSuccess(app, done, "r1", 42);
    await o.setInvocationRun(undefined, failed, { runnerId: "r1" });
    await o.setInvocationException(failed, new Error("boom"), { runnerId: "r1" });
    for (const invocation of [done, failed]) {
      const status = await invocation.status();
      const history = await invocation.history();
      const attempts: (() => Promise<unknown>)[] = [
        () => o.setInvocationStatus(invocation, "running", { runnerId: "r1" }),
        () => o.setInvocationStatus(invocation, "pending", { runnerId: "r1" }),
        () => o.setInvocationStatus(invocation, "success", { runnerId: "r1" }),
        () => o.setInvocationResult(invocation, 7, { runnerId: "r1" }),
        () => o.setInvocationException(invocation, new Error("late"), { runnerId: "r1" }),
        () => o.setInvocationRetry(invocation, new RetryError("late"), { runnerId: "r1" }),
        () => o.rerouteInvocations([invocation], { runnerId: "r1" }),
      ];
      for (const attempt of attempts) {
        await assert.rejects(attempt(), InvocationStatusTransitionError);
      }
      assert.equal(await invocation.status(), status);
      assert.deepEqual(await invocation.history(), history);
    }
    assert.equal(await within(done.result(), DEADLINE_MS, "done's result"), 42);
    await assert.rejects(within(failed.result(), DEADLINE_MS, "failed's result"), /boom/);
  });

  test(`[${backend}] a transition not in the table throws InvocationStatusTransitionError (registered → running, registered → rerouted, pending → paused)`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    await assert.rejects(
      o.setInvocationStatus(invocation, "running", { runnerId: "r1" }),
      (error: unknown) => {
        assert.ok(error instanceof InvocationStatusTransitionError);
        assert.equal(error.from, "registered");
        assert.equal(error.to, "running");
        return true;
      },
    );
    await assert.rejects(
      o.rerouteInvocations([invocation], { runnerId: "r1" }),
      InvocationStatusTransitionError,
    );
    await claimOne(app, "r1", invocation);
    await assert.rejects(
      o.setInvocationStatus(invocation, "paused", { runnerId: "r1" }),
      InvocationStatusTransitionError,
    );
    assert.deepEqual(await statusPath(invocation), ["registered", "pending"]);
  });

  test(`[${backend}] ownership: only the runner that claimed an invocation may move it on (InvocationStatusOwnershipError for another runner or a caller without one)`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    await claimOne(app, "r1", invocation);
    await assert.rejects(
      o.setInvocationRun(undefined, invocation, { runnerId: "r2" }),
      (error: unknown) => {
        assert.ok(error instanceof InvocationStatusOwnershipError);
        assert.equal(error.ownerId, "r1");
        assert.equal(error.runnerId, "r2");
        assert.equal(error.from, "pending");
        assert.equal(error.to, "running");
        return true;
      },
    );
    await assert.rejects(
      o.setInvocationStatus(invocation, "running"),
      (error: unknown) =>
        error instanceof InvocationStatusOwnershipError && error.runnerId === null,
    );
    await assert.rejects(
      o.rerouteInvocations([invocation], { runnerId: "r2" }),
      InvocationStatusOwnershipError,
    );
    await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
    await assert.rejects(
      o.setInvocationStatus(invocation, "paused", { runnerId: "r2" }),
      InvocationStatusOwnershipError,
    );
    await assert.rejects(
      o.setInvocationResult(invocation, 1, { runnerId: "r2" }),
      InvocationStatusOwnershipError,
    );
    await assert.rejects(
      o.setInvocationRetry(invocation, new RetryError("again"), { runnerId: "r2" }),
      InvocationStatusOwnershipError,
    );
    assert.equal(await invocation.status(), "running");
    await o.setInvocationResult(invocation, 1, { runnerId: "r1" });
    assert.deepEqual(await statusPath(invocation), ["registered", "pending", "running", "success"]);
    const history = await invocation.history();
    assert.deepEqual(history.map((entry) => entry.runnerId), [null, "r1", "r1", "r1"]);
  });

  test(`[${backend}] every recorded history of invocations driven through the state machine's paths is a valid path, in order, ending at the current status`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const solo = app.task("solo", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const soloFinal = app.task("soloFinal", ({ n }: { n: number }) => n, {
      runningConcurrency: "task",
      rerouteOnConcurrencyControl: false,
    });
    const r = { runnerId: "r1" };
    const expected = new Map<string, InvocationStatus[]>();
    const step = () => clock.advance(3);

    const success = await job.call({ n: 1 });
    await claimOne(app, "r1", success);
    step();
    await runToSuccess(app, success, "r1");
    expected.set(success.id, ["registered", "pending", "running", "success"]);

    const failed = await job.call({ n: 2 });
    await claimOne(app, "r1", failed);
    await o.setInvocationRun(undefined, failed, r);
    step();
    await o.setInvocationException(failed, new Error("boom"), r);
    expected.set(failed.id, ["registered", "pending", "running", "failed"]);

    const retried = await job.call({ n: 3 });
    await claimOne(app, "r1", retried);
    await o.setInvocationRun(undefined, retried, r);
    await o.setInvocationRetry(retried, new RetryError("again"), r);
    step();
    await claimOne(app, "r2", retried);
    await runToSuccess(app, retried, "r2");
    expected.set(retried.id, [
      "registered",
      "pending",
      "running",
      "retry",
      "pending",
      "running",
      "success",
    ]);

    const paused = await job.call({ n: 4 });
    await claimOne(app, "r1", paused);
    await o.setInvocationRun(undefined, paused, r);
    await o.setInvocationStatus(paused, "paused", r);
    step();
    await o.setInvocationStatus(paused, "resumed", r);
    await o.setInvocationStatus(paused, "paused", r);
    await o.setInvocationStatus(paused, "resumed", r);
    await o.setInvocationResult(paused, 4, r);
    expected.set(paused.id, [
      "registered",
      "pending",
      "running",
      "paused",
      "resumed",
      "paused",
      "resumed",
      "success",
    ]);

    const killed = await job.call({ n: 5 });
    await claimOne(app, "r1", killed);
    await o.setInvocationRun(undefined, killed, r);
    await o.setInvocationStatus(killed, "killed", r);
    step();
    await o.rerouteInvocations([killed], { runnerId: "r2" }); // KILLED is unowned
    await claimOne(app, "r2", killed);
    await runToSuccess(app, killed, "r2");
    expected.set(killed.id, [
      "registered",
      "pending",
      "running",
      "killed",
      "rerouted",
      "pending",
      "running",
      "success",
    ]);

    const handedBack = await job.call({ n: 6 });
    await claimOne(app, "r1", handedBack);
    await o.rerouteInvocations([handedBack], r);
    await claimOne(app, "r1", handedBack);
    await o.setInvocationException(handedBack, new Error("unknown task"), r);
    expected.set(handedBack.id, [
      "registered",
      "pending",
      "rerouted",
      "pending",
      "failed",
    ]);

    const holder = await solo.call({ n: 1 });
    const waiter = await solo.call({ n: 2 });
    assert.deepEqual(ids(await claim(app, 10, "r1")), [holder.id]);
    await runToSuccess(app, holder, "r1");
    await claimOne(app, "r1", waiter);
    await runToSuccess(app, waiter, "r1");
    expected.set(holder.id, ["registered", "pending", "running", "success"]);
    expected.set(waiter.id, [
      "registered",
      "concurrency_controlled",
      "rerouted",
      "pending",
      "running",
      "success",
    ]);

    const finalHolder = await soloFinal.call({ n: 1 });
    const finalised = await soloFinal.call({ n: 2 });
    assert.deepEqual(ids(await claim(app, 10, "r1")), [finalHolder.id]);
    await runToSuccess(app, finalHolder, "r1");
    expected.set(finalHolder.id, ["registered", "pending", "running", "success"]);
    expected.set(finalised.id, ["registered", "concurrency_controlled_final"]);

    const recovered = await job.call({ n: 7 });
    await claimOne(app, "dead", recovered);
    clock.advance(60_000);
    assert.deepEqual(ids(await o.recoverInvocations({ runnerId: "live" })), [recovered.id]);
    await claimOne(app, "live", recovered);
    await runToSuccess(app, recovered, "live");
    expected.set(recovered.id, [
      "registered",
      "pending",
      "pending_recovery",
      "rerouted",
      "pending",
      "running",
      "success",
    ]);

    const all = [
      ...await existing(app, job),
      ...await existing(app, solo),
      ...await existing(app, soloFinal),
    ];
    assert.equal(all.length, expected.size);
    for (const invocation of all) {
      const history = await invocation.history();
      assert.ok(isValidHistory(history), `valid history of ${invocation.id}`);
      assert.deepEqual(history.map((entry) => entry.status), expected.get(invocation.id));
      assert.deepEqual(history.map((entry) => entry.seq), history.map((_, i) => i + 1));
      for (let i = 1; i < history.length; i++) {
        assert.ok(history[i]!.timestampMs >= history[i - 1]!.timestampMs);
      }
      assert.equal(history.at(-1)!.status, await invocation.status());
    }
  });

  test(`[${backend}] filterByStatus() keeps the given order and matches any of the statuses; filterFinal() keeps the final ones; an empty filter returns []`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const done = await job.call({ n: 1 });
    const failed = await job.call({ n: 2 });
    const pending = await job.call({ n: 3 });
    const registered = await job.call({ n: 4 });
    await claim(app, 3, "r1");
    await runToSuccess(app, done, "r1");
    await o.setInvocationStatus(failed, "failed", { runnerId: "r1" });
    const input = [registered, pending, failed, done];
    assert.deepEqual(ids(await o.filterByStatus(input, ["registered"])), [registered.id]);
    assert.deepEqual(ids(await o.filterByStatus(input, ["success", "pending"])), [
      pending.id,
      done.id,
    ]);
    assert.deepEqual(ids(await o.filterFinal(input)), [failed.id, done.id]);
    assert.deepEqual(await o.filterByStatus(input, []), []);
    assert.deepEqual(await o.filterByStatus([], ["registered"]), []);
    assert.deepEqual(await o.filterFinal([registered, pending]), []);
    // Plain `{ id }` references work too.
    assert.deepEqual(await o.filterFinal([{ id: done.id }]), [{ id: done.id }]);
  });

  test(`[${backend}] setInvocationsStatus() applies the change to every invocation`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const a = await job.call({ n: 1 });
    const b = await job.call({ n: 2 });
    assert.deepEqual(await o.setInvocationsStatus([a, b], "concurrency_controlled_final"), [
      true,
      true,
    ]);
    assert.equal(await o.getInvocationStatus(a), "concurrency_controlled_final");
    assert.equal(await o.getInvocationStatus(b), "concurrency_controlled_final");
    assert.deepEqual(await claim(app, 10, "r1"), [], "finalised invocations leave the queue");
  });

  // --- retries -------------------------------------------------------------------------------------

  test(`[${backend}] setInvocationRetry() counts the retry and enters RETRY in one history step, and the invocation is re-queued`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, { maxRetries: 3 });
    const invocation = await job.call({ n: 1 });
    await claimOne(app, "r1", invocation);
    await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
    assert.equal(await o.getInvocationRetries(invocation), 0);
    await o.setInvocationRetry(invocation, new RetryError("busy"), { runnerId: "r1" });
    assert.equal(await invocation.retries(), 1);
    assert.equal(await invocation.status(), "retry");
    const history = await invocation.history();
    assert.deepEqual(history.map((entry) => entry.status), [
      "registered",
      "pending",
      "running",
      "retry",
    ]);
    assert.deepEqual(history.at(-1)?.runnerId, "r1");
    assert.equal(history.at(-1)?.seq, 4);
    await claimOne(app, "r2", invocation);
    await o.setInvocationRun(undefined, invocation, { runnerId: "r2" });
    await o.setInvocationRetry(invocation, new RetryError("busy"), { runnerId: "r2" });
    assert.equal(await invocation.retries(), 2);
  });

  test(`[${backend}] incrementInvocationRetries() counts a retry without changing the status or the history`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    await o.incrementInvocationRetries(invocation);
    await o.incrementInvocationRetries(invocation);
    assert.equal(await o.getInvocationRetries(invocation), 2);
    assert.equal(await invocation.status(), "registered");
    assert.equal((await invocation.history()).length, 1);
  });

  test(`[${backend}] retryBackoffMs 1000: a retried invocation is not claimable until the clock advances 1000 ms`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      maxRetries: 2,
      retryBackoffMs: 1000,
    });
    const invocation = await job.call({ n: 1 });
    const other = await job.call({ n: 2 });
    await claimOne(app, "r1", invocation);
    await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
    await o.setInvocationRetry(invocation, new RetryError("busy"), { runnerId: "r1" });
    assert.equal(await invocation.status(), "retry");
    assert.deepEqual(ids(await claim(app, 10, "r1")), [other.id], "only the other one");
    clock.advance(999);
    assert.deepEqual(await claim(app, 10, "r1"), []);
    clock.advance(1);
    assert.deepEqual(ids(await claim(app, 10, "r1")), [invocation.id]);
  });

  test(`[${backend}] retryBackoffMs as a function of the attempt: the second retry waits 2000 ms`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      maxRetries: 3,
      retryBackoffMs: (attempt) => attempt * 1000,
    });
    const invocation = await job.call({ n: 1 });
    const retryOnce = async () => {
      await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
      await o.setInvocationRetry(invocation, new RetryError("busy"), { runnerId: "r1" });
    };
    await claimOne(app, "r1", invocation);
    await retryOnce();
    clock.advance(999);
    assert.deepEqual(await claim(app, 1, "r1"), []);
    clock.advance(1);
    await claimOne(app, "r1", invocation);
    await retryOnce();
    clock.advance(1999);
    assert.deepEqual(await claim(app, 1, "r1"), []);
    clock.advance(1);
    await claimOne(app, "r1", invocation);
  });

  // --- recovery ------------------------------------------------------------------------------------

  test(`[${backend}] a PENDING invocation older than maxPendingSeconds is recovered (pending → pending_recovery → rerouted), claimable again, and its old owner is fenced out`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    await claimOne(app, "dead", invocation);
    clock.advance(5_001);
    const recovered = await o.recoverInvocations({ runnerId: "live" });
    assert.deepEqual(ids(recovered), [invocation.id]);
    assert.equal(await invocation.status(), "rerouted");
    const history = await invocation.history();
    assert.deepEqual(history.map((entry) => [entry.status, entry.runnerId]), [
      ["registered", null],
      ["pending", "dead"],
      ["pending_recovery", "live"],
      ["rerouted", "live"],
    ]);
    assert.ok(isValidHistory(history));
    await assert.rejects(
      o.setInvocationRun(undefined, invocation, { runnerId: "dead" }),
      InvocationStatusTransitionError,
    );
    await claimOne(app, "live", invocation);
    await assert.rejects(
      o.setInvocationRun(undefined, invocation, { runnerId: "dead" }),
      InvocationStatusOwnershipError,
    );
    await runToSuccess(app, invocation, "live", 1);
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the result"), 1);
  });

  test(`[${backend}] a fresh PENDING invocation is not recovered, and maxPendingSeconds sets the horizon`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { maxPendingSeconds: 2 } });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const invocation = await job.call({ n: 1 });
    await claimOne(app, "r1", invocation);
    clock.advance(1_000);
    assert.deepEqual(await o.recoverInvocations({ runnerId: "live" }), []);
    assert.equal(await invocation.status(), "pending");
    assert.equal((await invocation.history()).length, 2);
    clock.advance(1_001);
    assert.deepEqual(ids(await o.recoverInvocations({ runnerId: "live" })), [invocation.id]);
  });

  test(`[${backend}] a recovered slot holder frees its running slot`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const a = await sync.call({ n: 1 });
    await claimOne(app, "dead", a);
    const b = await sync.call({ n: 2 });
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), false);
    clock.advance(5_001);
    await o.recoverInvocations({ runnerId: "live" });
    assert.equal(await o.isCandidateToRunByConcurrencyControl(b), true);
    assert.deepEqual(ids(await claim(app, 1, "live")), [b.id]);
  });

  test(`[${backend}] apps with different appIds on one backend are isolated: registration, queries, pick-up and purge() see only their own invocations`, async () => {
    const appA = await makeApp({ appId: "alpha" });
    const appB = await makeApp({ appId: "beta" }, appA);
    const define = (app: Nenc) =>
      app.task("job", ({ n }: { n: number }) => n, { registrationConcurrency: "arguments" });
    const jobA = define(appA);
    const jobB = define(appB);
    const a = await jobA.call({ n: 1 });
    const b = await jobB.call({ n: 1 });
    assert.notEqual(b.id, a.id, "registration keys are per app");
    assert.equal(b instanceof ReusedInvocation, false);
    assert.deepEqual(ids(await existing(appA, jobA)), [a.id]);
    assert.deepEqual(ids(await existing(appB, jobB)), [b.id]);
    assert.deepEqual(ids(await claim(appB, 10, "rb")), [b.id]);
    await appB.orchestrator.purge();
    assert.equal((await appA.orchestrator.getInvocation(a.id))?.id, a.id);
    assert.equal(await a.status(), "registered");
    assert.deepEqual(ids(await claim(appA, 10, "ra")), [a.id]);
  });

  // --- purge ---------------------------------------------------------------------------------------

  test(`[${backend}] auto-purge: the default 24 h horizon keeps a final invocation after 23 h and removes it after 25 h; a non-final one stays`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const done = await job.call({ n: 1 });
    const waiting = await job.call({ n: 2 });
    await claimOne(app, "r1", done);
    await runToSuccess(app, done, "r1", 1);
    clock.advance(23 * HOUR_MS);
    await o.autoPurge();
    assert.equal((await o.getInvocation(done.id))?.id, done.id);
    assert.equal(await within(done.result(), DEADLINE_MS, "done's result"), 1);
    clock.advance(2 * HOUR_MS);
    await o.autoPurge();
    assert.equal(await o.getInvocation(done.id), undefined);
    assert.equal(await waiting.status(), "registered");
    assert.deepEqual(ids(await existing(app, job)), [waiting.id]);
  });

  test(`[${backend}] auto-purge: autoFinalInvocationPurgeHours 0 removes a final invocation at the next autoPurge()`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { autoFinalInvocationPurgeHours: 0 } });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const done = await job.call({ n: 1 });
    const finalised = await job.call({ n: 2 });
    const running = await job.call({ n: 3 });
    await claimOne(app, "r1", done);
    await runToSuccess(app, done, "r1");
    await o.setInvocationStatus(finalised, "concurrency_controlled_final");
    await claimOne(app, "r1", running);
    await o.setInvocationRun(undefined, running, { runnerId: "r1" });
    await o.autoPurge();
    assert.equal(await o.getInvocation(done.id), undefined);
    assert.equal(await o.getInvocation(finalised.id), undefined);
    assert.equal(await running.status(), "running");
  });

  test(`[${backend}] autoFinalInvocationPurgeHours 0: a finished invocation reads as gone at once, before any sweep (get, getMany, find, children, counts, history)`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { autoFinalInvocationPurgeHours: 0 } });
    const family = await finishedFamily(app);
    assert.deepEqual(await familyReads(app, family), familyGone(family));
    assert.equal(await app.orchestrator.autoPurge(), 2);
    assert.deepEqual(await familyReads(app, family), familyGone(family));
  });

  test(`[${backend}] autoFinalInvocationPurgeHours 1: a finished invocation is readable at 59 min and reads as gone at 61 min, before any sweep`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { autoFinalInvocationPurgeHours: 1 } });
    const family = await finishedFamily(app);
    assert.deepEqual(await familyReads(app, family), familyVisible(family));
    clock.advance(59 * 60_000);
    assert.deepEqual(await familyReads(app, family), familyVisible(family));
    clock.advance(2 * 60_000);
    assert.deepEqual(await familyReads(app, family), familyGone(family));
    assert.equal(await app.orchestrator.autoPurge(), 2);
    assert.deepEqual(await familyReads(app, family), familyGone(family));
  });

  test(`[${backend}] setUpInvocationAutoPurge() restarts a final invocation's purge horizon from now`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const done = await job.call({ n: 1 });
    await claimOne(app, "r1", done);
    await runToSuccess(app, done, "r1");
    clock.advance(20 * HOUR_MS);
    await o.setUpInvocationAutoPurge(done);
    clock.advance(5 * HOUR_MS); // 25 h after it finished, 5 h after the new set-up
    await o.autoPurge();
    assert.equal((await o.getInvocation(done.id))?.id, done.id);
    clock.advance(20 * HOUR_MS);
    await o.autoPurge();
    assert.equal(await o.getInvocation(done.id), undefined);
    // A non-final invocation is not set up for purging.
    const registered = await job.call({ n: 2 });
    await o.setUpInvocationAutoPurge(registered);
    clock.advance(25 * HOUR_MS);
    await o.autoPurge();
    assert.equal(await registered.status(), "registered");
  });

  test(`[${backend}] an invocation re-routed 600 times (1,201 history entries, more than one KV commit holds) still finishes, keeps its whole history, and is purged whole`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const long = await job.call({ n: 1 });
    await refusePickUps(o.store, long.id, 600, clock.now());
    await claimOne(app, "r1", long);
    await runToSuccess(app, long, "r1", 1);
    assert.equal(await within(long.result(), DEADLINE_MS, "the long one's result"), 1);
    const history = await long.history();
    assert.equal(history.length, 1_204);
    assert.ok(isValidHistory(history));
    await o.setUpInvocationAutoPurge(long);
    clock.advance(25 * HOUR_MS);
    assert.equal(await o.autoPurge(), 1);
    assert.equal(await o.getInvocation(long.id), undefined);
    assert.deepEqual(await o.store.history(long.id), []);
    assert.deepEqual(ids(await existing(app, job)), []);
  });

  test(`[${backend}] purge() deletes every invocation, the queue and the registration keys`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    const claimed = await job.call({ n: 1 });
    const done = await job.call({ n: 2 });
    await claimOne(app, "r1", claimed);
    await o.setInvocationRun(undefined, claimed, { runnerId: "r1" });
    await claimOne(app, "r1", done);
    await runToSuccess(app, done, "r1");
    // A new REGISTERED invocation of the running one's arguments now holds the registration key.
    const holder = await job.call({ n: 1 });
    assert.notEqual(holder.id, claimed.id);
    assert.ok((await job.call({ n: 1 })) instanceof ReusedInvocation);
    await o.purge();
    for (const invocation of [claimed, done, holder]) {
      assert.equal(await o.getInvocation(invocation.id), undefined);
    }
    assert.deepEqual(await existing(app, job), []);
    assert.deepEqual(await claim(app, 10, "r1"), []);
    const fresh = await job.call({ n: 1 });
    assert.equal(fresh instanceof ReusedInvocation, false);
    assert.notEqual(fresh.id, holder.id);
    assert.equal(await countOf(app, job), 1);
  });

  test(`[${backend}] a call without a key argument of a "keys" task is refused with a TypeError and routes nothing`, async () => {
    const app = await makeApp();
    const send = app.task(
      "send",
      ({ to, body }: { to?: string; body: string }) => `${to}:${body}`,
      {
        registrationConcurrency: "keys",
        keyArguments: ["to"],
      },
    );
    await assert.rejects(
      send.call({ body: "hi" }),
      (error: unknown) =>
        error instanceof TypeError &&
        /Cannot call task send: its key argument "to" is missing/.test(error.message),
    );
    await assert.rejects(send.parallelize([{ to: "a", body: "1" }, { body: "2" }]), TypeError);
    const all = [];
    for await (const invocation of app.orchestrator.getExistingInvocations(send)) {
      all.push(invocation);
    }
    assert.equal(all.length, 0);
  });

  test(`[${backend}] a superseded claim is fenced out: after recovery and a new claim by the same runner, the old claim's writes are refused`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 1 } });
    const task = app.task("job", () => "done");
    const invocation = await task.call();
    const [first] = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
    assert.equal(first!.invocation.id, invocation.id);
    assert.equal(first!.running, true);
    // r1 goes silent; another runner recovers the invocation; r1 comes back and claims it again.
    clock.advance(2_000);
    await app.orchestrator.store.heartbeat("r2", clock.now());
    assert.equal((await app.orchestrator.recoverInvocations({ runnerId: "r2" })).length, 1);
    const [second] = await app.orchestrator.startInvocations(1, { runnerId: "r1" });
    assert.equal(second!.invocation.id, invocation.id);
    assert.notEqual(second!.claimSeq, first!.claimSeq);
    const old = { runnerId: "r1", claimSeq: first!.claimSeq };
    await assert.rejects(
      app.orchestrator.setInvocationStatus(invocation, "paused", old),
      InvocationStatusOwnershipError,
    );
    await assert.rejects(
      app.orchestrator.setInvocationResult(invocation, "stale", old),
      InvocationStatusOwnershipError,
    );
    await app.orchestrator.setInvocationResult(invocation, "fresh", {
      runnerId: "r1",
      claimSeq: second!.claimSeq,
    });
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the result"), "fresh");
  });
}
