import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import { ReusedInvocation } from "../core/invocation.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import { claimIds } from "./_pickups.ts";

/** Delayed calls (SPEC §7.3): `delayMs` and `runAt`, on the injected clock. */
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

  test(`[${backend}] a call answered with a ReusedInvocation changes nothing of the existing invocation's time`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    const first = await task.call({ n: 1 }, { delayMs: 5_000 });
    const again = await task.call({ n: 1 });
    assert.ok(again instanceof ReusedInvocation);
    assert.equal(again.id, first.id);
    assert.equal((await app.orchestrator.store.get(first.id))!.availableAtMs, clock.now() + 5_000);
    assert.deepEqual(await claimIds(app, 10, "r1"), []);
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
