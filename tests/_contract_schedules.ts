import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { FakeClock } from "./_fake_clock.ts";
import type { Nenc } from "../core/app.ts";
import { ReusedInvocation } from "../core/invocation.ts";
import { newInvocationId } from "../core/ids.ts";
import type { InvocationRecord, NewInvocation } from "../core/store.ts";
import type { TaskContext } from "../core/task.ts";

const SECOND = 1_000;
const MINUTE = 60_000;
/** The fake clock's start: 2026-01-01T00:00:00Z, a whole minute. */
const T0 = Date.UTC(2026, 0, 1);

/** Moves `clock` forward to `atMs`. */
function at(clock: FakeClock, atMs: number): void {
  clock.advance(atMs - clock.now());
}

/** Runs a runner of `app` until nothing is left: it fires the due ticks, then runs them. */
async function drain(app: Nenc, concurrency = 1): Promise<void> {
  await within(app.runner({ runnerId: "r1", concurrency }).drain(), DEADLINE_MS, "the drain");
}

/** The invocations of `taskId`, by their tick (epoch ms), oldest first; fails on a second per tick. */
async function ticksOf(app: Nenc, taskId: string): Promise<Map<number, InvocationRecord>> {
  const byTick = new Map<number, InvocationRecord>();
  for await (const record of app.orchestrator.store.find({ taskId })) {
    if (record.scheduledAtMs === undefined) continue;
    assert.ok(!byTick.has(record.scheduledAtMs), `tick ${record.scheduledAtMs} fired twice`);
    byTick.set(record.scheduledAtMs, record);
  }
  return new Map([...byTick].sort(([a], [b]) => a - b));
}

/** The ticks of `taskId` fired so far, as minutes after T0. */
async function minutesFired(app: Nenc, taskId: string): Promise<number[]> {
  return [...(await ticksOf(app, taskId)).keys()].map((tickMs) => (tickMs - T0) / MINUTE);
}

