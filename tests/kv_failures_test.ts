import { after, test } from "node:test";
import assert from "node:assert/strict";
import { AtomicDraft, GroupCommitter } from "../kv/_batching.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { Nenc } from "../core/app.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

async function open(): Promise<TestKv> {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  return kv;
}

/** The values an atomic operation sets, as text. */
const texts = (values: readonly unknown[]): string[] =>
  values.map((value) => new TextDecoder().decode(value as Uint8Array));

test("group commit: when the read after a failed batch throws, every draft of the batch still settles", async () => {
  const kv = await open();
  let failReads = false;
  const committer = new GroupCommitter(interceptKv(kv, {
    beforeGetMany: () => {
      if (failReads) throw new Error("connection reset");
    },
  }));
  const first = committer.commit(new AtomicDraft().set(["first"], bytes("1")));
  failReads = true;
  // Batched together (they wait while `first` is in flight); the stale one fails the batch, and
  // the read that should find it throws.
  const stale = committer.commit(
    new AtomicDraft().check({ key: ["first"], versionstamp: null }).set(["x"], bytes("x")),
  ).catch((error: unknown) => error);
  const valid = committer.commit(new AtomicDraft().set(["y"], bytes("y")))
    .catch((error: unknown) => error);
  assert.equal(await first, true);
  await within(Promise.all([stale, valid]), DEADLINE_MS, "the drafts of the batch to settle");
});

test("group commit: a valid draft is not re-queued forever behind drafts that keep arriving stale", async () => {
  const kv = await open();
  const staleOnes: Promise<boolean>[] = [];
  // Another process keeps moving first: every commit this store makes, one more transition
  // planned on an old read arrives meanwhile (bounded here so the test ends).
  const committed: string[][] = [];
  const committer: GroupCommitter = new GroupCommitter(interceptKv(kv, {
    beforeCommit: (values) => {
      committed.push(texts(values));
      if (staleOnes.length < 40) {
        const n = staleOnes.length;
        staleOnes.push(committer.commit(
          new AtomicDraft()
            .check({ key: ["s", n], versionstamp: "00000000000000ff0000" })
            .set(["s", n], bytes(`stale ${n}`)),
        ));
      }
    },
  }));
  const first = committer.commit(new AtomicDraft().set(["first"], bytes("1")));
  const valid = committer.commit(new AtomicDraft().set(["valid"], bytes("valid")));
  await first;
  assert.equal(await valid, true);
  // Its batch failed once (a stale draft with it): after that one read it commits, rather than
  // joining the next batch with the next stale arrival.
  const attempts = committed.filter((values) => values.includes("valid")).length;
  await Promise.all(staleOnes);
  assert.ok(attempts <= 2, `the valid draft was in ${attempts} commits before it was written`);
});

test('KV: a finishing write that meets "database is locked" is retried as a conflict, not turned into a failure of the invocation', async () => {
  const kv = await open();
  // The success write of the invocation finds the file locked 11 times in a row (another
  // process holding it): the old #commit counted a lock as a conflict and tried again.
  let locks = 11;
  const view = interceptKv(kv, {
    beforeCommit: (values) => {
      if (texts(values).some((value) => value.includes('"status":"success"')) && locks-- > 0) {
        throw new Error("database is locked");
      }
    },
  });
  const app = new Nenc({ appId: "locked", kv: view });
  const add = app.task("add", ({ a, b }: { a: number; b: number }) => a + b);
  const invocation = await add.call({ a: 1, b: 2 });
  await within(app.runner().drain(), DEADLINE_MS, "the drain");
  assert.equal(await within(invocation.result(), DEADLINE_MS, "add's result"), 3);
});

test("KV: register under a lock held past the batch retries still registers (a lock is a conflict, not an error)", async () => {
  const kv = await open();
  let locks = 0;
  const view = interceptKv(kv, {
    beforeCommit: () => {
      if (locks-- > 0) throw new Error("database is locked");
    },
  });
  const app = new Nenc({ appId: "locked-register", kv: view });
  const ping = app.task("ping", () => "pong");
  await ping.call(); // the schema is written
  locks = 12;
  const invocation = await ping.call();
  assert.equal(await app.orchestrator.getInvocationStatus(invocation), "registered");
});

