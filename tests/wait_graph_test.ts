import { test } from "node:test";
import assert from "node:assert/strict";
import { WaitGraph } from "../core/wait_graph.ts";
import { seededRandom } from "./_random.ts";

/** A clock that only moves when told to. */
function fakeClock(startMs = 0): { now(): number; advance(ms: number): void } {
  let nowMs = startMs;
  return {
    now: () => nowMs,
    advance(ms: number): void {
      nowMs += ms;
    },
  };
}

test("WaitGraph.edges() lists every waiter → waited edge, and none of a released invocation", () => {
  const graph = new WaitGraph();
  assert.deepEqual(graph.edges(), []);
  graph.waitFor("1", ["2", "3"]);
  graph.waitFor("2", ["3"]);
  assert.deepEqual(graph.edges(), [["1", "2"], ["1", "3"], ["2", "3"]]);
  graph.release("3");
  assert.deepEqual(graph.edges(), [["1", "2"]]);
});

test("WaitGraph.blocking() returns [3] for the chain 1→2→3", () => {
  const graph = new WaitGraph();
  graph.waitFor("1", ["2"]);
  graph.waitFor("2", ["3"]);
  assert.deepEqual(graph.blocking(10), ["3"]);
});

test("WaitGraph.blocking() returns [2] after release(3), then [] after release(2), in the chain 1→2→3", () => {
  const graph = new WaitGraph();
  graph.waitFor("1", ["2"]);
  graph.waitFor("2", ["3"]);
  graph.release("3");
  assert.deepEqual(graph.blocking(10), ["2"]);
  graph.release("2");
  assert.deepEqual(graph.blocking(10), []);
  assert.deepEqual(graph.size, { waiters: 0, waited: 0, edges: 0, ready: 0 });
});

test("WaitGraph.blocking() returns [3] for the diamond 1→2, 2→3, 1→3", () => {
  const graph = new WaitGraph();
  graph.waitFor("1", ["2"]);
  graph.waitFor("2", ["3"]);
  graph.waitFor("1", ["3"]);
  assert.deepEqual(graph.blocking(10), ["3"]);
  graph.release("3");
  assert.deepEqual(graph.blocking(10), ["2"]);
});

test("WaitGraph.blocking() returns [] for a circular wait", () => {
  const graph = new WaitGraph();
  graph.waitFor("a", ["b"]);
  graph.waitFor("b", ["c"]);
  graph.waitFor("c", ["a"]);
  assert.deepEqual(graph.blocking(10), []);
  assert.deepEqual(graph.size, { waiters: 3, waited: 3, edges: 3, ready: 0 });
});

test("WaitGraph.release() of a member of a circular wait makes its waiter ready", () => {
  const graph = new WaitGraph();
  graph.waitFor("a", ["b"]);
  graph.waitFor("b", ["a"]);
  graph.waitFor("x", ["a"]);
  graph.release("b");
  // a waited on by x, waits on nothing now.
  assert.deepEqual(graph.blocking(10), ["a"]);
  assert.deepEqual(graph.size, { waiters: 1, waited: 1, edges: 1, ready: 1 });
});

test("WaitGraph.blocking() never consumes: two reads give the same answer", () => {
  const clock = fakeClock();
  const graph = new WaitGraph({ clock });
  for (let i = 0; i < 20; i++) {
    graph.waitFor(`p${i}`, [`c${i}`]);
    clock.advance(1);
  }
  const first = graph.blocking(5);
  assert.deepEqual(first, ["c0", "c1", "c2", "c3", "c4"]);
  assert.deepEqual(graph.blocking(5), first);
  assert.equal(graph.size.ready, 20);
});

test("WaitGraph.blocking() orders by first-wait time, oldest first, with an injected clock", () => {
  const clock = fakeClock(1_000);
  const graph = new WaitGraph({ clock });
  graph.waitFor("p", ["late"]);
  clock.advance(-500); // the clock is only read, never trusted to be monotonic
  graph.waitFor("q", ["early"]);
  clock.advance(1_000);
  graph.waitFor("r", ["latest"]);
  assert.deepEqual(graph.blocking(10), ["early", "late", "latest"]);
});

