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
