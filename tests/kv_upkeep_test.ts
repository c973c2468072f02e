/**
 * Upkeep on Deno KV (issue #12): what a runner reads per heartbeat does not grow with the
 * invocations live runners execute, its own included (counted through `interceptKv`); the take of
 * the upkeep lease is fenced by the lease's versionstamp; no status index is written any more, and
 * the one that older layouts wrote moves to the indexes recovery reads.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { InvocationStatus } from "../core/status.ts";
import { Keys } from "../kv/keys.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { FakeClock } from "./_fake_clock.ts";
import { holdingCommits, interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { ORPHAN_PAGE, seedPaused } from "./_contract_upkeep.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

async function openKv(): Promise<TestKv> {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  return kv;
}

const { PAUSED } = InvocationStatus;

/** Reads through one KV view: keys read by point reads, range reads, and entries they listed. */
interface Reads {
  keys: number;
  ranges: number;
  listed: number;
}

/** A view of `kv` that counts its reads, and knows how many calls it has in flight. */
function counting(kv: KvLike): { kv: KvLike; reads: Reads; idle(): boolean } {
  const reads: Reads = { keys: 0, ranges: 0, listed: 0 };
  let inFlight = 0;
  const view = interceptKv(kv, {
    beforeGet: () => void reads.keys++,
    beforeGetMany: (keys) => void (reads.keys += keys.length),
    beforeList: () => void reads.ranges++,
    onListed: () => void reads.listed++,
  });
  const tracked = <T>(promise: Promise<T>): Promise<T> => {
    inFlight++;
    return promise.finally(() => inFlight--);
  };
  return {
    reads,
    idle: () => inFlight === 0,
    kv: {
      get: (key) => tracked(view.get(key)),
      getMany: (keys) => tracked(view.getMany(keys)),
      list: (selector, options) =>
        (async function* () {
          inFlight++;
          try {
            yield* view.list(selector, options);
          } finally {
            inFlight--;
          }
        })(),
      atomic: () => {
        const op = view.atomic();
        const commit = op.commit.bind(op);
        op.commit = () => tracked(commit());
        return op;
      },
    },
  };
}

/**
 * What each runner read in each heartbeat round after the first, and the ids the other runner's
 * orphan sweep looked at in each (see {@linkcode readsPerHeartbeat}).
 */
interface RoundReads extends Record<"holder" | "other", Reads[]> {
  swept: string[][];
}

/**
 * Two runners (each its own app, as two processes, on one KV) go through `rounds` heartbeats on
 * a fake clock, next to `paused` PAUSED invocations of `owner`: a third, live runner ("busy"), or
 * the second of them ("other"). A round: the clock moves one heartbeat, and every runner does what
 * it does then (its heartbeat, its pick-up, its upkeep) until nothing is in flight any more.
 */
async function readsPerHeartbeat(
  owner: "busy" | "other",
  paused: number,
  rounds: number,
): Promise<RoundReads> {
  const kv = await openKv();
  const clock = new FakeClock();
  const orchestrator = { runnerTimeoutSeconds: 10 };
  const seeding = new Nenc({ appId: "upkeep", kv, clock, orchestrator });
  await seedPaused(seeding, owner, paused);
  const seen = seeding.orchestrator.store;
  const views = { holder: counting(kv), other: counting(kv) };
  const took = new Map<string, number>();
  const swept: string[][] = [];
  const runners = Object.entries(views).map(([name, view]) => {
    const app = new Nenc({ appId: "upkeep", kv: view.kv, clock, orchestrator });
    const store = app.orchestrator.store;
    if (name === "other") {
      // The PAUSED invocations it owns stand for executions it runs (no function of theirs runs
      // here): what its orphan sweep finds is noted and left alone, as it leaves its executions.
      const recover = app.orchestrator.recoverInvocations.bind(app.orchestrator);
      app.orchestrator.recoverInvocations = async (options = {}) => {
        if (options.ids === undefined) return await recover(options);
        swept.push([...options.ids]);
        return [];
      };
    }
    const take = store.takeUpkeepLease.bind(store);
    store.takeUpkeepLease = async (runnerId, lease) => {
      const held = await take(runnerId, lease);
      took.set(runnerId, lease.nowMs);
      return held;
    };
    // Polls and heartbeats at one pace: the clock moves a heartbeat per round, and each runner
    // wakes once for its pick-up and upkeep, once for its heartbeat.
    return app.runner({ runnerId: name, heartbeatMs: 1_000, pollMs: 1_000 });
  });
  const settled = async (started: number): Promise<void> => {
    const nowMs = clock.now();
    await waitUntil(
      () => runners.slice(0, started).every((runner) => took.get(runner.id) === nowMs),
      { message: `the runners' upkeep at ${nowMs}` },
    );
    // Nothing in flight, twice 10 ms apart with no read between: every runner sleeps on the clock.
    let last = "";
    await waitUntil(() => {
      const idle = views.holder.idle() && views.other.idle();
      const now = JSON.stringify([views.holder.reads, views.other.reads]);
      const quiet = idle && now === last;
      last = idle ? now : "";
      return quiet;
    }, { message: "the runners to go idle", intervalMs: 10 });
  };
  try {
    if (owner === "busy") await seen.heartbeat("busy", clock.now());
    runners[0]!.start(); // the holder takes the lease first
    await settled(1);
    runners[1]!.start();
    await settled(2);
    const result: RoundReads = { holder: [], other: [], swept: [] };
    for (let round = 0; round < rounds; round++) {
      // Alive: its invocations are not stale.
      if (owner === "busy") await seen.heartbeat("busy", clock.now());
      const before = structuredClone({ holder: views.holder.reads, other: views.other.reads });
      const sweeps = swept.length;
      clock.advance(1_000);
      await settled(2);
      for (const name of ["holder", "other"] as const) {
        const { keys, ranges, listed } = views[name].reads;
        const was = before[name];
        result[name].push({
          keys: keys - was.keys,
          ranges: ranges - was.ranges,
          listed: listed - was.listed,
        });
      }
      result.swept.push(swept.slice(sweeps).flat());
    }
    assert.equal((await seen.counts()).get("parent")?.get(PAUSED), paused || undefined);
    return result;
  } finally {
    await Promise.all(runners.map((runner) => within(runner.stop(), DEADLINE_MS, "a stop")));
  }
}

