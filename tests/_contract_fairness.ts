import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import type { Nenc } from "../core/app.ts";
import type { InvocationGroup } from "../core/invocation.ts";
import type { ConcurrencyGroup } from "../core/task.ts";

type Tenant = { tenant: string; n: number };

/** The two ways a task gets keys whose lanes take turns: a `"keys"` limit, or a keyed group. */
const KEYED: readonly { label: string; options: object }[] = [
  {
    label: 'runningConcurrency { by: "keys", limit: 1000 }',
    options: { runningConcurrency: { by: "keys", limit: 1000 }, keyArguments: ["tenant"] },
  },
  {
    label: "a concurrency group keyed by tenant, limit 1000",
    options: {
      concurrencyGroups: [
        { name: "tenant", limit: 1000, keyArguments: ["tenant"] },
      ] satisfies ConcurrencyGroup<Tenant>[],
    },
  },
];

/** Claims one invocation at a time, `count` times, and returns the tenants in pick-up order. */
async function pickUpOrder(app: Nenc, count: number): Promise<string[]> {
  const order: string[] = [];
  for (let i = 0; i < count; i++) {
    const [claimed] = await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
    if (claimed === undefined) break;
    order.push(JSON.parse((await app.orchestrator.store.get(claimed.id))!.args.tenant!));
  }
  return order;
}

/**
 * Three keys × 8 invocations of a task with limit 1 per key and 2 in all (lanes, parking and
 * waking all at work), the invocations at `canceledAt` of each key canceled while queued, drained
 * by a 4-slot runner: the groups, and how many times each `tenant` + `n` ran.
 */
export async function drainLanes(
  app: Nenc,
  canceledAt: readonly number[],
): Promise<{ groups: InvocationGroup<number>[]; runs: Map<string, number> }> {
  const runs = new Map<string, number>();
  const task = app.task("sync", async ({ tenant, n }: Tenant) => {
    runs.set(`${tenant}${n}`, (runs.get(`${tenant}${n}`) ?? 0) + 1);
    await new Promise((resolve) => setTimeout(resolve, 1));
    return n;
  }, {
    runningConcurrency: { by: "keys", limit: 1 },
    keyArguments: ["tenant"],
    concurrencyGroups: [{ name: "all", limit: 2 }],
  });
  const groups = await Promise.all(
    ["a", "b", "c"].map((tenant) =>
      task.parallelize(Array.from({ length: 8 }, (_, n) => ({ tenant, n })))
    ),
  );
  // Some queued members of each lane leave it before their turn.
  for (const group of groups) {
    for (const n of canceledAt) assert.equal(await group.invocations[n]!.cancel(), true);
  }
  await within(app.runner({ concurrency: 4 }).drain(), DEADLINE_MS, "the drain");
  return { groups, runs };
}

/**
 * Fairness between keys (SPEC §7.2): the keys of a task or group take turns, the key that started
 * least recently first, even behind a backlog of thousands of another key and on one slot.
 */
export function fairnessContract(backend: string, makeApp: AppFactory): void {
  for (const { label, options } of KEYED) {
    test(`[${backend}] fairness (${label}): a key with 1 waiting invocation behind another key's 1,000 starts at the 2nd pick-up of a one-slot runner`, async () => {
      const app = await makeApp();
      const task = app.task("sync", ({ n }: Tenant) => n, options);
      await task.parallelize(Array.from({ length: 1_000 }, (_, n) => ({ tenant: "big", n })));
      await task.call({ tenant: "small", n: 0 });
      assert.deepEqual(await pickUpOrder(app, 4), ["big", "small", "big", "big"]);
    });

    test(`[${backend}] fairness (${label}): three keys with backlogs registered one after the other are served in turn, a b c a b c …`, async () => {
      const app = await makeApp();
      const task = app.task("sync", ({ n }: Tenant) => n, options);
      for (const tenant of ["a", "b", "c"]) {
        await task.parallelize(Array.from({ length: 5 }, (_, n) => ({ tenant, n })));
      }
      assert.deepEqual(await pickUpOrder(app, 15), [
        ..."abcabcabcabcabc",
      ]);
    });
  }

  test(`[${backend}] fairness: one pick-up of 6 over two keys with backlogs takes 3 of each`, async () => {
    const app = await makeApp();
    const task = app.task("sync", ({ n }: Tenant) => n, KEYED[0]!.options);
    for (const tenant of ["a", "b"]) {
      await task.parallelize(Array.from({ length: 10 }, (_, n) => ({ tenant, n })));
    }
    const claimed = await app.orchestrator.getInvocationsToRun(6, { runnerId: "r1" });
    const tenants = await Promise.all(
      claimed.map(async ({ id }) => (await app.orchestrator.store.get(id))!.args.tenant),
    );
    assert.deepEqual(tenants.filter((tenant) => tenant === '"a"').length, 3);
    assert.deepEqual(tenants.filter((tenant) => tenant === '"b"').length, 3);
  });

  test(`[${backend}] fairness: unrelated work registered between two keys' backlogs is not held behind the first backlog`, async () => {
    const app = await makeApp();
    const task = app.task("sync", ({ n }: Tenant) => n, KEYED[0]!.options);
    const other = app.task("other", ({ n }: { n: number }) => n);
    await task.parallelize(Array.from({ length: 50 }, (_, n) => ({ tenant: "a", n })));
    const unrelated = await other.call({ n: 1 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push(
        ...(await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" })).map(({ id }) => id),
      );
    }
    assert.equal(ids.indexOf(unrelated.id), 1, "a's first, then the unrelated call, then a again");
  });

  test(`[${backend}] fairness with parking and cancels: keys with limit 1, lanes with parked and canceled members, every other invocation runs once`, async () => {
    const { groups, runs } = await drainLanes(await makeApp(), [3, 6]);
    for (const group of groups) {
      for (const [n, invocation] of group.invocations.entries()) {
        assert.equal(await invocation.status(), n === 3 || n === 6 ? "canceled" : "success");
      }
    }
    assert.equal(runs.size, 18);
    assert.deepEqual([...runs.values()].filter((count) => count !== 1), []);
  });
}
