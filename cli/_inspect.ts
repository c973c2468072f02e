/**
 * The views of an app's store that the command line and the web monitor share: invocations
 * listed, an invocation's tree of descendants, per-key concurrency, the runners with what they
 * hold, and the queued tasks that no live runner defines. Reads only: nothing here writes.
 * Private to `cli/`.
 *
 * @module
 */

import type { Nenc } from "../core/app.ts";
import { AVAILABLE_FOR_RUN_STATUSES, InvocationStatus } from "../core/status.ts";
import type { InvocationRecord, RunnerInfo } from "../core/store.ts";

/** What {@linkcode listInvocations} lists: the newest first, at most `limit`. */
export interface ListFilter {
  /** Tasks, any of which matches [every task]. */
  readonly taskIds?: readonly string[] | undefined;
  /** Statuses, any of which matches [every status]. */
  readonly statuses?: ReadonlySet<InvocationStatus> | undefined;
  /** Only invocations registered at or after this time, epoch ms [all]. */
  readonly sinceMs?: number | undefined;
  /** At most this many, an integer ≥ 1. */
  readonly limit: number;
}

/** The invocations that match `filter`, newest first (`Store.list`). */
export function listInvocations(app: Nenc, filter: ListFilter): Promise<InvocationRecord[]> {
  return app.orchestrator.store.list({
    ...filter.taskIds === undefined ? {} : { taskIds: filter.taskIds },
    ...filter.statuses === undefined ? {} : { statuses: filter.statuses },
    ...filter.sinceMs === undefined ? {} : { sinceMs: filter.sinceMs },
    limit: filter.limit,
  });
}

/** An invocation and the invocations it called, recursively. */
export interface TreeNode {
  /** The invocation. */
  readonly record: InvocationRecord;
  /** The invocations it called that still exist, oldest first. */
  readonly children: TreeNode[];
  /**
   * Its descendants were not all read: the tree reached its size bound before (or while) its
   * children were read.
   */
  truncated: boolean;
}

/** The most invocations {@linkcode invocationTree} reads, by default. */
export const TREE_LIMIT = 1_000;

/**
 * The invocation `id` and its descendants (`Store.children`, one read per invocation, breadth
 * first), at most `maxNodes` of them; `undefined` for an unknown id.
 */
export async function invocationTree(
  app: Nenc,
  id: string,
  maxNodes: number = TREE_LIMIT,
): Promise<TreeNode | undefined> {
  const store = app.orchestrator.store;
  const record = await store.get(id);
  if (record === undefined) return undefined;
  const root: TreeNode = { record, children: [], truncated: false };
  let size = 1;
  for (let level = [root]; level.length > 0;) {
    const next: TreeNode[] = [];
    for (const node of level) {
      if (size >= maxNodes) {
        node.truncated = true;
        continue;
      }
      const children = await store.children(node.record.id);
      for (const child of children.slice(0, maxNodes - size)) {
        node.children.push({ record: child, children: [], truncated: false });
      }
      size += node.children.length;
      node.truncated = node.children.length < children.length;
      next.push(...node.children);
    }
    level = next;
  }
  return root;
}

/** One concurrency key in use: who holds its slots, who waits parked on it. */
export interface KeyConcurrency {
  /** A task's running key, or a concurrency group's key. */
  readonly kind: "task" | "group";
  /** The task id, or the group's name. */
  readonly name: string;
  /**
   * The slot key: the task id (`runningConcurrency: "task"`, or a group without a key), else the
   * task id or group name with a hash of the arguments or key.
   */
  readonly key: string;
  /** How many invocations may hold it at once. */
  readonly limit: number;
  /** The invocations holding its slots. */
  readonly holders: readonly string[];
  /** The first invocations parked on it, the next to be woken first. */
  readonly parked: readonly string[];
  /** How many are parked on it in all. */
  readonly parkedCount: number;
}

/** The most parked invocations {@linkcode concurrencyView} names per key, by default. */
export const PARKED_LIMIT = 20;

/**
 * Every running key and group key with holders or parked invocations (`Store.concurrency`), by
 * kind, name and key.
 */
