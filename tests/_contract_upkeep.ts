import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { WatchedClock } from "./_fake_clock.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import type { Nenc } from "../core/app.ts";
import type { Runner } from "../core/runner.ts";
import { InvocationStatus } from "../core/status.ts";

const { PENDING, RUNNING, PAUSED, RESUMED } = InvocationStatus;

/** How long an idle runner of these tests sleeps (its default pollMs). */
const POLL_MS = 100;

/** The executions a runner reads of its own range per heartbeat, looking for orphans. */
export const ORPHAN_PAGE = 500;

/**
 * `count` PAUSED invocations of the task "parent" (which `app` defines) executed by the runner
 * `owner`: registered in bulk, each moved PENDING → RUNNING → PAUSED in one step, no function run.
 */
export async function seedPaused(app: Nenc, owner: string, count: number): Promise<void> {
  const parent = app.task("parent", ({ i }: { i: number }) => i);
  const store = app.orchestrator.store;
  const nowMs = app.clock.now();
  for (let start = 0; start < count; start += 2_000) {
    const args = Array.from(
      { length: Math.min(2_000, count - start) },
      (_, i) => ({ i: start + i }),
    );
    const group = await parent.parallelize(args);
    await Promise.all(group.invocations.map(async ({ id }) => {
      const outcome = await store.change(id, {
        path: [PENDING, RUNNING, PAUSED],
        runnerId: owner,
        nowMs,
      });
      assert.ok(outcome.ok);
    }));
  }
}

/** What the runners of an app did at each heartbeat: who took the upkeep lease, who recovered. */
interface Upkeep {
  /** Every take of the lease: by whom, at what time, and whether it got it. */
  readonly takes: { runnerId: string; nowMs: number; took: boolean }[];
  /** Every recovery round (not an orphan's): by whom, at what time. */
  readonly recoveries: { runnerId: string; nowMs: number }[];
  /**
   * Once the loops of `runners` are idle, moves the clock one heartbeat, and resolves once each
   * took (or tried to take) the lease at the new time, and no recovery is under way.
   */
  beat(runners: readonly Runner[]): Promise<void>;
}

/**
 * Watches the upkeep of the runners of `app`, on its clock. Their heartbeat is 1,000 ms, and
 * their idle loops sleep POLL_MS.
 */
function watchUpkeep(app: Nenc, clock: WatchedClock): Upkeep {
  const store = app.orchestrator.store;
  const takes: Upkeep["takes"] = [];
  const recoveries: Upkeep["recoveries"] = [];
  let recovering = 0;
  const take = store.takeUpkeepLease.bind(store);
  store.takeUpkeepLease = async (runnerId, lease) => {
    const took = await take(runnerId, lease);
    takes.push({ runnerId, nowMs: lease.nowMs, took });
    return took;
  };
  const orchestrator = app.orchestrator;
  const recover = orchestrator.recoverInvocations.bind(orchestrator);
  orchestrator.recoverInvocations = async (options = {}) => {
    if (options.ids !== undefined) return await recover(options);
    recovering++;
    recoveries.push({ runnerId: options.runnerId!, nowMs: clock.now() });
    try {
      return await recover(options);
    } finally {
      recovering--;
    }
  };
  const settled = (runners: readonly Runner[]): Promise<void> => {
    const nowMs = clock.now();
    return waitUntil(
      () =>
        recovering === 0 &&
        runners.every((runner) =>
          takes.some((each) => each.runnerId === runner.id && each.nowMs === nowMs)
        ),
      { message: `the upkeep of ${runners.map((runner) => runner.id).join(", ")} at ${nowMs}` },
    );
  };
  return {
    takes,
    recoveries,
    async beat(runners) {
      await clock.sleeping(POLL_MS, runners.length);
      clock.advance(1_000);
      await settled(runners);
    },
  };
}