test("WaitGraph.blocking() breaks first-wait ties by id in string order", () => {
  const clock = fakeClock();
  const graph = new WaitGraph({ clock });
  graph.waitFor("p", ["id9", "id10", "id1"]);
  graph.waitFor("q", ["id2"]);
  clock.advance(1);
  graph.waitFor("q", ["id0"]);
  assert.deepEqual(graph.blocking(10), ["id1", "id10", "id2", "id9", "id0"]);
});

test("WaitGraph.waitFor() keeps the first-wait time when more waiters arrive", () => {
  const clock = fakeClock();
  const graph = new WaitGraph({ clock });
  graph.waitFor("p", ["x"]); // x first waited at 0
  clock.advance(10);
  graph.waitFor("q", ["y"]); // y at 10
  clock.advance(10);
  graph.waitFor("r", ["x"]); // another waiter: x stays at 0
  graph.waitFor("p", ["x"]); // a duplicate edge: no change
  graph.release("p"); // one of x's waiters leaves: x keeps 0 while r still waits
  assert.deepEqual(graph.blocking(10), ["x", "y"]);
  assert.deepEqual(graph.waitersOf("x"), ["r"]);
});

test("WaitGraph.waitFor() gives a new first-wait time after all waiters left", () => {
  const clock = fakeClock();
  const graph = new WaitGraph({ clock });
  graph.waitFor("p", ["x"]); // x at 0
  clock.advance(10);
  graph.waitFor("q", ["y"]); // y at 10
  graph.release("p"); // x has no waiter any more: its time is forgotten
  assert.equal(graph.isWaitedOn("x"), false);
  clock.advance(10);
  graph.waitFor("r", ["x"]); // x at 20
  assert.deepEqual(graph.blocking(10), ["y", "x"]);
});

test("WaitGraph.release() makes a waiter ready again with its original first-wait time", () => {
  const clock = fakeClock();
  const graph = new WaitGraph({ clock });
  graph.waitFor("root", ["mid"]); // mid at 0
  clock.advance(5);
  graph.waitFor("other", ["leaf"]); // leaf at 5
  clock.advance(5);
  graph.waitFor("mid", ["deep"]); // deep at 10; mid is no longer ready
  assert.deepEqual(graph.blocking(10), ["leaf", "deep"]);
  clock.advance(100);
  graph.release("deep");
  assert.deepEqual(graph.blocking(10), ["mid", "leaf"]); // mid is back, still at 0
});

test("WaitGraph.blocking() returns at most max ids, and [] for max 0", () => {
  const graph = new WaitGraph({ clock: { now: () => 0 } });
  graph.waitFor("p", ["a", "b", "c", "d"]);
  assert.deepEqual(graph.blocking(2), ["a", "b"]);
  assert.deepEqual(graph.blocking(0), []);
  assert.deepEqual(graph.blocking(100), ["a", "b", "c", "d"]);
});

test("WaitGraph.blocking() skips unavailable ids and still returns up to max available ones", () => {
  const graph = new WaitGraph({ clock: { now: () => 0 } });
  graph.waitFor("p", ["a", "b", "c", "d", "e", "f"]);
  const asked: string[] = [];
  const isAvailable = (id: string): boolean => {
    asked.push(id);
    return id !== "a" && id !== "c";
  };
  assert.deepEqual(graph.blocking(3, { isAvailable }), ["b", "d", "e"]);
  assert.deepEqual(asked, ["a", "b", "c", "d", "e"]); // stops once max are found
  assert.deepEqual(graph.blocking(10, { isAvailable: () => false }), []);
});

test("WaitGraph.waitFor() throws a RangeError for a self-wait and records nothing", () => {
  const graph = new WaitGraph();
  assert.throws(() => graph.waitFor("a", ["b", "a"]), {
    name: "RangeError",
    message: "Cannot wait: invocation a cannot wait on itself",
  });
  assert.deepEqual(graph.size, { waiters: 0, waited: 0, edges: 0, ready: 0 });
});