/**
 * Two apps on one database, as two processes: `here` reads through `view` (so it has its own
 * in-process signals), `there` on the database itself.
 */
function twoProcesses(kv: KvLike, view: KvLike, appId: string) {
  const here = new Nenc({ appId, kv: view });
  const there = new Nenc({ appId, kv });
  const hereTask = here.task("t", () => 1);
  there.task("t", () => 1);
  return { here, there, hereTask };
}

test("KV final poller: a waiter whose first read resolves with the poller's last read is not left without a poller", async () => {
  const kv = await open();
  // getMany calls are held while `gate` is set, then resolved by hand, in the same turn: as when
  // the poller's last read and a new waiter's first read share one coalesced getMany.
  let gate = false;
  let passed = 0;
  const held: (() => void)[] = [];
  const view: KvLike = {
    get: (key) => kv.get(key),
    getMany: async (keys) => {
      const result = await kv.getMany(keys);
      if (!gate) {
        passed++;
        return result;
      }
      return await new Promise((resolve) => held.push(() => resolve(result)));
    },
    list: (selector, options) => kv.list(selector, options),
    atomic: () => kv.atomic(),
  };
  const { here, there, hereTask } = twoProcesses(kv, view, "poller-handoff");
  const x = await hereTask.call();
  const y = await hereTask.call();
  const store = here.orchestrator.store;
  const leave = new AbortController();
  const before = passed;
  const waitingX = store.waitFinal(x.id, leave.signal);
  // Hold reads only once the waiter's own first read is through (and a timer turn has let it
  // join the waiters): held, that read would leave `await waitingX` on nothing but a promise
  // no timer or I/O can settle, and the runtime ends the test.
  await waitUntil(() => passed !== before, {
    intervalMs: 0,
    message: "the waiter's first read never went through",
  });
  await new Promise((resolve) => setTimeout(resolve, 0));
  gate = true;
  await waitUntil(() => held.length > 0, { intervalMs: 0, message: "no read was held" });
  // The poller is reading X when X's only waiter leaves: that read is its last round.
  leave.abort();
  await within(waitingX, DEADLINE_MS, "the waiter on X to leave");
  const waitingY = store.waitFinal(y.id);
  await waitUntil(() => held.length >= 2, { intervalMs: 0, message: "no second read was held" });
  gate = false;
  held[0]!();
  held[1]!();
  await new Promise((resolve) => setTimeout(resolve, 20));
  // Another process ends Y: only a poller can see it.
  await there.orchestrator.setInvocationStatus(y, "concurrency_controlled_final", {
    runnerId: "ops",
  });
  await within(waitingY, DEADLINE_MS, "the end of Y (was its waiter left without a poller?)");
});

test("KV final poller: a read that fails once neither crashes the process nor loses the waiter", async () => {
  const kv = await open();
  let reads = 0;
  let failAt = Infinity;
  const view = interceptKv(kv, {
    beforeGetMany: () => {
      if (++reads === failAt) throw new Error("connection reset");
    },
  });
  const { here, there, hereTask } = twoProcesses(kv, view, "poller-error");
  const x = await hereTask.call();
  failAt = reads + 2; // the waiter's own read passes; the poller's first read fails
  const waiting = here.orchestrator.store.waitFinal(x.id);
  // The poller's first round comes after 5 ms; allow a loaded machine far longer.
  await waitUntil(() => reads >= failAt, {
    timeoutMs: 10_000,
    intervalMs: 5,
    message: "the poller's read was not reached",
  });
  await there.orchestrator.setInvocationStatus(x, "concurrency_controlled_final", {
    runnerId: "ops",
  });
  await within(waiting, DEADLINE_MS, "the end of X (was its waiter lost?)");
});
