/**
 * The shapes of nested waits the load scripts run (`e2e_memory.ts`, `e2e_kv.ts`): a binary tree
 * of nested waits and a fan-out.
 *
 * @module
 */

import type { Nenc } from "../core/app.ts";
import type { Task } from "../core/task.ts";

/** The invocations of a binary tree with `depth` levels below its root: 2^(depth+1) − 1. */
export function treeSize(depth: number): number {
  return 2 ** (depth + 1) - 1;
}

/**
 * Task "tree": a node above depth 0 calls two children one level down and awaits both results
 * (PAUSED meanwhile, its slot freed); a leaf returns. Each returns the invocations in its subtree.
 */
export function defineTree(app: Nenc): Task<{ depth: number }, number> {
  const tree = app.task("tree", async ({ depth }: { depth: number }): Promise<number> => {
    if (depth === 0) return 1;
    const children = await Promise.all([
      tree.call({ depth: depth - 1 }),
      tree.call({ depth: depth - 1 }),
    ]);
    const [left, right] = await Promise.all(children.map((child) => child.result()));
    return 1 + left! + right!;
  });
  return tree;
}

/** Runs the tree of `depth` from its root's call to its result: the seconds. */
export async function runTree(
  tree: Task<{ depth: number }, number>,
  depth: number,
): Promise<number> {
  const start = performance.now();
  const size = await (await tree.call({ depth })).result();
  const seconds = (performance.now() - start) / 1000;
  if (size !== treeSize(depth)) {
    throw new Error(`Cannot bench: the tree counted ${size} invocations, not ${treeSize(depth)}`);
  }
  return seconds;
}

/**
 * Tasks "child" (returns its `i`) and "parent": calls `n` children in one `parallelize`, awaits
 * the group's `results()` (PAUSED meanwhile) and returns their sum.
 */
export function defineFanOut(app: Nenc): Task<{ n: number }, number> {
  const child = app.task("child", ({ i }: { i: number }) => i);
  return app.task("parent", async ({ n }: { n: number }) => {
    const group = await child.parallelize(Array.from({ length: n }, (_, i) => ({ i })));
    return (await group.results()).reduce((sum, value) => sum + value, 0);
  });
}

/** Runs a parent of `children` from its call to its result: the seconds. */
export async function runFanOut(
  parent: Task<{ n: number }, number>,
  children: number,
): Promise<number> {
  const start = performance.now();
  const total = await (await parent.call({ n: children })).result();
  const seconds = (performance.now() - start) / 1000;
  if (total !== (children * (children - 1)) / 2) throw new Error("Cannot bench: wrong sum");
  return seconds;
}
