import { test } from "node:test";
import assert from "node:assert/strict";
import * as nenc from "../mod.ts";
import {
  CallGraph,
  type ClaimRequest,
  CycleDetectedError,
  MemoryStore,
  Nenc,
  WaitGraph,
} from "../mod.ts";
import { FakeClock } from "./_fake_clock.ts";

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

test("a runner keeps writing its heartbeat while its pick-up is stuck: a slow claim pass does not make a live runner look dead", async () => {
  const clock = new FakeClock();
  const memory = new MemoryStore();
  let claims = 0;
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => release = resolve);
  // The memory store, with a claim that hangs until released (a loaded machine, a remote KV).
  const store = new Proxy(memory, {
    get(target, name) {
      if (name === "claim") {
        return async (request: ClaimRequest) => {
          claims++;
          await stuck;
          return await target.claim(request);
        };
      }
      const value = Reflect.get(target, name, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const app = new Nenc({ clock, store });
  const runner = app.runner({ runnerId: "slow", heartbeatMs: 1_000 });
  runner.start();
  /** Lets timers and I/O run until `done()`, for at most 5 s of real time. */
  const until = async (done: () => boolean | Promise<boolean>): Promise<void> => {
    for (const deadline = Date.now() + 5_000; !await done() && Date.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
  const lastSeen = async (): Promise<number | undefined> =>
    (await store.runners()).find(({ runnerId }) => runnerId === "slow")?.lastSeenMs;
  await until(() => claims > 0);
  assert.equal(claims, 1);
  for (let second = 1; second <= 5; second++) {
    clock.advance(1_000);
    await until(async () => await lastSeen() === clock.now());
    assert.equal(await lastSeen(), clock.now(), `no heartbeat at ${second} s`);
  }
  assert.equal(claims, 1, "the pick-up was stuck all along");
  release();
  await runner.stop();
  assert.equal(await lastSeen(), undefined);
});
