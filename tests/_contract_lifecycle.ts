import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, waitUntil, within as withinMs } from "./_deadline.ts";
import { FakeClock, WatchedClock } from "./_fake_clock.ts";
import { CanceledError, RetryError, TaskTimeoutError } from "../core/errors.ts";
import type { Invocation } from "../core/invocation.ts";
import { type HistoryEntry, type InvocationStatus, isValidHistory } from "../core/status.ts";
import type { TaskContext } from "../core/task.ts";

/** A promise the test settles by hand. */
function deferred<T = void>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((res) => resolve = res);
  return { promise, resolve };
}

/** The error `promise` rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    const value = await promise;
    assert.fail(`expected a rejection, got ${JSON.stringify(value)}`);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    return error;
  }
}

/** Waits for `promise` with the shared deadline. */
const within = <T>(promise: Promise<T>, what: string): Promise<T> =>
  withinMs(promise, DEADLINE_MS, what);

/** Waits until `predicate` holds, with the shared deadline. */
const until = (predicate: () => boolean | Promise<boolean>, what: string): Promise<void> =>
  waitUntil(predicate, { message: `never ${what}`, intervalMs: 2 });

const statuses = (history: readonly HistoryEntry[]): string[] =>
  history.map((entry) => entry.status);

const isStatus = (invocation: Invocation, status: InvocationStatus) => async () =>
  await invocation.status() === status;

