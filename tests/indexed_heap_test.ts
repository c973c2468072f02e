import { test } from "node:test";
import assert from "node:assert/strict";
import { IndexedHeap } from "../core/_indexed_heap.ts";
import { seededRandom } from "./_random.ts";

/** The ids of `entries` in heap order: by key, then by id. */
function ordered(entries: Map<string, number>): string[] {
  return [...entries].sort(([a, keyA], [b, keyB]) => keyA !== keyB ? keyA - keyB : a < b ? -1 : 1)
    .map(([id]) => id);
}

test("IndexedHeap: random inserts and removals (ties on keys included) keep peek, size and the k smallest, with and without a filter, equal to a sorted reference", () => {
  const random = seededRandom(12);
  const heap = new IndexedHeap();
  const reference = new Map<string, number>();
  for (let step = 0; step < 5_000; step++) {
    const id = `id${random.int(400)}`;
    if (random.next() < 0.6) {
      // Few keys: many ties, ordered by id.
      const key = random.int(50);
      heap.insert(id, key);
      if (!reference.has(id)) reference.set(id, key);
    } else {
      heap.remove(id);
      reference.delete(id);
    }
    const sorted = ordered(reference);
    assert.equal(heap.size, reference.size);
    assert.equal(heap.peek(), sorted[0]);
    assert.equal(heap.peekKey(), sorted[0] === undefined ? undefined : reference.get(sorted[0]));
    assert.equal(heap.has(id), reference.has(id));
    if (step % 50 === 0) {
      const k = random.int(40);
      assert.deepEqual(heap.smallest(k, undefined), sorted.slice(0, k));
      const even = (each: string): boolean => Number(each.slice(2)) % 2 === 0;
      assert.deepEqual(heap.smallest(k, even), sorted.filter(even).slice(0, k));
    }
  }
  heap.clear();
  assert.equal(heap.size, 0);
  assert.equal(heap.peek(), undefined);
});
