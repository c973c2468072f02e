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

/** Concurrency groups (SPEC §7.2): limits shared across tasks, all slots taken in one step. */
export function groupsContract(backend: string, makeApp: AppFactory): void {
  /** Counts what runs at once, per name, and the most seen. */
  const gauge = () => {
    const now = new Map<string, number>();
    const most = new Map<string, number>();
    return {
      most,
      enter(...names: string[]) {
        for (const name of names) {
          now.set(name, (now.get(name) ?? 0) + 1);
          most.set(name, Math.max(most.get(name) ?? 0, now.get(name)!));
        }
      },
      leave(...names: string[]) {
        for (const name of names) now.set(name, now.get(name)! - 1);
      },
    };
  };

  test(`[${backend}] two tasks in one concurrency group share its limit: 2 at once across both, never more`, async () => {
    const first = await makeApp({ appId: "groups" });
    const second = await makeApp({ appId: "groups" }, first);
    const seen = gauge();
    let saturate!: () => void;
    const saturated = new Promise<void>((resolve) => saturate = resolve);
    const define = (app: typeof first) => {
      const group = [{ name: "deploys", limit: 2 }];
      const run = async (n: number) => {
        seen.enter("deploys");
        if (seen.most.get("deploys") === 2) saturate();
        await saturated;
        await new Promise((resolve) => setTimeout(resolve, 1));
        seen.leave("deploys");
        return n;
      };
      return {
        deploy: app.task("deploy", ({ n }: { n: number }) => run(n), { concurrencyGroups: group }),
        rollback: app.task("rollback", ({ n }: { n: number }) => run(n), {
          concurrencyGroups: group,
        }),
      };
    };
    const { deploy, rollback } = define(first);
    define(second);
    const ns = Array.from({ length: 8 }, (_, n) => ({ n }));
    const groups = [await deploy.parallelize(ns), await rollback.parallelize(ns)];
    await using one = first.runner({ concurrency: 4, pollMs: 5 });
    await using two = second.runner({ concurrency: 4, pollMs: 5 });
    one.start();
    two.start();
    for (const group of groups) {
      assert.equal((await within(group.results(), LONG_DEADLINE_MS, "the group")).length, 8);
    }
    assert.equal(seen.most.get("deploys"), 2);
  });

  test(`[${backend}] a per-key group limit and a global cap hold at once: 1 per environment, 3 in all`, async () => {
    const app = await makeApp();
    const seen = gauge();
    let saturate!: () => void;
    const saturated = new Promise<void>((resolve) => saturate = resolve);
    const deploy = app.task("deploy", async ({ env, n }: { env: string; n: number }) => {
      seen.enter(env, "all");
      if (seen.most.get("all") === 3) saturate();
      await saturated;
      await new Promise((resolve) => setTimeout(resolve, 1));
      seen.leave(env, "all");
      return n;
    }, {
      concurrencyGroups: [
        { name: "per-env", limit: 1, keyArguments: ["env"] },
        { name: "all", limit: 3 },
      ],
    });
    const envs = ["dev", "qa", "staging", "prod"];
    const group = await deploy.parallelize(
      Array.from({ length: 24 }, (_, n) => ({ env: envs[n % envs.length]!, n })),
    );
    await using runner = app.runner({ concurrency: 8, pollMs: 5 });
    runner.start();
    assert.equal((await within(group.results(), LONG_DEADLINE_MS, "the deploys")).length, 24);
    assert.equal(seen.most.get("all"), 3);
    for (const env of envs) assert.equal(seen.most.get(env), 1, env);
  });

  test(`[${backend}] a group's key function puts differently named arguments of two tasks in one key space`, async () => {
    const app = await makeApp();
    const seen = gauge();
    const work = async (tenant: string) => {
      seen.enter(tenant);
      await new Promise((resolve) => setTimeout(resolve, 2));
      seen.leave(tenant);
      return tenant;
    };
    const invoice = app.task("invoice", ({ customer }: { customer: string }) => work(customer), {
      concurrencyGroups: [{ name: "tenant", limit: 1, key: ({ customer }) => customer }],
    });
    const report = app.task("report", ({ account }: { account: string }) => work(account), {
      concurrencyGroups: [{ name: "tenant", limit: 1, key: ({ account }) => account }],
    });
    const calls = [
      await invoice.parallelize(["acme", "acme", "globex"].map((customer) => ({ customer }))),
      await report.parallelize(["acme", "globex", "globex"].map((account) => ({ account }))),
    ];
    await using runner = app.runner({ concurrency: 6, pollMs: 5 });
    runner.start();
    for (const group of calls) await within(group.results(), DEADLINE_MS, "the calls");
    assert.equal(seen.most.get("acme"), 1);
    assert.equal(seen.most.get("globex"), 1);
  });

  test(`[${backend}] concurrency groups: one name with two limits is a TypeError at definition; a runner whose limit differs from the stored one stops and drain() rejects`, async () => {
    const app = await makeApp({ appId: "group-defs" });
    app.task("a", () => 1, { concurrencyGroups: [{ name: "g", limit: 2 }] });
    assert.throws(
      () => app.task("b", () => 1, { concurrencyGroups: [{ name: "g", limit: 3 }] }),
      (error: unknown) => error instanceof TypeError && /group g has limit 2/.test(error.message),
    );
    assert.equal(app.getTask("b"), undefined);
    await within(app.runner().drain(), DEADLINE_MS, "a runner that stores the limits");
    const other = await makeApp({ appId: "group-defs" }, app);
    other.task("a", () => 1, { concurrencyGroups: [{ name: "g", limit: 5 }] });
    const error = await within(
      other.runner().drain().then(() => undefined, (error: unknown) => error),
      DEADLINE_MS,
      "the refused runner",
    );
    assert.ok(error instanceof TypeError, `got ${String(error)}`);
    assert.match(error.message, /group g has limit 2 in the store, not 5/);
    assert.throws(
      () =>
        app.task("c", () => 1, {
          concurrencyGroups: Array.from({ length: 5 }, (_, i) => ({ name: `g${i}`, limit: 1 })),
        }),
      TypeError,
    );
    assert.throws(
      () =>
        app.task("d", () => 1, {
          concurrencyGroups: [{ name: "h", limit: 1, key: () => "x", keyArguments: [] }],
        }),
      TypeError,
    );
    assert.throws(
      () => app.task("e", () => 1, { concurrencyGroups: [{ name: "h", limit: 0 }] }),
      RangeError,
    );
  });
}
