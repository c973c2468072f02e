/**
 * Cycle control (SPEC §4.2): the graph of calls between running invocations, kept acyclic by
 * an incremental topological order.
 *
 * @module
 */

import { DirectedGraph } from "graphology";
import { CycleDetectedError } from "./errors.ts";

/**
 * One side of a call: the call id, the invocation making or running it, and how to render it.
 *
 * @example
 * ```ts
 * import { CallGraph, type CallRef } from "@nenc/nenc";
 *
 * const checkout: CallRef = { callId: "checkout#1", invocationId: "i1", label: 'checkout({"cart":7})' };
 * const charge: CallRef = { callId: "charge#1", invocationId: "i2" };
 * const graph = new CallGraph();
 * graph.addCall(checkout, charge);
 * console.log(graph.snapshot().calls.map((call) => call.label)); // ['checkout({"cart":7})', "charge#1"]
 * ```
 */
export interface CallRef {
  /** The call id (task id + argument hash): the node of the graph. */
  readonly callId: string;
  /** The invocation of that call: keeps the node alive until it is removed. */
  readonly invocationId: string;
  /** How the call is rendered in a {@linkcode CycleDetectedError} (default: the call id). */
  readonly label?: string;
}

/**
 * Figures of a {@linkcode CallGraph}.
 *
 * @example Two invocations of one call count once as a call
 * ```ts
 * import { CallGraph, type CallGraphSize } from "@nenc/nenc";
 *
 * const graph = new CallGraph();
 * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
 * graph.addCall({ callId: "a#1", invocationId: "i3" }, { callId: "b#1", invocationId: "i4" });
 * const size: CallGraphSize = graph.size;
 * console.log(size); // { calls: 2, edges: 1, invocations: 4 }
 * ```
 */
export interface CallGraphSize {
  /** Calls (nodes) in the graph. */
  readonly calls: number;
  /** Caller → callee edges. */
  readonly edges: number;
  /** Live invocations holding the calls. */
  readonly invocations: number;
}

/**
 * One call of a {@linkcode CallGraphSnapshot}.
 *
 * @example
 * ```ts
 * import { CallGraph, type CallSnapshot } from "@nenc/nenc";
 *
 * const graph = new CallGraph();
 * graph.addCall({ callId: "a#1", invocationId: "i1", label: "a()" }, { callId: "b#1", invocationId: "i2" });
 * const [first]: readonly CallSnapshot[] = graph.snapshot().calls;
 * console.log(first); // { callId: "a#1", label: "a()", invocationIds: ["i1"] }
 * ```
 */
export interface CallSnapshot {
  /** The call id. */
  readonly callId: string;
  /** How the call is rendered. */
  readonly label: string;
  /** The live invocations that hold the call. */
  readonly invocationIds: readonly string[];
}

/**
 * A plain copy of a {@linkcode CallGraph}, from {@linkcode CallGraph.snapshot}.
 *
 * @example Rendering the graph as Graphviz DOT
 * ```ts
 * import { CallGraph, type CallGraphSnapshot } from "@nenc/nenc";
 *
 * const graph = new CallGraph();
 * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
 * const snapshot: CallGraphSnapshot = graph.snapshot();
 * const edges = snapshot.edges.map(([caller, callee]) => `"${caller}" -> "${callee}";`);
 * console.log(`digraph { ${edges.join(" ")} }`); // digraph { "a#1" -> "b#1"; }
 * ```
 */
export interface CallGraphSnapshot {
  /** Every call in the graph. */
  readonly calls: readonly CallSnapshot[];
  /** Every edge, as `[callerCallId, calleeCallId]`. */
  readonly edges: readonly (readonly [string, string])[];
}

interface CallNode {
  /** Position in the topological order: every edge u→v has ord(u) < ord(v). Distinct per node. */
  ord: number;
  readonly label: string;
  readonly invocations: Set<string>;
}