/** Cron schedules (SPEC §7.3), on the injected clock. */
export function schedulesContract(backend: string, makeApp: AppFactory): void {
  // A tick fired and run costs about 17 KV round trips: 100 ticks on the remote fixture (some
  // 7 s), 1,000 elsewhere.
  const ticks = backend.endsWith("remote") ? 100 : 1_000;
  test(`[${backend}] a schedule fires exactly one invocation per tick over ${ticks.toLocaleString("en")} ticks while the runners of two apps sharing the store race for each, and each run sees its tick as ctx.scheduledAt`, async () => {
    const clock = new FakeClock(T0 + 500);
    // Heartbeats (and so recovery and the re-read of schedules) once a simulated minute: each
    // tick costs what firing and running it costs, not a runner's upkeep.
    const orchestrator = { runnerTimeoutSeconds: 300 };
    const first = await makeApp({ clock, orchestrator });
    const second = await makeApp({ clock, orchestrator }, first);
    const seen: number[] = [];
    for (const app of [first, second]) {
      app.task("beat", (_args: undefined, ctx: TaskContext) => void seen.push(ctx.scheduledAt!));
    }
    await first.schedule("every-second", { cron: "* * * * * *", task: "beat" });
    const runners = [
      first.runner({ runnerId: "r1", heartbeatMs: MINUTE }),
      second.runner({ runnerId: "r2", heartbeatMs: MINUTE }),
    ];
    for (const runner of runners) runner.start();
    try {
      const lastTick = async (): Promise<number | null> =>
        (await first.orchestrator.store.schedules())[0]!.lastTickMs;
      for (let tick = 1; tick <= ticks; tick++) {
        at(clock, T0 + tick * SECOND);
        await waitUntil(async () => await lastTick() === T0 + tick * SECOND, {
          message: `tick ${tick} never fired`,
          timeoutMs: DEADLINE_MS,
        });
      }
      await waitUntil(() => seen.length >= ticks, {
        message: "the runs of the ticks never ended",
        timeoutMs: LONG_DEADLINE_MS,
      });
    } finally {
      await within(Promise.all(runners.map((runner) => runner.stop())), DEADLINE_MS, "the stops");
    }
    const expected = Array.from({ length: ticks }, (_, i) => T0 + (i + 1) * SECOND);
    const fired = await ticksOf(first, "beat");
    assert.deepEqual([...fired.keys()], expected);
    assert.deepEqual([...seen].sort((a, b) => a - b), expected);
    for (const [tickMs, record] of fired) {
      assert.equal(record.status, "success", `tick ${tickMs}`);
      const [registered] = await first.orchestrator.store.history(record.id);
      assert.ok(["r1", "r2"].includes(registered!.runnerId!), `fired by ${registered!.runnerId}`);
    }
  });

  for (
    const { catchUp, fired } of [
      { catchUp: "none", fired: [1, 7] },
      { catchUp: "latest", fired: [1, 6, 7] },
      { catchUp: "all", fired: [1, 2, 3, 4, 5, 6, 7] },
    ] as const
  ) {
    test(
      `[${backend}] catchUp "${catchUp}": a runner back after missing the ticks of minutes 2 to 6 fires ${
        catchUp === "none" ? "none" : catchUp === "latest" ? "the most recent" : "each"
      } of them, and the tick of minute 7 on time`,
      async () => {
        const clock = new FakeClock(T0 + 30 * SECOND);
        const app = await makeApp({ clock });
        app.task("report", () => "done");
        await app.schedule("minutely", { cron: "* * * * *", task: "report", catchUp });
        at(clock, T0 + MINUTE + SECOND);
        await drain(app);
        assert.deepEqual(await minutesFired(app, "report"), [1]);
        // Down until 7:30: the tick of minute 7 is 30 s old, within the 60 s misfire window.
        at(clock, T0 + 7 * MINUTE + 30 * SECOND);
        await drain(app);
        assert.deepEqual(await minutesFired(app, "report"), fired);
        const records = [...(await ticksOf(app, "report")).values()];
        assert.ok(records.every((record) => record.status === "success"));
        const [schedule] = await app.orchestrator.store.schedules();
        assert.equal(schedule!.lastTickMs, T0 + 7 * MINUTE);
        assert.equal(schedule!.lastInvocationId, records.at(-1)!.id);
      },
    );
  }

  test(`[${backend}] catchUp "all" fires at most the 100 most recent missed ticks`, async () => {
    const clock = new FakeClock(T0);
    const app = await makeApp({ clock });
    app.task("beat", () => 1);
    await app.schedule("every-second", {
      cron: "* * * * * *",
      task: "beat",
      catchUp: "all",
      misfireMs: SECOND,
    });
    at(clock, T0 + 150 * SECOND + 500);
    await drain(app, 20);
    const fired = [...(await ticksOf(app, "beat")).keys()];
    assert.deepEqual(fired, Array.from({ length: 100 }, (_, i) => T0 + (51 + i) * SECOND));
  });

  test(`[${backend}] misfireMs: with 5 minutes, a runner back at 7:30 fires the ticks of minutes 3 to 7 and skips minute 2`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    app.task("report", () => "done");
    await app.schedule("minutely", { cron: "* * * * *", task: "report", misfireMs: 5 * MINUTE });
    at(clock, T0 + MINUTE + SECOND);
    await drain(app);
    at(clock, T0 + 7 * MINUTE + 30 * SECOND);
    await drain(app);
    assert.deepEqual(await minutesFired(app, "report"), [1, 3, 4, 5, 6, 7]);
  });

  test(`[${backend}] schedule() is an idempotent upsert: the same definition again changes nothing, a changed cron replaces it and holds from then on`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    const report = app.task("report", ({ kind }: { kind: string }) => kind);
    const definition = { cron: "* * * * *", task: report, args: { kind: "sales" } };
    const created = await app.schedule("report", definition);
    assert.deepEqual(created, {
      name: "report",
      cron: "* * * * *",
      taskId: "report",
      args: { kind: '"sales"' },
      timezone: "UTC",
      catchUp: "none",
      misfireMs: MINUTE,
      sinceMs: T0 + 30 * SECOND,
      lastTickMs: null,
      lastInvocationId: null,
    });
    at(clock, T0 + 45 * SECOND);
    assert.deepEqual(await app.schedule("report", { ...definition, task: "report" }), created);
    at(clock, T0 + MINUTE + SECOND);
    await drain(app);
    const afterTick = await app.schedule("report", definition);
    assert.equal(afterTick.lastTickMs, T0 + MINUTE);
    assert.deepEqual(afterTick, {
      ...created,
      lastTickMs: T0 + MINUTE,
      lastInvocationId: afterTick.lastInvocationId,
    });
    // Hourly from 1:30 on: no tick of minutes 2 to 59 fires, the one of the next hour does.
    at(clock, T0 + MINUTE + 30 * SECOND);
    const hourly = await app.schedule("report", { ...definition, cron: "0 * * * *" });
    assert.deepEqual(hourly, {
      ...afterTick,
      cron: "0 * * * *",
      sinceMs: T0 + MINUTE + 30 * SECOND,
    });
    assert.deepEqual(await app.orchestrator.store.schedules(), [hourly]);
    at(clock, T0 + 5 * MINUTE);
    await drain(app);
    assert.deepEqual(await minutesFired(app, "report"), [1]);
    at(clock, T0 + 60 * MINUTE + SECOND);
    await drain(app);
    assert.deepEqual(await minutesFired(app, "report"), [1, 60]);
  });

  test(`[${backend}] unschedule() stops the ticks and says whether there was a schedule`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    app.task("report", () => "done");
    await app.schedule("minutely", { cron: "* * * * *", task: "report" });
    at(clock, T0 + MINUTE + SECOND);
    await drain(app);
    assert.equal(await app.unschedule("minutely"), true);
    assert.deepEqual(await app.orchestrator.store.schedules(), []);
    for (const minute of [2, 3, 4]) {
      at(clock, T0 + minute * MINUTE + SECOND);
      await drain(app);
    }
    assert.deepEqual(await minutesFired(app, "report"), [1]);
    assert.equal(await app.unschedule("minutely"), false);
  });

  test(`[${backend}] a 6-field expression (seconds first) in a timezone fires at that second of local time: 09:00:30 in New York is 14:00:30 UTC`, async () => {
    const clock = new FakeClock(T0);
    const app = await makeApp({ clock });
    const seen: number[] = [];
    app.task("open", (_args: undefined, ctx: TaskContext) => void seen.push(ctx.scheduledAt!));
    // catchUp "all": a tick at 09:00:30 UTC (the timezone ignored) would fire too.
    await app.schedule("market-open", {
      cron: "30 0 9 * * *",
      task: "open",
      timezone: "America/New_York",
      catchUp: "all",
    });
    at(clock, Date.UTC(2026, 0, 1, 14, 0, 31));
    await drain(app);
    assert.deepEqual(seen, [Date.UTC(2026, 0, 1, 14, 0, 30)]);
    assert.deepEqual([...(await ticksOf(app, "open")).keys()], seen);
  });

  test(`[${backend}] a tick registers its own invocation even for a task with registration concurrency "task": it bypasses reuse`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    const sync = app.task("sync", () => "synced", { registrationConcurrency: "task" });
    await app.schedule("minutely", { cron: "* * * * *", task: sync });
    const called = await sync.call();
    assert.ok((await sync.call()) instanceof ReusedInvocation, "calls reuse the registered one");
    at(clock, T0 + MINUTE + SECOND);
    await drain(app);
    const [tick] = (await ticksOf(app, "sync")).values();
    assert.ok(tick !== undefined && tick.id !== called.id, "the tick reused the called invocation");
    assert.equal(tick.status, "success");
    assert.equal(tick.registrationKey, null);
    assert.equal(await called.status(), "success");
    assert.equal((await app.orchestrator.store.get(called.id))!.scheduledAtMs, undefined);
  });

  test(`[${backend}] a runner fires only the schedules of tasks its app defines, and sees a schedule another app stored within a heartbeat`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const other = await makeApp({ clock });
    const app = await makeApp({ clock }, other);
    app.task("report", () => "done");
    await using runner = app.runner({ runnerId: "r1", heartbeatMs: SECOND });
    runner.start();
    await waitUntil(async () => (await app.orchestrator.store.runners()).length === 1, {
      message: "the runner never started",
    });
    other.task("report", () => "done");
    other.task("cleanup", () => "done");
    await other.schedule("minutely", { cron: "* * * * *", task: "report" });
    await other.schedule("cleanup", { cron: "* * * * *", task: "cleanup" });
    at(clock, T0 + MINUTE + 10 * SECOND);
    // Time goes on while the test waits (100 ms a look): a runner that went to sleep after the
    // clock moved wakes too.
    await waitUntil(async () => {
      if ((await minutesFired(app, "report")).length === 1) return true;
      clock.advance(100);
      return false;
    }, { message: "the runner never fired the schedule stored after it started" });
    assert.deepEqual(await minutesFired(app, "report"), [1]);
    const [record] = (await ticksOf(app, "report")).values();
    assert.equal((await app.orchestrator.store.history(record!.id))[0]!.runnerId, "r1");
    assert.deepEqual(await minutesFired(app, "cleanup"), [], "a tick of a task r1 lacks fired");
  });

  test(`[${backend}] a schedule stored anew by a process whose clock lags, before a tick fired already, skips that tick (its claim stands) and fires the next`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    app.task("report", () => "done");
    await app.schedule("minutely", { cron: "* * * * *", task: "report" });
    at(clock, T0 + MINUTE + SECOND);
    await drain(app);
    // Deleted and stored again at 0:59:30 by the lagging process: minute 1 is after it.
    const lagging = await makeApp({ clock: new FakeClock(T0 + 59 * SECOND) }, app);
    lagging.task("report", () => "done");
    await app.unschedule("minutely");
    await lagging.schedule("minutely", { cron: "* * * * *", task: "report", catchUp: "all" });
    at(clock, T0 + MINUTE + 30 * SECOND);
    await drain(app);
    assert.deepEqual(await minutesFired(app, "report"), [1]);
    at(clock, T0 + 2 * MINUTE + SECOND);
    await drain(app);
    assert.deepEqual(await minutesFired(app, "report"), [1, 2]);
  });

  test(`[${backend}] an idle runner fires a tick when it falls due, not a poll later (pollMs one hour)`, async () => {
    const app = await makeApp();
    let fired!: (tickMs: number) => void;
    const firstTick = new Promise<number>((resolve) => fired = resolve);
    app.task("beat", (_args: undefined, ctx: TaskContext) => fired(ctx.scheduledAt!));
    await app.schedule("every-second", { cron: "* * * * * *", task: "beat" });
    await using runner = app.runner({ pollMs: 3_600_000, graceMs: 0 });
    runner.start();
    const tickMs = await within(firstTick, DEADLINE_MS, "the first tick");
    assert.equal(tickMs % SECOND, 0);
  });

  test(`[${backend}] fireTick() claims a tick once: another invocation for it gets undefined, a retry with the same invocation gets its own, and an outdated or deleted schedule fires nothing`, async () => {
    const clock = new FakeClock(T0 + 30 * SECOND);
    const app = await makeApp({ clock });
    app.task("report", () => "done");
    const store = app.orchestrator.store;
    const schedule = await app.schedule("minutely", { cron: "* * * * *", task: "report" });
    at(clock, T0 + MINUTE + SECOND);
    const tick = (tickMs: number): NewInvocation & { scheduledAtMs: number } => ({
      id: newInvocationId(clock.now()),
      taskId: "report",
      callId: "report#tick",
      args: {},
      parentId: null,
      registrationKey: null,
      runningKey: null,
      nowMs: clock.now(),
      runnerId: "r1",
      scheduledAtMs: tickMs,
    });
    const one = tick(T0 + MINUTE);
    const fired = await store.fireTick(schedule, one);
    assert.equal(fired?.invocation.id, one.id);
    assert.equal(fired?.invocation.status, "registered");
    assert.equal(fired?.schedule.lastTickMs, T0 + MINUTE);
    assert.equal(fired?.schedule.lastInvocationId, one.id);
    assert.equal(await store.fireTick(schedule, tick(T0 + MINUTE)), undefined);
    assert.equal(await store.fireTick(fired!.schedule, tick(T0 + MINUTE)), undefined);
    assert.equal((await store.fireTick(schedule, one))?.invocation.id, one.id, "the retry");
    assert.deepEqual(await store.schedules(), [fired!.schedule]);
    // Changed since `schedule` was read: its version fires nothing; the stored one does.
    at(clock, T0 + MINUTE + 30 * SECOND);
    const changed = await app.schedule("minutely", {
      cron: "* * * * *",
      task: "report",
      catchUp: "all",
    });
    assert.equal(await store.fireTick(fired!.schedule, tick(T0 + 2 * MINUTE)), undefined);
    assert.equal(
      (await store.fireTick(changed, tick(T0 + 2 * MINUTE)))?.schedule.lastTickMs,
      T0 + 2 * MINUTE,
    );
    await app.unschedule("minutely");
    assert.equal(await store.fireTick(changed, tick(T0 + 3 * MINUTE)), undefined);
    assert.deepEqual([...(await ticksOf(app, "report")).keys()], [T0 + MINUTE, T0 + 2 * MINUTE]);
  });

  test(`[${backend}] a bad schedule is a TypeError naming it, and nothing is stored`, async () => {
    const app = await makeApp();
    const report = app.task("report", ({ kind }: { kind: string }) => kind, {
      runningConcurrency: "keys",
      keyArguments: ["kind"],
    });
    const foreign = (await makeApp({ appId: "elsewhere" })).task("report", () => 1);
    const good = { cron: "0 3 * * *", task: report, args: { kind: "sales" } };
    const bad: [string, unknown][] = [
      ["three fields", { ...good, cron: "* * *" }],
      ["seven fields", { ...good, cron: "0 0 3 * * * 2027" }],
      ["minute 61", { ...good, cron: "61 * * * *" }],
      ["a cron that is not a string", { ...good, cron: 5 }],
      ["an unknown timezone", { ...good, timezone: "Mars/Olympus_Mons" }],
      ["an unknown task name", { ...good, task: "nope" }],
      ["another app's task", { ...good, task: foreign }],
      ["no task", { cron: "0 3 * * *" }],
      ["an unknown catchUp", { ...good, catchUp: "some" }],
      ["a negative misfireMs", { ...good, misfireMs: -1 }],
      ["a NaN misfireMs", { ...good, misfireMs: Number.NaN }],
      ["an unknown option", { ...good, every: "day" }],
      ["arguments that are not JSON", { ...good, args: { kind: "sales", at: new Date() } }],
      ["a missing key argument", { ...good, args: {} }],
      ["options that are not an object", "0 3 * * *"],
    ];
    for (const [what, options] of bad) {
      await assert.rejects(
        app.schedule("nightly", options as never),
        (error: unknown) =>
          error instanceof TypeError && /^Cannot schedule nightly: /.test(error.message),
        what,
      );
    }
    await assert.rejects(app.schedule("", good), TypeError, "an empty name");
    assert.deepEqual(await app.orchestrator.store.schedules(), []);
  });
}
