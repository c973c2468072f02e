/**
 * Blocking control (SPEC §4.3): which invocations others wait on, and which of those should run
 * first. {@linkcode WaitGraph} keeps the wait edges in a graphology `DirectedGraph` and indexes the
 * "ready" invocations — waited on by someone, waiting on nothing — in an indexed 4-ary min-heap
 * keyed by the time they were first waited on, so {@linkcode WaitGraph.blocking} costs
 * O(k log k) for k examined results instead of a scan of every waited invocation.
 *
 * Runtime-free: no `Deno.*`, no `Bun.*`; time enters through the `clock` option.
 *
 * @module
 */

import { DirectedGraph } from "graphology";
import { IndexedHeap } from "./_indexed_heap.ts";

/**
 * The attributes of every node and edge of a wait graph: none, one frozen object for all, not an
 * empty object each (the graph holds one per waiting and waited invocation, and per wait edge).
 */
const NO_ATTRIBUTES = Object.freeze({});

/** No neighbours, without asking the graph for an empty array. */
const NONE: readonly string[] = Object.freeze([]);

/**
 * The clock a {@linkcode WaitGraph} reads first-wait times from: milliseconds, like `Date.now()`.
 *
 * @example A fake clock for tests
 * ```ts
 * import { WaitGraph, type WaitGraphClock } from "@nenc/nenc";
 *
 * let nowMs = 0;
 * const clock: WaitGraphClock = { now: () => nowMs };
 * const graph = new WaitGraph({ clock });
 * graph.waitFor("a", ["x"]);
 * nowMs = 5;
 * graph.waitFor("b", ["y"]);
 * console.log(graph.blocking(10)); // ["x", "y"]: x was waited on first
 * ```
 */
export interface WaitGraphClock {
  /** The current time in milliseconds. */
  now(): number;
}

/**
 * Options of the {@linkcode WaitGraph} constructor.
 *
 * @example
 * ```ts
 * import { WaitGraph, type WaitGraphOptions } from "@nenc/nenc";
 *
 * const options: WaitGraphOptions = { clock: { now: () => 1_700_000_000_000 } };
 * const graph = new WaitGraph(options);
 * console.log(graph.size.edges); // 0
 * ```
 */
export interface WaitGraphOptions {
  /** Where first-wait times come from; defaults to `{ now: () => Date.now() }`. */
  clock?: WaitGraphClock;
}

/**
 * Options of {@linkcode WaitGraph.blocking}.
 *
 * @example Skipping invocations that cannot run now
 * ```ts
 * import { WaitGraph, type WaitGraphBlockingOptions } from "@nenc/nenc";
 *
 * const graph = new WaitGraph();
 * graph.waitFor("parent", ["a", "b", "c"]);
 * const options: WaitGraphBlockingOptions = { isAvailable: (id) => id !== "a" };
 * console.log(graph.blocking(2, options)); // ["b", "c"]
 * ```
 */
export interface WaitGraphBlockingOptions {
  /**
   * Whether an invocation may be returned (for example: its status lets it run). Skipped ids do
   * not count towards `max`. Called during the read: it must not modify the graph.
   */
  isAvailable?: (id: string) => boolean;
}

/**
 * Counts returned by {@linkcode WaitGraph.size}.
 *
 * @example
 * ```ts
 * import { WaitGraph, type WaitGraphSize } from "@nenc/nenc";
 *
 * const graph = new WaitGraph();
 * graph.waitFor("1", ["2"]);
 * graph.waitFor("2", ["3"]);
 * const size: WaitGraphSize = graph.size;
 * console.log(size); // { waiters: 2, waited: 2, edges: 2, ready: 1 }
 * ```
 */
export interface WaitGraphSize {
  /** Invocations that wait on at least one other. */
  readonly waiters: number;
  /** Invocations that at least one other waits on. */
  readonly waited: number;
  /** Wait edges (waiter → waited). */
  readonly edges: number;
  /** Invocations waited on by someone and waiting on nothing: the candidates of `blocking()`. */
  readonly ready: number;
}

/**
 * The wait graph of blocking control: an edge waiter → waited for each invocation that waits on
 * the result of another. {@linkcode WaitGraph.blocking} answers "what should run first": the
 * sinks among waited-on invocations, oldest first wait first, ties by id.
 *
 * Invariant: an id is in the ready index iff it is waited on (in-degree > 0) and waits on
 * nothing (out-degree 0). Ids with no edges at all are not kept.
 *
 * @example The chain of SPEC §4.3
 * ```ts
 * import { WaitGraph } from "@nenc/nenc";
 *
 * const graph = new WaitGraph();
 * graph.waitFor("1", ["2"]);
 * graph.waitFor("2", ["3"]);
 * console.log(graph.blocking(10)); // ["3"]
 * graph.release("3");
 * console.log(graph.blocking(10)); // ["2"]
 * graph.release("2");
 * console.log(graph.blocking(10)); // []
 * ```
 */
