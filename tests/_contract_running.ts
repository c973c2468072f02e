import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock, WatchedClock } from "./_fake_clock.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import type { Nenc } from "../core/app.ts";
import {
  CanceledError,
  ConcurrencyControlledError,
  CycleDetectedError,
  NencError,
  RetryError,
  SerializationError,
} from "../core/errors.ts";
import type { Invocation } from "../core/invocation.ts";
import {
  AVAILABLE_FOR_RUN_STATUSES,
  type HistoryEntry,
  InvocationStatus,
  isFinalStatus,
  isValidHistory,
} from "../core/status.ts";
import type { ErrorClass } from "../core/serializer.ts";
import type { Task } from "../core/task.ts";

/** A promise the test settles by hand. */
interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
}

function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((res) => resolve = res);
  return { promise, resolve };
}

/** The error `promise` rejects with; fails the test if it resolves (or hangs). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    const value = await within(promise, DEADLINE_MS, "the awaited rejection");
    assert.fail(`expected a rejection, got ${JSON.stringify(value)}`);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    return error;
  }
}

/** Every invocation of a task, through the public query API. */
async function invocationsOf<Args, Result>(
  app: Nenc,
  task: Task<Args, Result>,
): Promise<Invocation<Result>[]> {
  const found: Invocation<Result>[] = [];
  for await (const invocation of app.orchestrator.getExistingInvocations(task)) {
    found.push(invocation);
  }
  return found;
}

const statuses = (history: readonly HistoryEntry[]): string[] =>
  history.map((entry) => entry.status);

class PaymentDeclined extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PaymentDeclined";
    this.code = code;
  }
}

class LocalOnly extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LocalOnly";
  }
}

class Flaky extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Flaky";
  }
}

