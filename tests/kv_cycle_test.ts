import { after, test } from "node:test";
import assert from "node:assert/strict";
import { systemClock } from "../core/clock.ts";
import { CycleDetectedError } from "../core/errors.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

/** A view of `kv` whose first commit waits for `gate`: both racers pass their check first. */
function gated(kv: KvLike, gate: Promise<void>): KvLike {
  let commits = 0;
  return interceptKv(kv, {
    beforeCommit: async () => {
      if (commits++ === 0) await gate;
    },
  });
}

test("KV cycle control: in 20 races where A→B and B→A both pass the check before either commits, exactly one insertion fails with CycleDetectedError and one edge stays", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  for (let race = 0; race < 20; race++) {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => open = resolve);
    const options = { appId: `race${race}`, clock: systemClock };
    const one = new KvStore(gated(kv, gate), options);
    const two = new KvStore(gated(kv, gate), options);
    const a = { callId: "a#1", invocationId: "ia", label: "a()" };
    const b = { callId: "b#1", invocationId: "ib", label: "b()" };
    const first = one.addCall(a, b);
    const second = two.addCall({ ...b, invocationId: "ib2" }, { ...a, invocationId: "ia2" });
    // Let both reach their gated commit (their pre-commit checks see no edge yet).
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 0));
    open();
    const outcomes = await Promise.allSettled([first, second]);
    const rejected = outcomes.filter((outcome) => outcome.status === "rejected");
    assert.equal(rejected.length, 1, `race ${race}: ${JSON.stringify(outcomes)}`);
    const reason = (rejected[0] as PromiseRejectedResult).reason;
    assert.ok(reason instanceof CycleDetectedError);
    assert.equal(reason.callIds.length, 2);
    const edges = [];
    for await (const entry of kv.list({ prefix: ["nenc", `race${race}`, "calls"] })) {
      edges.push(entry.key);
    }
    assert.equal(edges.length, 1, `race ${race}: edges left: ${JSON.stringify(edges)}`);
  }
});
