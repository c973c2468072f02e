import { test } from "node:test";
import assert from "node:assert/strict";
import { DirectedGraph } from "graphology";
import { hasCycle } from "graphology-dag";
import { CallGraph, type CallRef } from "../core/call_graph.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { seededRandom } from "./_random.ts";

const ref = (callId: string, invocationId = `${callId}/1`): CallRef => ({
  callId,
  invocationId,
  label: `${callId}()`,
});

function cycleOf(action: () => void): CycleDetectedError {
  try {
    action();
  } catch (error) {
    if (error instanceof CycleDetectedError) return error;
    throw error;
  }
  assert.fail("expected a CycleDetectedError");
}

test("CallGraph names a two-task cycle exactly as SPEC §4.2 shows", () => {
  const graph = new CallGraph();
  const fib = { callId: "fib#3", invocationId: "i1", label: 'fib({"n":3})' };
  const other = { callId: "other#3", invocationId: "i2", label: 'other({"n":3})' };
  graph.addCall(fib, other);
  const error = cycleOf(() => graph.addCall(other, { ...fib, invocationId: "i3" }));
  assert.deepEqual(error.callIds, ["other#3", "fib#3"]);
  assert.equal(
    error.message,
    'A cycle was detected: Cycle detected:\n- other({"n":3})\n- fib({"n":3})\n- back to other({"n":3})',
  );
  assert.equal(error.name, "CycleDetectedError");
});

test("CallGraph lists a longer cycle from the caller of the closing edge", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a"), ref("b"));
  graph.addCall(ref("b"), ref("c"));
  graph.addCall(ref("c"), ref("d"));
  const error = cycleOf(() => graph.addCall(ref("d"), ref("b")));
  assert.deepEqual(error.callIds, ["d", "b", "c"]);
  assert.deepEqual(error.labels, ["d()", "b()", "c()"]);
});

test("CallGraph rejects a self-call with CycleDetectedError and adds nothing", () => {
  const graph = new CallGraph();
  const error = cycleOf(() => graph.addCall(ref("a", "i1"), ref("a", "i2")));
  assert.deepEqual(error.callIds, ["a"]);
  assert.equal(error.message, "A cycle was detected: Cycle detected:\n- a()\n- back to a()");
  assert.deepEqual(graph.size, { calls: 0, edges: 0, invocations: 0 });
});

test("CallGraph leaves the graph and its order unchanged when it rejects an edge", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a"), ref("b"));
  graph.addCall(ref("b"), ref("c"));
  graph.addCall(ref("x"), ref("y"));
  const before = { size: graph.size, order: graph.topologicalOrder() };
  cycleOf(() => graph.addCall(ref("c", "c/2"), ref("a", "a/2")));
  assert.deepEqual({ size: graph.size, order: graph.topologicalOrder() }, before);
  assert.equal(graph.hasCall("c", "a"), false);
});

test("CallGraph reorders calls when an edge goes against the current order", () => {
  const graph = new CallGraph();
  graph.addCall(ref("c"), ref("d"));
  graph.addCall(ref("a"), ref("b"));
  // b is after c in the order only if the order was changed: a → b, then b → c.
  graph.addCall(ref("b"), ref("c"));
  const order = graph.topologicalOrder();
  for (const [from, to] of [["a", "b"], ["b", "c"], ["c", "d"]]) {
    assert.ok(order.indexOf(from!) < order.indexOf(to!), `${from} before ${to} in ${order}`);
  }
});

test("CallGraph keeps a call's edges while another live invocation of the call holds them", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a", "a/1"), ref("b", "b/1"));
  graph.addCall(ref("a", "a/2"), ref("b", "b/2"));
  graph.removeInvocation(ref("b", "b/1"));
  assert.equal(graph.hasCall("a", "b"), true);
  assert.throws(() => graph.addCall(ref("b", "b/3"), ref("a", "a/3")), CycleDetectedError);
  graph.removeInvocation(ref("b", "b/2"));
  assert.equal(graph.hasCall("a", "b"), false);
  assert.deepEqual(graph.size, { calls: 1, edges: 0, invocations: 2 });
});

