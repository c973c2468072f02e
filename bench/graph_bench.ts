/**
 * The graph core under `deno bench` (`deno task bench`). Every group has a baseline measured in
 * the same run, so the ratios Deno prints hold on any machine:
 *
 * - deep: a 5,000-call chain (a deep recursion) receiving 5,000 random forward calls. A per-insert
 *   DFS walks the rest of the chain on every insert; the maintained order answers in O(1).
 * - sparse: 30,000 random edges over 10,000 calls in random order, consistent with a hidden
 *   order — the DFS's good case: the incremental order must not cost much more.
 * - diamond: a lattice of two calls per level, each calling both calls of the next level, then
 *   one edge from a later call into its top (no cycle). graphology-dag's `willCreateCycle` walks
 *   without a visited set: 2^levels paths. Shown only at 18 levels, to show why it is not used.
 * - churn: 10,000 live calls; per round, the oldest call finishes, a new call is called by a live
 *   one, and one random edge between live calls is tried (cycles included).
 * - blocking: `WaitGraph.blocking(10)` against a scan-and-sort over 100,000 waited invocations.
 *
 * @module
 */

import { DirectedGraph } from "graphology";
import { willCreateCycle } from "graphology-dag";
import { CallGraph, type CallRef } from "../core/call_graph.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { WaitGraph } from "../core/wait_graph.ts";
import { seededRandom } from "../tests/_random.ts";

/** The baseline: the same graphology storage, checked by a visited-set DFS on every insert. */
class DfsCallGraph {
  readonly graph = new DirectedGraph();

  /** Adds caller → callee unless it closes a cycle; returns whether it was added. */
  addCall(caller: string, callee: string): boolean {
    if (caller === callee || this.#reaches(callee, caller)) return false;
    this.graph.mergeNode(caller);
    this.graph.mergeNode(callee);
    this.graph.mergeDirectedEdge(caller, callee);
    return true;
  }

  dropCall(callId: string): void {
    if (this.graph.hasNode(callId)) this.graph.dropNode(callId);
  }

  #reaches(from: string, to: string): boolean {
    if (!this.graph.hasNode(from) || !this.graph.hasNode(to)) return false;
    const seen = new Set([from]);
    const stack = [from];
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (node === to) return true;
      this.graph.forEachOutNeighbor(node, (next) => {
        if (!seen.has(next)) {
          seen.add(next);
          stack.push(next);
        }
      });
    }
    return false;
  }
}

const call = (callId: string): CallRef => ({ callId, invocationId: callId });

/** Adds the edge to a CallGraph; returns false for a detected cycle. */
function tryAdd(graph: CallGraph, caller: string, callee: string): boolean {
  try {
    graph.addCall(call(caller), call(callee));
    return true;
  } catch (error) {
    if (error instanceof CycleDetectedError) return false;
    throw error;
  }
}

// --- deep -------------------------------------------------------------------------------------

const DEEP_CALLS = 5_000;
const deepRandom = seededRandom(1);
const deepEdges: [string, string][] = Array.from({ length: DEEP_CALLS }, () => {
  const i = deepRandom.int(DEEP_CALLS - 1);
  const j = i + 1 + deepRandom.int(DEEP_CALLS - 1 - i);
  return [`c${i}`, `c${j}`];
});

Deno.bench({
  name: "deep: CallGraph",
  group: "deep",
  fn(b) {
    const graph = new CallGraph();
    for (let i = 0; i + 1 < DEEP_CALLS; i++) graph.addCall(call(`c${i}`), call(`c${i + 1}`));
    b.start();
    for (const [caller, callee] of deepEdges) tryAdd(graph, caller, callee);
    b.end();
  },
});

Deno.bench({
  name: "deep: DFS per insert",
  group: "deep",
  baseline: true,
  fn(b) {
    const graph = new DfsCallGraph();
    for (let i = 0; i + 1 < DEEP_CALLS; i++) graph.addCall(`c${i}`, `c${i + 1}`);
    b.start();
    for (const [caller, callee] of deepEdges) graph.addCall(caller, callee);
    b.end();
  },
});

