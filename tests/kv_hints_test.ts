/**
 * The KV pick-up's side index hints (kv/_hints.ts): once a pick-up found the wake markers, the
 * delayed queue with its time-ordered wake markers, and the blocking index quiet, the next ones
 * list the ready queue alone — and an entry another process adds to any of them is still read by
 * the next pick-up (its commit moved the hint), one due later when its time comes, and one added
 * without a hint (an older nenc) within HINT_TRUST_MS.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { InvocationStatus } from "../core/status.ts";
import { HINT_TRUST_MS } from "../kv/_hints.ts";
import type { KvLike, KvListSelectorLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { FakeClock } from "./_fake_clock.ts";
import { interceptKv, openTestKv } from "./_kv.ts";

const opened: { close(): void }[] = [];
after(() => opened.forEach((kv) => kv.close()));

const APP = "hints";

/** The part of a range read's key that names its index (`q`, `qd`, `wake`, `wakeat`, `ready`). */
function indexOf(selector: KvListSelectorLike): string {
  const key = "prefix" in selector ? selector.prefix : selector.start;
  return String(key[2]);
}

/**
 * A KV handle on `:memory:`, a store on it that counts its range reads by index, and apps on the
 * same handle for other processes' calls (each a store of its own, as another process has).
 */
async function setUp(clock: FakeClock) {
  const handle = await openTestKv(":memory:");
  opened.push(handle);
  const lists: string[] = [];
  let hints = 0;
  const kv = interceptKv(handle, {
    beforeList: (selector) => void lists.push(indexOf(selector)),
    beforeGetMany: (keys) => void (hints += keys.some((key) => key[2] === "hint") ? 1 : 0),
  });
  const store = new KvStore(kv, { appId: APP, clock });
  const other = new Nenc({ appId: APP, kv: handle, clock });
  const pickUp = async (max = 1) => {
    lists.length = 0;
    const { claimed } = await store.claim({
      runnerId: "r1",
      nowMs: clock.now(),
      max,
      blocking: true,
      runAtOnce: () => true,
      rerouteOnConcurrencyControl: () => true,
      purgeAtMs: clock.now() + 3_600_000,
    });
    return { ids: claimed.map((record) => record.id), lists: [...lists].sort() };
  };
  /** Pick-ups until the side indexes are covered quiet: the last one lists the queue alone. */
  const settle = async () => {
    for (let i = 0; i < 3; i++) await pickUp();
    assert.deepEqual((await pickUp()).lists, ["q"]);
  };
  /** The final write of an invocation a pick-up ran. */
  const finish = async (id: string) => {
    const ended = await store.change(id, {
      path: [InvocationStatus.SUCCESS],
      runnerId: "r1",
      nowMs: clock.now(),
      result: "1",
      purgeAtMs: clock.now() + 3_600_000,
    });
    assert.ok(ended.ok);
  };
  return { handle, store, other, pickUp, settle, finish, hintReads: () => hints };
}

test("[kv] once a pick-up found the side indexes quiet, the next pick-ups list the ready queue alone, and claim from it as before", async () => {
  const clock = new FakeClock();
  const { other, pickUp } = await setUp(clock);
  const ping = other.task("ping", ({ n }: { n: number }) => n);
  const calls = [];
  for (const n of [1, 2, 3, 4]) calls.push(await ping.call({ n }));
  // The first pick-ups read every index: nothing covered yet (then the quiet time index asks
  // where its next due time is: the delayed entry and the window after now).
  const first = await pickUp();
  assert.deepEqual(first, { ids: [calls[0]!.id], lists: ["q", "qd", "ready", "wake", "wakeat"] });
  const second = await pickUp();
  assert.deepEqual(second.ids, [calls[1]!.id]);
  assert.deepEqual(second.lists, ["q", "qd", "qd", "ready", "wake", "wakeat", "wakeat"]);
  for (const call of calls.slice(2)) {
    assert.deepEqual(await pickUp(), { ids: [call.id], lists: ["q"] });
  }
});