test("CallGraph: hasCallId is true while a live invocation holds the call; a call in the graph keeps the label it entered with, also in a cycle's error", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a", "a/1"), ref("b", "b/1"));
  // Later invocations of the same calls, without labels (the memory store renders none for a
  // call in the graph).
  graph.addCall({ callId: "a", invocationId: "a/2" }, { callId: "b", invocationId: "b/2" });
  assert.equal(graph.hasCallId("a"), true);
  assert.equal(graph.hasCallId("c"), false);
  assert.deepEqual(graph.snapshot().calls.map(({ label }) => label), ["a()", "b()"]);
  const error = cycleOf(() =>
    graph.addCall({ callId: "b", invocationId: "b/3" }, { callId: "a", invocationId: "a/3" })
  );
  assert.deepEqual(error.labels, ["b()", "a()"]);
  for (const invocationId of ["a/1", "a/2"]) graph.removeInvocation({ callId: "a", invocationId });
  assert.equal(graph.hasCallId("a"), false);
  assert.equal(graph.hasCallId("b"), true);
});

test("CallGraph allows the closing edge again once the cycle's invocations are removed", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a"), ref("b"));
  assert.throws(() => graph.addCall(ref("b"), ref("a")), CycleDetectedError);
  graph.removeInvocation(ref("b"));
  graph.addCall(ref("b", "b/2"), ref("a"));
  assert.equal(graph.hasCall("b", "a"), true);
});

test("CallGraph.removeInvocation() ignores unknown calls and invocations", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a"), ref("b"));
  graph.removeInvocation(ref("zzz"));
  graph.removeInvocation(ref("a", "a/unknown"));
  assert.deepEqual(graph.size, { calls: 2, edges: 1, invocations: 2 });
});

test("CallGraph is not exponential: a closing edge over a 200-level diamond lattice (2^200 paths) is rejected", () => {
  const graph = new CallGraph();
  const levels = 200;
  for (let level = 0; level < levels; level++) {
    for (const from of ["l", "r"]) {
      for (const to of ["l", "r"]) graph.addCall(ref(`${from}${level}`), ref(`${to}${level + 1}`));
    }
  }
  // A fresh call placed before the lattice that then calls its top: reorders without a cycle.
  graph.addCall(ref(`l${levels}`), ref("sink"));
  graph.addCall(ref("sink"), ref("tail"));
  const error = cycleOf(() => graph.addCall(ref("tail"), ref("l0")));
  assert.equal(error.callIds[0], "tail");
  assert.equal(error.callIds[1], "l0");
  assert.equal(error.callIds.length, levels + 3);
});

test("CallGraph.snapshot() copies calls, labels, holders and edges", () => {
  const graph = new CallGraph();
  graph.addCall(ref("a"), ref("b"));
  graph.addCall(ref("a", "a/2"), ref("c"));
  assert.deepEqual(graph.snapshot(), {
    calls: [
      { callId: "a", label: "a()", invocationIds: ["a/1", "a/2"] },
      { callId: "b", label: "b()", invocationIds: ["b/1"] },
      { callId: "c", label: "c()", invocationIds: ["c/1"] },
    ],
    edges: [["a", "b"], ["a", "c"]],
  });
});

/** The accepted graph as a graphology graph, for graphology-dag's checks. */
function toGraphology(graph: CallGraph): DirectedGraph {
  const { calls, edges } = graph.snapshot();
  const copy = new DirectedGraph();
  for (const { callId } of calls) copy.addNode(callId);
  for (const [caller, callee] of edges) copy.addDirectedEdge(caller, callee);
  return copy;
}

