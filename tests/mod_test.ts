import { test } from "node:test";
import assert from "node:assert/strict";
import * as nenc from "../mod.ts";
import { CallGraph, CycleDetectedError, Nenc, WaitGraph } from "../mod.ts";

test("mod.ts exports the graph core and the errors on this runtime", () => {
  const calls = new CallGraph();
  calls.addCall({ callId: "a", invocationId: "1" }, { callId: "b", invocationId: "2" });
  assert.throws(
    () => calls.addCall({ callId: "b", invocationId: "2" }, { callId: "a", invocationId: "3" }),
    CycleDetectedError,
  );
  const waits = new WaitGraph({ clock: { now: () => 0 } });
  waits.waitFor("1", ["2"]);
  assert.deepEqual(waits.blocking(10), ["2"]);
  for (
    const name of [
      "NencError",
      "InvocationStatus",
      "transition",
      "callId",
      "canonicalJson",
      "newInvocationId",
    ]
  ) {
    assert.ok(name in nenc, name);
  }
});

test("an app refuses a store that already holds another app id", () => {
  const first = new Nenc({ appId: "alpha" });
  const store = first.orchestrator.store;
  assert.equal(new Nenc({ appId: "alpha", store }).orchestrator.store, store);
  assert.throws(
    () => new Nenc({ appId: "beta", store }),
    /Cannot create app beta: its store already holds app alpha/,
  );
});

test("a runner refuses a heartbeat too slow for the orchestrator's runner timeout", () => {
  const app = new Nenc({ orchestrator: { runnerTimeoutSeconds: 2 } });
  assert.throws(
    () => app.runner({ heartbeatMs: 1_500 }),
    /heartbeatMs \(1500\) must be at most half/,
  );
  assert.equal(app.runner({ heartbeatMs: 1_000 }).concurrency, 1);
});