test("WaitGraph.waitFor() with an empty list is a no-op", () => {
  const graph = new WaitGraph();
  graph.waitFor("a", []);
  assert.equal(graph.isWaiting("a"), false);
  assert.deepEqual(graph.size, { waiters: 0, waited: 0, edges: 0, ready: 0 });
});

test("WaitGraph rejects bad ids, bad max and bad options with TypeError / RangeError", () => {
  const graph = new WaitGraph();
  assert.throws(() => graph.waitFor(1 as unknown as string, ["b"]), TypeError);
  assert.throws(() => graph.waitFor("a", "b" as unknown as string[]), TypeError);
  assert.throws(() => graph.waitFor("a", [null as unknown as string]), TypeError);
  assert.throws(() => graph.waitFor("", ["b"]), RangeError);
  assert.throws(() => graph.waitFor("a", [""]), RangeError);
  assert.throws(() => graph.release(undefined as unknown as string), TypeError);
  assert.throws(() => graph.release(""), RangeError);
  for (const max of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(() => graph.blocking(max), {
      name: "RangeError",
      message: new RegExp(`^Cannot read blocking invocations: max must be a non-negative integer`),
    });
  }
  assert.throws(
    () => graph.blocking(1, { isAvailable: true as unknown as (id: string) => boolean }),
    TypeError,
  );
  assert.throws(
    () => new WaitGraph({ clock: {} as unknown as { now(): number } }),
    TypeError,
  );
  const broken = new WaitGraph({ clock: { now: () => Number.NaN } });
  assert.throws(() => broken.waitFor("a", ["b"]), RangeError);
  assert.deepEqual(graph.size, { waiters: 0, waited: 0, edges: 0, ready: 0 });
});

test("WaitGraph.release() of an unknown id is a no-op", () => {
  const graph = new WaitGraph();
  graph.waitFor("a", ["b"]);
  graph.release("nobody");
  assert.deepEqual(graph.blocking(10), ["b"]);
});

test("WaitGraph accessors report waiters, waited ids, edges and ready counts", () => {
  const graph = new WaitGraph();
  graph.waitFor("1", ["2", "3"]);
  graph.waitFor("2", ["3"]);
  assert.equal(graph.isWaiting("1"), true);
  assert.equal(graph.isWaiting("3"), false);
  assert.equal(graph.isWaitedOn("3"), true);
  assert.equal(graph.isWaitedOn("1"), false);
  assert.deepEqual(graph.waitersOf("3").sort(), ["1", "2"]);
  assert.deepEqual(graph.waitedBy("1").sort(), ["2", "3"]);
  assert.deepEqual(graph.waitersOf("unknown"), []);
  assert.deepEqual(graph.waitedBy("unknown"), []);
  assert.deepEqual(graph.size, { waiters: 2, waited: 2, edges: 3, ready: 1 });
});

/** The plain oracle: adjacency sets, first-wait times, sinks found by a scan and a sort. */
class OracleWaitGraph {
  readonly out = new Map<string, Set<string>>();
  readonly in = new Map<string, Set<string>>();
  readonly firstWaitMs = new Map<string, number>();

  waitFor(waiter: string, waited: readonly string[], nowMs: number): void {
    for (const target of waited) {
      const outs = this.out.get(waiter) ?? new Set<string>();
      if (outs.has(target)) continue;
      outs.add(target);
      this.out.set(waiter, outs);
      const ins = this.in.get(target) ?? new Set<string>();
      if (ins.size === 0) this.firstWaitMs.set(target, nowMs);
      ins.add(waiter);
      this.in.set(target, ins);
    }
  }

  release(id: string): void {
    for (const target of this.out.get(id) ?? []) {
      const ins = this.in.get(target);
      ins?.delete(id);
      if (ins?.size === 0) {
        this.in.delete(target);
        this.firstWaitMs.delete(target);
      }
    }
    this.out.delete(id);
    for (const source of this.in.get(id) ?? []) {
      const outs = this.out.get(source);
      outs?.delete(id);
      if (outs?.size === 0) this.out.delete(source);
    }
    this.in.delete(id);
    this.firstWaitMs.delete(id);
  }

