import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import { ReusedInvocation } from "../core/invocation.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import { claimIds, runToSuccess } from "./_pickups.ts";

/** Delayed calls and priorities (SPEC §7.3), on the injected clock. */
export function timeContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] delayed calls (delayMs, runAt as a Date and as epoch ms) are REGISTERED with their time, never picked up before it, and picked up in time order`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n);
    const start = clock.now();
    const late = await task.call({ n: 1 }, { delayMs: 5_000 });
    const soon = await task.call({ n: 2 }, { runAt: new Date(start + 2_000) });
    const middle = await task.call({ n: 3 }, { runAt: start + 3_000 });
    const now = await task.call({ n: 4 });
    const past = await task.call({ n: 5 }, { runAt: start - 60_000 });
    assert.equal(await late.status(), "registered");
    assert.equal((await app.orchestrator.store.get(late.id))!.availableAtMs, start + 5_000);
    assert.deepEqual(await claimIds(app, 10, "r1"), [now.id, past.id]);
    const order: string[] = [];
    for (let waited = 0; waited <= 6_000; waited += 250) {
      const claimed = await claimIds(app, 10, "r1");
      for (const id of claimed) {
        order.push(id);
        const offset = clock.now() - start;
        const due = id === soon.id ? 2_000 : id === middle.id ? 3_000 : 5_000;
        assert.ok(offset >= due, `picked up at +${offset} ms, due at +${due} ms`);
      }
      clock.advance(250);
    }
    assert.deepEqual(order, [soon.id, middle.id, late.id]);
    assert.deepEqual((await late.history()).map(({ status }) => status), ["registered", "pending"]);
  });

  test(`[${backend}] parallelize({ delayMs, commonArgs }) delays every call and merges the common arguments`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task(
      "remind",
      ({ to, text }: { to: string; text: string }) => `${to}:${text}`,
    );
    const group = await task.parallelize([{ to: "ada" }, { to: "bob" }], {
      commonArgs: { text: "hi" },
      delayMs: 1_000,
    });
    assert.deepEqual(await claimIds(app, 10, "r1"), []);
    clock.advance(1_000);
    assert.deepEqual(await claimIds(app, 10, "r1"), group.invocations.map(({ id }) => id));
    const records = await app.orchestrator.store.getMany(group.invocations.map(({ id }) => id));
    assert.deepEqual(records.map(({ args }) => args.text), ['"hi"', '"hi"']);
  });

  test(`[${backend}] a bad time option (negative, NaN or infinite delay, an invalid Date, a string, delayMs with runAt) is a TypeError naming the task, and nothing is routed`, async () => {
    const app = await makeApp();
    const task = app.task("t", ({ n }: { n: number }) => n);
    const bad: Record<string, unknown>[] = [
      { delayMs: -1 },
      { delayMs: Number.NaN },
      { delayMs: Number.POSITIVE_INFINITY },
      { delayMs: "10" },
      { runAt: new Date(Number.NaN) },
      { runAt: "2026-12-07" },
      { delayMs: 10, runAt: Date.now() },
    ];
    for (const options of bad) {
      await assert.rejects(
        task.call({ n: 1 }, options as never),
        (error: unknown) => error instanceof TypeError && /task t/.test(error.message),
        JSON.stringify(options),
      );
      await assert.rejects(
        task.parallelize([{ n: 1 }], options as never),
        TypeError,
        JSON.stringify(options),
      );
    }
    assert.equal((await app.orchestrator.store.counts()).get("t"), undefined);
  });

  test(`[${backend}] a call answered with a ReusedInvocation changes nothing of the existing invocation's time and priority`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    const first = await task.call({ n: 1 }, { delayMs: 5_000, priority: 3 });
    const again = await task.call({ n: 1 }, { priority: 9 });
    assert.ok(again instanceof ReusedInvocation);
    assert.equal(again.id, first.id);
    const record = (await app.orchestrator.store.get(first.id))!;
    assert.equal(record.availableAtMs, clock.now() + 5_000);
    assert.equal(record.priority, 3);
    assert.deepEqual(await claimIds(app, 10, "r1"), []);
  });

  test(`[${backend}] priorities order the pick-ups, higher first, then by the time each became available: a call's priority wins over its task's, and a delayed call that falls due goes where its priority puts it`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const plain = app.task("plain", ({ n }: { n: number }) => n);
    const urgent = app.task("urgent", ({ n }: { n: number }) => n, { priority: 5 });
    const calls: [string, Promise<{ id: string }>][] = [
      ["plain 0", plain.call({ n: 0 })],
      ["urgent 5", urgent.call({ n: 1 })],
      ["plain 10", plain.call({ n: 2 }, { priority: 10 })],
      ["plain -3", plain.call({ n: 3 }, { priority: -3 })],
      ["urgent 0", urgent.call({ n: 4 }, { priority: 0 })],
      ["plain 0 later", plain.call({ n: 5 })],
      ["plain 7 delayed", plain.call({ n: 6 }, { priority: 7, delayMs: 10 })],
      ["plain -3 later", plain.call({ n: 7 }, { priority: -3 })],
    ];
    const names = new Map<string, string>();
    for (const [name, call] of calls) {
      names.set((await call).id, name);
      clock.advance(1);
    }
    clock.advance(10); // the delayed call is due, after all the others became available
    const order: string[] = [];
    for (let id = await claimIds(app, 1, "r1"); id.length > 0; id = await claimIds(app, 1, "r1")) {
      order.push(names.get(id[0]!)!);
    }
    assert.deepEqual(order, [
      "plain 10",
      "plain 7 delayed",
      "urgent 5",
      "plain 0",
      "urgent 0",
      "plain 0 later",
      "plain -3",
      "plain -3 later",
    ]);
  });

  test(`[${backend}] priorities come before fairness: keyed lanes of a higher priority go first, and the lanes of each priority take turns`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const send = app.task("send", ({ to, n }: { to: string; n: number }) => `${to}${n}`, {
      runningConcurrency: "keys",
      keyArguments: ["to"],
    });
    const names = new Map<string, string>();
    const call = async (to: string, n: number, priority = 0): Promise<void> => {
      names.set((await send.call({ to, n }, { priority })).id, `${to}${n}@${priority}`);
      clock.advance(1);
    };
    for (const n of [1, 2, 3]) await call("a", n);
    for (const n of [1, 2]) await call("b", n);
    await call("a", 4, 5);
    await call("a", 5, 5);
    await call("b", 3, 5);
    const order: string[] = [];
    for (let round = 0; round < 20; round++) {
      const [id] = await claimIds(app, 1, "r1");
      if (id === undefined) break;
      order.push(names.get(id)!);
      await runToSuccess(app, { id }, "r1");
      clock.advance(1);
    }
    assert.deepEqual(order, ["a4@5", "b3@5", "a5@5", "a1@0", "b1@0", "a2@0", "b2@0", "a3@0"]);
  });

  test(`[${backend}] blocking control wins over priority: a low-priority child its parent waits on runs before a queue of high-priority work (one slot)`, async () => {
    const app = await makeApp();
    const log: string[] = [];
    const child = app.task("child", () => void log.push("child"));
    const flood = app.task("flood", () => void log.push("flood"), { priority: 500 });
    const parent = app.task("parent", async () => {
      log.push("parent:start");
      await (await child.call(undefined, { priority: -1_000 })).result();
      log.push("parent:end");
    }, { priority: 1_000 });
    await parent.call();
    await flood.parallelize(Array.from({ length: 5 }, () => undefined));
    await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
    assert.equal(log[0], "parent:start");
    assert.equal(log[1], "child", `the child ran after ${log.slice(1).join(", ")}`);
    assert.equal(log.filter((entry) => entry === "flood").length, 5);
  });

  test(`[${backend}] a bad priority (not an integer, out of ±1,000) is refused at call time and at task definition, and nothing is routed`, async () => {
    const app = await makeApp();
    const task = app.task("t", ({ n }: { n: number }) => n);
    for (const priority of [1.5, "5", Number.NaN, null]) {
      await assert.rejects(task.call({ n: 1 }, { priority } as never), TypeError, String(priority));
      await assert.rejects(task.parallelize([{ n: 1 }], { priority } as never), TypeError);
    }
    for (const priority of [1_001, -1_001]) {
      await assert.rejects(task.call({ n: 1 }, { priority }), RangeError, String(priority));
    }
    assert.throws(() => app.task("u", () => 1, { priority: 2.5 }), TypeError);
    assert.throws(() => app.task("v", () => 1, { priority: 5_000 }), RangeError);
    assert.equal((await app.orchestrator.store.counts()).get("t"), undefined);
  });

  test(`[${backend}] delayedCounts() counts per task the invocations waiting for their time, with the earliest, and none once they are due`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const remind = app.task("remind", ({ n }: { n: number }) => n);
    const other = app.task("other", ({ n }: { n: number }) => n);
    const start = clock.now();
    await remind.call({ n: 1 }, { delayMs: 9_000 });
    await remind.call({ n: 2 }, { delayMs: 4_000 });
    await other.call({ n: 3 }, { runAt: start + 6_000 });
    await other.call({ n: 4 });
    const store = app.orchestrator.store;
    assert.deepEqual(
      await store.delayedCounts(clock.now()),
      new Map([["remind", { count: 2, nextMs: start + 4_000 }], ["other", {
        count: 1,
        nextMs: start + 6_000,
      }]]),
    );
    clock.advance(6_000);
    assert.deepEqual(
      await store.delayedCounts(clock.now()),
      new Map([["remind", { count: 1, nextMs: start + 9_000 }]]),
    );
    clock.advance(3_000);
    assert.deepEqual(await store.delayedCounts(clock.now()), new Map());
  });

  test(`[${backend}] an idle runner starts a delayed call when it falls due, not a poll later (pollMs one hour)`, async () => {
    const app = await makeApp();
    const task = app.task("t", () => Date.now());
    const calledAt = Date.now();
    const delayed = await task.call(undefined, { delayMs: 50 });
    await using runner = app.runner({ pollMs: 3_600_000, graceMs: 0 });
    runner.start();
    const startedAt = await within(delayed.result(), DEADLINE_MS, "the delayed call");
    assert.ok(startedAt - calledAt >= 50, `started ${startedAt - calledAt} ms after the call`);
  });
}
