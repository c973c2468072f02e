import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { Keys } from "../kv/keys.ts";
import { holdingCommits, openTestKv, type TestKv } from "./_kv.ts";
import { type KvConnectFixture, startKvConnectFixture } from "./_kv_connect_fixture.ts";

const opened: TestKv[] = [];
const fixtures: KvConnectFixture[] = [];
const directory = mkdtempSync(join(tmpdir(), "nenc-kv-reservation-"));
after(async () => {
  for (const kv of opened) kv.close();
  await Promise.all(fixtures.map((fixture) => fixture.close()));
  rmSync(directory, { recursive: true, force: true });
});

async function openFresh(where: ":memory:" | "file" | "remote"): Promise<TestKv> {
  let kv: TestKv;
  if (where === "remote") {
    const fixture = await startKvConnectFixture();
    fixtures.push(fixture);
    kv = await openTestKv(fixture.url, fixture.accessToken);
  } else {
    kv = await openTestKv(where === "file" ? join(directory, "reservation.db") : ":memory:");
  }
  opened.push(kv);
  return kv;
}

for (const where of [":memory:", "file", "remote"] as const) {
  test(`[kv ${where}] resuming first: a pick-up that read the slot free before a paused invocation's reservation committed does not take the reserved slot`, async () => {
    const { kv, hold } = holdingCommits(await openFresh(where));
    const app = new Nenc({ appId: "resume", kv });
    const o = app.orchestrator;
    const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
    const claim = async (runnerId: string) =>
      (await o.getInvocationsToRun(10, { runnerId })).map(({ id }) => id);
    const p = await sync.call({ n: 1 });
    assert.deepEqual(await claim("r1"), [p.id]);
    await o.setInvocationRun(undefined, p, { runnerId: "r1" });
    await o.setInvocationStatus(p, "paused", { runnerId: "r1" }); // frees the slot
    const h = await sync.call({ n: 2 });
    assert.deepEqual(await claim("r2"), [h.id]);
    await o.setInvocationRun(undefined, h, { runnerId: "r2" });
    const n = await sync.call({ n: 3 });
    const runningKey = (await o.store.get(p.id))!.runningKey!;
    const keys = new Keys("resume");

    // P resumes: it reads the slot held by H and no reservation; its reservation commit waits.
    const reservation = hold(keys.reservation(runningKey));
    const resume = o.setInvocationStatus(p, "resumed", { runnerId: "r1" });
    await reservation.reached;
    // H finishes and frees the slot.
    await o.setInvocationResult(h, 2, { runnerId: "r2" });
    // N's pick-up reads the slot free and no reservation; its take commit waits.
    const take = hold(keys.slot(runningKey));
    const pickUp = claim("r3");
    await take.reached;
    // P's reservation commits first (its resume is refused: H held the slot when it read)…
    reservation.open();
    assert.equal(await resume, false);
    const reserved = await kv.get(keys.reservation(runningKey));
    assert.equal(JSON.parse(new TextDecoder().decode(reserved.value as Uint8Array)), p.id);
    // …then N's take: the slot is reserved for P, so N is refused (parked), not run first.
    take.open();
    assert.deepEqual(await pickUp, [], "a new pick-up took a slot reserved for a resume");
    assert.equal(await n.status(), "concurrency_controlled");
    assert.equal(await o.setInvocationStatus(p, "resumed", { runnerId: "r1" }), true);
    assert.equal((await kv.get(keys.reservation(runningKey))).versionstamp, null);
    await o.setInvocationResult(p, 1, { runnerId: "r1" });
    assert.deepEqual(await claim("r3"), [n.id]);
  });
}
