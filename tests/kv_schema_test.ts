/**
 * The KV schema version at every entry point that writes: data that a newer nenc upgraded after
 * this process first checked it is refused by `checkSchema()`, `claim`, `register`,
 * `registerMany`, `purgeDue` and `purgeAll`, and nothing is claimed or deleted.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import { NencError } from "../core/errors.ts";
import { MemoryStore } from "../core/memory_store.ts";
import { Keys } from "../kv/keys.ts";
import { KV_SCHEMA_VERSION } from "../kv/store.ts";
import { FakeClock } from "./_fake_clock.ts";
import { openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

const NEWER = KV_SCHEMA_VERSION + 1;
/** The refusal: a NencError naming the stored version and this code's. */
const newerRefused = (error: unknown): boolean =>
  error instanceof NencError &&
  error.message.includes(
    `its data has schema version ${NEWER}, newer than this nenc's ${KV_SCHEMA_VERSION}; upgrade nenc`,
  );

/**
 * An app that registered once (so it has checked, and written, the schema key), with a fake
 * clock; `upgrade()` then writes a newer version under it, as a newer nenc in another process.
 */
async function upgradedAfterFirstRegistration(appId: string) {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const clock = new FakeClock();
  const app = new Nenc({ appId, kv, clock });
  const task = app.task("t", ({ n }: { n: number }) => n);
  const first = await task.call({ n: 1 });
  const upgrade = async (): Promise<void> => {
    const stored = await kv.get(new Keys(appId).schema());
    assert.equal(
      new TextDecoder().decode(stored.value as Uint8Array),
      String(KV_SCHEMA_VERSION),
      "the first registration wrote this code's version",
    );
    await kv.atomic().set(new Keys(appId).schema(), new TextEncoder().encode(String(NEWER)))
      .commit();
  };
  return { kv, clock, app, task, first, upgrade };
}

test("[kv schema] checkSchema() rejects, naming both versions, data upgraded by a newer nenc after this store checked it", async () => {
  const { app, upgrade } = await upgradedAfterFirstRegistration("schema-check");
  await app.orchestrator.store.checkSchema();
  await upgrade();
  await assert.rejects(app.orchestrator.store.checkSchema(), newerRefused);
});

test("[kv schema] claim refuses upgraded data once its last check is a second old on the store's clock, and claims nothing", async () => {
  const { clock, app, first, upgrade } = await upgradedAfterFirstRegistration("schema-claim");
  await upgrade();
  clock.advance(1_000);
  await assert.rejects(
    app.orchestrator.getInvocationsToRun(1, { runnerId: "old-runner" }),
    newerRefused,
  );
  assert.equal(await app.orchestrator.getInvocationStatus(first), "registered");
});

test("[kv schema] register and registerMany refuse upgraded data once their last check is a second old on the store's clock", async () => {
  const { clock, task, upgrade } = await upgradedAfterFirstRegistration("schema-register");
  await upgrade();
  clock.advance(1_000);
  await assert.rejects(task.call({ n: 2 }), newerRefused);
  await assert.rejects(task.parallelize([{ n: 3 }, { n: 4 }]), newerRefused);
});

test("[kv schema] purgeDue and purgeAll refuse upgraded data at once and delete nothing", async () => {
  const { kv, clock, app, first, upgrade } = await upgradedAfterFirstRegistration(
    "schema-purge",
  );
  await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
  await app.orchestrator.setInvocationRun(undefined, first, { runnerId: "r1" });
  await app.orchestrator.setInvocationResult(first, 1, { runnerId: "r1" });
  clock.advance(48 * 3_600_000); // past the purge horizon: purgeDue would delete it
  const store = app.orchestrator.store;
  await upgrade();
  await assert.rejects(store.purgeDue(clock.now()), newerRefused);
  await assert.rejects(store.purgeAll(), newerRefused);
  // Past its purge time a read no longer returns it: look at the stored key itself.
  const record = await kv.get(new Keys("schema-purge").invocation(first.id));
  assert.notEqual(record.versionstamp, null, "the invocation is still stored");
});

test("[kv schema] checkSchema() reads and never creates: on an empty store it resolves and writes no key", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const app = new Nenc({ appId: "schema-empty", kv });
  await app.orchestrator.store.checkSchema();
  const keys: unknown[] = [];
  for await (const entry of kv.list({ prefix: [] })) keys.push(entry.key);
  assert.deepEqual(keys, []);
});

test("[kv schema] a register after purgeAll writes the schema key again", async () => {
  const { kv, app, task } = await upgradedAfterFirstRegistration("schema-repurge");
  await app.orchestrator.purge();
  assert.equal((await kv.get(new Keys("schema-repurge").schema())).versionstamp, null);
  await task.call({ n: 5 });
  const stored = await kv.get(new Keys("schema-repurge").schema());
  assert.equal(new TextDecoder().decode(stored.value as Uint8Array), String(KV_SCHEMA_VERSION));
});

test("[memory] checkSchema() resolves: memory holds only what this code wrote", async () => {
  await new MemoryStore().checkSchema();
});

test("[kv schema] data of the 0.1 layout (version 1, a running slot held as one id) is read, and the first write stamps this layout on it", async () => {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const keys = new Keys("schema-old");
  const app = new Nenc({ appId: "schema-old", kv });
  const task = app.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
  const held = await task.call({ n: 1 });
  await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
  // As 0.1 stored them: version 1, and the slot's holder as a bare string.
  const encoder = new TextEncoder();
  await kv.atomic()
    .set(keys.schema(), encoder.encode("1"))
    .set(keys.slot("t"), encoder.encode(JSON.stringify(held.id)))
    .commit();
  // A process started on that data (its store has not read the schema yet).
  const later = new Nenc({ appId: "schema-old", kv });
  const again = later.task("t", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
  assert.deepEqual(await later.orchestrator.store.slotHolders("t"), [held.id]);
  // Its first pick-up is a write: it stamps this version and parks the newcomer behind the holder.
  const newcomer = await again.call({ n: 2 });
  assert.deepEqual(await later.orchestrator.getInvocationsToRun(1, { runnerId: "r2" }), []);
  assert.equal(await newcomer.status(), "concurrency_controlled");
  const stored = await kv.get(keys.schema());
  assert.equal(new TextDecoder().decode(stored.value as Uint8Array), String(KV_SCHEMA_VERSION));
  assert.equal(KV_SCHEMA_VERSION, 3);
});
