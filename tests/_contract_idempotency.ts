import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import { FakeClock } from "./_fake_clock.ts";
import { DEADLINE_MS, within } from "./_deadline.ts";
import type { Nenc } from "../core/app.ts";
import { InvocationConcurrencyWithDifferentArgumentsError } from "../core/errors.ts";
import { type Invocation, ReusedInvocation } from "../core/invocation.ts";
import type { CallOptions, Task } from "../core/task.ts";

const HOUR_MS = 3_600_000;

async function countOf<Args, Result>(app: Nenc, task: Task<Args, Result>): Promise<number> {
  let count = 0;
  for await (const _ of app.orchestrator.getExistingInvocations(task)) count++;
  return count;
}

/** Claims `invocation` for `runnerId`, runs it and stores `result`, by hand. */
async function runToSuccess(app: Nenc, invocation: Invocation, result: unknown): Promise<void> {
  const o = app.orchestrator;
  const claimed = await o.getInvocationsToRun(1, { runnerId: "r1" });
  assert.deepEqual(claimed.map(({ id }) => id), [invocation.id]);
  await o.setInvocationRun(undefined, invocation, { runnerId: "r1" });
  await o.setInvocationResult(invocation, result, { runnerId: "r1" });
}

/** Idempotency keys (SPEC §7.2): `task.call(args, { idempotencyKey, idempotencyTtlMs })`. */
export function idempotencyContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] idempotencyKey: a second call with the same key returns the same invocation as a ReusedInvocation, also after it succeeded, and it runs once`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const charge = app.task("charge", ({ cents }: { cents: number }) => cents * 2);
    const key: CallOptions = { idempotencyKey: "order-42" };
    const first = await charge.call({ cents: 5 }, key);
    assert.equal(first instanceof ReusedInvocation, false);
    const again = await charge.call({ cents: 5 }, key);
    assert.ok(again instanceof ReusedInvocation);
    assert.equal(again.id, first.id);
    assert.equal(again.diffArgs, undefined);
    await runToSuccess(app, first, 10);
    clock.advance(HOUR_MS);
    const afterSuccess = await charge.call({ cents: 5 }, key);
    assert.ok(afterSuccess instanceof ReusedInvocation);
    assert.equal(afterSuccess.id, first.id);
    assert.equal(await within(afterSuccess.result(), DEADLINE_MS, "the result"), 10);
    assert.equal(await countOf(app, charge), 1);
    assert.deepEqual((await first.history()).map((entry) => entry.status), [
      "registered",
      "pending",
      "running",
      "success",
    ]);
  });

  test(`[${backend}] idempotencyKey is per task: two tasks called with one key get two invocations; another key gets another invocation`, async () => {
    const app = await makeApp();
    const a = app.task("a", ({ n }: { n: number }) => n);
    const b = app.task("b", ({ n }: { n: number }) => n);
    const onA = await a.call({ n: 1 }, { idempotencyKey: "k" });
    const onB = await b.call({ n: 1 }, { idempotencyKey: "k" });
    const otherKey = await a.call({ n: 1 }, { idempotencyKey: "k2" });
    assert.equal(onB instanceof ReusedInvocation, false);
    assert.equal(otherKey instanceof ReusedInvocation, false);
    assert.equal(new Set([onA.id, onB.id, otherKey.id]).size, 3);
    assert.equal((await a.call({ n: 1 }, { idempotencyKey: "k" })).id, onA.id);
    assert.equal((await b.call({ n: 1 }, { idempotencyKey: "k" })).id, onB.id);
  });

  test(`[${backend}] idempotencyKey expires with its TTL: the default 24 h, or idempotencyTtlMs; then the same key registers a new invocation`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock });
    const job = app.task("job", ({ n }: { n: number }) => n);
    const byDefault = await job.call({ n: 1 }, { idempotencyKey: "d" });
    const short = await job.call({ n: 1 }, { idempotencyKey: "s", idempotencyTtlMs: 1_000 });
    clock.advance(999);
    assert.equal((await job.call({ n: 1 }, { idempotencyKey: "s" })).id, short.id);
    clock.advance(1);
    const afterShort = await job.call({ n: 1 }, { idempotencyKey: "s" });
    assert.equal(afterShort instanceof ReusedInvocation, false);
    assert.notEqual(afterShort.id, short.id);
    clock.advance(24 * HOUR_MS - 1_001);
    assert.equal((await job.call({ n: 1 }, { idempotencyKey: "d" })).id, byDefault.id);
    clock.advance(1);
    const afterDefault = await job.call({ n: 1 }, { idempotencyKey: "d" });
    assert.equal(afterDefault instanceof ReusedInvocation, false);
    assert.notEqual(afterDefault.id, byDefault.id);
    // The new invocation holds the key anew, for a new TTL.
    assert.equal((await job.call({ n: 1 }, { idempotencyKey: "d" })).id, afterDefault.id);
  });

  test(`[${backend}] 100 concurrent calls with one idempotencyKey from two apps on one backend produce exactly one invocation`, async () => {
    const clock = new FakeClock();
    const appA = await makeApp({ clock });
    const appB = await makeApp({ clock }, appA);
    const define = (app: Nenc) => app.task("pay", ({ cents }: { cents: number }) => cents);
    const payA = define(appA);
    const payB = define(appB);
    const invocations = await Promise.all(
      Array.from(
        { length: 100 },
        (_, i) => (i % 2 === 0 ? payA : payB).call({ cents: 7 }, { idempotencyKey: "once" }),
      ),
    );
    assert.equal(new Set(invocations.map(({ id }) => id)).size, 1);
    assert.equal(invocations.filter((inv) => !(inv instanceof ReusedInvocation)).length, 1);
    assert.equal(await countOf(appA, payA), 1);
    assert.equal(await countOf(appB, payB), 1);
  });

  test(`[${backend}] an invocation named by a live idempotency key is not purged: purge waits for the key's expiry (autoPurge and setUpInvocationAutoPurge)`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock }); // purge horizon: 24 h
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const options = { idempotencyKey: "long", idempotencyTtlMs: 48 * HOUR_MS };
    const kept = await job.call({ n: 1 }, options);
    const plain = await job.call({ n: 2 });
    await runToSuccess(app, kept, 1);
    await runToSuccess(app, plain, 2);
    clock.advance(30 * HOUR_MS);
    await o.setUpInvocationAutoPurge(kept); // restarts the horizon: purge at 54 h (after the key)
    await o.autoPurge();
    assert.equal(await o.getInvocation(plain.id), undefined);
    assert.equal((await o.getInvocation(kept.id))?.id, kept.id);
    const reused = await job.call({ n: 1 }, options);
    assert.equal(reused.id, kept.id);
    assert.equal(await within(reused.result(), DEADLINE_MS, "the kept result"), 1);
    clock.advance(24 * HOUR_MS); // 54 h: the key expired at 48 h, the record's purge at 54 h
    await o.autoPurge();
    assert.equal(await o.getInvocation(kept.id), undefined);
    const fresh = await job.call({ n: 1 }, options);
    assert.equal(fresh instanceof ReusedInvocation, false);
    assert.notEqual(fresh.id, kept.id);
  });

  test(`[${backend}] a purge horizon shorter than the key's TTL is extended to the key's expiry`, async () => {
    const clock = new FakeClock();
    const app = await makeApp({ clock, orchestrator: { autoFinalInvocationPurgeHours: 0 } });
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const options = { idempotencyKey: "k", idempotencyTtlMs: HOUR_MS };
    const kept = await job.call({ n: 1 }, options);
    await runToSuccess(app, kept, 1);
    await o.autoPurge();
    clock.advance(HOUR_MS - 1);
    await o.autoPurge();
    assert.equal((await job.call({ n: 1 }, options)).id, kept.id);
    clock.advance(1);
    assert.equal(await o.getInvocation(kept.id), undefined); // reads as gone before any sweep
    assert.equal(await o.autoPurge(), 1);
    assert.notEqual((await job.call({ n: 1 }, options)).id, kept.id);
  });

  test(`[${backend}] the idempotency key is consulted before registration concurrency, and a call reused by registration concurrency writes its key for that invocation`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n, {
      registrationConcurrency: "arguments",
    });
    // Reused by registration concurrency: the key now names that invocation.
    const queued = await job.call({ n: 1 });
    const withKey = await job.call({ n: 1 }, { idempotencyKey: "k" });
    assert.ok(withKey instanceof ReusedInvocation);
    assert.equal(withKey.id, queued.id);
    await runToSuccess(app, queued, 1);
    // It ran (registration key released): without the key an equal call is new; with it, the key
    // comes first and names the finished invocation.
    const withoutKey = await job.call({ n: 1 });
    assert.notEqual(withoutKey.id, queued.id);
    const keyed = await job.call({ n: 1 }, { idempotencyKey: "k" });
    assert.ok(keyed instanceof ReusedInvocation);
    assert.equal(keyed.id, queued.id);
    // A new key while `withoutKey` holds the registration key: reused, and named by the new key.
    const other = await job.call({ n: 1 }, { idempotencyKey: "k2" });
    assert.equal(other.id, withoutKey.id);
    await o.getInvocationsToRun(1, { runnerId: "r1" });
    await o.setInvocationRun(undefined, withoutKey, { runnerId: "r1" });
    assert.equal((await job.call({ n: 1 }, { idempotencyKey: "k2" })).id, withoutKey.id);
    assert.equal(await countOf(app, job), 2);
  });

  test(`[${backend}] idempotencyKey with other arguments: the named invocation is returned with diffArgs, or InvocationConcurrencyWithDifferentArgumentsError when the task sets onDiffNonKeyArgsRaise`, async () => {
    const app = await makeApp();
    const lenient = app.task("lenient", ({ n }: { n: number }) => n);
    const strict = app.task("strict", ({ n }: { n: number }) => n, {
      onDiffNonKeyArgsRaise: true,
    });
    const first = await lenient.call({ n: 1 }, { idempotencyKey: "k" });
    const other = await lenient.call({ n: 2 }, { idempotencyKey: "k" });
    assert.ok(other instanceof ReusedInvocation);
    assert.equal(other.id, first.id);
    assert.deepEqual(other.diffArgs, { n: 2 });
    const strictFirst = await strict.call({ n: 1 }, { idempotencyKey: "k" });
    await assert.rejects(
      strict.call({ n: 2 }, { idempotencyKey: "k" }),
      (error: unknown) => {
        assert.ok(error instanceof InvocationConcurrencyWithDifferentArgumentsError);
        assert.equal(error.existingInvocationId, strictFirst.id);
        return true;
      },
    );
    assert.equal(await countOf(app, strict), 1);
  });

  test(`[${backend}] bad call options (unknown option, empty or non-string key, TTL 0, negative, NaN, Infinity, a TTL without a key, not an object) reject with a TypeError naming the task, and route nothing`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number }) => n);
    const bad: unknown[] = [
      { idempotencyKy: "k" },
      { idempotencyKey: "" },
      { idempotencyKey: 42 },
      { idempotencyKey: "k", idempotencyTtlMs: 0 },
      { idempotencyKey: "k", idempotencyTtlMs: -1 },
      { idempotencyKey: "k", idempotencyTtlMs: Number.NaN },
      { idempotencyKey: "k", idempotencyTtlMs: Number.POSITIVE_INFINITY },
      { idempotencyKey: "k", idempotencyTtlMs: "60000" },
      { idempotencyTtlMs: 1_000 },
      "k",
      null,
    ];
    for (const options of bad) {
      await assert.rejects(
        job.call({ n: 1 }, options as CallOptions),
        (error: unknown) =>
          error instanceof TypeError && /^Cannot call task job: /.test(error.message),
        `options ${String(JSON.stringify(options))}`,
      );
    }
    assert.equal(await countOf(app, job), 0);
  });

  test(`[${backend}] parallelize() and routeCalls() refuse idempotencyKey with a TypeError and route nothing`, async () => {
    const app = await makeApp();
    const job = app.task("job", ({ n }: { n: number }) => n);
    const refused = (error: unknown) =>
      error instanceof TypeError && /idempotencyKey names one call/.test(error.message);
    await assert.rejects(
      job.parallelize([{ n: 1 }, { n: 2 }], { idempotencyKey: "k" } as { commonArgs?: never }),
      refused,
    );
    await assert.rejects(
      job.parallelize([{ n: 1 }], { unknown: 1 } as { commonArgs?: never }),
      TypeError,
    );
    await assert.rejects(
      app.orchestrator.routeCalls([
        { task: job, args: { n: 1 } },
        { task: job, args: { n: 2 }, options: { idempotencyKey: "k" } },
      ]),
      refused,
    );
    assert.equal(await countOf(app, job), 0);
  });
}
