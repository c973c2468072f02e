import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import type { Nenc } from "../core/app.ts";
import type { Invocation } from "../core/invocation.ts";
import { FakeClock, WatchedClock } from "./_fake_clock.ts";
import { seededRandom } from "./_random.ts";
import { DEADLINE_MS, waitUntil } from "./_deadline.ts";
import { claimIds, runToSuccess, statusPath, windowsOverLimit } from "./_pickups.ts";

/**
 * The pick-ups of the long run below, per backend. Each costs about 4 commits (its park, its wake,
 * itself, and a share of registrations and wake markers). Memory and KV in memory run 10,000 (1 s
 * and 7 s); a KV file runs the same transitions with a commit about 0.35 ms dearer (10,000: 30 s),
 * and the remote KV fixture with a commit about 40 ms dearer (its HTTP/2 path: 10,000 would take
 * half an hour), so they run 2,000 and 100.
 */
function pickUpsOn(backend: string): number {
  return backend.includes("remote") ? 100 : backend.includes("file") ? 2_000 : 10_000;
}

/** The time of each PENDING entry of an invocation's history: its pick-ups. */
async function pickUpTimes(invocation: Invocation<unknown>): Promise<number[]> {
  return (await invocation.history()).filter(({ status }) => status === "pending")
    .map(({ timestampMs }) => timestampMs);
}

/**
 * Rate limits (SPEC §7.3): at most `limit` pick-ups (moves to PENDING) per key in any window of
 * `intervalMs`; a pick-up over the limit parks until the window opens, and is woken then.
 */
