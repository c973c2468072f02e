import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";

/** Runners, blocking and cycle control, retries, recovery and purge, on one backend. */
export function runningContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] the SPEC quick start runs unchanged: fib(20) with one slot is 6765`, async () => {
    const app = await makeApp({ appId: "shop" });
    const fib = app.task("fib", async ({ n }: { n: number }): Promise<number> => {
      if (n < 2) return n;
      const [a, b] = await Promise.all([fib.call({ n: n - 1 }), fib.call({ n: n - 2 })]);
      return (await a.result()) + (await b.result()); // waits: this invocation is PAUSED, its slot freed
    }, { registrationConcurrency: "arguments" });
    await using runner = app.runner({ concurrency: 1 }); // even with one slot, fib(20) completes
    runner.start();
    const inv = await fib.call({ n: 20 });
    assert.equal(await inv.result(), 6765);
  });
}
