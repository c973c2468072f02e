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
 * `locked` commits throw SQLite's "database is locked"; a commit of more than `maxChecks` checks
 * throws as a denokv server refuses it; `held` commits wait until released.
 */
function recording(kv: KvLike, options: { locked?: number; maxChecks?: number } = {}) {
  let locked = options.locked ?? 0;
  const commits: number[] = [];
  const reads: KvKey[][] = [];
  let inFlight = 0;
  let mostInFlight = 0;
  let holds: Promise<void> | undefined;
  let release = (): void => {};
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
      op.commit = async () => {
        commits.push(checks);
        mostInFlight = Math.max(mostInFlight, ++inFlight);
        try {
          await holds;
          if (locked-- > 0) throw new Error("database is locked");
          if (checks > (options.maxChecks ?? Infinity)) {
            throw new Error(`too many checks: ${checks}, at most ${options.maxChecks}`);
          }
          return await commit();
        } finally {
          inFlight--;
        }
      };
      return op;
    },
  };
  return {
    view,
    commits,
    reads,
    mostInFlight: () => mostInFlight,
    /** Commits from now on wait until `release()`. */
    hold: () => holds = new Promise((resolve) => release = () => (holds = undefined, resolve())),
    release: () => release(),
  };
}

async function fresh(options: { locked?: number; maxChecks?: number } = {}) {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const recorder = recording(kv, options);
  const committer = new GroupCommitter(recorder.view);
  return { kv, committer, ...recorder };
}

/**
 * The Deno CLI's own store allows 100 checks per commit; `@deno/kv`'s (Bun, Node) allows 10, as
 * the denokv protocol does: there the committer behaves as over the network.
 */
const onlyDeno = (globalThis as { Deno?: unknown }).Deno === undefined
  ? "the store of @deno/kv allows 10 checks per commit, as denokv does"
  : false;

/** A draft that checks `key` is absent and sets it to its own name. */
const claim = (key: string): AtomicDraft =>
  new AtomicDraft().check({ key: [key], versionstamp: null }).set([key], bytes(key));

test(
  "group commit: drafts on disjoint keys sent in one turn share one commit, up to the local store's 100 checks, and all are written",
  { skip: onlyDeno },
  async () => {
    const { kv, committer, commits } = await fresh();
    const results = await Promise.all(Array.from({ length: 25 }, (_, i) =>
      committer.commit(
        new AtomicDraft().check({ key: ["k", i], versionstamp: null }).set(["k", i], bytes(`${i}`)),
      )));
    assert.deepEqual(results, Array(25).fill(true));
    for (let i = 0; i < 25; i++) assert.equal(text((await kv.get(["k", i])).value), `${i}`);
    assert.deepEqual(commits, [25]);
    const more = Array.from({ length: 150 }, (_, i) => committer.commit(claim(`more${i}`)));
    assert.deepEqual(await Promise.all(more), Array(150).fill(true));
    assert.deepEqual(commits.slice(1), [100, 50]);
  },
);

test("group commit: a store that refuses more than 10 checks (denokv) teaches the committer its limit once; the refused drafts are written in batches of 10, in flight together", async () => {
  const { kv, committer, commits, mostInFlight } = await fresh({ maxChecks: 10 });
  const results = await Promise.all(
    Array.from({ length: 25 }, (_, i) => committer.commit(claim(`a${i}`))),
  );
  assert.deepEqual(results, Array(25).fill(true));
  for (let i = 0; i < 25; i++) assert.equal(text((await kv.get([`a${i}`])).value), `a${i}`);
  // Refused at 25, then within 10, and the three batches at once (over the network, a commit
  // costs a round trip).
  assert.deepEqual(commits, [25, 10, 10, 5]);
  assert.equal(mostInFlight(), 3);
  const later = Array.from({ length: 15 }, (_, i) => committer.commit(claim(`b${i}`)));
  assert.deepEqual(await Promise.all(later), Array(15).fill(true));
  assert.deepEqual(commits.slice(4), [10, 5]);
});

test(
  "group commit: on a local store a batch that is not full waits for the commit in flight and takes what arrives meanwhile; a full one goes beside it",
  { skip: onlyDeno },
  async () => {
    const { committer, commits, mostInFlight, hold, release } = await fresh();
    hold();
    const first = committer.commit(claim("first"));
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.deepEqual(commits, [1]);
    const waiting = [committer.commit(claim("x")), committer.commit(claim("y"))];
    await new Promise((resolve) => setTimeout(resolve, 0));
    // Not full: not sent while the first is in flight.
    assert.deepEqual(commits, [1]);
    const full = Array.from({ length: 99 }, (_, i) => committer.commit(claim(`f${i}`)));
    await new Promise((resolve) => setTimeout(resolve, 0));
    // 101 checks wait: a full batch of 100 goes beside the one in flight.
    assert.deepEqual(commits, [1, 100]);
    release();
    assert.deepEqual(await Promise.all([first, ...waiting, ...full]), Array(102).fill(true));
    assert.deepEqual(commits, [1, 100, 1]);
    assert.equal(mostInFlight(), 2);
  },
);