// --- sparse -----------------------------------------------------------------------------------

const SPARSE_CALLS = 10_000;
const sparseRandom = seededRandom(2);
const hidden = sparseRandom.shuffle(Array.from({ length: SPARSE_CALLS }, (_, i) => i));
const sparseEdges: [string, string][] = Array.from({ length: 30_000 }, () => {
  const a = sparseRandom.int(SPARSE_CALLS);
  let b = sparseRandom.int(SPARSE_CALLS - 1);
  if (b >= a) b++;
  const [from, to] = hidden[a]! < hidden[b]! ? [a, b] : [b, a];
  return [`c${from}`, `c${to}`];
});

Deno.bench({
  name: "sparse: CallGraph",
  group: "sparse",
  fn() {
    const graph = new CallGraph();
    for (const [caller, callee] of sparseEdges) tryAdd(graph, caller, callee);
  },
});

Deno.bench({
  name: "sparse: DFS per insert",
  group: "sparse",
  baseline: true,
  fn() {
    const graph = new DfsCallGraph();
    for (const [caller, callee] of sparseEdges) graph.addCall(caller, callee);
  },
});

// --- diamond ----------------------------------------------------------------------------------

/** Lattice edges top-down, then `later → tail`, so `tail` comes after the lattice in the order. */
function diamondEdges(levels: number): [string, string][] {
  const edges: [string, string][] = [];
  for (let level = 0; level < levels; level++) {
    for (const from of ["l", "r"]) {
      for (const to of ["l", "r"]) edges.push([`${from}${level}`, `${to}${level + 1}`]);
    }
  }
  edges.push(["later", "tail"]);
  return edges;
}

for (const levels of [18, 1_000]) {
  const edges = diamondEdges(levels);
  const group = `diamond ${levels} levels`;

  Deno.bench({
    name: `diamond ${levels}: CallGraph`,
    group,
    fn(b) {
      const graph = new CallGraph();
      for (const [caller, callee] of edges) graph.addCall(call(caller), call(callee));
      b.start();
      if (!tryAdd(graph, "tail", "l0")) throw new Error("unexpected cycle");
      b.end();
    },
  });

  Deno.bench({
    name: `diamond ${levels}: DFS per insert`,
    group,
    baseline: true,
    fn(b) {
      const graph = new DfsCallGraph();
      for (const [caller, callee] of edges) graph.addCall(caller, callee);
      b.start();
      if (!graph.addCall("tail", "l0")) throw new Error("unexpected cycle");
      b.end();
    },
  });

  if (levels <= 18) {
    const graph = new DfsCallGraph();
    for (const [caller, callee] of edges) graph.addCall(caller, callee);
    Deno.bench({
      name: `diamond ${levels}: graphology-dag willCreateCycle`,
      group,
      fn() {
        if (willCreateCycle(graph.graph, "tail", "l0")) throw new Error("unexpected cycle");
      },
    });
  }
}

// --- churn ------------------------------------------------------------------------------------

const LIVE_CALLS = 10_000;
const ROUNDS = 1_000;

/** A steady-state workload: one call finishes, one starts, one random edge is tried. */
interface ChurnTarget {
  add(caller: string, callee: string): void;
  drop(callId: string): void;
}

function churn(target: ChurnTarget, seed: number): () => void {
  const random = seededRandom(seed);
  const live: string[] = ["c0"];
  for (let i = 1; i < LIVE_CALLS; i++) {
    live.push(`c${i}`);
    target.add(live[random.int(i)]!, `c${i}`);
  }
  let next = LIVE_CALLS;
  let oldest = 0; // `live` is a ring: the oldest call finishes and a new call takes its slot.
  return () => {
    for (let round = 0; round < ROUNDS; round++) {
      target.drop(live[oldest]!);
      const callerSlot = (oldest + 1 + random.int(LIVE_CALLS - 1)) % LIVE_CALLS;
      live[oldest] = `c${next++}`;
      target.add(live[callerSlot]!, live[oldest]!);
      oldest = (oldest + 1) % LIVE_CALLS;
      target.add(live[random.int(LIVE_CALLS)]!, live[random.int(LIVE_CALLS)]!);
    }
  };
}

