import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import type { InvocationRecord } from "../core/store.ts";
import { claimIds, runToSuccess } from "./_pickups.ts";

const ids = (records: readonly InvocationRecord[]): string[] => records.map(({ id }) => id);

/**
 * Inspection reads (SPEC §7.4): the invocations newest first with their filters (the CLI's
 * `list`), and each concurrency key's limit, holders and parked invocations (`status`).
 */
export function inspectContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] list: newest first; by tasks, statuses, registration time and limit, together; a status filter reads on past the pages it skips`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const t0 = clock.now();
    const tasks = ["a", "b", "c"].map((name) => app.task(name, ({ n }: { n: number }) => n));
    // Twelve invocations a second apart: a0 b1 c2 a3 b4 c5 … c11.
    const calls = [];
    for (let n = 0; n < 12; n++) {
      calls.push(await tasks[n % 3]!.call({ n }));
      clock.advance(1_000);
    }
    const newest = calls.map(({ id }) => id).reverse();
    const store = app.orchestrator.store;
    assert.deepEqual(ids(await store.list({ limit: 100 })), newest);
    assert.deepEqual(ids(await store.list({ limit: 5 })), newest.slice(0, 5));
    assert.deepEqual(
      ids(await store.list({ taskIds: ["c", "a"], limit: 100 })),
      newest.filter((_, i) => (11 - i) % 3 !== 1),
    );
    assert.deepEqual(
      ids(await store.list({ taskIds: ["c", "a"], limit: 3 })),
      [calls[11]!.id, calls[9]!.id, calls[8]!.id],
    );
    assert.deepEqual(
      ids(await store.list({ sinceMs: t0 + 8_000, limit: 100 })),
      newest.slice(0, 4),
    );
    assert.deepEqual(
      ids(await store.list({ sinceMs: t0 + 7_500, limit: 100 })),
      newest.slice(0, 4),
    );
    // The three oldest run to success: the newest two of them lie behind pages of 2 that match
    // nothing.
    assert.deepEqual(await claimIds(app, 3, "r1"), newest.slice(9).reverse());
    for (const invocation of calls.slice(0, 3)) await runToSuccess(app, invocation, "r1");
    assert.deepEqual(ids(await store.list({ statuses: new Set(["success"]), limit: 2 })), [
      calls[2]!.id,
      calls[1]!.id,
    ]);
    assert.deepEqual(
      ids(await store.list({ taskIds: ["a"], statuses: new Set(["registered"]), limit: 2 })),
      [calls[9]!.id, calls[6]!.id],
    );
    assert.deepEqual(
      ids(
        await store.list({
          taskIds: ["a", "b"],
          statuses: new Set(["success"]),
          sinceMs: t0 + 1_000,
          limit: 10,
        }),
      ),
      [calls[1]!.id],
    );
    assert.deepEqual(await store.list({ taskIds: ["nope"], limit: 10 }), []);
    assert.deepEqual(await store.list({ sinceMs: t0 + 60_000, limit: 10 }), []);
  });

  test(`[${backend}] concurrency: each running key and group key in use with its limit, holders and the first parked (all counted), not rate limit keys; none once the holders finish`, async () => {
    const app = await makeApp();
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const deploy = app.task("deploy", ({ env }: { env: string; n: number }) => env, {
      runningConcurrency: { by: "keys", limit: 2 },
      keyArguments: ["env"],
      concurrencyGroups: [{ name: "deploys", limit: 3 }],
    });
    const ping = app.task("ping", ({ n }: { n: number }) => n, {
      rateLimit: { limit: 1, intervalMs: 60_000 },
    });
    const syncs = (await sync.parallelize([0, 1, 2, 3].map((n) => ({ n })))).invocations;
    const deploys = (await deploy.parallelize([0, 1, 2].map((n) => ({ env: "prod", n }))))
      .invocations;
    const pings = (await ping.parallelize([{ n: 0 }, { n: 1 }])).invocations;
    const store = app.orchestrator.store;
    assert.deepEqual(await store.concurrency(2), []);
    const claimed = await claimIds(app, 20, "r1");
    assert.deepEqual(
      [...claimed].sort(),
      [syncs[0]!.id, deploys[0]!.id, deploys[1]!.id, pings[0]!.id].sort(),
    );
    const usages = (await store.concurrency(2)).map((usage) => ({
      ...usage,
      holders: [...usage.holders].sort(),
    })).sort((a, b) => a.key < b.key ? -1 : 1);
    const running = [deploys[0]!.id, deploys[1]!.id].sort();
    assert.equal(usages.length, 3, JSON.stringify(usages));
    assert.match(usages[0]!.key, /^#group#deploys#/);
    assert.deepEqual(usages[0], {
      key: usages[0]!.key,
      limit: 3,
      holders: running,
      parked: [],
      parkedCount: 0,
    });
    assert.match(usages[1]!.key, /^deploy#.*#keys$/);
    assert.deepEqual(usages[1], {
      key: usages[1]!.key,
      limit: 2,
      holders: running,
      parked: [deploys[2]!.id],
      parkedCount: 1,
    });
    assert.deepEqual(usages[2], {
      key: "sync",
      limit: 1,
      holders: [syncs[0]!.id],
      parked: [syncs[1]!.id, syncs[2]!.id],
      parkedCount: 3,
    });
    // The holders finish: the next pick-up takes a woken invocation of each key.
    for (const id of claimed) await runToSuccess(app, { id }, "r1");
    const next = await claimIds(app, 20, "r1");
    assert.deepEqual([...next].sort(), [syncs[1]!.id, deploys[2]!.id].sort());
    const after = (await store.concurrency(5)).sort((a, b) => a.key < b.key ? -1 : 1);
    assert.deepEqual(after.map(({ holders }) => holders), [
      [deploys[2]!.id],
      [deploys[2]!.id],
      [syncs[1]!.id],
    ]);
    assert.deepEqual(after[2]!.parked, [syncs[2]!.id, syncs[3]!.id]);
    // Every one run: nobody holds or is parked on a key any more.
    for (let ids = next; ids.length > 0; ids = await claimIds(app, 20, "r1")) {
      for (const id of ids) await runToSuccess(app, { id }, "r1");
    }
    assert.deepEqual(await store.concurrency(5), []);
  });
}
