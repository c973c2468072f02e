import { after, test } from "node:test";
import assert from "node:assert/strict";
import { AtomicDraft, GroupCommitter, ReadCoalescer } from "../kv/_batching.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (value: unknown): string => new TextDecoder().decode(value as Uint8Array);

/**
 * A KV view that records the checks of every commit and the keys of every getMany; the first
 * `locked` commits throw SQLite's "database is locked".
 */
function recording(kv: KvLike, locked = 0) {
  const commits: number[] = [];
  const reads: KvKey[][] = [];
  const view: KvLike = {
    get: (key) => kv.get(key),
    getMany: (keys) => {
      reads.push([...keys]);
      return kv.getMany(keys);
    },
    list: (selector, options) => kv.list(selector, options),
    atomic: () => {
      const op = kv.atomic();
      let checks = 0;
      const check = op.check.bind(op);
      const commit = op.commit.bind(op);
      op.check = (...list) => {
        checks += list.length;
        return check(...list);
      };
      op.commit = () => {
        commits.push(checks);
        if (locked-- > 0) return Promise.reject(new Error("database is locked"));
        return commit();
      };
      return op;
    },
  };
  return { view, commits, reads };
}

async function fresh(locked = 0) {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const recorder = recording(kv, locked);
  const committer = new GroupCommitter(recorder.view);
  return { kv, committer, ...recorder };
}

test("group commit: drafts on disjoint keys sent together share commits of at most 10 checks, and all are written", async () => {
  const { kv, committer, commits } = await fresh();
  const results = await Promise.all(Array.from({ length: 25 }, (_, i) =>
    committer.commit(
      new AtomicDraft().check({ key: ["k", i], versionstamp: null }).set(["k", i], bytes(`${i}`)),
    )));
  assert.deepEqual(results, Array(25).fill(true));
  for (let i = 0; i < 25; i++) assert.equal(text((await kv.get(["k", i])).value), `${i}`);
  // The first goes alone (nothing was in flight); the 24 waiting meanwhile fill batches of 10.
  assert.deepEqual(commits, [1, 10, 10, 4]);
});

test("group commit: two drafts on one key are never merged, so a read-modify-write cannot lose an update", async () => {
  const { kv, committer } = await fresh();
  await kv.atomic().set(["counter"], bytes("0")).commit();
  const read = await kv.get(["counter"]);
  // Two increments planned from the same read: merged, both checks would pass and one
  // increment would be lost; apart, the second check fails.
  const increment = () =>
    committer.commit(
      new AtomicDraft()
        .check({ key: ["counter"], versionstamp: read.versionstamp })
        .set(["counter"], bytes(String(Number(text(read.value)) + 1))),
    );
  const blocker = committer.commit(new AtomicDraft().set(["other"], bytes("x")));
  const outcomes = await Promise.all([increment(), increment()]);
  await blocker;
  assert.deepEqual(outcomes.sort(), [false, true]);
  assert.equal(text((await kv.get(["counter"])).value), "1");
});

test("group commit: a failed check in a batch fails only its own draft; the others are written", async () => {
  const { kv, committer, commits } = await fresh();
  await kv.atomic().set(["taken"], bytes("someone")).commit();
  const first = committer.commit(new AtomicDraft().set(["first"], bytes("1")));
  const outcomes = await Promise.all([
    first,
    committer.commit(new AtomicDraft().set(["a"], bytes("a"))),
    committer.commit(
      new AtomicDraft().check({ key: ["taken"], versionstamp: null }).set(["taken"], bytes("me")),
    ),
    committer.commit(new AtomicDraft().set(["b"], bytes("b"))),
  ]);
  assert.deepEqual(outcomes, [true, true, false, true]);
  assert.equal(text((await kv.get(["a"])).value), "a");
  assert.equal(text((await kv.get(["b"])).value), "b");
  assert.equal(text((await kv.get(["taken"])).value), "someone");
  // first alone; the batch of three fails; one read finds the stale draft; the other two commit
  // together.
  assert.deepEqual(commits, [0, 1, 0]);
});

test('group commit: a batch refused with "database is locked" is tried again whole, not split into a commit per draft', async () => {
  const { kv, committer, commits } = await fresh(2);
  const first = committer.commit(new AtomicDraft().set(["first"], bytes("1")));
  const outcomes = await Promise.all([
    first,
    ...["a", "b", "c"].map((key) =>
      committer.commit(
        new AtomicDraft().check({ key: [key], versionstamp: null }).set([key], bytes(key)),
      )
    ),
  ]);
  assert.deepEqual(outcomes, [true, true, true, true]);
  for (const key of ["a", "b", "c"]) assert.equal(text((await kv.get([key])).value), key);
  // first: locked, locked, then committed; the three waiting meanwhile: one batch, one commit.
  assert.deepEqual(commits, [0, 0, 0, 3]);
});

test("read coalescing: reads issued together share getMany calls of at most 10 keys and each gets its own entry", async () => {
  const { kv, reads, view } = await fresh();
  for (let i = 0; i < 25; i++) await kv.atomic().set(["r", i], bytes(`v${i}`)).commit();
  const coalescer = new ReadCoalescer(view);
  const entries = await Promise.all(Array.from({ length: 25 }, (_, i) => coalescer.get(["r", i])));
  assert.deepEqual(entries.map((entry) => text(entry.value)), entries.map((_, i) => `v${i}`));
  assert.deepEqual(reads.map((keys) => keys.length), [10, 10, 5]);
  // A read after a write sees the write; an absent key reads as absent.
  await kv.atomic().set(["r", 0], bytes("changed")).commit();
  assert.equal(text((await coalescer.get(["r", 0])).value), "changed");
  assert.equal((await coalescer.get(["missing"])).versionstamp, null);
});