const churnCallGraph = new CallGraph();
const churnRounds = churn({
  add: (caller, callee) => void tryAdd(churnCallGraph, caller, callee),
  drop: (callId) => churnCallGraph.removeInvocation(call(callId)),
}, 3);

const churnDfs = new DfsCallGraph();
const churnDfsRounds = churn({
  add: (caller, callee) => void churnDfs.addCall(caller, callee),
  drop: (callId) => churnDfs.dropCall(callId),
}, 3);

Deno.bench({ name: "churn: CallGraph", group: "churn", fn: churnRounds });
Deno.bench({ name: "churn: DFS per insert", group: "churn", baseline: true, fn: churnDfsRounds });

// --- blocking ---------------------------------------------------------------------------------
// 100,000 waited invocations, each waited on by one of 25,000 top-level invocations; 30 % of them
// also wait on a later one (nested waits), so about 70,000 are sinks. First-wait times advance
// 0–2 ms per wait, so ties (broken by id) are common. The baseline scans every waited invocation,
// keeps the sinks and sorts them; blocking() walks its ready-heap: O(k log k).

const WAITED = 100_000;
const TOP_LEVEL = 25_000;
const NESTED_SHARE = 0.3;

interface BaselineNode {
  readonly id: string;
  readonly firstWaitMs: number;
  waitsOn: number;
}

const blockingRandom = seededRandom(42);
let nowMs = 1_700_000_000_000;
const waitGraph = new WaitGraph({ clock: { now: () => nowMs } });
/** The same data for the scan-and-sort baseline: every waited invocation, with its first wait. */
const baseline = new Map<string, BaselineNode>();

const waitedId = (i: number): string => `inv${String(i).padStart(6, "0")}`;

for (let i = 0; i < WAITED; i++) {
  nowMs += blockingRandom.int(3);
  const id = waitedId(i);
  waitGraph.waitFor(`top${i % TOP_LEVEL}`, [id]);
  baseline.set(id, { id, firstWaitMs: nowMs, waitsOn: 0 });
}
for (let i = 0; i < WAITED - 1; i++) {
  if (blockingRandom.next() >= NESTED_SHARE) continue;
  nowMs += blockingRandom.int(3);
  const target = i + 1 + blockingRandom.int(WAITED - i - 1); // later ids only: no circular waits
  const id = waitedId(i);
  waitGraph.waitFor(id, [waitedId(target)]);
  const node = baseline.get(id);
  if (node !== undefined) node.waitsOn++;
}

function scanAndSort(max: number): string[] {
  const sinks: BaselineNode[] = [];
  for (const node of baseline.values()) if (node.waitsOn === 0) sinks.push(node);
  sinks.sort((a, b) => a.firstWaitMs - b.firstWaitMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return sinks.slice(0, max).map((node) => node.id);
}

// Both sides must agree before anything is timed.
const expected = JSON.stringify(scanAndSort(10));
if (JSON.stringify(waitGraph.blocking(10)) !== expected) {
  throw new Error(`Cannot bench: blocking(10) differs from the scan (${expected})`);
}
const size = waitGraph.size;
if (size.waited !== WAITED) {
  throw new Error(`Cannot bench: expected ${WAITED} waited invocations, got ${size.waited}`);
}

const evenOnly = (id: string): boolean => (id.charCodeAt(id.length - 1) & 1) === 0;

Deno.bench({
  name: "scan-and-sort of all waited invocations, take 10",
  group: "blocking",
  baseline: true,
  fn(): void {
    scanAndSort(10);
  },
});

Deno.bench({
  name: "WaitGraph.blocking(10)",
  group: "blocking",
  fn(): void {
    waitGraph.blocking(10);
  },
});

Deno.bench({
  name: "WaitGraph.blocking(10) with half of the ids unavailable",
  group: "blocking",
  fn(): void {
    waitGraph.blocking(10, { isAvailable: evenOnly });
  },
});
