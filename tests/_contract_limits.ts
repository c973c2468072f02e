import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, within } from "./_deadline.ts";

/** Running concurrency with a limit (SPEC §7.2): `{ by, limit }`, exact on every backend. */
export function limitsContract(backend: string, makeApp: AppFactory): void {
  for (const limit of [1, 2, 5]) {
    test(`[${backend}] runningConcurrency { by: "keys", limit: ${limit} }: two runners run ${limit} of one key at once, never more, and each invocation once`, async () => {
      const first = await makeApp({ appId: `limit-${limit}` });
      const second = await makeApp({ appId: `limit-${limit}` }, first);
      const keys = ["a", "b", "c"];
      const running = new Map<string, number>();
      const most = new Map<string, number>();
      const runs = new Map<number, number>();
      // The first wave holds until every key has `limit` running: it opens only if the limit
      // lets that many in; later waves pass straight through.
      let saturated!: () => void;
      const allSaturated = new Promise<void>((resolve) => saturated = resolve);
      const define = (app: typeof first) =>
        app.task("deploy", async ({ env, n }: { env: string; n: number }) => {
          const now = (running.get(env) ?? 0) + 1;
          running.set(env, now);
          most.set(env, Math.max(most.get(env) ?? 0, now));
          runs.set(n, (runs.get(n) ?? 0) + 1);
          if (keys.every((key) => running.get(key) === limit)) saturated();
          await allSaturated;
          await new Promise((resolve) => setTimeout(resolve, 1));
          running.set(env, running.get(env)! - 1);
          return n;
        }, { runningConcurrency: { by: "keys", limit }, keyArguments: ["env"] });
      const deploy = define(first);
      define(second);
      const group = await deploy.parallelize(
        Array.from({ length: 24 }, (_, n) => ({ env: keys[n % keys.length]!, n })),
      );
      await using one = first.runner({ concurrency: 8, pollMs: 5 });
      await using two = second.runner({ concurrency: 8, pollMs: 5 });
      one.start();
      two.start();
      await within(allSaturated, DEADLINE_MS, `every key running ${limit} at once`);
      assert.deepEqual(
        await within(group.results(), LONG_DEADLINE_MS, "every deploy"),
        Array.from({ length: 24 }, (_, n) => n),
      );
      for (const key of keys) assert.equal(most.get(key), limit, `key ${key}`);
      assert.deepEqual([...runs.values()].filter((count) => count !== 1), []);
      assert.equal(runs.size, 24);
    });
  }

  test(`[${backend}] a paused invocation gives its slot of a limited key back, and takes one again to resume`, async () => {
    const app = await makeApp();
    let active = 0;
    let most = 0;
    const job = app.task("job", async ({ depth }: { depth: number }): Promise<number> => {
      most = Math.max(most, ++active);
      try {
        if (depth === 0) return 0;
        active--; // waiting below: paused, its slot given back
        try {
          return 1 + await (await job.call({ depth: depth - 1 })).result();
        } finally {
          active++;
        }
      } finally {
        active--;
      }
    }, { runningConcurrency: { by: "task", limit: 2 } });
    const invocation = await job.call({ depth: 6 });
    await within(app.runner({ concurrency: 4 }).drain(), DEADLINE_MS, "the drain");
    assert.equal(await invocation.result(), 6);
    assert.ok(most <= 2, `ran ${most} at once`);
  });

  test(`[${backend}] a bad runningConcurrency object is refused when the task is defined`, async () => {
    const app = await makeApp();
    assert.throws(
      () => app.task("a", () => 1, { runningConcurrency: { by: "task", limit: 0 } }),
      (error: unknown) =>
        error instanceof RangeError && /limit must be an integer/.test(error.message),
    );
    assert.throws(
      () => app.task("b", () => 1, { runningConcurrency: { by: "task", limit: 1.5 } }),
      RangeError,
    );
    assert.throws(
      () =>
        app.task("c", () => 1, {
          runningConcurrency: { by: "disabled" as "task", limit: 2 },
        }),
      TypeError,
    );
    assert.throws(
      () =>
        app.task("d", () => 1, {
          runningConcurrency: { by: "task", limit: 2, per: "x" } as { by: "task"; limit: number },
        }),
      TypeError,
    );
    assert.throws(
      () => app.task("e", () => 1, { runningConcurrency: { by: "keys", limit: 2 } }),
      (error: unknown) => error instanceof TypeError && /needs keyArguments/.test(error.message),
    );
  });
}