/** The upkeep lease, and recovery through the executions of dead runners, on one backend. */
export function upkeepContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] takeUpkeepLease(): the holder renews, another runner is refused until the lease ran out on its own clock, then takes it and the old holder is refused; a retry finds the lease its own; only the holder's release frees it`, async () => {
    const store = (await makeApp()).orchestrator.store;
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 0, untilMs: 10_000 }), true);
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 0, untilMs: 10_000 }), true);
    assert.equal(await store.takeUpkeepLease("b", { nowMs: 5_000, untilMs: 15_000 }), false);
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 5_000, untilMs: 15_000 }), true);
    assert.equal(await store.takeUpkeepLease("b", { nowMs: 14_999, untilMs: 24_999 }), false);
    assert.equal(await store.takeUpkeepLease("b", { nowMs: 15_000, untilMs: 25_000 }), true);
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 15_001, untilMs: 25_001 }), false);
    await store.releaseUpkeepLease("a");
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 15_002, untilMs: 25_002 }), false);
    await store.releaseUpkeepLease("b");
    assert.equal(await store.takeUpkeepLease("a", { nowMs: 15_003, untilMs: 25_003 }), true);
  });

  test(`[${backend}] one runner at a time does upkeep: of two runners only the lease holder recovers, at every heartbeat; when it stops it gives the lease up and the other takes over at its next heartbeat`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    const upkeep = watchUpkeep(app, clock);
    const a = app.runner({ runnerId: "a", heartbeatMs: 1_000 });
    const b = app.runner({ runnerId: "b", heartbeatMs: 1_000 });
    a.start();
    await waitUntil(() => upkeep.takes.length === 1, { message: "a's first upkeep" });
    b.start();
    await waitUntil(() => upkeep.takes.length === 2, { message: "b's first upkeep" });
    for (let round = 0; round < 5; round++) await upkeep.beat([a, b]);
    assert.deepEqual(
      [...new Set(upkeep.takes.map(({ runnerId, took }) => `${runnerId} ${took}`))].sort(),
      ["a true", "b false"],
    );
    assert.equal(upkeep.recoveries.length, 6);
    assert.ok(upkeep.recoveries.every(({ runnerId }) => runnerId === "a"));
    await within(a.stop(), DEADLINE_MS, "a's stop");
    const stoppedAt = upkeep.takes.length;
    await upkeep.beat([b]);
    assert.deepEqual(upkeep.takes.slice(stoppedAt), [
      { runnerId: "b", nowMs: clock.now(), took: true },
    ]);
    assert.deepEqual(upkeep.recoveries.at(-1), { runnerId: "b", nowMs: clock.now() });
    await within(b.stop(), DEADLINE_MS, "b's stop");
  });

  test(`[${backend}] the upkeep runs beside the pick-ups: while a runner's first upkeep hangs (its take of the lease does not answer), the runner picks up and runs a call to its end; once the upkeep ends, the runner idles (a sleep of pollMs) and stops`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock });
    const store = app.orchestrator.store;
    const take = store.takeUpkeepLease.bind(store);
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => answer = resolve);
    let takes = 0;
    store.takeUpkeepLease = async (runnerId, lease) => {
      takes++;
      await answered;
      return await take(runnerId, lease);
    };
    const job = app.task("job", ({ n }: { n: number }) => n * 2);
    const runner = app.runner({ heartbeatMs: 1_000 });
    runner.start();
    await waitUntil(() => takes === 1, { message: "the first upkeep's take of the lease" });
    const invocation = await job.call({ n: 21 });
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the result"), 42);
    assert.equal(takes, 1);
    answer();
    await clock.sleeping(POLL_MS);
    await within(runner.stop(), DEADLINE_MS, "the stop");
  });

  test(`[${backend}] a lease holder that dies is taken over at the first heartbeat after its lease ran out (its last heartbeat + runnerTimeoutSeconds), not before; its RUNNING invocation is recovered and run once`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({ clock, orchestrator: { runnerTimeoutSeconds: 10 } });
    let runs = 0;
    const job = app.task("job", ({ n }: { n: number }) => (runs++, n));
    const invocation = await job.call({ n: 7 });
    // A runner that claimed it, ran it, took the lease and died: no heartbeat after this one.
    const o = app.orchestrator;
    const diedMs = clock.now();
    await o.getInvocationsToRun(1, { runnerId: "ghost" });
    await o.setInvocationRun(undefined, invocation, { runnerId: "ghost" });
    await o.store.heartbeat("ghost", diedMs);
    assert.equal(
      await o.store.takeUpkeepLease("ghost", { nowMs: diedMs, untilMs: diedMs + 10_000 }),
      true,
    );
    const upkeep = watchUpkeep(app, clock);
    await using live = app.runner({ runnerId: "live", heartbeatMs: 1_000 });
    live.start();
    await waitUntil(() => upkeep.takes.length === 1, { message: "live's first upkeep" });
    while (clock.now() < diedMs + 11_000) await upkeep.beat([live]);
    const took = upkeep.takes.filter(({ took }) => took).map(({ nowMs }) => nowMs - diedMs);
    assert.deepEqual(took, [10_000, 11_000]);
    assert.deepEqual(upkeep.recoveries.map(({ nowMs }) => nowMs - diedMs), [10_000, 11_000]);
    assert.equal(await within(invocation.result(), DEADLINE_MS, "the recovered result"), 7);
    assert.equal(runs, 1);
    assert.deepEqual(
      (await invocation.history()).map(({ status, runnerId }) => `${status} ${runnerId}`).slice(2),
      [
        "running ghost",
        "running_recovery live",
        "rerouted live",
        "pending live",
        "running live",
        "success live",
      ],
    );
    // The dead holder, back: its lease is another's now.
    const nowMs = clock.now();
    assert.equal(
      await o.store.takeUpkeepLease("ghost", { nowMs, untilMs: nowMs + 10_000 }),
      false,
    );
  });

  test(`[${backend}] executions() in pages: at most \`limit\` of a runner's ids in id order, after the cursor (one no longer owned will do); the pages from the first to an empty one list them all`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    await job.parallelize([1, 2, 3, 4, 5, 6].map((n) => ({ n })));
    await o.getInvocationsToRun(5, { runnerId: "r1" });
    await o.getInvocationsToRun(1, { runnerId: "r2" });
    const all = await o.store.executions("r1");
    assert.equal(all.length, 5);
    assert.deepEqual(all, [...all].sort());
    const pages = [await o.store.executions("r1", { limit: 2 })];
    while (pages.at(-1)!.length > 0) {
      pages.push(await o.store.executions("r1", { after: pages.at(-1)!.at(-1)!, limit: 2 }));
    }
    assert.deepEqual(pages, [all.slice(0, 2), all.slice(2, 4), all.slice(4), []]);
    assert.deepEqual(await o.store.executions("r1", { limit: 10 }), all);
    // The cursor's invocation taken back: the page goes on after it.
    await o.recoverInvocations({ runnerId: "r1", ids: [all[2]!] });
    assert.deepEqual(await o.store.executions("r1", { after: all[2]!, limit: 2 }), all.slice(3));
    assert.deepEqual(await o.store.executions("r1", { after: all[1]!, limit: 1 }), [all[3]]);
    assert.deepEqual(await o.store.executions("nobody", { limit: 2 }), []);
  });

  // 2,500 recoveries, a read and a commit each, one after another: a second on KV in memory,
  // several on a file, minutes on the remote fixture (a commit there costs some 40 ms more). On
  // those, the pages the sweep reads are the test above.
  if (backend === "memory" || backend === "kv :memory:") {
    test(`[${backend}] a runner takes back its orphans one page of ${ORPHAN_PAGE} a heartbeat: of 2,500 PAUSED invocations it owns but does not run (a restart under its id), the one at the far end of its range is taken back at the 5th heartbeat (⌈2,500 / ${ORPHAN_PAGE}⌉), ${ORPHAN_PAGE} at each before it, in id order, one page read a heartbeat`, async () => {
      const clock = new WatchedClock();
      const options = { clock, orchestrator: { runnerTimeoutSeconds: 10 } };
      const app = await makeApp(options);
      // Their task is another app's (another process's): taken back, they wait for that app.
      await seedPaused(await makeApp(options, app), "r", 2_500);
      const store = app.orchestrator.store;
      const owned = await store.executions("r");
      assert.equal(owned.length, 2_500);
      const farEnd = owned.at(-1)!;
      const reads: { after: string | undefined; ids: number }[] = [];
      const read = store.executions.bind(store);
      store.executions = async (runnerId, page) => {
        const ids = await read(runnerId, page);
        if (page !== undefined) reads.push({ after: page.after, ids: ids.length });
        return ids;
      };
      await using runner = app.runner({ runnerId: "r", heartbeatMs: 1_000 });
      runner.start();
      const left: number[] = [];
      for (let heartbeat = 1; heartbeat <= 5; heartbeat++) {
        if (heartbeat > 1) {
          await clock.sleeping(POLL_MS);
          clock.advance(1_000);
        }
        // Idle again: this heartbeat's upkeep is done.
        await clock.sleeping(POLL_MS);
        const now = await read("r");
        left.push(now.length);
        assert.deepEqual(now, owned.slice(ORPHAN_PAGE * heartbeat));
        assert.equal((await store.get(farEnd))?.status, heartbeat < 5 ? PAUSED : "rerouted");
      }
      assert.deepEqual(left, [2_000, 1_500, 1_000, 500, 0]);
      assert.deepEqual(
        reads,
        [undefined, ...[1, 2, 3, 4].map((page) => owned[ORPHAN_PAGE * page - 1])].map((after) => ({
          after,
          ids: ORPHAN_PAGE,
        })),
      );
      const history = (await store.history(farEnd)).map(({ status, runnerId }) =>
        `${status} ${runnerId}`
      );
      assert.deepEqual(history.slice(-3), ["paused r", "running_recovery r", "rerouted r"]);
    });
  }

  test(`[${backend}] recovery reads the executions of dead runners: a dead runner's PENDING claim is recovered at runnerTimeoutSeconds (maxPendingSeconds is longer), its PAUSED and RESUMED ones too; a live runner's PAUSED ones stay`, async () => {
    const clock = new WatchedClock();
    const app = await makeApp({
      clock,
      orchestrator: { runnerTimeoutSeconds: 10, maxPendingSeconds: 60 },
    });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const group = await job.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
    const [pending, paused, resumed, live] = group.invocations.map(({ id }) => id);
    const paths = [
      [pending!, "dead", [PENDING]],
      [paused!, "dead", [PENDING, RUNNING, PAUSED]],
      [resumed!, "dead", [PENDING, RUNNING, PAUSED, RESUMED]],
      [live!, "alive", [PENDING, RUNNING, PAUSED]],
    ] as const;
    for (const [id, runnerId, path] of paths) {
      assert.ok((await o.store.change(id, { path, runnerId, nowMs: clock.now() })).ok);
    }
    await o.store.heartbeat("dead", clock.now());
    clock.advance(10_000);
    await o.store.heartbeat("alive", clock.now());
    assert.deepEqual(await o.recoverInvocations({ runnerId: "other" }), []);
    clock.advance(1);
    const recovered = await o.recoverInvocations({ runnerId: "other" });
    assert.deepEqual(recovered.map(({ id }) => id).sort(), [pending!, paused!, resumed!].sort());
    const last = async (id: string): Promise<string[]> =>
      (await o.store.history(id)).slice(-2).map(({ status }) => status);
    assert.deepEqual(await last(pending!), ["pending_recovery", "rerouted"]);
    assert.deepEqual(await last(paused!), ["running_recovery", "rerouted"]);
    assert.deepEqual(await last(resumed!), ["running_recovery", "rerouted"]);
    assert.equal((await o.store.get(live!))?.status, "paused");
    assert.deepEqual(await o.store.executions("dead"), []);
    assert.deepEqual((await o.store.runners()).map(({ runnerId }) => runnerId), ["alive"]);
  });
}