/**
 * The call graph of running invocations: nodes are call ids, an edge caller → callee is added
 * when the callee starts running with that caller. Adding an edge that would close a cycle
 * throws {@linkcode CycleDetectedError} and leaves the graph unchanged.
 *
 * The graph is kept acyclic with the dynamic topological order of Pearce and Kelly ("A dynamic
 * topological sort algorithm for directed acyclic graphs", JEA 2006): every node has a distinct
 * position, and every edge goes from a lower to a higher position.
 * - An edge that already respects the order costs O(1): no search at all. New nodes are placed at
 *   the ends of the order (a new caller first, a new callee last), so a call that reaches a new
 *   call never searches either — the common case of a running program calling new work.
 * - Any other edge x → y searches only the affected region, the nodes whose positions lie between
 *   y and x: forward from y and backward from x, each with a visited set, so each node and edge of
 *   the region is visited at most once (never the exponential walk of a DFS without a visited set).
 *   Reaching x from y is the cycle; otherwise the two regions swap places in the order.
 *
 * Nodes are reference-counted by invocation: {@linkcode CallGraph.removeInvocation} drops a call
 * and its edges when its last live invocation goes.
 *
 * @example Catching a call loop
 * ```ts
 * import { CallGraph, CycleDetectedError } from "@nenc/nenc";
 *
 * const graph = new CallGraph();
 * const fib = { callId: "fib#3", invocationId: "inv-1", label: 'fib({"n":3})' };
 * const other = { callId: "other#3", invocationId: "inv-2", label: 'other({"n":3})' };
 * graph.addCall(fib, other);
 * try {
 *   graph.addCall(other, { ...fib, invocationId: "inv-3" });
 * } catch (error) {
 *   if (!(error instanceof CycleDetectedError)) throw error;
 *   console.log(error.callIds); // ["other#3", "fib#3"]
 * }
 * console.log(graph.hasCall("other#3", "fib#3")); // false: the graph is unchanged
 * ```
 */
export class CallGraph {
  readonly #graph = new DirectedGraph<CallNode>();
  // Positions handed to new nodes: a new caller goes before every node, a new callee after.
  #lowestOrd = 0;
  #highestOrd = 0;
  #invocations = 0;

  /**
   * Adds the edge caller → callee and registers both invocations on their calls.
   *
   * @throws {CycleDetectedError} when the edge would close a cycle (a self-call included); the
   * graph is left unchanged.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * const graph = new CallGraph();
   * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
   * console.log(graph.hasCall("a#1", "b#1")); // true
   * ```
   */
  addCall(caller: CallRef, callee: CallRef): void {
    const graph = this.#graph;
    const x = caller.callId;
    const y = callee.callId;
    if (x === y) {
      const node = graph.hasNode(x) ? graph.getNodeAttributes(x) : undefined;
      throw new CycleDetectedError([x], [node?.label ?? caller.label ?? x]);
    }
    const from = graph.hasNode(x) ? graph.getNodeAttributes(x) : undefined;
    const to = graph.hasNode(y) ? graph.getNodeAttributes(y) : undefined;
    if (from !== undefined && to !== undefined && from.ord > to.ord) this.#reorder(x, y);
    this.#hold(from ?? this.#addNode(x, caller, --this.#lowestOrd), caller);
    this.#hold(to ?? this.#addNode(y, callee, ++this.#highestOrd), callee);
    if (!graph.hasDirectedEdge(x, y)) graph.addDirectedEdge(x, y);
  }

  /**
   * Releases the invocation's hold on its call; when no live invocation of that call is left, the
   * call and all its edges disappear. Unknown calls and invocations are ignored.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * const graph = new CallGraph();
   * const a = { callId: "a#1", invocationId: "i1" };
   * const b = { callId: "b#1", invocationId: "i2" };
   * graph.addCall(a, b);
   * graph.removeInvocation(b);
   * console.log(graph.hasCall("a#1", "b#1")); // false
   * ```
   */
  removeInvocation(ref: Pick<CallRef, "callId" | "invocationId">): void {
    const graph = this.#graph;
    if (!graph.hasNode(ref.callId)) return;
    const node = graph.getNodeAttributes(ref.callId);
    if (!node.invocations.delete(ref.invocationId)) return;
    this.#invocations--;
    if (node.invocations.size === 0) graph.dropNode(ref.callId);
  }

  /**
   * Whether the edge caller → callee is in the graph.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * console.log(new CallGraph().hasCall("a#1", "b#1")); // false
   * ```
   */
  hasCall(callerCallId: string, calleeCallId: string): boolean {
    return this.#graph.hasNode(callerCallId) && this.#graph.hasNode(calleeCallId) &&
      this.#graph.hasDirectedEdge(callerCallId, calleeCallId);
  }

  /**
   * Whether the call is in the graph (a live invocation holds it). Its label, set when it
   * entered, stays: a caller need not render the label of a call already in the graph.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * const graph = new CallGraph();
   * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
   * console.log(graph.hasCallId("b#1"), graph.hasCallId("c#1")); // true false
   * ```
   */
  hasCallId(callId: string): boolean {
    return this.#graph.hasNode(callId);
  }