/** Lifecycle (SPEC §7.1): task context, cancel, timeouts, graceful stop and drain. */
export function lifecycleContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] a task sees its context: ids, runner, attempt 0 then 1 on a retry, a live signal, scheduledAt null, as own enumerable fields in that order`, async () => {
    const app = await makeApp();
    const seen: Omit<TaskContext, "signal">[] = [];
    const child = app.task("child", (_args: undefined, ctx: TaskContext) => {
      // Its own enumerable fields, in this order, the signal among them (a spread copies it).
      assert.deepEqual(Object.keys(ctx), [
        "invocationId",
        "taskId",
        "parentId",
        "runnerId",
        "attempt",
        "signal",
        "scheduledAt",
      ]);
      assert.equal({ ...ctx }.signal, ctx.signal);
      const { signal, ...rest } = ctx;
      assert.equal(signal.aborted, false);
      seen.push(rest);
      if (ctx.attempt === 0) throw new RetryError("once more");
      return ctx.attempt;
    }, { maxRetries: 1 });
    const parent = app.task("parent", async (_args: undefined, ctx: TaskContext) => {
      const invocation = await child.call();
      return { attempt: await invocation.result(), id: ctx.invocationId, child: invocation.id };
    });
    const invocation = await parent.call();
    await within(app.runner({ runnerId: "r-ctx", concurrency: 2 }).drain(), "drain");
    const result = await invocation.result();
    assert.deepEqual(result, { attempt: 1, id: invocation.id, child: result.child });
    assert.deepEqual(
      seen,
      [0, 1].map((attempt) => ({
        invocationId: result.child,
        taskId: "child",
        parentId: invocation.id,
        runnerId: "r-ctx",
        attempt,
        scheduledAt: null,
      })),
    );
  });

  test(`[${backend}] cancel() of a queued invocation: CANCELED at once, off the queue (never run), result() rejects with CanceledError and its reason; a second cancel() is false`, async () => {
    const app = await makeApp();
    let runs = 0;
    const report = app.task("report", () => ++runs);
    const invocation = await report.call();
    assert.equal(await invocation.cancel({ reason: "not needed" }), true);
    assert.equal(await invocation.status(), "canceled");
    const error = await rejection(invocation.result());
    assert.ok(error instanceof CanceledError, `got ${String(error)}`);
    assert.equal(error.reason, "not needed");
    assert.equal(error.invocationId, invocation.id);
    assert.match(error.message, /not needed/);
    assert.equal(await invocation.cancel(), false);
    const other = await report.call();
    await within(app.runner().drain(), "drain");
    assert.equal(await other.result(), 1);
    assert.equal(runs, 1);
    assert.deepEqual(statuses(await invocation.history()), ["registered", "canceled"]);
    assert.equal(await (await report.call()).cancel(), true);
  });

  test(`[${backend}] cancel() of a running invocation aborts ctx.signal with CanceledError; its running slot is held until the function returned; what it returns is discarded`, async () => {
    const app = await makeApp();
    const aborted = deferred<unknown>();
    const finish = deferred();
    const started: string[] = [];
    const job = app.task("job", async ({ n }: { n: number }, ctx: TaskContext) => {
      started.push(`start ${n}`);
      if (n === 1) {
        ctx.signal.addEventListener("abort", () => aborted.resolve(ctx.signal.reason));
        await finish.promise;
        started.push("end 1");
        return "ignored result";
      }
      return n;
    }, { runningConcurrency: "task" });
    await using runner = app.runner({ runnerId: "r-cancel", concurrency: 2, pollMs: 5 });
    runner.start();
    const first = await job.call({ n: 1 });
    await until(isStatus(first, "running"), "the first invocation runs");
    const second = await job.call({ n: 2 });
    assert.equal(await first.cancel({ reason: "stop it" }), true);
    const reason = await within(aborted.promise, "the signal aborts");
    assert.ok(reason instanceof CanceledError);
    assert.equal(reason.reason, "stop it");
    assert.ok((await rejection(first.result())) instanceof CanceledError);
    // The function still runs: its key's slot is still taken, the second cannot start.
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.deepEqual(started, ["start 1"]);
    finish.resolve();
    assert.equal(await within(second.result(), "the second invocation"), 2);
    assert.deepEqual(started, ["start 1", "end 1", "start 2"]);
    assert.equal(await first.status(), "canceled");
    const history = await first.history();
    assert.ok(isValidHistory(history));
    assert.deepEqual(statuses(history).slice(-2), ["running", "canceled"]);
    // Its end was recorded: no slot held, no cancel request left for the runner.
    assert.equal((await app.orchestrator.store.get(first.id))?.holdsSlots, false);
    assert.deepEqual(await app.orchestrator.store.cancelRequests("r-cancel"), []);
  });

  test(`[${backend}] cancel() cascades to the children nothing else waits on (cascade false leaves them), and a call from a canceled context rejects with CanceledError`, async () => {
    const app = await makeApp();
    const childAborted = deferred<unknown>();
    const release = deferred();
    const callAfterCancel = deferred<unknown>();
    const child = app.task("child", async ({ n }: { n: number }, ctx: TaskContext) => {
      ctx.signal.addEventListener("abort", () => childAborted.resolve(ctx.signal.reason));
      await release.promise;
      return n;
    });
    const other = app.task("other", () => "never");
    const parent = app.task("parent", async ({ cascade }: { cascade: boolean }) => {
      const invocation = await child.call({ n: cascade ? 1 : 2 });
      try {
        return await invocation.result();
      } finally {
        // Canceled: a new call from this context is refused.
        if (cascade) callAfterCancel.resolve(await other.call().catch((error) => error));
      }
    });
    await using runner = app.runner({ concurrency: 4, pollMs: 5 });
    runner.start();
    const cascading = await parent.call({ cascade: true });
    await until(
      async () => (await app.orchestrator.store.children(cascading.id)).length === 1,
      "the child is called",
    );
    const [childOfCascading] = await app.orchestrator.store.children(cascading.id);
    await until(
      async () => (await app.orchestrator.store.get(childOfCascading!.id))?.status === "running",
      "the child runs",
    );
    await until(isStatus(cascading, "paused"), "the parent waits");
    assert.equal(await cascading.cancel({ reason: "user left" }), true);
    assert.equal((await app.orchestrator.store.get(childOfCascading!.id))?.status, "canceled");
    assert.ok(
      (await within(childAborted.promise, "the child's signal aborts")) instanceof CanceledError,
    );
    const refused = await within(callAfterCancel.promise, "the parent's late call");
    assert.ok(refused instanceof CanceledError, `got ${String(refused)}`);

    const keeping = await parent.call({ cascade: false });
    await until(
      async () => (await app.orchestrator.store.children(keeping.id)).length === 1,
      "the second child is called",
    );
    await until(isStatus(keeping, "paused"), "the second parent waits");
    assert.equal(await keeping.cancel({ cascade: false }), true);
    const [kept] = await app.orchestrator.store.children(keeping.id);
    release.resolve();
    await until(
      async () => (await app.orchestrator.store.get(kept!.id))?.status === "success",
      "the kept child succeeds",
    );
    assert.equal(await keeping.status(), "canceled");
  });

  test(`[${backend}] cascade spares a child that another live invocation waits on`, async () => {
    const app = await makeApp();
    const release = deferred();
    const shared = app.task("shared", async () => {
      await release.promise;
      return "shared";
    });
    const waiter = app.task("waiter", async ({ id }: { id: string }) => {
      const invocation = await app.orchestrator.getInvocation(id);
      return await invocation!.result();
    });
    const parent = app.task("parent", async () => await (await shared.call()).result());
    await using runner = app.runner({ concurrency: 4, pollMs: 5 });
    runner.start();
    const owner = await parent.call();
    await until(
      async () => (await app.orchestrator.store.children(owner.id)).length === 1,
      "the child is called",
    );
    const [child] = await app.orchestrator.store.children(owner.id);
    const other = await waiter.call({ id: child!.id });
    await until(
      async () => (await app.orchestrator.store.waiters(child!.id)).length === 2,
      "both wait",
    );
    assert.equal(await owner.cancel(), true);
    assert.notEqual((await app.orchestrator.store.get(child!.id))?.status, "canceled");
    release.resolve();
    assert.equal(await within(other.result(), "the other waiter"), "shared");
  });

  test(`[${backend}] timeoutMs: at the deadline ctx.signal aborts with TaskTimeoutError and the invocation fails with it when the function returns; retried when retryFor lists it`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const aborts: { reason: unknown; afterMs: number }[] = [];
    const slow = app.task("slow", async (_args: undefined, ctx: TaskContext) => {
      const startedMs = clock.now();
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      aborts.push({ reason: ctx.signal.reason, afterMs: clock.now() - startedMs });
      return "too late";
    }, { timeoutMs: 1_000 });
    let attempts = 0;
    const flaky = app.task("flaky", async (_args: undefined, ctx: TaskContext) => {
      if (++attempts === 1) {
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      }
      return attempts;
    }, { timeoutMs: 1_000, maxRetries: 1, retryFor: [TaskTimeoutError] });
    const timedOut = await slow.call();
    const retried = await flaky.call();
    // No grace: disposing the runner never waits on this clock.
    await using runner = app.runner({ concurrency: 2, graceMs: 0 });
    runner.start();
    // Time moves in steps of 100 ms until both are done: the deadline is met whenever the
    // runner's timers were set.
    await until(async () => {
      clock.advance(100);
      return await timedOut.status() === "failed" && await retried.status() === "success";
    }, "both end");
    const error = await rejection(timedOut.result());
    assert.ok(error instanceof TaskTimeoutError, `got ${String(error)}`);
    assert.equal(error.timeoutMs, 1_000);
    assert.equal(aborts.length, 1);
    assert.ok(aborts[0]!.reason instanceof TaskTimeoutError);
    assert.ok(aborts[0]!.afterMs >= 1_000, `aborted after ${aborts[0]!.afterMs} ms`);
    assert.equal(await retried.result(), 2);
    assert.deepEqual(statuses(await retried.history()).slice(2, 4), ["running", "retry"]);
  });

  test(`[${backend}] a function that ignores its timeout is failed graceMs after the deadline, and the runner carries on`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const never = deferred();
    const stuck = app.task("stuck", async () => {
      await never.promise;
      return "never";
    }, { timeoutMs: 100 });
    const invocation = await stuck.call();
    await using runner = app.runner({ graceMs: 500 });
    runner.start();
    await until(async () => {
      clock.advance(50);
      return await invocation.status() === "failed";
    }, "it fails");
    assert.ok((await rejection(invocation.result())) instanceof TaskTimeoutError);
    // Failed no earlier than the deadline plus the grace, by the app's clock.
    const history = await invocation.history();
    const runningMs = history.find((entry) => entry.status === "running")!.timestampMs;
    const failedMs = history.at(-1)!.timestampMs;
    assert.ok(failedMs - runningMs >= 600, `failed ${failedMs - runningMs} ms after it started`);
    const next = await app.task("next", () => "ok").call();
    assert.equal(await within(next.result(), "the runner carries on"), "ok");
    never.resolve();
  });

  test(`[${backend}] a task paused on result() of a child that runs on: its cancel (cascade false) and its timeout end the wait at once, result() rejecting inside it with the cause`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const release = deferred();
    const child = app.task("child", async ({ n }: { n: number }) => {
      await release.promise;
      return n;
    });
    const ended: Record<string, unknown> = {};
    const waitOn = async (name: string, n: number): Promise<string> => {
      const invocation = await child.call({ n });
      try {
        return `got ${await invocation.result()}`;
      } catch (error) {
        ended[name] = error;
        throw error;
      }
    };
    const canceled = app.task("canceled", () => waitOn("canceled", 1));
    const timedOut = app.task("timedOut", () => waitOn("timedOut", 2), { timeoutMs: 1_000 });
    // No grace: the functions return by themselves at once.
    await using runner = app.runner({ concurrency: 4, graceMs: 0 });
    runner.start();
    const first = await canceled.call();
    const second = await timedOut.call();
    await until(
      async () => await first.status() === "paused" && await second.status() === "paused",
      "both wait on their children",
    );
    assert.equal(await first.cancel({ cascade: false }), true);
    await until(() => "canceled" in ended, "the canceled one's wait ends");
    assert.ok(ended.canceled instanceof CanceledError, `got ${String(ended.canceled)}`);
    await until(() => {
      clock.advance(100);
      return "timedOut" in ended;
    }, "the timed-out one's wait ends");
    assert.ok(ended.timedOut instanceof TaskTimeoutError, `got ${String(ended.timedOut)}`);
    await until(isStatus(second, "failed"), "the timed-out one fails");
    // The children still run: nothing but the aborts ended the waits.
    const children = await Promise.all(
      [first, second].map(({ id }) => app.orchestrator.store.children(id)),
    );
    assert.deepEqual(children.flat().map((record) => record.status), ["running", "running"]);
    release.resolve();
    assert.deepEqual(
      await within(app.orchestrator.waitForResults(children.flat()), "the children"),
      [1, 2],
    );
  });

  test(`[${backend}] result({ timeoutMs }) rejects with a TimeoutError DOMException and result({ signal }) with its reason; the invocation is left as it is`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const invocation = await app.task("idle", () => "x").call();
    const waiting = rejection(invocation.result({ timeoutMs: 5_000 }));
    await new Promise((resolve) => setTimeout(resolve, 5));
    clock.advance(5_000);
    const timeout = await within(waiting, "the timeout");
    assert.ok(timeout instanceof DOMException);
    assert.equal(timeout.name, "TimeoutError");
    const controller = new AbortController();
    const aborted = rejection(invocation.result({ signal: controller.signal }));
    controller.abort(new Error("no longer needed"));
    assert.equal(((await within(aborted, "the abort")) as Error).message, "no longer needed");
    assert.equal(await invocation.status(), "registered");
    await within(app.runner().drain(), "drain");
    assert.equal(await invocation.result({ timeoutMs: 1 }), "x");
  });

  test(`[${backend}] stop({ graceMs }) lets a running function finish within the grace and records its outcome (nothing handed back)`, async () => {
    const app = await makeApp();
    const finish = deferred();
    const job = app.task("job", async () => {
      await finish.promise;
      return "finished";
    });
    const invocation = await job.call();
    const runner = app.runner();
    runner.start();
    await until(isStatus(invocation, "running"), "it runs");
    const stopping = runner.stop({ graceMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(await invocation.status(), "running");
    finish.resolve();
    await within(stopping, "stop");
    assert.equal(await invocation.result(), "finished");
    assert.deepEqual(statuses(await invocation.history()), [
      "registered",
      "pending",
      "running",
      "success",
    ]);
  });

  test(`[${backend}] stop({ graceMs }) aborts a function past the grace and hands it back only once it returned: a second runner's run never overlaps the first`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock });
    const finishFirst = deferred();
    const log: string[] = [];
    let runs = 0;
    const job = app.task("job", async (_args: undefined, ctx: TaskContext) => {
      const run = ++runs;
      log.push(`start ${run}`);
      if (run === 1) {
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        log.push(`aborted ${run}: ${(ctx.signal.reason as Error).message}`);
        await finishFirst.promise;
      }
      log.push(`end ${run}`);
      return run;
    }, { runningConcurrency: "task" });
    const invocation = await job.call();
    const first = app.runner({ runnerId: "first" });
    first.start();
    await until(isStatus(invocation, "running"), "it runs");
    await using second = app.runner({ runnerId: "second" });
    second.start();
    // A grace no other sleep of the runners has (heartbeat 1,000 ms, poll 100 ms): the clock moves
    // once the stop waits on it, not before — moved while a loaded machine delays the stop, it
    // would run past the runner's heartbeat deadline, and the runner fence itself first.
    const stopping = first.stop({ graceMs: 1_500 });
    await clock.sleeping(1_500);
    assert.deepEqual(log, ["start 1"], "aborted before the grace");
    // The grace passes: the abort comes then, and no step follows it (its function's own grace
    // stays open).
    clock.advance(1_500);
    await until(() => log.length === 2, "the first run is aborted");
    assert.match(log[1]!, /runner first is stopping/);
    // Aborted, still running (its grace has not passed): not handed back.
    for (let i = 0; i < 10; i++) await new Promise((resolve) => setTimeout(resolve, 2));
    assert.equal(await invocation.status(), "running");
    finishFirst.resolve();
    await within(stopping, "stop");
    assert.equal(await within(invocation.result(), "the second run"), 2);
    assert.deepEqual(log.slice(2), ["end 1", "start 2", "end 2"]);
    const history = await invocation.history();
    assert.ok(isValidHistory(history));
    assert.deepEqual(statuses(history), [
      "registered",
      "pending",
      "running",
      "killed",
      "rerouted",
      "pending",
      "running",
      "success",
    ]);
  });

  test(`[${backend}] drain() waits out a retry's back-off: it reports timedOut false only once the retry ran`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    let attempts = 0;
    const flaky = app.task("flaky", () => {
      if (++attempts === 1) throw new RetryError("later");
      return attempts;
    }, { maxRetries: 1, retryBackoffMs: 5_000 });
    const invocation = await flaky.call();
    let report: { timedOut: boolean } | undefined;
    const draining = app.runner({ pollMs: 100 }).drain({ maxMs: 600_000 }).then((r) => report = r);
    await until(isStatus(invocation, "retry"), "the first attempt fails");
    for (let i = 0; i < 10; i++) {
      clock.advance(100);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    assert.equal(report, undefined, "drain() ended during the back-off");
    await until(() => {
      clock.advance(100);
      return report !== undefined;
    }, "drain ends after the retry");
    await draining;
    assert.equal(report!.timedOut, false);
    assert.equal(await invocation.result(), 2);
  });

  test(`[${backend}] a runner that lacks a task leaves its invocations queued, writing nothing per poll; a runner that defines it runs each once; heartbeats list the tasks`, async () => {
    const caller = await makeApp({ appId: "rolling" });
    const resize = caller.task("resize", ({ n }: { n: number }) => n * 2);
    const old = await makeApp({ appId: "rolling" }, caller);
    const ping = old.task("ping", () => "pong");
    const queued = await resize.parallelize([{ n: 1 }, { n: 2 }]);
    const oldRunner = old.runner({ runnerId: "old", pollMs: 1 });
    oldRunner.start();
    assert.equal(await within((await ping.call()).result(), "ping"), "pong");
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 2));
    for (const invocation of queued.invocations) {
      assert.deepEqual(statuses(await invocation.history()), ["registered"]);
    }
    const runners = await caller.orchestrator.store.runners();
    assert.deepEqual(runners.find((runner) => runner.runnerId === "old")?.taskIds, ["ping"]);
    await oldRunner.stop();
    const fresh = await makeApp({ appId: "rolling" }, caller);
    fresh.task("resize", ({ n }: { n: number }) => n * 2);
    await within(fresh.runner().drain(), "the new runner drains");
    assert.deepEqual(await queued.results(), [2, 4]);
    for (const invocation of queued.invocations) {
      assert.deepEqual(statuses(await invocation.history()), [
        "registered",
        "pending",
        "running",
        "success",
      ]);
    }
  });

  test(`[${backend}] a canceled invocation whose runner died before its function returned gets its slot back through recovery`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    const job = app.task("job", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const first = await job.call({ n: 1 });
    // A runner that claims and then dies: it never heartbeats again.
    const [claimed] = await app.orchestrator.startInvocations(1, { runnerId: "dead" });
    assert.equal(claimed?.invocation.id, first.id);
    await app.orchestrator.store.heartbeat("dead", clock.now());
    assert.equal(await first.cancel(), true);
    const record = await app.orchestrator.store.get(first.id);
    assert.equal(record?.holdsSlots, true, "a canceled execution keeps its slot");
    const second = await job.call({ n: 2 });
    assert.deepEqual(await app.orchestrator.getInvocationsToRun(1, { runnerId: "live" }), []);
    clock.advance(10_001);
    await app.orchestrator.recoverInvocations({ runnerId: "live" });
    assert.equal((await app.orchestrator.store.get(first.id))?.holdsSlots, false);
    const [next] = await app.orchestrator.getInvocationsToRun(1, { runnerId: "live" });
    assert.equal(next?.id, second.id);
    assert.equal(await first.status(), "canceled");
  });
}

