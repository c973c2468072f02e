/**
 * An indexed 4-ary min-heap of string ids keyed by (keyMs, id): O(log n) insert, remove by id
 * and peek, and a non-consuming read of the k smallest in O(k log k). Private to the core: it
 * orders the ready blockers of the wait graph and the delayed and purge-due invocations of the
 * memory store.
 *
 * @module
 */

/**
 * Children per entry. A sift writes the position of every entry it moves to a map, its main cost:
 * four children make the heap half as deep as two, so a sift writes half as many (the ready
 * blockers and the queue of a tree of nested waits hold thousands, each sifted at every node).
 */
const ARITY = 4;

/** The heap index of the parent of the entry at `at` (> 0). */
function parentOf(at: number): number {
  return (at - 1) >> 2;
}

/**
 * An indexed 4-ary min-heap of ids keyed by (keyMs, id): O(log n) insert and remove-by-id,
 * and a non-consuming read of the k smallest.
 */
export class IndexedHeap {
  readonly #ids: string[] = [];
  readonly #keys: number[] = [];
  readonly #positions = new Map<string, number>();

  get size(): number {
    return this.#ids.length;
  }

  /** Whether `id` is in the heap. */
  has(id: string): boolean {
    return this.#positions.has(id);
  }

  /** The smallest id, or `undefined` when empty. */
  peek(): string | undefined {
    return this.#ids[0];
  }

  /** The key of the smallest id, or `undefined` when empty. */
  peekKey(): number | undefined {
    return this.#keys[0];
  }

  /** Adds `id` with `keyMs`; a no-op if it is already present. */
  insert(id: string, keyMs: number): void {
    if (this.#positions.has(id)) return;
    const at = this.#ids.length;
    this.#ids.push(id);
    this.#keys.push(keyMs);
    this.#siftUp(at); // writes its position
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
    // The sift writes its position.
    if (at > 0 && this.#less(at, parentOf(at))) this.#siftUp(at);
    else this.#siftDown(at);
  }

  /** Removes every id. */
  clear(): void {
    this.#ids.length = 0;
    this.#keys.length = 0;
    this.#positions.clear();
  }

  /**
   * The `max` smallest ids that `accept` accepts, in order, without changing the heap.
   *
   * Why this neither consumes nor scans: a heap array is a tree where every parent is smaller
   * than its children, so the smallest entry not yet emitted is always a child of an emitted (or
   * skipped) one. A best-first walk keeps that frontier — heap *indices*, starting at the root —
   * in a small auxiliary binary min-heap: pop the smallest index, emit it if accepted, push its
   * children. The main heap is only read, and the frontier never holds more than 3k + 1 indices
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
      const first = ARITY * at + 1;
      for (let child = first; child < first + ARITY && child < n; child++) {
        this.#pushFrontier(frontier, child);
      }
    }
    return result;
  }

  /** Whether the entry at heap index `a` orders before the one at `b`: by key, then by id. */
  #less(a: number, b: number): boolean {
    return precedes(
      this.#keys[a] as number,
      this.#ids[a] as string,
      this.#keys[b] as number,
      this.#ids[b] as string,
    );
  }

  /** Puts (`id`, `key`) at heap index `at`. */
  #place(at: number, id: string, key: number): void {
    this.#ids[at] = id;
    this.#keys[at] = key;
    this.#positions.set(id, at);
  }

  // The sifts move the entry as a hole: each entry passed is written once, not swapped.
  #siftUp(at: number): void {
    const id = this.#ids[at] as string;
    const key = this.#keys[at] as number;
    while (at > 0) {
      const parent = parentOf(at);
      if (!precedes(key, id, this.#keys[parent] as number, this.#ids[parent] as string)) break;
      this.#place(at, this.#ids[parent] as string, this.#keys[parent] as number);
      at = parent;
    }
    this.#place(at, id, key);
  }

  #siftDown(at: number): void {
    const id = this.#ids[at] as string;
    const key = this.#keys[at] as number;
    const n = this.#ids.length;
    for (;;) {
      const first = ARITY * at + 1;
      if (first >= n) break;
      let child = first;
      for (let next = first + 1; next < first + ARITY && next < n; next++) {
        if (this.#less(next, child)) child = next;
      }
      if (!precedes(this.#keys[child] as number, this.#ids[child] as string, key, id)) break;
      this.#place(at, this.#ids[child] as string, this.#keys[child] as number);
      at = child;
    }
    this.#place(at, id, key);
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

/** Whether (`keyA`, `idA`) orders before (`keyB`, `idB`): by key, then by id. */
function precedes(keyA: number, idA: string, keyB: number, idB: string): boolean {
  return keyA !== keyB ? keyA < keyB : idA < idB;
}