export async function concurrencyView(
  app: Nenc,
  maxParked: number = PARKED_LIMIT,
): Promise<KeyConcurrency[]> {
  const usages = await app.orchestrator.store.concurrency(maxParked);
  return usages.map((usage): KeyConcurrency => {
    // A group key is "#group#<name>#<hash>"; a running key "<task>", "<task>#<hash>" or
    // "<task>#<hash>#keys" (names and task ids cannot hold "#").
    const parts = usage.key.split("#");
    const group = usage.key.startsWith("#group#");
    return { kind: group ? "group" : "task", name: group ? parts[2]! : parts[0]!, ...usage };
  }).sort((a, b) => compare(a.kind, b.kind) || compare(a.name, b.name) || compare(a.key, b.key));
}

/** A runner as its heartbeat shows it, with the invocations it executes. */
export interface RunnerView {
  /** The runner id. */
  readonly runnerId: string;
  /** Its last heartbeat, epoch ms. */
  readonly lastSeenMs: number;
  /** Whether its last heartbeat is within the app's `runnerTimeoutSeconds`. */
  readonly alive: boolean;
  /** The tasks it defines, or `undefined` when its heartbeat did not say. */
  readonly taskIds: readonly string[] | undefined;
  /** The invocations it executes (owns), in id order (`Store.executions`). */
  readonly held: readonly string[];
}

/** The runners, most recent heartbeat first, with what each defines and holds. */
export async function runnersView(app: Nenc, nowMs: number): Promise<RunnerView[]> {
  const store = app.orchestrator.store;
  const alive = isAlive(app, nowMs);
  const runners = (await store.runners()).sort((a, b) => b.lastSeenMs - a.lastSeenMs);
  return await Promise.all(runners.map(async (runner) => ({
    runnerId: runner.runnerId,
    lastSeenMs: runner.lastSeenMs,
    alive: alive(runner),
    taskIds: runner.taskIds,
    held: await store.executions(runner.runnerId),
  })));
}

/** The statuses of invocations that wait for a runner: queued, or parked on a key. */
/**
 * Whether a runner is alive at `nowMs`: its last heartbeat within the app's
 * `runnerTimeoutSeconds` (a runner silent longer is presumed dead).
 */
export function isAlive(
  app: Nenc,
  nowMs: number,
): (runner: Pick<RunnerInfo, "lastSeenMs">) => boolean {
  const timeoutMs = app.orchestrator.options.runnerTimeoutSeconds * 1000;
  return (runner) => nowMs - runner.lastSeenMs <= timeoutMs;
}

const WAITING_FOR_A_RUNNER: ReadonlySet<InvocationStatus> = new Set([
  ...AVAILABLE_FOR_RUN_STATUSES,
  InvocationStatus.CONCURRENCY_CONTROLLED,
]);

/**
 * The tasks with invocations waiting to be picked up (queued or parked) that no live runner
 * defines, sorted: nothing runs them until a runner that defines them starts. A live runner whose
 * heartbeat does not say which tasks it defines counts as defining every task.
 */
export async function unservedTasks(app: Nenc, nowMs: number): Promise<string[]> {
  const [counts, runners] = await Promise.all([
    app.orchestrator.store.counts(),
    runnersView(app, nowMs),
  ]);
  return unservedOf(counts, runners);
}

/** {@linkcode unservedTasks} from counts per task and status and the runners, already read. */
export function unservedOf(
  counts: ReadonlyMap<string, ReadonlyMap<InvocationStatus, number>>,
  runners: readonly RunnerView[],
): string[] {
  const live = runners.filter((runner) => runner.alive);
  if (live.some((runner) => runner.taskIds === undefined)) return [];
  const defined = new Set(live.flatMap((runner) => runner.taskIds ?? []));
  return [...counts].filter(([taskId, perStatus]) =>
    !defined.has(taskId) &&
    [...perStatus].some(([status, count]) => WAITING_FOR_A_RUNNER.has(status) && count > 0)
  ).map(([taskId]) => taskId).sort();
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