/** Lifecycle under a failing heartbeat: a runner that cannot prove it is alive fences itself. */
export function fencingContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] a runner whose heartbeat has not landed for 3/4 of runnerTimeoutSeconds aborts its functions and writes nothing more; recovery re-runs the invocation elsewhere`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    // The store as this process sees it, with heartbeats that can be made to fail.
    let beatsFail = false;
    const store = app.orchestrator.store;
    const faulty = new Proxy(store, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (name === "heartbeat") {
          return (...args: Parameters<typeof store.heartbeat>) =>
            beatsFail ? Promise.reject(new Error("heartbeat lost")) : store.heartbeat(...args);
        }
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    Object.defineProperty(app.orchestrator, "store", { get: () => faulty });
    const aborted = deferred<unknown>();
    const finish = deferred();
    let runs = 0;
    const job = app.task("job", async (_args: undefined, ctx: TaskContext) => {
      if (++runs === 1) {
        ctx.signal.addEventListener("abort", () => aborted.resolve(ctx.signal.reason));
        await finish.promise;
        return "stale";
      }
      return "fresh";
    });
    const invocation = await job.call();
    const fenced = app.runner({ runnerId: "fenced", heartbeatMs: 1_000 });
    fenced.start();
    await until(isStatus(invocation, "running"), "it runs");
    beatsFail = true;
    for (let ms = 0; ms < 7_000; ms += 500) {
      clock.advance(500);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(runs, 1);
    let reason: unknown;
    void aborted.promise.then((value) => reason = value);
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(reason, undefined, "fenced before 3/4 of runnerTimeoutSeconds");
    clock.advance(600);
    reason = await within(aborted.promise, "the fence");
    assert.match(String((reason as Error).message), /runner fenced lost its heartbeat/);
    const historyBefore = (await invocation.history()).length;
    finish.resolve();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal((await invocation.history()).length, historyBefore, "a fenced runner wrote");
    assert.equal(await invocation.status(), "running");
    // Past the timeout, a live runner elsewhere recovers it and runs it again.
    const other = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } }, app);
    other.task("job", () => "fresh");
    clock.advance(3_000);
    await within(other.runner({ runnerId: "other" }).drain(), "the other runner");
    assert.equal(await invocation.result(), "fresh");
    assert.deepEqual(statuses(await invocation.history()).slice(2), [
      "running",
      "running_recovery",
      "rerouted",
      "pending",
      "running",
      "success",
    ]);
    await fenced.stop({ graceMs: 0 });
  });
}