  blocking(max: number, isAvailable: (id: string) => boolean): string[] {
    const sinks: Array<[number, string]> = [];
    for (const [id, ins] of this.in) {
      if (ins.size > 0 && !this.out.has(id) && isAvailable(id)) {
        sinks.push([this.firstWaitMs.get(id) ?? Number.NaN, id]);
      }
    }
    sinks.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    return sinks.slice(0, max).map(([, id]) => id);
  }

  size(): { waiters: number; waited: number; edges: number; ready: number } {
    let edges = 0;
    for (const outs of this.out.values()) edges += outs.size;
    return {
      waiters: this.out.size,
      waited: this.in.size,
      edges,
      ready: this.blocking(Number.MAX_SAFE_INTEGER, () => true).length,
    };
  }
}

for (const [seed, idCount, steps] of [[1, 50, 4_000], [2, 120, 4_000], [3, 200, 4_000]] as const) {
  test(`WaitGraph.blocking() equals a scan-and-sort oracle over ${steps} random waitFor/release steps on ${idCount} ids (seed ${seed})`, () => {
    const random = seededRandom(seed);
    const clock = fakeClock();
    const graph = new WaitGraph({ clock });
    const oracle = new OracleWaitGraph();
    const ids = Array.from({ length: idCount }, (_, i) => `inv${i}`);
    const pick = (): string => ids[random.int(ids.length)] as string;
    let waits = 0;
    let releases = 0;
    let nonEmptyAnswers = 0;

    for (let step = 0; step < steps; step++) {
      clock.advance(random.int(3)); // 0–2 ms: equal first-wait times happen often
      // Lean towards waits but release often enough that sinks keep appearing and vanishing.
      if (random.next() < 0.6) {
        const waiter = pick();
        const waited = Array.from({ length: random.int(4) }, pick).filter((id) => id !== waiter);
        graph.waitFor(waiter, waited);
        oracle.waitFor(waiter, waited, clock.now());
        waits++;
      } else {
        const id = random.next() < 0.05 ? `unknown${step}` : pick();
        graph.release(id);
        oracle.release(id);
        releases++;
      }

      const max = random.int(12);
      const availability = random.next();
      const salt = random.int(1_000);
      // A deterministic predicate per step, so both sides see the same answers.
      const isAvailable = (id: string): boolean =>
        availability > 0.8 || ((hash(id) ^ salt) % 100) / 100 < availability;
      const expected = oracle.blocking(max, isAvailable);
      const actual = graph.blocking(max, { isAvailable });
      assert.deepEqual(actual, expected, `step ${step}: blocking(${max})`);
      assert.deepEqual(graph.blocking(max, { isAvailable }), actual, `step ${step}: re-read`);
      if (actual.length > 0) nonEmptyAnswers++;

      if (step % 50 === 0) {
        assert.deepEqual(graph.size, oracle.size(), `step ${step}: size`);
        const id = pick();
        assert.deepEqual(
          graph.waitersOf(id).sort(),
          [...(oracle.in.get(id) ?? [])].sort(),
          `step ${step}: waitersOf(${id})`,
        );
        assert.deepEqual(
          graph.waitedBy(id).sort(),
          [...(oracle.out.get(id) ?? [])].sort(),
          `step ${step}: waitedBy(${id})`,
        );
        assert.equal(graph.isWaiting(id), oracle.out.has(id));
        assert.equal(graph.isWaitedOn(id), oracle.in.has(id));
      }
    }
    assert.deepEqual(graph.size, oracle.size());
    // The run must have exercised both operations and produced real answers.
    assert.ok(waits > steps / 3 && releases > steps / 4, `${waits} waits, ${releases} releases`);
    assert.ok(nonEmptyAnswers > steps / 4, `${nonEmptyAnswers} non-empty answers`);
  });
}

/** A small string hash (FNV-1a) for the per-step availability predicate. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