test("[kv upkeep] reads per heartbeat per runner are the same with 20,000 PAUSED invocations live as with 100: the lease holder's (recovery) and the other runner's", async () => {
  const few = await readsPerHeartbeat("busy", 100, 3);
  const many = await readsPerHeartbeat("busy", 20_000, 3);
  assert.deepEqual(many, few, JSON.stringify({ few, many }));
  // Constant over time too, and the holder reads a little more than the other (its upkeep).
  for (const name of ["holder", "other"] as const) {
    assert.deepEqual(new Set(many[name].map((reads) => JSON.stringify(reads))).size, 1);
  }
  assert.ok(many.holder[0]!.ranges > many.other[0]!.ranges);
});

test(`[kv upkeep] a runner that itself executes 20,000 PAUSED invocations reads per heartbeat what it reads with 100: the same keys and ranges, its orphan sweep listing one page of ${ORPHAN_PAGE} (not 20,000), the next in id order each heartbeat; the holder's reads do not change`, async () => {
  const few = await readsPerHeartbeat("other", 100, 3);
  const many = await readsPerHeartbeat("other", 20_000, 3);
  const figures = JSON.stringify(
    { few, many },
    (key, value) => key === "swept" ? undefined : value,
  );
  assert.deepEqual(many.holder, few.holder, figures);
  assert.deepEqual(
    many.other,
    few.other.map((reads) => ({ ...reads, listed: reads.listed - 100 + ORPHAN_PAGE })),
    figures,
  );
  assert.equal(new Set(many.other.map((reads) => JSON.stringify(reads))).size, 1);
  // With 100 the sweep looks at them all every heartbeat; with 20,000 at the next page of them.
  assert.deepEqual(few.swept.map((ids) => ids.length), [100, 100, 100]);
  assert.equal(new Set(few.swept.flat()).size, 100);
  assert.deepEqual(many.swept.map((ids) => ids.length), [ORPHAN_PAGE, ORPHAN_PAGE, ORPHAN_PAGE]);
  const looked = many.swept.flat();
  assert.equal(new Set(looked).size, 3 * ORPHAN_PAGE);
  assert.deepEqual(looked, [...looked].sort());
});

test("[kv upkeep] a take of the lease is fenced by its versionstamp: a renewal read before another runner took the lease over fails its commit, reads again, and is refused", async () => {
  const kv = await openKv();
  const { kv: slowKv, hold } = holdingCommits(kv);
  const slow = new Nenc({ appId: "lease", kv: slowKv }).orchestrator.store;
  const other = new Nenc({ appId: "lease", kv }).orchestrator.store;
  const key = new Keys("lease").upkeep();
  assert.equal(await slow.takeUpkeepLease("slow", { nowMs: 0, untilMs: 10_000 }), true);
  // The holder renews late: it reads its own lease, run out by then, and waits before its commit.
  const commit = hold(key);
  const renewal = slow.takeUpkeepLease("slow", { nowMs: 10_000, untilMs: 20_000 });
  await commit.reached;
  assert.equal(await other.takeUpkeepLease("other", { nowMs: 10_000, untilMs: 20_000 }), true);
  commit.open();
  assert.equal(await within(renewal, DEADLINE_MS, "the late renewal"), false);
  const stored = await kv.get(key);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(stored.value as Uint8Array)), {
    runnerId: "other",
    untilMs: 20_000,
  });
  // Its lease now: the late holder's release leaves it.
  await slow.releaseUpkeepLease("slow");
  assert.equal(await slow.takeUpkeepLease("slow", { nowMs: 10_001, untilMs: 20_001 }), false);
});