  /**
   * Calls, edges and live invocations in the graph.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * console.log(new CallGraph().size); // { calls: 0, edges: 0, invocations: 0 }
   * ```
   */
  get size(): CallGraphSize {
    return { calls: this.#graph.order, edges: this.#graph.size, invocations: this.#invocations };
  }

  /**
   * The call ids in the maintained topological order: every edge goes from an earlier to a later
   * call. O(n log n).
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * const graph = new CallGraph();
   * graph.addCall({ callId: "b#1", invocationId: "i2" }, { callId: "c#1", invocationId: "i3" });
   * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
   * console.log(graph.topologicalOrder()); // ["a#1", "b#1", "c#1"]
   * ```
   */
  topologicalOrder(): string[] {
    const entries: [string, number][] = [];
    this.#graph.forEachNode((callId, node) => entries.push([callId, node.ord]));
    return entries.sort((a, b) => a[1] - b[1]).map(([callId]) => callId);
  }

  /**
   * A plain copy of the graph: every call with its label and live invocations, and every
   * caller → callee edge. For rendering (Mermaid, DOT), inspection and graph algorithms.
   *
   * @example
   * ```ts
   * import { CallGraph } from "@nenc/nenc";
   *
   * const graph = new CallGraph();
   * graph.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
   * console.log(graph.snapshot().edges); // [["a#1", "b#1"]]
   * ```
   */
  snapshot(): CallGraphSnapshot {
    const calls: CallSnapshot[] = [];
    this.#graph.forEachNode((callId, node) =>
      calls.push({ callId, label: node.label, invocationIds: [...node.invocations] })
    );
    const edges: [string, string][] = [];
    this.#graph.forEachEdge((_edge, _attributes, caller, callee) => edges.push([caller, callee]));
    return { calls, edges };
  }

  #addNode(callId: string, ref: CallRef, ord: number): CallNode {
    const node: CallNode = { ord, label: ref.label ?? callId, invocations: new Set() };
    this.#graph.addNode(callId, node);
    return node;
  }

  #hold(node: CallNode, ref: CallRef): void {
    if (node.invocations.has(ref.invocationId)) return;
    node.invocations.add(ref.invocationId);
    this.#invocations++;
  }

  /**
   * Pearce–Kelly for an edge x → y with ord(x) > ord(y): throws if y reaches x, otherwise moves
   * the nodes that reach x (with positions above y's) before the nodes y reaches (with positions
   * below x's), reusing the same set of positions.
   */
  #reorder(x: string, y: string): void {
    const graph = this.#graph;
    const upper = graph.getNodeAttributes(x).ord;
    const lower = graph.getNodeAttributes(y).ord;

    // Forward from y through positions below x's: reaching x closes a cycle.
    const forward: [string, CallNode][] = [[y, graph.getNodeAttributes(y)]];
    const parentOf = new Map<string, string>([[y, y]]);
    for (let i = 0; i < forward.length; i++) {
      const [callId] = forward[i]!;
      let closedAt: string | undefined;
      graph.forEachOutNeighbor(callId, (next, node) => {
        if (closedAt !== undefined || parentOf.has(next)) return;
        if (next === x) {
          closedAt = callId;
        } else if (node.ord < upper) {
          parentOf.set(next, callId);
          forward.push([next, node]);
        }
      });
      if (closedAt !== undefined) throw this.#cycleError(x, closedAt, parentOf);
    }

    // Backward from x through positions above y's (y itself is not reachable: it would be a cycle).
    const backward: [string, CallNode][] = [[x, graph.getNodeAttributes(x)]];
    const seen = new Set([x]);
    for (let i = 0; i < backward.length; i++) {
      graph.forEachInNeighbor(backward[i]![0], (previous, node) => {
        if (node.ord > lower && !seen.has(previous)) {
          seen.add(previous);
          backward.push([previous, node]);
        }
      });
    }

    const byOrd = (a: [string, CallNode], b: [string, CallNode]): number => a[1].ord - b[1].ord;
    const moved = [...backward.sort(byOrd), ...forward.sort(byOrd)];
    const positions = moved.map(([, node]) => node.ord).sort((a, b) => a - b);
    moved.forEach(([, node], index) => node.ord = positions[index]!);
  }

  /** The cycle x → y → … → last → x, as SPEC §4.2 lists it: from the caller x. */
  #cycleError(x: string, last: string, parentOf: Map<string, string>): CycleDetectedError {
    const path: string[] = [];
    for (let callId = last;; callId = parentOf.get(callId)!) {
      path.push(callId);
      if (parentOf.get(callId) === callId) break;
    }
    const callIds = [x, ...path.reverse()];
    const labels = callIds.map((callId) => this.#graph.getNodeAttributes(callId).label);
    return new CycleDetectedError(callIds, labels);
  }
}
