/**
 * Blocking control (SPEC §4.3): which invocations others wait on, and which of those should run
 * first. {@linkcode WaitGraph} keeps the wait edges in a graphology `DirectedGraph` and indexes the
 * "ready" invocations — waited on by someone, waiting on nothing — in an indexed binary min-heap
 * keyed by the time they were first waited on, so {@linkcode WaitGraph.blocking} costs
 * O(k log k) for k examined results instead of a scan of every waited invocation.
 *
 * Runtime-free: no `Deno.*`, no `Bun.*`; time enters through the `clock` option.
 *
 * @module
 */

import { DirectedGraph } from "graphology";

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
  readonly #ready = new ReadyHeap();
  #waiters = 0;

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
   * An id's first-wait time is taken from the clock when it gets its first waiter and kept while
   * it has any. Repeated edges change nothing; an empty list is a no-op. The call is atomic: bad
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
  waitFor(waiterId: string, waitedIds: readonly string[]): void {
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
    if (!graph.hasNode(waiterId)) graph.addNode(waiterId);
    let nowMs: number | undefined;
    for (const waitedId of waitedIds) {
      if (!graph.hasNode(waitedId)) graph.addNode(waitedId);
      else if (graph.hasDirectedEdge(waiterId, waitedId)) continue;
      if (graph.inDegree(waitedId) === 0) {
        nowMs ??= this.#now();
        this.#firstWaitMs.set(waitedId, nowMs);
        if (graph.outDegree(waitedId) === 0) this.#ready.insert(waitedId, nowMs);
      }
      if (graph.outDegree(waiterId) === 0) {
        this.#waiters++;
        this.#ready.remove(waiterId);
      }
      graph.addDirectedEdge(waiterId, waitedId);
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

    if (graph.outDegree(waitedId) > 0) this.#waiters--;
    for (const target of graph.outNeighbors(waitedId)) {
      graph.dropDirectedEdge(waitedId, target);
      if (graph.inDegree(target) === 0) {
        this.#firstWaitMs.delete(target);
        this.#ready.remove(target);
        if (graph.outDegree(target) === 0) graph.dropNode(target);
      }
    }
    for (const source of graph.inNeighbors(waitedId)) {
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

/**
 * An indexed binary min-heap of ids keyed by (keyMs, id): O(log n) insert and remove-by-id,
 * and a non-consuming read of the k smallest.
 */
class ReadyHeap {
  readonly #ids: string[] = [];
  readonly #keys: number[] = [];
  readonly #positions = new Map<string, number>();

  get size(): number {
    return this.#ids.length;
  }

  /** Adds `id` with `keyMs`; a no-op if it is already present. */
  insert(id: string, keyMs: number): void {
    if (this.#positions.has(id)) return;
    const at = this.#ids.length;
    this.#ids.push(id);
    this.#keys.push(keyMs);
    this.#positions.set(id, at);
    this.#siftUp(at);
  }

  /** Removes `id`; a no-op if it is absent. */
  remove(id: string): void {
    const at = this.#positions.get(id);
    if (at === undefined) return;
    this.#positions.delete(id);
    const lastId = this.#ids.pop() as string;
    const lastKey = this.#keys.pop() as number;
    if (at === this.#ids.length) return;
    this.#ids[at] = lastId;
    this.#keys[at] = lastKey;
    this.#positions.set(lastId, at);
    if (at > 0 && this.#less(at, (at - 1) >> 1)) this.#siftUp(at);
    else this.#siftDown(at);
  }

  /**
   * The `max` smallest ids that `accept` accepts, in order, without changing the heap.
   *
   * Why this neither consumes nor scans: a heap array is a tree where every parent is smaller
   * than its children, so the smallest entry not yet emitted is always a child of an emitted (or
   * skipped) one. A best-first walk keeps that frontier — heap *indices*, starting at the root —
   * in a small auxiliary min-heap: pop the smallest index, emit it if accepted, push its two
   * children. The main heap is only read, and the frontier never holds more than k + 1 indices
   * after k pops, so k examined entries cost O(k log k), independent of the heap's size.
   */
  smallest(max: number, accept: ((id: string) => boolean) | undefined): string[] {
    const result: string[] = [];
    const n = this.#ids.length;
    if (max === 0 || n === 0) return result;
    const frontier: number[] = [0];
    while (frontier.length > 0 && result.length < max) {
      const at = this.#popFrontier(frontier);
      const id = this.#ids[at] as string;
      if (accept === undefined || accept(id)) result.push(id);
      const left = 2 * at + 1;
      if (left < n) this.#pushFrontier(frontier, left);
      if (left + 1 < n) this.#pushFrontier(frontier, left + 1);
    }
    return result;
  }

  /** Whether the entry at heap index `a` orders before the one at `b`: by key, then by id. */
  #less(a: number, b: number): boolean {
    const keyA = this.#keys[a] as number;
    const keyB = this.#keys[b] as number;
    if (keyA !== keyB) return keyA < keyB;
    return (this.#ids[a] as string) < (this.#ids[b] as string);
  }

  #swap(a: number, b: number): void {
    const ids = this.#ids;
    const keys = this.#keys;
    const idA = ids[a] as string;
    const idB = ids[b] as string;
    ids[a] = idB;
    ids[b] = idA;
    const keyA = keys[a] as number;
    keys[a] = keys[b] as number;
    keys[b] = keyA;
    this.#positions.set(idB, a);
    this.#positions.set(idA, b);
  }

  #siftUp(at: number): void {
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!this.#less(at, parent)) return;
      this.#swap(at, parent);
      at = parent;
    }
  }

  #siftDown(at: number): void {
    const n = this.#ids.length;
    for (;;) {
      const left = 2 * at + 1;
      if (left >= n) return;
      const right = left + 1;
      const child = right < n && this.#less(right, left) ? right : left;
      if (!this.#less(child, at)) return;
      this.#swap(at, child);
      at = child;
    }
  }

  /** Pushes heap index `at` onto the frontier, a binary min-heap of indices ordered by `#less`. */
  #pushFrontier(frontier: number[], at: number): void {
    let i = frontier.length;
    frontier.push(at);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const parentAt = frontier[parent] as number;
      if (!this.#less(at, parentAt)) break;
      frontier[i] = parentAt;
      i = parent;
    }
    frontier[i] = at;
  }

  /** Pops the frontier's smallest heap index (the frontier must not be empty). */
  #popFrontier(frontier: number[]): number {
    const top = frontier[0] as number;
    const last = frontier.pop() as number;
    const n = frontier.length;
    if (n === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      let child = left;
      let childAt = frontier[left] as number;
      if (right < n) {
        const rightAt = frontier[right] as number;
        if (this.#less(rightAt, childAt)) {
          child = right;
          childAt = rightAt;
        }
      }
      if (!this.#less(childAt, last)) break;
      frontier[i] = childAt;
      i = child;
    }
    frontier[i] = last;
    return top;
  }
}