test(
  "group commit: a draft that touches a key of a draft in flight waits for it, whatever room a batch has",
  { skip: onlyDeno },
  async () => {
    const { kv, committer, commits, hold, release } = await fresh();
    await kv.atomic().set(["counter"], bytes("0")).commit();
    hold();
    const first = committer.commit(new AtomicDraft().set(["counter"], bytes("1")));
    await new Promise((resolve) => setTimeout(resolve, 0));
    const second = committer.commit(new AtomicDraft().set(["counter"], bytes("2")));
    const others = Array.from({ length: 101 }, (_, i) => committer.commit(claim(`o${i}`)));
    await new Promise((resolve) => setTimeout(resolve, 0));
    // 100 of the others fill a batch that goes now; the second write of the counter is not in it.
    assert.deepEqual(commits, [0, 100]);
    release();
    assert.deepEqual(await Promise.all([first, second, ...others]), Array(103).fill(true));
    assert.deepEqual(commits, [0, 100, 1]);
    assert.equal(text((await kv.get(["counter"])).value), "2");
  },
);

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
  const outcomes = await Promise.all([
    committer.commit(new AtomicDraft().set(["first"], bytes("1"))),
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
  // The batch of four fails; one read finds the stale draft; the other three commit together.
  assert.deepEqual(commits, [1, 0]);
});

// Where a commit holds 10 checks (Bun, Node), so does a refused batch: one getMany reads them.
test(
  "group commit: a refused batch of more than 10 checks finds its stale draft in reads of at most 10 keys; the others commit together, not one by one",
  {
    skip: onlyDeno,
  },
  async () => {
    const { kv, committer, commits, reads } = await fresh();
    await kv.atomic().set(["taken", 3], bytes("someone")).commit();
    // Eight drafts of two checks each: 16 checks, more than one getMany (10 keys) reads.
    const draft = (i: number) =>
      new AtomicDraft()
        .check({ key: ["taken", i], versionstamp: null })
        .check({ key: ["guard", i], versionstamp: null })
        .set(["taken", i], bytes(`me${i}`));
    const outcomes = await Promise.all(
      Array.from({ length: 8 }, (_, i) => committer.commit(draft(i))),
    );
    assert.deepEqual(outcomes, [true, true, true, false, true, true, true, true]);
    assert.equal(text((await kv.get(["taken", 3])).value), "someone");
    assert.equal(text((await kv.get(["taken", 7])).value), "me7");
    // The batch of eight fails; the stale read goes in two getMany calls; seven commit together.
    assert.deepEqual(commits, [16, 14]);
    assert.deepEqual(reads.map((keys) => keys.length), [10, 6]);
  },
);

test('group commit: a batch refused with "database is locked" is tried again whole, not split into a commit per draft', async () => {
  const { kv, committer, commits } = await fresh({ locked: 2 });
  const outcomes = await Promise.all(
    ["a", "b", "c"].map((key) => committer.commit(claim(key))),
  );
  assert.deepEqual(outcomes, [true, true, true]);
  for (const key of ["a", "b", "c"]) assert.equal(text((await kv.get([key])).value), key);
  // Locked, locked, then committed: one batch each time.
  assert.deepEqual(commits, [3, 3, 3]);
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

test("group commit: drafts that check one key at one versionstamp and write other keys share one commit, with the check once; one that writes that key, or checks it at another versionstamp, waits for the next", async () => {
  const { kv, committer, commits } = await fresh();
  const shared = ["cancel", "r1", "parent"];
  const calls = Array.from({ length: 3 }, (_, i) =>
    committer.commit(
      new AtomicDraft().check({ key: shared, versionstamp: null }).set(["child", i], bytes(`${i}`)),
    ));
  assert.deepEqual(await Promise.all(calls), [true, true, true]);
  assert.deepEqual(commits, [1], "one commit, one check");
  for (let i = 0; i < 3; i++) assert.equal(text((await kv.get(["child", i])).value), `${i}`);
  const stamp = (await kv.atomic().set(shared, bytes("x")).commit()).versionstamp!;
  commits.length = 0;
  const results = await Promise.all([
    committer.commit(new AtomicDraft().check({ key: shared, versionstamp: stamp })),
    committer.commit(new AtomicDraft().check({ key: shared, versionstamp: null })),
    committer.commit(new AtomicDraft().set(shared, bytes("y"))),
  ]);
  assert.deepEqual(results, [true, false, true]);
  assert.deepEqual(commits, [1, 1, 0], "none of the three merged");
});