/** The keys under the app's `kind` (its third key part). */
async function keysOf(kv: KvLike, appId: string, kind: string): Promise<KvKey[]> {
  const keys: KvKey[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", appId, kind] })) keys.push(entry.key);
  return keys;
}

test("[kv upkeep] no status index: claims, RUNNING, PAUSED, RESUMED, a cancel and SUCCESS set no status/ key; a claim that stops at PENDING sets pend/<time>/<id>, and RUNNING deletes it", async () => {
  const kv = await openKv();
  const kinds = new Set<string>();
  const app = new Nenc({
    appId: "index",
    kv: interceptKv(kv, { onSet: (_value, key) => void kinds.add(String(key[2])) }),
  });
  const o = app.orchestrator;
  const child = app.task("child", ({ n }: { n: number }) => n);
  const parent = app.task("parent", async ({ n }: { n: number }) => {
    const invocation = await child.call({ n });
    return await invocation.result();
  });
  const invocation = await parent.call({ n: 1 });
  const [claimed] = await o.getInvocationsToRun(1, { runnerId: "r1" });
  assert.equal(claimed?.id, invocation.id);
  const pending = await keysOf(kv, "index", "pend");
  assert.equal(pending.length, 1);
  assert.ok(String(pending[0]!.at(-1)).endsWith(invocation.id));
  await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
  assert.deepEqual(await keysOf(kv, "index", "pend"), []);
  await invocation.cancel({ cascade: false });
  await app.runner({ runnerId: "r2" }).drain({ maxMs: 5_000 });
  const paused = await parent.call({ n: 2 });
  await app.runner({ runnerId: "r3" }).drain({ maxMs: 5_000 });
  assert.deepEqual(
    (await paused.history()).map((entry) => entry.status),
    ["registered", "pending", "running", "paused", "resumed", "success"],
  );
  assert.ok(kinds.has("exec") && kinds.has("pend"));
  assert.ok(!kinds.has("status"), `set: ${[...kinds].join(", ")}`);
  assert.deepEqual(await keysOf(kv, "index", "pend"), []);
});

test("[kv upkeep] the status index of layouts 1 and 2 moves to the executions recovery reads at the first sweep: a dead runner's RUNNING invocation and PENDING claim (no exec entries in 0.1) are recovered", async () => {
  const kv = await openKv();
  const clock = new FakeClock();
  const app = new Nenc({ appId: "legacy", kv, clock });
  const o = app.orchestrator;
  const job = app.task("job", ({ n }: { n: number }) => n);
  const running = await job.call({ n: 1 });
  await o.getInvocationsToRun(1, { runnerId: "dead" });
  await o.setInvocationRun(undefined, running, { runnerId: "dead" });
  const pending = await job.call({ n: 2 });
  await o.getInvocationsToRun(1, { runnerId: "dead" });
  const queued = await job.call({ n: 3 });
  await o.store.heartbeat("dead", clock.now());
  // As 0.1 left them: a status index (with a key of an invocation purged since, and one of a
  // queued invocation), no exec and no pend entries, version 1.
  const keys = new Keys("legacy");
  const legacy = (status: string, id: string): KvKey => [...keys.legacyStatus(), status, id];
  const encoder = new TextEncoder();
  const rewrite = kv.atomic()
    .set(keys.schema(), encoder.encode("1"))
    .set(legacy("running", running.id), encoder.encode("null"))
    .set(legacy("pending", pending.id), encoder.encode("null"))
    .set(legacy("registered", queued.id), encoder.encode("null"))
    .set(legacy("success", "01JGONE00000000000000000000"), encoder.encode("null"));
  for (
    const key of [...await keysOf(kv, "legacy", "exec"), ...await keysOf(kv, "legacy", "pend")]
  ) {
    rewrite.delete(key);
  }
  assert.ok((await rewrite.commit()).ok);
  clock.advance(10_001);
  // Recovery reads the executions of dead runners: without the move it sees neither.
  assert.deepEqual(await o.recoverInvocations({ runnerId: "live" }), []);
  await o.autoPurge();
  assert.deepEqual(await keysOf(kv, "legacy", "status"), []);
  assert.equal((await keysOf(kv, "legacy", "exec")).length, 2);
  const recovered = await o.recoverInvocations({ runnerId: "live" });
  assert.deepEqual(recovered.map(({ id }) => id).sort(), [running.id, pending.id].sort());
  assert.deepEqual(await keysOf(kv, "legacy", "exec"), []);
  assert.equal(await queued.status(), "registered");
});