/** Runners, blocking and cycle control, retries, recovery and purge, on one backend. */
export function runningContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] change() and claim() report the status each invocation had before: claimed and parked from registered, a change from pending and running, a replayed change its status now, a retry claimed again from retry, a woken one from rerouted`, async () => {
    const app = await makeApp();
    const store = app.orchestrator.store;
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const free = app.task("free", () => "ok");
    const [first, second] = (await sync.parallelize([{ n: 1 }, { n: 2 }])).invocations;
    const request = {
      runnerId: "r1",
      nowMs: app.clock.now(),
      max: 2,
      rerouteOnConcurrencyControl: () => true,
      purgeAtMs: app.clock.now() + 3_600_000,
    };
    /** Claims once; every claimed, parked or finalised id with the status it had before. */
    const claim = async (max: number) => {
      const outcome = await store.claim({ ...request, max, nowMs: app.clock.now() });
      const all = [...outcome.claimed, ...outcome.parked, ...outcome.finalised];
      assert.deepEqual([...outcome.previous.keys()].sort(), all.map(({ id }) => id).sort());
      return outcome;
    };
    /** A change by the claim's runner from where `record` is. */
    const change = (
      record: { id: string; seq: number; claimSeq: number | null },
      path: ("running" | "retry" | "success")[],
    ) =>
      store.change(record.id, {
        runnerId: "r1",
        claimSeq: record.claimSeq!,
        nowMs: app.clock.now(),
        path,
        expectSeq: record.seq,
      });
    const picked = await claim(2);
    assert.deepEqual(picked.claimed.map(({ id }) => id), [first!.id]);
    assert.deepEqual(picked.parked.map(({ id }) => id), [second!.id]);
    assert.deepEqual(
      new Map(picked.previous),
      new Map([[first!.id, "registered"], [second!.id, "registered"]]),
    );
    const invocation = await free.call();
    const freePick = await claim(1);
    assert.deepEqual(freePick.claimed.map(({ id }) => id), [invocation.id]);
    assert.equal(freePick.previous.get(invocation.id), "registered");
    const running = await change(freePick.claimed[0]!, ["running"]);
    assert.ok(running.ok);
    assert.equal(running.previous, "pending");
    const retried = await change(running.record, ["retry"]);
    assert.ok(retried.ok);
    assert.equal(retried.previous, "running");
    const replayed = await change(running.record, ["retry"]);
    assert.ok(replayed.ok && replayed.replayed === true);
    assert.equal(replayed.previous, "retry");
    const again = await claim(1);
    assert.deepEqual(again.claimed.map(({ id }) => id), [invocation.id]);
    assert.equal(again.previous.get(invocation.id), "retry");
    // The first ends: its key has room, the parked one is woken (REROUTED) and claimed from there.
    assert.ok((await change(picked.claimed[0]!, ["running", "success"])).ok);
    const woken = await claim(1);
    assert.deepEqual(woken.claimed.map(({ id }) => id), [second!.id]);
    assert.equal(woken.previous.get(second!.id), "rerouted");
  });

  test(`[${backend}] the SPEC quick start runs unchanged: fib(20) with one slot is 6765`, async () => {
    const app = await makeApp({ appId: "shop" });
    const fib = app.task("fib", async ({ n }: { n: number }): Promise<number> => {
      if (n < 2) return n;
      const [a, b] = await Promise.all([fib.call({ n: n - 1 }), fib.call({ n: n - 2 })]);
      return (await a.result()) + (await b.result()); // waits: this invocation is PAUSED, its slot freed
    }, { registrationConcurrency: "arguments" });
    await using runner = app.runner({ concurrency: 1 }); // even with one slot, fib(20) completes
    runner.start();
    const inv = await fib.call({ n: 20 });
    assert.equal(await within(inv.result(), LONG_DEADLINE_MS, "the result of fib(20)"), 6765);
  });

  // --- cycle control -----------------------------------------------------------------------------

  test(`[${backend}] cycle control: a→b→a with equal args rejects the outer result() with CycleDetectedError naming b, a (the closing call's caller first)`, async () => {
    const app = await makeApp();
    const a: Task<{ n: number }, number> = app.task(
      "a",
      async ({ n }: { n: number }): Promise<number> => (await (await b.call({ n })).result()) + 1,
    );
    const b: Task<{ n: number }, number> = app.task(
      "b",
      async ({ n }: { n: number }): Promise<number> => (await (await a.call({ n })).result()) + 1,
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const outer = await a.call({ n: 3 });
    const error = await rejection(outer.result());
    assert.ok(error instanceof CycleDetectedError, `got ${String(error)}`);
    assert.equal(error.name, "CycleDetectedError");
    assert.equal(
      error.message,
      'A cycle was detected: Cycle detected:\n- b({"n":3})\n- a({"n":3})\n- back to b({"n":3})',
    );
    const [bInvocation, ...moreB] = await invocationsOf(app, b);
    assert.equal(moreB.length, 0);
    assert.deepEqual([...error.callIds], [bInvocation!.callId, outer.callId]);
    // The inner a (the callee of the closing edge) failed before running; every invocation is final.
    const aInvocations = await invocationsOf(app, a);
    assert.equal(aInvocations.length, 2);
    const inner = aInvocations.find((invocation) => invocation.id !== outer.id)!;
    assert.equal(inner.parentId, bInvocation!.id);
    assert.equal(inner.callId, outer.callId);
    assert.deepEqual(statuses(await inner.history()), ["registered", "pending", "failed"]);
    assert.ok(await rejection(inner.result()) instanceof CycleDetectedError);
    assert.equal(await bInvocation!.status(), "failed");
    assert.equal(await outer.status(), "failed");
  });

  test(`[${backend}] cycle control: a self-call with equal args fails with a one-call CycleDetectedError`, async () => {
    const app = await makeApp();
    const self: Task<{ n: number }, number> = app.task(
      "self",
      async ({ n }: { n: number }): Promise<number> => await (await self.call({ n })).result(),
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const outer = await self.call({ n: 1 });
    const error = await rejection(outer.result());
    assert.ok(error instanceof CycleDetectedError, `got ${String(error)}`);
    assert.equal(
      error.message,
      'A cycle was detected: Cycle detected:\n- self({"n":1})\n- back to self({"n":1})',
    );
    assert.deepEqual([...error.callIds], [outer.callId]);
    assert.equal((await invocationsOf(app, self)).length, 2);
  });

  test(`[${backend}] cycle control: after a cycle failed, the same calls in a non-cyclic order succeed (edges were released)`, async () => {
    const app = await makeApp();
    let cyclic = true;
    const a: Task<{ n: number }, string> = app.task(
      "a",
      async ({ n }: { n: number }): Promise<string> =>
        cyclic ? `a(${await (await b.call({ n })).result()})` : "a-leaf",
    );
    const b: Task<{ n: number }, string> = app.task(
      "b",
      async ({ n }: { n: number }): Promise<string> => `b(${await (await a.call({ n })).result()})`,
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    assert.ok(
      await rejection((await a.call({ n: 3 })).result()) instanceof CycleDetectedError,
    );
    // If the edge a({n:3}) → b({n:3}) were still in the call graph, b → a would close a cycle now.
    cyclic = false;
    const bInvocation = await b.call({ n: 3 });
    assert.equal(await within(bInvocation.result(), DEADLINE_MS, "b's result"), "b(a-leaf)");
  });

  test(`[${backend}] cycle control off (cycleControl: false): a bounded self-recursion with equal args completes`, async () => {
    const app = await makeApp({ orchestrator: { cycleControl: false } });
    let depth = 0;
    const recurse: Task<{ n: number }, number> = app.task(
      "recurse",
      async ({ n }: { n: number }): Promise<number> => {
        if (++depth >= 4) return 0;
        return (await (await recurse.call({ n })).result()) + 1;
      },
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const outer = await recurse.call({ n: 1 });
    assert.equal(await within(outer.result(), DEADLINE_MS, "the outer recursion's result"), 3);
    const all = await invocationsOf(app, recurse);
    assert.equal(all.length, 4);
    for (const invocation of all) assert.equal(await invocation.status(), "success");
  });

  test(`[${backend}] cycle control toggled off at runtime (orchestrator.options.cycleControl = false) takes effect on the next call`, async () => {
    const app = await makeApp();
    let depth = 0;
    const recurse: Task<{ n: number }, number> = app.task(
      "recurse",
      async ({ n }: { n: number }): Promise<number> => {
        if (++depth >= 3) return 0;
        return (await (await recurse.call({ n })).result()) + 1;
      },
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    assert.ok(
      await rejection((await recurse.call({ n: 1 })).result()) instanceof CycleDetectedError,
    );
    app.orchestrator.options.cycleControl = false;
    depth = 0;
    const outer = await recurse.call({ n: 1 });
    assert.equal(await within(outer.result(), DEADLINE_MS, "the outer recursion's result"), 2);
  });

  // --- exceptions --------------------------------------------------------------------------------

  test(`[${backend}] a registered custom error comes back from result() as the same class, with name, message, data fields and cause chain`, async () => {
    const app = await makeApp({ errorClasses: [PaymentDeclined] });
    const pay = app.task("pay", ({ amount }: { amount: number }): number => {
      throw new PaymentDeclined(`Cannot pay ${amount}: declined`, "card_declined", {
        cause: new RangeError("card expired", { cause: { month: "2024-01" } }),
      });
    });
    await using runner = app.runner();
    runner.start();
    const invocation = await pay.call({ amount: 12 });
    const error = await rejection(invocation.result());
    assert.ok(error instanceof PaymentDeclined, `got ${String(error)}`);
    assert.equal(error.name, "PaymentDeclined");
    assert.equal(error.message, "Cannot pay 12: declined");
    assert.equal(error.code, "card_declined");
    assert.ok(error.cause instanceof RangeError, `cause ${String(error.cause)}`);
    assert.equal(error.cause.message, "card expired");
    assert.deepEqual(error.cause.cause, { month: "2024-01" });
    assert.equal(await invocation.status(), "failed");
  });

  test(`[${backend}] a registered error class that keeps the name "Error" still comes back as its class`, async () => {
    class Declined extends Error {}
    const app = await makeApp({ errorClasses: [Declined] });
    const pay = app.task("pay", (): never => {
      throw new Declined("Cannot pay: declined");
    });
    await using runner = app.runner();
    runner.start();
    const error = await rejection((await pay.call()).result());
    assert.ok(error instanceof Declined, `got ${String(error)}`);
    assert.equal(error.name, "Error");
    assert.equal(error.message, "Cannot pay: declined");
  });

  test(`[${backend}] an unregistered error class comes back as Error with the same name and message`, async () => {
    const app = await makeApp();
    const boom = app.task("boom", (): never => {
      throw new LocalOnly("Cannot boom: local only");
    });
    await using runner = app.runner();
    runner.start();
    const error = await rejection((await boom.call()).result());
    assert.ok(error instanceof Error);
    assert.equal(Object.getPrototypeOf(error), Error.prototype);
    assert.ok(!(error instanceof LocalOnly));
    assert.equal(error.name, "LocalOnly");
    assert.equal(error.message, "Cannot boom: local only");
  });

  test(`[${backend}] a TypeError thrown by a task stays a TypeError`, async () => {
    const app = await makeApp();
    const parse = app.task("parse", ({ text }: { text: string }): never => {
      throw new TypeError(`Cannot parse ${text}`);
    });
    await using runner = app.runner();
    runner.start();
    const error = await rejection((await parse.call({ text: "x" })).result());
    assert.ok(error instanceof TypeError, `got ${String(error)}`);
    assert.equal(error.name, "TypeError");
    assert.equal(error.message, "Cannot parse x");
  });

  test(`[${backend}] result() reads no record beside its wait's: the final record the wait saw (an end here woke it, or it was final already) is the outcome — a result, a rehydrated error, a cancel; a purged one still does not exist`, async () => {
    const app = await makeApp({ errorClasses: [PaymentDeclined] });
    const store = app.orchestrator.store;
    const read: string[] = [];
    const getMany = store.getMany.bind(store);
    store.getMany = (ids) => {
      read.push(...ids);
      return getMany(ids);
    };
    const gate = deferred();
    const add = app.task("add", async ({ n }: { n: number }) => {
      await gate.promise;
      return n + 1;
    });
    const pay = app.task("pay", (): never => {
      throw new PaymentDeclined("Cannot pay: declined", "card_declined");
    });
    const canceled = await add.call({ n: 0 });
    await canceled.cancel();
    const runner = app.runner();
    runner.start();
    const ran = await add.call({ n: 1 });
    await waitUntil(async () => (await ran.status()) === "running", { message: "add running" });
    const awaited = ran.result();
    // A read after the wait's own: once it returns, the wait waits for the end.
    await store.get(ran.id);
    gate.resolve();
    assert.equal(await within(awaited, DEADLINE_MS, "the result of add"), 2);
    const failed = await pay.call();
    await waitUntil(async () => (await failed.status()) === "failed", { message: "pay failed" });
    const error = await rejection(failed.result());
    assert.ok(error instanceof PaymentDeclined, `got ${String(error)}`);
    assert.equal(error.code, "card_declined");
    assert.ok(await rejection(canceled.result()) instanceof CanceledError);
    assert.deepEqual(read, []);
    await runner.stop();
    // Gone: the wait finds no record, and the read after it none either.
    const pending = await add.call({ n: 2 });
    const orphaned = pending.result();
    await store.get(pending.id);
    await app.orchestrator.purge();
    assert.match(String(await rejection(orphaned)), /it does not exist/);
    assert.match(String(await rejection(ran.result())), /it does not exist/);
  });

  test(`[${backend}] result() inside a task, of a child that ends while the task waits PAUSED: no read of the child after its end (the final record its wait saw is the outcome, after the resume)`, async () => {
    const app = await makeApp();
    const store = app.orchestrator.store;
    const gate = deferred();
    let returned = false;
    const readAfterEnd: string[] = [];
    const getMany = store.getMany.bind(store);
    store.getMany = (ids) => {
      if (returned) readAfterEnd.push(...ids);
      return getMany(ids);
    };
    const child = app.task("child", async ({ n }: { n: number }) => {
      await gate.promise;
      returned = true;
      return n * 2;
    });
    let childId: string | undefined;
    const parent = app.task("parent", async ({ n }: { n: number }) => {
      const called = await child.call({ n });
      childId = called.id;
      return 1 + await called.result();
    });
    // Paused, and the pause's own read of the child (what ended before its edge) is over: PAUSED
    // seen by a poll may precede that read.
    let paused = false;
    const pause = app.orchestrator.pauseForResults.bind(app.orchestrator);
    app.orchestrator.pauseForResults = (...args) => pause(...args).then(() => void (paused = true));
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const invocation = await parent.call({ n: 20 });
    await waitUntil(() => paused, { message: "parent paused" });
    gate.resolve();
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 41);
    assert.ok(childId !== undefined);
    assert.ok(!readAfterEnd.includes(childId), `read ${readAfterEnd.join(", ")}`);
  });

  test(`[${backend}] result() inside a task, of a child final before the await: the child is read once, by the wait (the record its first read found final is the outcome)`, async () => {
    const app = await makeApp();
    const store = app.orchestrator.store;
    const reads = new Map<string, number>();
    const getMany = store.getMany.bind(store);
    store.getMany = (ids) => {
      for (const id of ids) reads.set(id, (reads.get(id) ?? 0) + 1);
      return getMany(ids);
    };
    const child = app.task("child", ({ n }: { n: number }) => n * 10);
    const parent = app.task("parent", async (_args: undefined) => {
      const done = await child.call({ n: 2 });
      await waitUntil(async () => (await done.status()) === "success", { message: "the child" });
      const before = reads.get(done.id) ?? 0;
      const result = await done.result();
      return { result, reads: (reads.get(done.id) ?? 0) - before };
    });
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const invocation = await parent.call();
    assert.deepEqual(
      await within(invocation.result(), DEADLINE_MS, "the parent's result"),
      { result: 20, reads: 1 },
    );
  });

  test(`[${backend}] a pausing invocation's slot is free once PAUSED is committed: on one slot, its child runs to its end while the read after the pause (of what ended before the wait edges) does not answer`, async () => {
    const app = await makeApp();
    const store = app.orchestrator.store;
    let pausedId: string | undefined;
    // A backend that released those in the pause's own step makes no read after it.
    let readsAfterPause = 1;
    const change = store.change.bind(store);
    store.change = async (id, request) => {
      const outcome = await change(id, request);
      if (outcome.ok && request.path.includes(InvocationStatus.PAUSED)) {
        pausedId = id;
        if (outcome.endedReleased) readsAfterPause = 0;
      }
      return outcome;
    };
    const answer = deferred();
    let held = 0;
    const getMany = store.getMany.bind(store);
    store.getMany = async (ids) => {
      if (pausedId !== undefined && held === 0) {
        held++;
        await answer.promise;
      }
      return await getMany(ids);
    };
    const child = app.task("child", ({ n }: { n: number }) => n + 1);
    const parent = app.task("parent", async (_args: undefined) => {
      return await (await child.call({ n: 1 })).result();
    });
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const invocation = await parent.call();
    try {
      await waitUntil(async () => {
        const children = await store.children(invocation.id);
        return children.length === 1 && children[0]!.status === "success";
      }, { message: "the child's end" });
      assert.equal(held, readsAfterPause);
    } finally {
      answer.resolve();
    }
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 2);
  });

  // --- retries -----------------------------------------------------------------------------------

  test(`[${backend}] maxRetries: a task failing twice with RetryError succeeds on the third run and retries() is 2`, async () => {
    const app = await makeApp();
    let runs = 0;
    const flaky = app.task("flaky", (): string => {
      if (++runs <= 2) throw new RetryError(`Cannot run: attempt ${runs}`);
      return "ok";
    }, { maxRetries: 3 });
    await using runner = app.runner();
    runner.start();
    const invocation = await flaky.call();
    assert.equal(await within(invocation.result(), DEADLINE_MS, "flaky's result"), "ok");
    assert.equal(runs, 3);
    assert.equal(await invocation.retries(), 2);
    const history = await invocation.history();
    assert.deepEqual(statuses(history), [
      "registered",
      "pending",
      "running",
      "retry",
      "pending",
      "running",
      "retry",
      "pending",
      "running",
      "success",
    ]);
    assert.ok(isValidHistory(history));
  });

  test(`[${backend}] maxRetries: after the limit the invocation is FAILED with the last original error`, async () => {
    const app = await makeApp();
    let runs = 0;
    const doomed = app.task("doomed", (): never => {
      throw new RetryError(`Cannot run: attempt ${++runs}`);
    }, { maxRetries: 2 });
    await using runner = app.runner();
    runner.start();
    const invocation = await doomed.call();
    const error = await rejection(invocation.result());
    assert.ok(error instanceof RetryError, `got ${String(error)}`);
    assert.equal(error.message, "Cannot run: attempt 3");
    assert.equal(runs, 3);
    assert.equal(await invocation.retries(), 2);
    assert.equal(await invocation.status(), "failed");
    assert.equal(statuses(await invocation.history()).filter((s) => s === "retry").length, 2);
  });

  /**
   * A parent (maxRetries 2, `retryFor` as given) awaits a child that throws RetryError with no
   * retries of its own; runs it to the parent's failure and returns what the tests check.
   */
  const parentOfSpentChild = async (retryFor: ErrorClass[] | undefined) => {
    const app = await makeApp();
    let childRuns = 0;
    const child = app.task("child", (): never => {
      throw new RetryError(`Cannot run: child attempt ${++childRuns}`);
    }, { maxRetries: 0 });
    let parentRuns = 0;
    const parent = app.task("parent", async (): Promise<string> => {
      parentRuns++;
      return await (await child.call()).result();
    }, { maxRetries: 2, ...(retryFor !== undefined ? { retryFor } : {}) });
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const invocation = await parent.call();
    const error = await within(rejection(invocation.result()), DEADLINE_MS, "the parent to fail");
    assert.ok(error instanceof RetryError, `got ${String(error)}`);
    return { invocation, error, parentRuns, childRuns };
  };

  test(`[${backend}] retries: a child's exhausted RetryError that reaches the parent through result() does not retry the parent (one run, retries() 0)`, async () => {
    const { invocation, error, parentRuns, childRuns } = await parentOfSpentChild(undefined);
    assert.equal(error.message, "Cannot run: child attempt 1");
    assert.equal(await invocation.status(), "failed");
    assert.equal(await invocation.retries(), 0);
    assert.equal(parentRuns, 1);
    assert.equal(childRuns, 1);
    assert.ok(!statuses(await invocation.history()).includes("retry"));
  });

  test(`[${backend}] retries: a parent whose own retryFor lists RetryError is retried for a child's exhausted RetryError`, async () => {
    const { invocation, error, parentRuns } = await parentOfSpentChild([RetryError]);
    assert.equal(error.message, "Cannot run: child attempt 3");
    assert.equal(await invocation.retries(), 2);
    assert.equal(parentRuns, 3);
    assert.equal(statuses(await invocation.history()).filter((s) => s === "retry").length, 2);
  });

  test(`[${backend}] retryFor: a listed custom error is retried, an unlisted one fails at once`, async () => {
    const app = await makeApp();
    let flakyRuns = 0;
    const flaky = app.task("flaky", (): string => {
      if (++flakyRuns === 1) throw new Flaky("Cannot connect");
      return "connected";
    }, { maxRetries: 2, retryFor: [Flaky] });
    let brokenRuns = 0;
    const broken = app.task("broken", (): never => {
      brokenRuns++;
      throw new TypeError("Cannot run: a bug");
    }, { maxRetries: 2, retryFor: [Flaky] });
    await using runner = app.runner();
    runner.start();
    const ok = await flaky.call();
    assert.equal(await within(ok.result(), DEADLINE_MS, "flaky's result"), "connected");
    assert.equal(await ok.retries(), 1);
    assert.equal(flakyRuns, 2);
    const failed = await broken.call();
    assert.ok(await rejection(failed.result()) instanceof TypeError);
    assert.equal(await failed.retries(), 0);
    assert.equal(brokenRuns, 1);
    assert.ok(!statuses(await failed.history()).includes("retry"));
  });

  test(`[${backend}] retryBackoffMs: a retry is not run again before the (fake) clock passes the back-off`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock });
    let runs = 0;
    const flaky = app.task("flaky", (): number => {
      if (++runs === 1) throw new RetryError("Cannot run yet");
      return runs;
    }, { maxRetries: 1, retryBackoffMs: 1000 });
    let probes = 0;
    const probe = app.task("probe", () => ++probes);
    await using runner = app.runner({ concurrency: 1, pollMs: 1 });
    runner.start();
    const invocation = await flaky.call();
    // With one slot, the probe runs only after the runner handled the failed first run.
    await within((await probe.call()).result(), DEADLINE_MS, "the first probe's result");
    assert.equal(runs, 1);
    assert.equal(await invocation.status(), "retry");
    await clock.sleeping(1);
    clock.advance(999);
    await within((await probe.call()).result(), DEADLINE_MS, "the second probe's result");
    assert.equal(runs, 1, "re-run before the back-off passed");
    assert.equal(await invocation.status(), "retry");
    await clock.sleeping(1);
    clock.advance(1);
    assert.equal(await within(invocation.result(), DEADLINE_MS, "flaky's result"), 2);
    assert.equal(await invocation.retries(), 1);
  });

  test(`[${backend}] a pick-up does not skip an invocation registered while it started, even when the clock moved meanwhile`, async () => {
    // A runner reads the clock, then claims; a call registered in between (with a later
    // timestamp) must not be skipped, or the runner sleeps a whole poll interval with work queued
    // (forever, under a fake clock).
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const job = app.task("job", () => "done");
    const pickUp = app.orchestrator.getInvocationsToRun(1, { runnerId: "picker" });
    clock.advance(1);
    const invocation = await job.call();
    let claimed = await pickUp;
    if (claimed.length === 0) {
      // An async backend may have read its queue before the call landed: then the work signal
      // must still be pending, so a runner that waits now wakes without the clock moving.
      await within(app.orchestrator.store.waitWork(), DEADLINE_MS, "the work signal of the call");
      claimed = await app.orchestrator.getInvocationsToRun(1, { runnerId: "picker" });
    }
    assert.deepEqual(claimed.map((each) => each.id), [invocation.id]);
    assert.equal(await invocation.status(), "pending");
  });

  // --- blocking control --------------------------------------------------------------------------

  test(`[${backend}] blocking control: nested waits of depth 30 complete with concurrency 1, each waiter paused then resumed`, async () => {
    const app = await makeApp();
    const chain: Task<{ depth: number }, number> = app.task(
      "chain",
      async ({ depth }: { depth: number }): Promise<number> => {
        if (depth === 0) return 0;
        return (await (await chain.call({ depth: depth - 1 })).result()) + 1;
      },
    );
    await using runner = app.runner({ concurrency: 1 });
    runner.start();
    const root = await chain.call({ depth: 30 });
    assert.equal(await within(root.result(), LONG_DEADLINE_MS, "the result of depth 30"), 30);
    assert.deepEqual(statuses(await root.history()), [
      "registered",
      "pending",
      "running",
      "paused",
      "resumed",
      "success",
    ]);
    const all = await invocationsOf(app, chain);
    assert.equal(all.length, 31);
    for (const invocation of all) {
      const history = await invocation.history();
      assert.ok(isValidHistory(history), JSON.stringify(history));
      const expected = invocation.args.depth === 0
        ? ["registered", "pending", "running", "success"]
        : ["registered", "pending", "running", "paused", "resumed", "success"];
      assert.deepEqual(statuses(history), expected);
    }
  });

  // Some 2 000 KV round trips: 6 s under Bun on the remote fixture when the machine is idle, up to
  // 44 s under load (75 s under Deno), against CI's 60 s `bun test --timeout`. A hang guard of
  // its own, well above that.
  const fanOut = { timeout: 600_000 };
  for (const slots of [1, 3]) {
    const name =
      `[${backend}] blocking control: a parent fanning out 200 children completes with ${slots} slot(s)`;
    test(name, fanOut, async () => {
      const app = await makeApp();
      const child = app.task("child", ({ i }: { i: number }) => i * 2);
      const parent = app.task("parent", async ({ n }: { n: number }): Promise<number> => {
        const group = await child.parallelize(Array.from({ length: n }, (_, i) => ({ i })));
        const results = await group.results();
        return results.reduce((sum, value) => sum + value, 0);
      });
      await using runner = app.runner({ concurrency: slots });
      runner.start();
      const invocation = await parent.call({ n: 200 });
      assert.equal(
        await within(invocation.result(), fanOut.timeout, "the parent's result"),
        199 * 200,
      );
      const history = statuses(await invocation.history());
      if (slots === 1) {
        // One slot: the children can only run once the parent has paused and freed it.
        assert.deepEqual(history, [
          "registered",
          "pending",
          "running",
          "paused",
          "resumed",
          "success",
        ]);
      } else {
        assert.equal(history.at(-1), "success");
      }
      const children = await invocationsOf(app, child);
      assert.equal(children.length, 200);
      for (const c of children) assert.equal(c.parentId, invocation.id);
    });
  }

  test(`[${backend}] blocking control: a runningConcurrency "task" task that awaits another invocation of itself completes (PAUSED frees the slot)`, async () => {
    const app = await makeApp();
    const single: Task<{ n: number }, number> = app.task(
      "single",
      async ({ n }: { n: number }): Promise<number> => {
        if (n === 0) return 0;
        return (await (await single.call({ n: n - 1 })).result()) + 1;
      },
      { runningConcurrency: "task" },
    );
    await using runner = app.runner({ concurrency: 4 });
    runner.start();
    const invocation = await single.call({ n: 3 });
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the result of single(3)"), 3);
    for (const each of await invocationsOf(app, single)) {
      assert.ok(isValidHistory(await each.history()));
      assert.equal(await each.status(), "success");
    }
  });

  // --- parallelize -------------------------------------------------------------------------------

  test(`[${backend}] parallelize: results() come in call order even when the invocations finish in reverse`, async () => {
    const app = await makeApp();
    const gates = [deferred(), deferred(), deferred()];
    const started = [deferred(), deferred(), deferred()];
    const gated = app.task("gated", async ({ i }: { i: number }): Promise<number> => {
      started[i]!.resolve();
      await gates[i]!.promise;
      return i * 10;
    });
    await using runner = app.runner({ concurrency: 3 });
    runner.start();
    const group = await gated.parallelize([{ i: 0 }, { i: 1 }, { i: 2 }]);
    assert.deepEqual(group.invocations.map((invocation) => invocation.args), [
      { i: 0 },
      { i: 1 },
      { i: 2 },
    ]);
    const results = group.results();
    await within(Promise.all(started.map((s) => s.promise)), DEADLINE_MS, "all three to start");
    for (const i of [2, 1, 0]) {
      gates[i]!.resolve();
      await within(group.invocations[i]!.result(), DEADLINE_MS, `the result of gated ${i}`);
    }
    assert.deepEqual(await within(results, DEADLINE_MS, "the group's results"), [0, 10, 20]);
  });

  test(`[${backend}] parallelize: asCompleted() yields every result in completion order`, async () => {
    const app = await makeApp();
    const gates = [deferred(), deferred(), deferred()];
    const started = [deferred(), deferred(), deferred()];
    const gated = app.task("gated", async ({ i }: { i: number }): Promise<number> => {
      started[i]!.resolve();
      await gates[i]!.promise;
      return i * 10;
    });
    await using runner = app.runner({ concurrency: 3 });
    runner.start();
    const group = await gated.parallelize([{ i: 0 }, { i: 1 }, { i: 2 }], { commonArgs: {} });
    await within(Promise.all(started.map((s) => s.promise)), DEADLINE_MS, "all three to start");
    const iterator = group.asCompleted();
    const next = () => within(iterator.next(), DEADLINE_MS, "the next result of asCompleted()");
    gates[2]!.resolve();
    assert.deepEqual(await next(), { value: 20, done: false });
    gates[0]!.resolve();
    assert.deepEqual(await next(), { value: 0, done: false });
    gates[1]!.resolve();
    assert.deepEqual(await next(), { value: 10, done: false });
    assert.deepEqual(await next(), { value: undefined, done: true });
  });

  // --- history -----------------------------------------------------------------------------------

  test(`[${backend}] a simple task's history is registered, pending, running, success: exactly one "running" entry`, async () => {
    const app = await makeApp();
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    await using runner = app.runner({ runnerId: "r-simple" });
    runner.start();
    const invocation = await add.call({ x: 1, y: 2 });
    assert.equal(await within(invocation.result(), DEADLINE_MS, "add's result"), 3);
    const history = await invocation.history();
    assert.deepEqual(statuses(history), ["registered", "pending", "running", "success"]);
    assert.deepEqual(history.map((entry) => entry.seq), [1, 2, 3, 4]);
    assert.deepEqual(history.map((entry) => entry.runnerId), [
      null,
      "r-simple",
      "r-simple",
      "r-simple",
    ]);
  });

  test(`[${backend}] after fib(12), every invocation's history is a valid path with one "running" entry ending in success`, async () => {
    const app = await makeApp();
    const fib: Task<{ n: number }, number> = app.task(
      "fib",
      async ({ n }: { n: number }): Promise<number> => {
        if (n < 2) return n;
        const [a, b] = await Promise.all([fib.call({ n: n - 1 }), fib.call({ n: n - 2 })]);
        return (await a.result()) + (await b.result());
      },
      { registrationConcurrency: "arguments" },
    );
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const root = await fib.call({ n: 12 });
    assert.equal(await within(root.result(), LONG_DEADLINE_MS, "the result of fib(12)"), 144);
    const all = await invocationsOf(app, fib);
    assert.ok(all.length >= 13, `only ${all.length} invocations`);
    for (const invocation of all) {
      const history = await invocation.history();
      assert.ok(isValidHistory(history), JSON.stringify(history));
      assert.equal(statuses(history).filter((s) => s === "running").length, 1);
      assert.equal(history.at(-1)!.status, "success");
    }
  });

  // --- stop, re-queue, unknown tasks -------------------------------------------------------------

  // --- running concurrency -----------------------------------------------------------------------

  test(`[${backend}] running concurrency "keys": 60 invocations over 3 keys on 2 runners × 4 slots never overlap per key and each succeeds once`, async () => {
    const first = await makeApp({ appId: "keys" });
    const second = await makeApp({ appId: "keys" }, first);
    const active = new Map<string, number>();
    const runsOf = new Map<number, number>();
    let overlaps = 0;
    let activeAll = 0;
    let maxActiveAll = 0;
    const body = async ({ key, i }: { key: string; i: number }): Promise<number> => {
      runsOf.set(i, (runsOf.get(i) ?? 0) + 1);
      const now = (active.get(key) ?? 0) + 1;
      active.set(key, now);
      if (now > 1) overlaps++;
      maxActiveAll = Math.max(maxActiveAll, ++activeAll);
      // Yield to the event loop (not only to microtasks), so that a backend doing real I/O can
      // start other runs meanwhile and an overlap would show.
      for (let y = 0; y < 10; y++) await new Promise((resolve) => setTimeout(resolve, 0));
      active.set(key, active.get(key)! - 1);
      activeAll--;
      return i;
    };
    const options = { runningConcurrency: "keys", keyArguments: ["key"] } as const;
    const keyed = first.task("keyed", body, options);
    const keyedThere = second.task("keyed", body, options);
    await using runnerOne = first.runner({ concurrency: 4 });
    await using runnerTwo = second.runner({ concurrency: 4 });
    runnerOne.start();
    runnerTwo.start();
    const args = Array.from({ length: 60 }, (_, i) => ({ key: `k${i % 3}`, i }));
    const group = await keyed.parallelize(args);
    assert.deepEqual(
      await within(group.results(), LONG_DEADLINE_MS, "the 60 keyed results"),
      args.map(({ i }) => i),
    );
    assert.equal(overlaps, 0);
    assert.ok(maxActiveAll >= 2, "different keys never ran at the same time");
    assert.equal(runsOf.size, 60);
    for (const [i, runs] of runsOf) assert.equal(runs, 1, `invocation ${i} ran ${runs} times`);
    const all = await invocationsOf(second, keyedThere);
    assert.equal(all.length, 60);
    for (const invocation of all) {
      const history = await invocation.history();
      assert.ok(isValidHistory(history), JSON.stringify(history));
      assert.equal(statuses(history).filter((s) => s === "success").length, 1);
      assert.equal(statuses(history).filter((s) => s === "running").length, 1);
    }
  });

  test(`[${backend}] rerouteOnConcurrencyControl false: a second invocation of a busy key ends CONCURRENCY_CONTROLLED_FINAL and result() rejects with ConcurrencyControlledError`, async () => {
    const app = await makeApp();
    const started = deferred();
    const gate = deferred();
    const exclusive = app.task("exclusive", async ({ key, i }: { key: string; i: number }) => {
      if (i === 0) {
        started.resolve();
        await gate.promise;
      }
      return `${key}${i}`;
    }, { runningConcurrency: "keys", keyArguments: ["key"], rerouteOnConcurrencyControl: false });
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const holder = await exclusive.call({ key: "k", i: 0 });
    await within(started.promise, DEADLINE_MS, "the holder to start");
    const refused = await exclusive.call({ key: "k", i: 1 });
    const error = await rejection(refused.result());
    assert.ok(error instanceof ConcurrencyControlledError, `got ${String(error)}`);
    assert.equal(error.taskId, "exclusive");
    assert.equal(error.invocationId, refused.id);
    assert.equal(await refused.status(), "concurrency_controlled_final");
    assert.deepEqual(statuses(await refused.history()), [
      "registered",
      "concurrency_controlled_final",
    ]);
    // Another key is not blocked.
    const other = await exclusive.call({ key: "other", i: 1 });
    assert.equal(await within(other.result(), DEADLINE_MS, "the other key's result"), "other1");
    gate.resolve();
    assert.equal(await within(holder.result(), DEADLINE_MS, "the holder's result"), "k0");
  });

  // --- results that are not JSON -----------------------------------------------------------------

  test(`[${backend}] a result that is not JSON (a function, a Map) fails the invocation with SerializationError naming the task`, async () => {
    const app = await makeApp();
    const giveFunction = app.task("giveFunction", () => () => 1);
    const giveMap = app.task("giveMap", () => new Map([["a", 1]]));
    await using runner = app.runner();
    runner.start();
    for (const task of [giveFunction, giveMap] as Task<undefined, unknown>[]) {
      const invocation = await task.call();
      const error = await rejection(invocation.result());
      assert.ok(error instanceof SerializationError, `got ${String(error)}`);
      assert.match(error.message, new RegExp(`task ${task.id}\\b`));
      assert.equal(await invocation.status(), "failed");
    }
  });

  // --- recovery ----------------------------------------------------------------------------------

  test(`[${backend}] a dead runner's RUNNING invocation is recovered (running_recovery → rerouted) by a live runner after runnerTimeoutSeconds and completes`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    let runs = 0;
    const job = app.task("job", ({ x }: { x: number }) => {
      runs++;
      return x * 2;
    });
    const probe = app.task("probe", () => "alive");
    const invocation = await job.call({ x: 21 });
    const claimed = await app.orchestrator.getInvocationsToRun(1, { runnerId: "dead" });
    assert.deepEqual(claimed.map((each) => each.id), [invocation.id]);
    await app.orchestrator.setInvocationRun(undefined, claimed[0]!, { runnerId: "dead" });
    // The dead runner was alive when it took the invocation.
    await app.orchestrator.store.heartbeat("dead", clock.now());
    assert.equal(await invocation.status(), "running");

    await using runner = app.runner({ runnerId: "live", heartbeatMs: 1000, pollMs: 100 });
    runner.start();
    // The live runner has been through its first heartbeat and a pick-up: not recovered yet.
    const probed = await probe.call();
    assert.equal(await within(probed.result(), DEADLINE_MS, "the probe's result"), "alive");
    assert.equal(await invocation.status(), "running");
    assert.equal(runs, 0);

    await clock.sleeping(100);
    clock.advance(10_001);
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the recovered result"), 42);
    assert.equal(runs, 1);
    const history = await invocation.history();
    assert.ok(isValidHistory(history));
    assert.deepEqual(
      history.map((entry) => [entry.status, entry.runnerId]),
      [
        ["registered", null],
        ["pending", "dead"],
        ["running", "dead"],
        ["running_recovery", "live"],
        ["rerouted", "live"],
        ["pending", "live"],
        ["running", "live"],
        ["success", "live"],
      ],
    );
    // The dead runner's heartbeat entry went with its invocation.
    assert.deepEqual((await app.orchestrator.store.runners()).map((r) => r.runnerId), ["live"]);
  });

  test(`[${backend}] removeRunner() with a time forgets a runner only if its last heartbeat is older`, async () => {
    const app = await makeApp();
    const store = app.orchestrator.store;
    await store.heartbeat("r1", 1_000);
    await store.removeRunner("r1", 1_000);
    assert.deepEqual((await store.runners()).map((r) => r.runnerId), ["r1"]);
    await store.removeRunner("r1", 1_001);
    assert.deepEqual(await store.runners(), []);
    await store.removeRunner("never-seen", 5_000);
    await store.heartbeat("r2", 7);
    await store.removeRunner("r2");
    assert.deepEqual(await store.runners(), []);
  });

  test(`[${backend}] an invocation whose owner never sent a heartbeat is not recovered before runnerTimeoutSeconds`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    const job = app.task("job", ({ x }: { x: number }) => x + 1);
    const probe = app.task("probe", () => "alive");
    const invocation = await job.call({ x: 1 });
    const [claimed] = await app.orchestrator.getInvocationsToRun(1, { runnerId: "silent" });
    await app.orchestrator.setInvocationRun(undefined, claimed!, { runnerId: "silent" });
    await using runner = app.runner({ runnerId: "live", heartbeatMs: 1000, pollMs: 100 });
    runner.start();
    const probed = await probe.call();
    assert.equal(await within(probed.result(), DEADLINE_MS, "the probe's result"), "alive");
    // No time has passed: "silent" took the invocation a moment ago.
    assert.equal(await invocation.status(), "running");
    await clock.sleeping(100);
    clock.advance(10_001);
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the recovered result"), 2);
    assert.ok(statuses(await invocation.history()).includes("running_recovery"));
  });

  for (const slots of [1, 2]) {
    test(`[${backend}] a runner whose paused invocation was recovered and claimed by another runner keeps its ${slots} slot(s): ${slots} later invocation(s) still run at once`, async () => {
      const clock = new FakeClock();
      const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
      // Another process on the same backend whose clock is a minute ahead: to it, runner "r1"
      // looks dead (as after a long GC pause, or a partition from a remote KV).
      const ahead = new FakeClock(clock.now() + 60_000);
      const other = await makeApp(
        { clock: ahead, orchestrator: { runnerTimeoutSeconds: 10 } },
        app,
      );
      const awaited = app.task("awaited", () => "never run by r1");
      const parentFailed = deferred<unknown>();
      const parent = app.task("parent", async ({ id }: { id: string }) => {
        try {
          return await app.orchestrator.waitForResults([{ id }]);
        } catch (error) {
          parentFailed.resolve(error);
          throw error;
        }
      });
      const blockerGate = deferred();
      const blockersStarted = deferred();
      let blockers = 0;
      const blocker = app.task("blocker", async (_: { i: number }) => {
        if (++blockers === slots) blockersStarted.resolve();
        await blockerGate.promise;
      });
      const allRunning = deferred();
      let running = 0;
      const together = app.task("together", async ({ i }: { i: number }) => {
        if (++running === slots) allRunning.resolve();
        await allRunning.promise;
        return i;
      });

      // What the parent waits on is run by hand, by runner "hand", which stays alive.
      const held = await awaited.call();
      const [claimedByHand] = await other.orchestrator.getInvocationsToRun(1, { runnerId: "hand" });
      assert.equal(claimedByHand?.id, held.id);
      await other.orchestrator.setInvocationRun(undefined, held, { runnerId: "hand" });

      await using runner = app.runner({ runnerId: "r1", concurrency: slots });
      runner.start();
      const invocation = await parent.call({ id: held.id });
      await waitUntil(async () => await invocation.status() === "paused", {
        message: "the parent never paused",
      });
      // Blockers take r1's free slots: r1 cannot claim the parent again itself once recovered.
      await blocker.parallelize(Array.from({ length: slots }, (_, i) => ({ i })));
      await within(blockersStarted.promise, DEADLINE_MS, "the blockers to start");

      // "other" recovers all that r1 owns and claims it.
      await other.orchestrator.store.heartbeat("hand", ahead.now());
      const recovered = await other.orchestrator.recoverInvocations({ runnerId: "other" });
      assert.equal(recovered.length, slots + 1);
      assert.ok(recovered.some(({ id }) => id === invocation.id));
      const claimed = await other.orchestrator.getInvocationsToRun(slots + 1, {
        runnerId: "other",
      });
      assert.deepEqual(
        claimed.map(({ id }) => id).sort(),
        recovered.map(({ id }) => id).sort(),
      );
      // r1's stale blockers end (their results are refused); then what the parent waits on
      // finishes, and r1's stale execution of the parent tries to resume: refused, it is other's.
      blockerGate.resolve();
      await other.orchestrator.setInvocationResult(held, "done", { runnerId: "hand" });
      const staleError = await within(
        parentFailed.promise,
        DEADLINE_MS,
        "the stale parent to fail",
      );
      assert.ok(
        staleError instanceof NencError && /not runner r1's any more/.test(staleError.message),
        `the stale parent resumed an invocation it no longer owns: ${String(staleError)}`,
      );

      // r1 still has all its slots. (The guard awaits no store waiter, which would outlive a
      // failure and keep a KV poller going.)
      const group = await together.parallelize(Array.from({ length: slots }, (_, i) => ({ i })));
      await within(
        allRunning.promise,
        20_000,
        `${slots} invocation(s) to run at once (runner r1 lost a slot)`,
      );
      assert.deepEqual(
        await within(group.results(), DEADLINE_MS, "the results of together"),
        Array.from({ length: slots }, (_, i) => i),
      );
      // The parent is intact for its new owner: r1's stale execution wrote nothing to it.
      await other.orchestrator.setInvocationRun(undefined, invocation, { runnerId: "other" });
      await other.orchestrator.setInvocationResult(invocation, ["from other"], {
        runnerId: "other",
      });
      assert.deepEqual(
        await within(invocation.result(), DEADLINE_MS, "the parent's result"),
        ["from other"],
      );
      const history = await invocation.history();
      assert.ok(isValidHistory(history), JSON.stringify(history));
      assert.ok(!statuses(history).includes("resumed"));
    });
  }

  // --- arguments and parents ---------------------------------------------------------------------

  test(`[${backend}] children(): the invocations a parent called, oldest first, from the index; a purged child leaves it`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { autoFinalInvocationPurgeHours: 1 } });
    const child = app.task("child", ({ i }: { i: number }) => i);
    const parent = app.task("parent", async (): Promise<number> => {
      const group = await child.parallelize([{ i: 1 }, { i: 2 }]);
      const last = await child.call({ i: 3 });
      return (await group.results()).length + (await last.result());
    });
    const other = await child.call({ i: 0 });
    const invocation = await parent.call();
    await within(app.runner({ concurrency: 2 }).drain(), DEADLINE_MS, "the drain");
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), 5);
    const children = await app.orchestrator.store.children(invocation.id);
    assert.deepEqual(children.map((record) => record.args), [{ i: "1" }, { i: "2" }, { i: "3" }]);
    assert.ok(children.every((record) => record.parentId === invocation.id));
    assert.deepEqual(await app.orchestrator.store.children(other.id), []);
    clock.advance(3_600_001);
    assert.equal(await app.orchestrator.autoPurge(), 5);
    assert.deepEqual(await app.orchestrator.store.children(invocation.id), []);
  });

  test(`[${backend}] a task gets its arguments, and a child called inside a task has parentId = the parent invocation`, async () => {
    const app = await makeApp();
    const seen: unknown[] = [];
    const child = app.task("child", (args: { name: string; tags: string[] }) => {
      seen.push(args);
      return args.tags.length;
    });
    const parent = app.task(
      "parent",
      async ({ name }: { name: string }): Promise<{ id: string; parentId: string | null }> => {
        const invocation = await child.call({ name, tags: ["x", "y"] });
        await invocation.result();
        return { id: invocation.id, parentId: invocation.parentId };
      },
    );
    await using runner = app.runner({ concurrency: 2 });
    runner.start();
    const outer = await parent.call({ name: "ada" });
    assert.equal(outer.parentId, null);
    assert.deepEqual(outer.args, { name: "ada" });
    const { id, parentId } = await within(outer.result(), DEADLINE_MS, "the parent's result");
    assert.equal(parentId, outer.id);
    assert.deepEqual(seen, [{ name: "ada", tags: ["x", "y"] }]);
    const [stored, ...others] = await invocationsOf(app, child);
    assert.equal(others.length, 0);
    assert.equal(stored!.id, id);
    assert.equal(stored!.parentId, outer.id);
    assert.deepEqual(stored!.args, { name: "ada", tags: ["x", "y"] });
    assert.equal((await app.orchestrator.getInvocation(id))?.parentId, outer.id);
  });

  test(`[${backend}] drain() runs what is queued, nested waits included, then stops by itself`, async () => {
    const app = await makeApp();
    const leaf = app.task("leaf", ({ n }: { n: number }) => n * 2);
    const sum = app.task("sum", async ({ n }: { n: number }) => {
      const group = await leaf.parallelize(Array.from({ length: n }, (_, i) => ({ n: i })));
      return (await group.results()).reduce((total, value) => total + value, 0);
    });
    const invocations = [await sum.call({ n: 5 }), await leaf.call({ n: 21 })];
    const runner = app.runner({ concurrency: 1 });
    const report = await within(runner.drain({ maxMs: 60_000 }), LONG_DEADLINE_MS, "the drain");
    assert.equal(report.timedOut, false);
    assert.equal(report.invocations, 7);
    assert.equal(runner.running, false);
    assert.deepEqual(
      await within(app.orchestrator.waitForResults(invocations), DEADLINE_MS, "the results"),
      [20, 42],
    );
  });

  test(`[${backend}] drain() that runs out of time hands back what still runs: nothing is left half-done`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock });
    const started = deferred();
    const release = deferred();
    const slow = app.task("slow", async () => {
      started.resolve();
      await release.promise;
      return "late";
    }, { runningConcurrency: "task" });
    const invocation = await slow.call();
    const draining = app.runner({ pollMs: 5_000, heartbeatMs: 4_000 }).drain({
      maxMs: 1_000,
      graceMs: 0,
    });
    await within(started.promise, DEADLINE_MS, "slow to start");
    await clock.sleeping(5_000);
    clock.advance(1_000);
    const report = await within(draining, DEADLINE_MS, "the drain to run out of time");
    assert.equal(report.timedOut, true);
    assert.equal(await invocation.status(), "rerouted");
    assert.deepEqual(statuses(await invocation.history()).slice(-3), [
      "running",
      "killed",
      "rerouted",
    ]);
    // Nothing half-done: every invocation final or queued again, and no running slot held.
    for (const each of await invocationsOf(app, slow)) {
      const record = (await app.orchestrator.store.get(each.id))!;
      assert.ok(isFinalStatus(record.status) || AVAILABLE_FOR_RUN_STATUSES.has(record.status));
      assert.deepEqual(await app.orchestrator.store.slotHolders(record.runningKey!), []);
    }
    release.resolve();
    await using next = app.runner();
    next.start();
    assert.equal(await within(invocation.result(), DEADLINE_MS, "slow's result"), "late");
  });

  test(`[${backend}] a paused invocation that cannot resume reserves its running slot: new pick-ups of its key wait until it has resumed`, async () => {
    const app = await makeApp();
    const task = app.task("t", () => 0, { runningConcurrency: "task" });
    const [p, q1, q2] = [await task.call(), await task.call(), await task.call()];
    const claim = (runnerId: string) => app.orchestrator.getInvocationsToRun(1, { runnerId });
    assert.deepEqual((await claim("r1")).map(({ id }) => id), [p.id]);
    await app.orchestrator.setInvocationRun(undefined, p, { runnerId: "r1" });
    await app.orchestrator.setInvocationStatus(p, "paused", { runnerId: "r1" }); // frees the slot
    assert.deepEqual((await claim("r2")).map(({ id }) => id), [q1.id]);
    await app.orchestrator.setInvocationRun(undefined, q1, { runnerId: "r2" });
    // P's results are in, but Q1 holds the slot: the resume is refused and reserves the slot.
    assert.equal(
      await app.orchestrator.setInvocationStatus(p, "resumed", { runnerId: "r1" }),
      false,
    );
    await app.orchestrator.setInvocationResult(q1, 1, { runnerId: "r2" });
    // The slot is free, but reserved: a new pick-up of the key is refused (parked)…
    assert.deepEqual(await claim("r3"), []);
    assert.equal(await q2.status(), "concurrency_controlled");
    // …until P has resumed and finished.
    assert.equal(
      await app.orchestrator.setInvocationStatus(p, "resumed", { runnerId: "r1" }),
      true,
    );
    await app.orchestrator.setInvocationResult(p, 2, { runnerId: "r1" });
    assert.deepEqual((await claim("r3")).map(({ id }) => id), [q2.id]);
  });

  test(`[${backend}] a slot reservation ends when its paused invocation is recovered instead of resumed`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 1 } });
    const task = app.task("t", () => 0, { runningConcurrency: "task" });
    const [p, q1, q2] = [await task.call(), await task.call(), await task.call()];
    const claim = (runnerId: string) => app.orchestrator.getInvocationsToRun(1, { runnerId });
    await claim("dead");
    await app.orchestrator.setInvocationRun(undefined, p, { runnerId: "dead" });
    await app.orchestrator.setInvocationStatus(p, "paused", { runnerId: "dead" });
    await claim("r2");
    await app.orchestrator.setInvocationRun(undefined, q1, { runnerId: "r2" });
    assert.equal(
      await app.orchestrator.setInvocationStatus(p, "resumed", { runnerId: "dead" }),
      false,
    );
    await app.orchestrator.setInvocationResult(q1, 1, { runnerId: "r2" });
    await app.orchestrator.store.heartbeat("r2", clock.now());
    clock.advance(2_000);
    await app.orchestrator.store.heartbeat("r2", clock.now());
    const recovered = await app.orchestrator.recoverInvocations({ runnerId: "r2" });
    assert.deepEqual(recovered.map(({ id }) => id), [p.id]);
    // The reservation went with the recovery: the key's queue moves again.
    const next = (await claim("r3")).map(({ id }) => id);
    assert.equal(next.length, 1);
    assert.ok([p.id, q2.id].includes(next[0]!));
  });
}