test("[kv] the pick-up after a final write of an invocation run here takes the hints read with that write, and reads none of its own", async () => {
  const clock = new FakeClock();
  const { other, pickUp, settle, finish, hintReads } = await setUp(clock);
  await settle();
  const ping = other.task("ping", ({ n }: { n: number }) => n);
  const first = await ping.call({ n: 1 });
  const second = await ping.call({ n: 2 });
  assert.deepEqual((await pickUp()).ids, [first.id]);
  const before = hintReads();
  await finish(first.id);
  assert.equal(hintReads() - before, 1, "the hints read with the final write");
  assert.deepEqual(await pickUp(), { ids: [second.id], lists: ["q"] });
  assert.equal(hintReads() - before, 1, "none by the pick-up");
});

test("[kv] a delayed call another process registers after the indexes were read quiet moves the time hint: the next pick-up reads the delayed queue, and the one at its time claims it", async () => {
  const clock = new FakeClock();
  const { other, pickUp, settle } = await setUp(clock);
  await settle();
  const ping = other.task("ping", ({ n }: { n: number }) => n);
  const later = await ping.call({ n: 1 }, { delayMs: 500 });
  // The hint moved: the time index is read (nothing due), and quiet until the call's time.
  assert.deepEqual((await pickUp()).lists, ["q", "qd", "qd", "wakeat", "wakeat"]);
  assert.deepEqual(await pickUp(), { ids: [], lists: ["q"] });
  clock.advance(499);
  assert.deepEqual(await pickUp(), { ids: [], lists: ["q"] });
  clock.advance(1);
  assert.deepEqual((await pickUp()).ids, [later.id]);
});

test("[kv] a wait another process adds after the indexes were read quiet moves the blocking hint: the next pick-up reads the blocking index and takes the waited invocation first, ahead of older queued work", async () => {
  const clock = new FakeClock();
  const { handle, other, pickUp, settle } = await setUp(clock);
  await settle();
  const ping = other.task("ping", ({ n }: { n: number }) => n);
  const older = await ping.call({ n: 1 });
  const waiter = await ping.call({ n: 2 });
  const waited = await ping.call({ n: 3 });
  // Another process: `waiter` waits on `waited` (as a paused task's result() does).
  const otherStore = new KvStore(handle, { appId: APP, clock });
  await otherStore.waitFor(waiter.id, [waited.id], clock.now());
  const next = await pickUp();
  assert.ok(next.lists.includes("ready"), `the blocking index read: ${next.lists.join(", ")}`);
  assert.deepEqual(next.ids, [waited.id], `the waited one first, not ${older.id}`);
});

test("[kv] a slot freed with invocations parked on its key, after the indexes were read quiet, moves the wake hint: the next pick-up reads the wake marker and wakes the parked invocation", async () => {
  const clock = new FakeClock();
  const { other, store, pickUp, settle, finish } = await setUp(clock);
  await settle();
  const one = other.task("one", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
  const first = await one.call({ n: 1 });
  const second = await one.call({ n: 2 });
  // The first runs; the second, refused the key's one slot, parks on it.
  const pickUpBoth = await pickUp(2);
  assert.deepEqual(pickUpBoth.ids, [first.id]);
  assert.equal((await store.get(second.id))?.status, InvocationStatus.CONCURRENCY_CONTROLLED);
  await pickUp(); // the indexes quiet again (nothing woke the parked one yet)
  await finish(first.id);
  const next = await pickUp();
  assert.ok(next.lists.includes("wake"), `the wake markers read: ${next.lists.join(", ")}`);
  assert.deepEqual(next.ids, [second.id]);
});

test("[kv] a delayed entry added without moving the hint (a process of an older nenc) is read within HINT_TRUST_MS: skipped while the hint is trusted, claimed after", async () => {
  const clock = new FakeClock();
  const { handle, pickUp, settle } = await setUp(clock);
  await settle();
  // An older nenc's commits set no hint key.
  const older: KvLike = {
    get: (key) => handle.get(key),
    getMany: (keys) => handle.getMany(keys),
    list: (selector, options) => handle.list(selector, options),
    atomic: () => {
      const op = handle.atomic();
      const set = op.set.bind(op);
      op.set = (key, value, options) => key[2] === "hint" ? op : set(key, value, options);
      return op;
    },
  };
  const olderApp = new Nenc({ appId: APP, kv: older, clock });
  const call = await olderApp.task("ping", ({ n }: { n: number }) => n).call({ n: 1 }, {
    delayMs: 10,
  });
  clock.advance(10);
  assert.deepEqual(await pickUp(), { ids: [], lists: ["q"] });
  clock.advance(HINT_TRUST_MS);
  assert.deepEqual((await pickUp()).ids, [call.id]);
});
