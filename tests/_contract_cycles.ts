import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import { FakeClock } from "./_fake_clock.ts";
import { collect } from "./_contract_routing.ts";
import type { Nenc } from "../core/app.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { newInvocationId } from "../core/ids.ts";
import { CYCLE_RETENTION_MS, CYCLES_KEPT, type RefusedCycle } from "../core/store.ts";
import type { Task } from "../core/task.ts";

/** A refused cycle of invocation `n` (ids made at `atMs`, so later ones sort after). */
function cycleAt(atMs: number, n: number): RefusedCycle {
  return {
    invocationId: newInvocationId(atMs),
    callIds: [`job#${n}`],
    labels: [`job({"n":${n}})`],
    atMs,
  };
}

/**
 * Tasks `a` and `b` that call each other with equal arguments, so the inner `a` is refused
 * (a → b → a, closed by b's call): `b` hands what its call of `a` rejected with to `caught`, and
 * returns `"caught"` if it is the `CycleDetectedError` (else throws it on).
 */
export function caughtCycle(
  app: Nenc,
  caught: (error: unknown) => void = () => {},
): { readonly a: Task<{ n: number }, string>; readonly b: Task<{ n: number }, string> } {
  const a: Task<{ n: number }, string> = app.task(
    "a",
    async ({ n }: { n: number }): Promise<string> => await (await b.call({ n })).result(),
  );
  const b: Task<{ n: number }, string> = app.task(
    "b",
    async ({ n }: { n: number }): Promise<string> => {
      try {
        return await (await a.call({ n })).result();
      } catch (error) {
        caught(error);
        if (!(error instanceof CycleDetectedError)) throw error;
        return "caught";
      }
    },
  );
  return { a, b };
}

/** The refused cycles kept for inspection (`Store.recordCycle` / `Store.cycles`), on one backend. */
export function cyclesContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] cycles(): a cycle whose error the caller caught is still listed with its path (the calls from the closing call's caller on, their labels), the invocation that failed with it, and when`, async () => {
    const app = await makeApp();
    const { a } = caughtCycle(app);
    assert.deepEqual(await app.orchestrator.store.cycles(), []);
    const outer = await a.call({ n: 3 });
    const beforeMs = Date.now();
    await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
    const afterMs = Date.now();
    assert.equal(await outer.result(), "caught");
    const store = app.orchestrator.store;
    const [inner] = await collect(
      store.find({ taskId: "a", statuses: new Set(["failed"] as const) }),
    );
    const [bRecord] = await collect(
      store.find({ taskId: "b", statuses: new Set(["success"] as const) }),
    );
    const [cycle, ...more] = await store.cycles();
    assert.deepEqual(more, []);
    assert.deepEqual(cycle, {
      invocationId: inner!.id,
      callIds: [bRecord!.callId, outer.callId],
      labels: ['b({"n":3})', 'a({"n":3})'],
      atMs: cycle!.atMs,
    });
    assert.ok(beforeMs <= cycle!.atMs && cycle!.atMs <= afterMs, "refused during the drain");
  });

  test(`[${backend}] cycles(): most recent first; a second record of one invocation replaces its first; at most CYCLES_KEPT (the most recent); purgeAll() deletes them`, async () => {
    const store = (await makeApp()).orchestrator.store;
    const nowMs = Date.now();
    const first = cycleAt(nowMs - 3_000, 1);
    const second = cycleAt(nowMs - 2_000, 2);
    await store.recordCycle(first);
    await store.recordCycle(second);
    assert.deepEqual(await store.cycles(), [second, first]);
    const again = { ...first, atMs: nowMs - 1_000 };
    await store.recordCycle(again);
    assert.deepEqual(await store.cycles(), [again, second]);

    const many = Array.from({ length: CYCLES_KEPT }, (_, i) => cycleAt(nowMs + i, 10 + i));
    for (const cycle of many) await store.recordCycle(cycle);
    assert.deepEqual(await store.cycles(), many.toReversed());
    await store.purgeAll();
    assert.deepEqual(await store.cycles(), []);
  });

  test(`[${backend}] cycles(): a cycle is listed for CYCLE_RETENTION_MS after it was refused, then no more`, async () => {
    const clock = new FakeClock();
    const store = (await makeApp({ clock })).orchestrator.store;
    const cycle = cycleAt(clock.now(), 1);
    await store.recordCycle(cycle);
    clock.advance(CYCLE_RETENTION_MS - 1);
    assert.deepEqual(await store.cycles(), [cycle]);
    clock.advance(1);
    assert.deepEqual(await store.cycles(), []);
  });
}