export class WaitGraph {
  readonly #graph = new DirectedGraph();
  readonly #clock: WaitGraphClock;
  /** First-wait time of every id with in-degree > 0. */
  readonly #firstWaitMs = new Map<string, number>();
  readonly #ready = new IndexedHeap();
  #waiters = 0;
  /** The key of the next wait edge. */
  #edgeKeys = 0;

  /**
   * Creates an empty wait graph.
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph({ clock: { now: () => 0 } });
   * console.log(graph.blocking(1)); // []
   * ```
   */
  constructor(options?: WaitGraphOptions) {
    const clock = options?.clock;
    if (clock !== undefined && typeof clock?.now !== "function") {
      throw new TypeError("Cannot create WaitGraph: options.clock must have a now() method");
    }
    this.#clock = clock ?? { now: () => Date.now() };
  }

  /**
   * Records that `waiterId` (the invocation currently running) waits on each of `waitedIds`.
   * An id's first-wait time is `nowMs` (default: the clock) when it gets its first waiter, and
   * kept while it has any. Repeated edges change nothing; an empty list is a no-op. The call is atomic: bad
   * input throws before anything is recorded.
   *
   * @throws {TypeError} if an id is not a string or `waitedIds` is not an array.
   * @throws {RangeError} if an id is empty or `waiterId` is among `waitedIds`.
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("parent", ["child-1", "child-2"]);
   * console.log(graph.waitedBy("parent")); // ["child-1", "child-2"]
   * ```
   */
  waitFor(waiterId: string, waitedIds: readonly string[], nowMs?: number): void {
    checkId(waiterId, "wait", "waiterId");
    if (!Array.isArray(waitedIds)) {
      throw new TypeError(`Cannot wait: waitedIds must be an array, got ${typeof waitedIds}`);
    }
    for (const waitedId of waitedIds) {
      checkId(waitedId, "wait", "waitedIds[]");
      if (waitedId === waiterId) {
        throw new RangeError(`Cannot wait: invocation ${waiterId} cannot wait on itself`);
      }
    }
    if (waitedIds.length === 0) return;

    const graph = this.#graph;
    // A node just added has no edges: its degrees are known without asking the graph.
    let waiting = graph.hasNode(waiterId)
      ? graph.outDegree(waiterId) > 0
      : (graph.addNode(waiterId, NO_ATTRIBUTES), false);
    let firstWaitMs: number | undefined;
    for (const waitedId of waitedIds) {
      let waited: boolean;
      let ready: boolean;
      if (graph.hasNode(waitedId)) {
        if (graph.hasDirectedEdge(waiterId, waitedId)) continue;
        waited = graph.inDegree(waitedId) > 0;
        ready = !waited && graph.outDegree(waitedId) === 0;
      } else {
        graph.addNode(waitedId, NO_ATTRIBUTES);
        waited = false;
        ready = true;
      }
      if (!waited) {
        firstWaitMs ??= nowMs ?? this.#now();
        this.#firstWaitMs.set(waitedId, firstWaitMs);
        if (ready) this.#ready.insert(waitedId, firstWaitMs);
      }
      if (!waiting) {
        waiting = true;
        this.#waiters++;
        this.#ready.remove(waiterId);
      }
      // Keyed by a count: graphology's own key generator builds and checks a longer string.
      graph.addDirectedEdgeWithKey(this.#edgeKeys++, waiterId, waitedId, NO_ATTRIBUTES);
    }
  }

  /**
   * Removes every edge of a finished invocation: it waits on nothing and nobody waits on it any
   * more. Its waiters that have nothing left to wait on become eligible again (ready, with their
   * original first-wait time, if someone waits on them). Unknown ids are a no-op.
   *
   * @throws {TypeError} if the id is not a string.
   * @throws {RangeError} if the id is empty.
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("1", ["2"]);
   * graph.waitFor("2", ["3"]);
   * graph.release("3");
   * console.log(graph.blocking(10)); // ["2"]
   * ```
   */
  release(waitedId: string): void {
    checkId(waitedId, "release", "waitedId");
    const graph = this.#graph;
    if (!graph.hasNode(waitedId)) return;

    // Neighbours are listed only if it has some (a leaf waits on none).
    if (graph.outDegree(waitedId) > 0) {
      this.#waiters--;
      for (const target of graph.outNeighbors(waitedId)) {
        graph.dropDirectedEdge(waitedId, target);
        if (graph.inDegree(target) === 0) {
          this.#firstWaitMs.delete(target);
          this.#ready.remove(target);
          if (graph.outDegree(target) === 0) graph.dropNode(target);
        }
      }
    }
    for (const source of graph.inDegree(waitedId) > 0 ? graph.inNeighbors(waitedId) : NONE) {
      graph.dropDirectedEdge(source, waitedId);
      if (graph.outDegree(source) > 0) continue;
      this.#waiters--;
      const firstWaitMs = this.#firstWaitMs.get(source);
      if (firstWaitMs === undefined) graph.dropNode(source);
      else this.#ready.insert(source, firstWaitMs);
    }
    this.#firstWaitMs.delete(waitedId);
    this.#ready.remove(waitedId);
    graph.dropNode(waitedId);
  }

  /**
   * The invocations that should run first: waited on by someone, waiting on nothing, and
   * accepted by `options.isAvailable`, ordered by first-wait time (oldest first), ties by id
   * (string order); at most `max`. A pure read: nothing is consumed, so calling it twice gives
   * the same answer. Costs O(k log k) for the k ready ids examined.
   *
   * @throws {RangeError} if `max` is not a non-negative integer.
   * @throws {TypeError} if `options.isAvailable` is given and is not a function.
   *
   * @example A diamond and a circular wait
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const diamond = new WaitGraph();
   * diamond.waitFor("1", ["2", "3"]);
   * diamond.waitFor("2", ["3"]);
   * console.log(diamond.blocking(10)); // ["3"]
   *
   * const circle = new WaitGraph();
   * circle.waitFor("a", ["b"]);
   * circle.waitFor("b", ["a"]);
   * console.log(circle.blocking(10)); // []
   * ```
   */
  blocking(max: number, options?: WaitGraphBlockingOptions): string[] {
    if (!Number.isInteger(max) || max < 0) {
      throw new RangeError(
        `Cannot read blocking invocations: max must be a non-negative integer, got ${max}`,
      );
    }
    const isAvailable = options?.isAvailable;
    if (isAvailable !== undefined && typeof isAvailable !== "function") {
      throw new TypeError(
        "Cannot read blocking invocations: options.isAvailable must be a function",
      );
    }
    return this.#ready.smallest(max, isAvailable);
  }

  /**
   * Whether `id` waits on at least one invocation.
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("1", ["2"]);
   * console.log(graph.isWaiting("1"), graph.isWaiting("2")); // true false
   * ```
   */
  isWaiting(id: string): boolean {
    return this.#graph.hasNode(id) && this.#graph.outDegree(id) > 0;
  }

  /**
   * Whether at least one invocation waits on `id`.
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("1", ["2"]);
   * console.log(graph.isWaitedOn("2"), graph.isWaitedOn("1")); // true false
   * ```
   */
  isWaitedOn(id: string): boolean {
    return this.#firstWaitMs.has(id);
  }

  /**
   * The invocations that wait on `id` (in insertion order; `[]` for unknown ids).
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("a", ["x"]);
   * graph.waitFor("b", ["x"]);
   * console.log(graph.waitersOf("x")); // ["a", "b"]
   * ```
   */
  waitersOf(id: string): string[] {
    return this.#graph.hasNode(id) ? this.#graph.inNeighbors(id) : [];
  }

  /**
   * The invocations that `id` waits on (in insertion order; `[]` for unknown ids).
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("a", ["x", "y"]);
   * console.log(graph.waitedBy("a")); // ["x", "y"]
   * ```
   */
  waitedBy(id: string): string[] {
    return this.#graph.hasNode(id) ? this.#graph.outNeighbors(id) : [];
  }

  /**
   * Every wait edge, as `[waiterId, waitedId]`; O(edges).
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("a", ["x", "y"]);
   * console.log(graph.edges()); // [["a", "x"], ["a", "y"]]
   * ```
   */
  edges(): [string, string][] {
    const edges: [string, string][] = [];
    this.#graph.forEachEdge((_edge, _attributes, waiter, waited) => edges.push([waiter, waited]));
    return edges;
  }

  /**
   * Counts of waiters, waited-on invocations, edges and ready invocations; O(1).
   *
   * @example
   * ```ts
   * import { WaitGraph } from "@nenc/nenc";
   *
   * const graph = new WaitGraph();
   * graph.waitFor("a", ["x", "y"]);
   * console.log(graph.size); // { waiters: 1, waited: 2, edges: 2, ready: 2 }
   * ```
   */
  get size(): WaitGraphSize {
    return {
      waiters: this.#waiters,
      waited: this.#firstWaitMs.size,
      edges: this.#graph.size,
      ready: this.#ready.size,
    };
  }

  #now(): number {
    const nowMs = this.#clock.now();
    if (!Number.isFinite(nowMs)) {
      throw new RangeError(`Cannot wait: clock.now() returned ${nowMs}, not a finite number`);
    }
    return nowMs;
  }
}

function checkId(id: unknown, action: string, name: string): asserts id is string {
  if (typeof id !== "string") {
    throw new TypeError(`Cannot ${action}: ${name} must be a string, got ${typeof id}`);
  }
  if (id === "") throw new RangeError(`Cannot ${action}: ${name} must not be empty`);
}