export function ratesContract(backend: string, makeApp: AppFactory): void {
  const pickUps = pickUpsOn(backend);
  test(`[${backend}] rate limit 5 per 1,000 ms: ${pickUps} pick-ups by two apps sharing one store, on a clock moving in irregular steps, never put 6 in a window of 1,000 ms (every window checked), and fill windows to 5`, async () => {
    const clock = new FakeClock();
    const first = await makeApp({ clock });
    const second = await makeApp({ clock }, first);
    const define = (app: Nenc) =>
      app.task("call", ({ n }: { n: number }) => n, { rateLimit: { limit: 5, intervalMs: 1_000 } });
    const call = define(first);
    define(second);
    const random = seededRandom(7);
    // The clock moves only between pick-ups: each pick-up's time is the clock's time then.
    const times: number[] = [];
    let registered = 0;
    // At 5 a second the run takes pickUps / 5 seconds of the clock; twice that means it stalled.
    const end = clock.now() + pickUps / 5 * 1_000 * 2;
    while (times.length < pickUps) {
      assert.ok(clock.now() < end, `stalled after ${times.length} pick-ups`);
      // A backlog of up to 12: enough to fill every window, and to park what it cannot hold.
      const more = Math.min(pickUps - registered, 12 - (registered - times.length));
      if (more > 0) {
        await call.parallelize(Array.from({ length: more }, (_, i) => ({ n: registered + i })));
        registered += more;
      }
      for (const [app, runnerId] of [[first, "r1"], [second, "r2"]] as const) {
        for (const _ of await claimIds(app, 8, runnerId)) times.push(clock.now());
      }
      // Mostly long steps, some of a few ms: pick-ups land at every phase of a window.
      clock.advance(1 + (random.next() < 0.3 ? random.int(20) : random.int(900)));
    }
    assert.equal(windowsOverLimit(times, 5, 1_000), 0, "windows of 1,000 ms with 6 pick-ups");
    const full = windowsOverLimit(times, 4, 1_000);
    assert.ok(full >= pickUps / 10, `only ${full} windows held 5 pick-ups`);
  });

  test(`[${backend}] rateWindows() reads every rate limit key's log and parked count (the CLI's status), one key per key argument`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const send = app.task("send", ({ to }: { to: string; n: number }) => to, {
      rateLimit: { limit: 1, intervalMs: 60_000, by: "keys" },
      keyArguments: ["to"],
    });
    await send.parallelize([{ to: "ada", n: 1 }, { to: "ada", n: 2 }, { to: "bob", n: 1 }]);
    assert.equal((await claimIds(app, 3, "r1")).length, 2);
    const windows = await app.orchestrator.store.rateWindows();
    assert.deepEqual(
      windows.map(({ starts, parked, woken }) => ({ starts, parked, woken }))
        .sort((a, b) => b.parked - a.parked),
      [
        { starts: [clock.now()], parked: 1, woken: 0 },
        { starts: [clock.now()], parked: 0, woken: 0 },
      ],
    );
    assert.ok(windows.every(({ key }) => key.startsWith("#rate#send#")), String(windows[0]?.key));
  });

  test(`[${backend}] windows are half-open: a pick-up leaves its window exactly intervalMs after it, not a millisecond sooner or later`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 2, intervalMs: 1_000 },
    });
    const at = async (offsetMs: number, expected: "claimed" | "parked", n: number) => {
      clock.advance(offsetMs - (clock.now() - start));
      const invocation = await task.call({ n });
      const claimed = await claimIds(app, 1, "r1");
      assert.deepEqual(claimed, expected === "claimed" ? [invocation.id] : [], `n=${n}`);
    };
    const start = clock.now();
    await at(0, "claimed", 0);
    await at(500, "claimed", 1);
    await at(999, "parked", 2); // 0 and 500 are in the window (−1, 999]
    clock.advance(1);
    assert.equal((await claimIds(app, 1, "r1")).length, 1, "n=2 at +1,000 ms"); // 0 left
    await at(1_499, "parked", 3); // 500 and 1,000 are in (499, 1,499]
    clock.advance(1);
    assert.equal((await claimIds(app, 1, "r1")).length, 1, "n=3 at +1,500 ms");
  });

  test(`[${backend}] the claimer's clock stamps and reads the window: a runner whose clock runs 300 ms behind cannot take a window another runner's clock opened, and takes it when its own clock gets there`, async () => {
    const ahead = new FakeClock();
    const behind = new FakeClock(ahead.now() - 300);
    const first = await makeApp({ clock: ahead });
    const second = await makeApp({ clock: behind }, first);
    const options = { rateLimit: { limit: 1, intervalMs: 1_000 } };
    const task = first.task("t", ({ n }: { n: number }) => n, options);
    second.task("t", ({ n }: { n: number }) => n, options);
    const [x, y] = [await task.call({ n: 1 }), await task.call({ n: 2 })];
    assert.deepEqual(await claimIds(first, 2, "ahead"), [x.id]); // y parks
    ahead.advance(1_000);
    behind.advance(1_000);
    // The window opened on the clock ahead: its pick-up wakes y (and takes nothing: max 0).
    assert.deepEqual(await claimIds(first, 0, "ahead"), []);
    assert.equal(await y.status(), "rerouted");
    // 700 ms after x on the clock behind: y is refused, and parks again.
    assert.deepEqual(await claimIds(second, 1, "behind"), []);
    assert.equal(await y.status(), "concurrency_controlled");
    behind.advance(300);
    assert.deepEqual(await claimIds(second, 1, "behind"), [y.id]);
    const [[xAt], [yAt]] = [await pickUpTimes(x), await pickUpTimes(y)];
    assert.equal(yAt! - xAt!, 1_000);
  });

  test(`[${backend}] rate limit by "keys": two keys each get their own 5 pick-ups per window`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const sync = app.task("sync", ({ tenant }: { tenant: string; n: number }) => tenant, {
      rateLimit: { by: "keys", limit: 5, intervalMs: 1_000 },
      keyArguments: ["tenant"],
    });
    const calls = await sync.parallelize(
      Array.from({ length: 24 }, (_, n) => ({ tenant: n % 2 === 0 ? "a" : "b", n })),
    );
    const tenantOf = new Map(calls.invocations.map((invocation) => [
      invocation.id,
      invocation.args.tenant,
    ]));
    const perTenant = async () => {
      const counts = { a: 0, b: 0 };
      for (const id of await claimIds(app, 24, "r1")) counts[tenantOf.get(id) as "a" | "b"]++;
      return counts;
    };
    assert.deepEqual(await perTenant(), { a: 5, b: 5 });
    clock.advance(999);
    assert.deepEqual(await perTenant(), { a: 0, b: 0 });
    clock.advance(1);
    assert.deepEqual(await perTenant(), { a: 5, b: 5 });
    clock.advance(1_000);
    assert.deepEqual(await perTenant(), { a: 2, b: 2 });
  });

  test(`[${backend}] a rate-limited pick-up parks with one history entry, 50 polls before the window opens write nothing, the parked are woken when it opens — in queue order, no more than it admits — and the store's next due time is the opening`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 2, intervalMs: 1_000 },
    });
    const start = clock.now();
    const [a, b, c, d, e] = (await task.parallelize([0, 1, 2, 3, 4].map((n) => ({ n }))))
      .invocations;
    assert.deepEqual(await claimIds(app, 10, "r1"), [a!.id, b!.id]);
    for (const parked of [c, d, e]) {
      assert.deepEqual(await statusPath(parked!), ["registered", "concurrency_controlled"]);
    }
    assert.equal(await app.orchestrator.store.nextAvailableMs(clock.now()), start + 1_000);
    for (let poll = 0; poll < 50; poll++) {
      clock.advance(19);
      assert.deepEqual(await claimIds(app, 10, "r2"), [], `poll at +${clock.now() - start} ms`);
    }
    for (const parked of [c, d, e]) assert.equal((await parked!.history()).length, 2);
    clock.advance(1_000 - (clock.now() - start));
    assert.deepEqual(await claimIds(app, 10, "r2"), [c!.id, d!.id]);
    assert.deepEqual(await statusPath(c!), [
      "registered",
      "concurrency_controlled",
      "rerouted",
      "pending",
    ]);
    assert.deepEqual(await statusPath(e!), ["registered", "concurrency_controlled"]);
    assert.equal(await app.orchestrator.store.nextAvailableMs(clock.now()), start + 2_000);
    clock.advance(999);
    assert.deepEqual(await claimIds(app, 10, "r2"), []);
    clock.advance(1);
    assert.deepEqual(await claimIds(app, 10, "r2"), [e!.id]);
    assert.equal(await app.orchestrator.store.nextAvailableMs(clock.now()), undefined);
  });

  test(`[${backend}] an idle runner (pollMs one hour) sleeps until a rate limit window opens for what is parked on it, and starts it then, moved by the clock alone`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 1, intervalMs: 1_500 },
    });
    const [x, y] = [await task.call({ n: 1 }), await task.call({ n: 2 })];
    await using runner = app.runner({ pollMs: 3_600_000, graceMs: 0 });
    runner.start();
    await waitUntil(
      async () => await x.status() === "success" && await y.status() === "concurrency_controlled",
      { message: "x never ran with y parked" },
    );
    // Its idle wait ends when the window opens (x was picked up at the clock's time), not a poll
    // of an hour later. (1,500 ms: no other wait of the runner is that long.)
    await clock.sleeping(1_500);
    clock.advance(1_500);
    await waitUntil(async () => await y.status() === "success", {
      message: "y was not started when its window opened",
      timeoutMs: DEADLINE_MS,
    });
    const [[xAt], [yAt]] = [await pickUpTimes(x), await pickUpTimes(y)];
    assert.equal(yAt! - xAt!, 1_500);
  });

  test(`[${backend}] a resume does not count against the rate limit, and is never refused by it`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const o = app.orchestrator;
    const task = app.task("t", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 1, intervalMs: 1_000 },
    });
    const [parent, other] = [await task.call({ n: 0 }), await task.call({ n: 1 })];
    assert.deepEqual(await claimIds(app, 1, "r1"), [parent.id]);
    await o.setInvocationRun(undefined, parent, { runnerId: "r1" });
    await o.setInvocationStatus(parent, "paused", { runnerId: "r1" });
    clock.advance(10);
    assert.equal(await o.setInvocationStatus(parent, "resumed", { runnerId: "r1" }), true);
    assert.deepEqual(await claimIds(app, 1, "r2"), []);
    // Had the resume counted (at +10 ms), the window would open at +1,010 ms.
    clock.advance(990);
    assert.deepEqual(await claimIds(app, 1, "r2"), [other.id]);
    await o.setInvocationResult(parent, 0, { runnerId: "r1" });
  });

  test(`[${backend}] with rerouteOnConcurrencyControl: false a pick-up over the rate limit still parks and runs later (a full running key finalises)`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const rated = app.task("rated", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 1, intervalMs: 1_000 },
      rerouteOnConcurrencyControl: false,
    });
    const strict = app.task("strict", ({ n }: { n: number }) => n, {
      runningConcurrency: "task",
      rerouteOnConcurrencyControl: false,
    });
    const [r1, r2] = [await rated.call({ n: 1 }), await rated.call({ n: 2 })];
    const [s1, s2] = [await strict.call({ n: 1 }), await strict.call({ n: 2 })];
    assert.deepEqual(await claimIds(app, 10, "r1"), [r1.id, s1.id]);
    assert.equal(await r2.status(), "concurrency_controlled");
    assert.equal(await s2.status(), "concurrency_controlled_final");
    clock.advance(1_000);
    assert.deepEqual(await claimIds(app, 10, "r1"), [r2.id]);
  });

  test(`[${backend}] a rate limit with running concurrency: parked on the running key, then on the rate limit key, each refusal two history entries, run once each window opens`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      runningConcurrency: "task",
      rateLimit: { limit: 2, intervalMs: 1_000 },
    });
    const start = clock.now();
    const [a, b, c] = [
      await task.call({ n: 0 }),
      await task.call({ n: 1 }),
      await task.call({ n: 2 }),
    ];
    assert.deepEqual(await claimIds(app, 3, "r1"), [a.id]); // b and c park on the running key
    await runToSuccess(app, a, "r1");
    clock.advance(10);
    assert.deepEqual(await claimIds(app, 3, "r1"), [b.id]);
    await runToSuccess(app, b, "r1");
    clock.advance(10);
    assert.deepEqual(await claimIds(app, 3, "r1"), []); // c: the slot is free, the window full
    assert.equal(await app.orchestrator.store.nextAvailableMs(clock.now()), start + 1_000);
    clock.advance(1_000 - (clock.now() - start));
    assert.deepEqual(await claimIds(app, 3, "r1"), [c.id]);
    assert.deepEqual(await statusPath(c), [
      "registered",
      "concurrency_controlled",
      "rerouted",
      "concurrency_controlled",
      "rerouted",
      "pending",
    ]);
  });

  test(`[${backend}] cancel() of an invocation parked on a rate limit key takes it off the key; the others are woken in order when the window opens`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const task = app.task("t", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 1, intervalMs: 1_000 },
    });
    const [a, b, c, d] = (await task.parallelize([0, 1, 2, 3].map((n) => ({ n })))).invocations;
    assert.deepEqual(await claimIds(app, 10, "r1"), [a!.id]);
    assert.equal(await b!.cancel(), true);
    for (const expected of [c!, d!]) {
      clock.advance(1_000);
      assert.deepEqual(await claimIds(app, 10, "r1"), [expected.id]);
    }
    clock.advance(1_000);
    assert.deepEqual(await claimIds(app, 10, "r1"), []);
    assert.deepEqual(await statusPath(b!), ["registered", "concurrency_controlled", "canceled"]);
  });

  test(`[${backend}] a bad rateLimit is a TypeError naming the task when it is defined`, async () => {
    const app = await makeApp();
    const bad: unknown[] = [
      null,
      5,
      {},
      { limit: 5 },
      { intervalMs: 1_000 },
      { limit: 0, intervalMs: 1_000 },
      { limit: 1_001, intervalMs: 1_000 },
      { limit: 1.5, intervalMs: 1_000 },
      { limit: "5", intervalMs: 1_000 },
      { limit: 5, intervalMs: 0 },
      { limit: 5, intervalMs: -1 },
      { limit: 5, intervalMs: 0.5 },
      { limit: 5, intervalMs: Number.POSITIVE_INFINITY },
      { limit: 5, intervalMs: 1_000, by: "disabled" },
      { limit: 5, intervalMs: 1_000, by: "tenant" },
      { limit: 5, intervalMs: 1_000, by: "keys" }, // without keyArguments
      { limit: 5, intervalMs: 1_000, per: "task" },
    ];
    for (const [i, rateLimit] of bad.entries()) {
      assert.throws(
        () => app.task(`t${i}`, () => 0, { rateLimit: rateLimit as never }),
        (error: unknown) =>
          error instanceof TypeError && new RegExp(`task t${i}:`).test(error.message),
        JSON.stringify(rateLimit),
      );
    }
  });
}