/** A plain model of the call graph: adjacency sets, holders per call, visited-set DFS. */
class Oracle {
  readonly out = new Map<string, Set<string>>();
  readonly holders = new Map<string, Set<string>>();

  reaches(from: string, to: string): boolean {
    const seen = new Set([from]);
    const stack = [from];
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (node === to) return true;
      for (const next of this.out.get(node) ?? []) {
        if (!seen.has(next)) {
          seen.add(next);
          stack.push(next);
        }
      }
    }
    return false;
  }

  add(caller: CallRef, callee: CallRef): void {
    for (const r of [caller, callee]) {
      if (!this.holders.has(r.callId)) {
        this.holders.set(r.callId, new Set());
        this.out.set(r.callId, new Set());
      }
      this.holders.get(r.callId)!.add(r.invocationId);
    }
    this.out.get(caller.callId)!.add(callee.callId);
  }

  remove(r: CallRef): void {
    const holders = this.holders.get(r.callId);
    if (holders === undefined || !holders.delete(r.invocationId) || holders.size > 0) return;
    this.holders.delete(r.callId);
    this.out.delete(r.callId);
    for (const targets of this.out.values()) targets.delete(r.callId);
  }

  edgeCount(): number {
    let count = 0;
    for (const targets of this.out.values()) count += targets.size;
    return count;
  }
}

for (
  const { seed, calls, steps } of [
    { seed: 1, calls: 8, steps: 10_000 },
    { seed: 2, calls: 40, steps: 10_000 },
    { seed: 3, calls: 150, steps: 2_000 },
  ]
) {
  test(`CallGraph verdicts equal a visited-set DFS over ${steps} random adds and removes (${calls} calls, seed ${seed})`, () => {
    const random = seededRandom(seed);
    const graph = new CallGraph();
    const oracle = new Oracle();
    const pick = (): CallRef => ref(`c${random.int(calls)}`, `i${random.int(3)}`);
    let cycles = 0;
    let accepted = 0;
    for (let step = 0; step < steps; step++) {
      if (random.next() < 0.3) {
        const r = pick();
        graph.removeInvocation(r);
        oracle.remove(r);
      } else {
        const caller = pick();
        const callee = pick();
        const expectCycle = caller.callId === callee.callId ||
          oracle.reaches(callee.callId, caller.callId);
        const before = graph.size;
        let error: CycleDetectedError | undefined;
        try {
          graph.addCall(caller, callee);
        } catch (caught) {
          if (!(caught instanceof CycleDetectedError)) throw caught;
          error = caught;
        }
        assert.equal(
          error !== undefined,
          expectCycle,
          `step ${step}: ${caller.callId} → ${callee.callId}`,
        );
        if (error === undefined) {
          oracle.add(caller, callee);
          accepted++;
        } else {
          cycles++;
          assert.deepEqual(graph.size, before);
          // The reported cycle is real: caller → callee, then existing edges back to the caller.
          const ids = error.callIds;
          assert.equal(ids[0], caller.callId);
          if (ids.length > 1) assert.equal(ids[1], callee.callId);
          for (let i = 1; i < ids.length; i++) {
            assert.ok(oracle.out.get(ids[i]!)!.has(ids[(i + 1) % ids.length]!));
          }
        }
      }
      assert.equal(graph.size.calls, oracle.holders.size);
      assert.equal(graph.size.edges, oracle.edgeCount());
      const copy = toGraphology(graph);
      assert.equal(hasCycle(copy), false);
      const position = new Map(graph.topologicalOrder().map((id, index) => [id, index]));
      copy.forEachEdge((_edge, _attributes, source, target) => {
        assert.ok(position.get(source)! < position.get(target)!, `order of ${source} → ${target}`);
      });
    }
    assert.ok(cycles > steps / 50, `only ${cycles} cycles exercised`);
    assert.ok(accepted > steps / 5, `only ${accepted} edges accepted`);
  });
}
