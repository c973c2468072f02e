import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";

/** Routing, registration concurrency, queries and the status machine, on one backend. */
export function routingContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] routeCall() registers a new invocation with a history entry`, async () => {
    const app = await makeApp();
    const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
    const invocation = await add.call({ x: 1, y: 2 });
    assert.equal(await invocation.status(), "registered");
    const history = await invocation.history();
    assert.deepEqual(history.map((entry) => entry.status), ["registered"]);
  });
}
