/**
 * Blocking control on Deno KV, commit by commit: a wait is one commit with the pause, a long one
 * a commit per chunk, and children that end together release their edges without a refused
 * commit.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Nenc } from "../core/app.ts";
import type { KvKey } from "../kv/kv_like.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, within } from "./_deadline.ts";
import { defineFanOut } from "../bench/_shapes.ts";

const opened: TestKv[] = [];
after(() => opened.forEach((kv) => kv.close()));

interface Commit {
  readonly ok: boolean;
  readonly keys: readonly KvKey[];
  readonly values: readonly unknown[];
}

/** An app on a fresh KV :memory: whose commits are recorded. */
async function recordedApp(): Promise<{ app: Nenc; commits: Commit[] }> {
  const kv = await openTestKv(":memory:");
  opened.push(kv);
  const commits: Commit[] = [];
  const view = interceptKv(kv, {
    afterCommit: (ok, sets, values) =>
      void commits.push({ ok, keys: sets.map(({ key }) => key), values }),
  });
  return { app: new Nenc({ appId: "waits", kv: view }), commits };
}

const decoder = new TextDecoder();

/** Whether a commit sets `id`'s record with status `status`. */
function setsStatus(commit: Commit, id: string, status: string): boolean {
  return commit.keys.some((key, i) => {
    if (key[2] !== "inv" || key[3] !== id) return false;
    const stored = JSON.parse(decoder.decode(commit.values[i] as Uint8Array));
    return stored.record.status === status;
  });
}

/** The wait edges waiter → … that a commit sets. */
function edgesSet(commit: Commit, waiterId: string): string[] {
  return commit.keys.flatMap((key) =>
    key[2] === "waits" && key[3] === waiterId ? [String(key[4])] : []
  );
}

test("[kv] a parent awaiting two children with Promise.all pauses in one commit that writes both wait edges, and no other commit writes one", async () => {
  const { app, commits } = await recordedApp();
  const child = app.task("child", ({ n }: { n: number }) => n);
  const parent = app.task("parent", async () => {
    const children = await Promise.all([child.call({ n: 1 }), child.call({ n: 2 })]);
    const results = await Promise.all(children.map((invocation) => invocation.result()));
    return results.reduce((sum, n) => sum + n, 0);
  });
  const invocation = await parent.call();
  await within(app.runner({ concurrency: 1 }).drain(), DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), 3);
  const children = await app.orchestrator.store.children(invocation.id);
  const withEdges = commits.filter((commit) => edgesSet(commit, invocation.id).length > 0);
  assert.equal(withEdges.length, 1, "one commit writes the parent's wait edges");
  assert.deepEqual(
    edgesSet(withEdges[0]!, invocation.id).sort(),
    children.map(({ id }) => id).sort(),
  );
  assert.ok(setsStatus(withEdges[0]!, invocation.id, "paused"), "the same commit pauses it");
});

test("[kv] a parent awaiting 250 children at once writes its wait edges in 3 commits, the last with its PAUSED, and ends with no wait key left", async () => {
  const { app, commits } = await recordedApp();
  const parent = defineFanOut(app);
  const invocation = await parent.call({ n: 250 });
  await within(app.runner({ concurrency: 8 }).drain(), LONG_DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), (250 * 249) / 2);
  const withEdges = commits.filter((commit) => edgesSet(commit, invocation.id).length > 0);
  assert.deepEqual(withEdges.map((commit) => edgesSet(commit, invocation.id).length), [
    100,
    50,
    100,
  ]);
  assert.ok(setsStatus(withEdges[2]!, invocation.id, "paused"));
  assert.equal(new Set(withEdges.flatMap((commit) => edgesSet(commit, invocation.id))).size, 250);
  const left = await app.orchestrator.store.graphs();
  assert.deepEqual(left.waits, []);
});

test("[kv] 200 children of one parent that end together release their wait edges with no refused commit: no key is shared between their releases", async () => {
  const { app, commits } = await recordedApp();
  const parent = defineFanOut(app);
  const invocation = await parent.call({ n: 200 });
  await within(app.runner({ concurrency: 32 }).drain(), LONG_DEADLINE_MS, "the drain");
  assert.equal(await invocation.result(), (200 * 199) / 2);
  assert.equal(commits.filter((commit) => !commit.ok).length, 0, "refused commits");
});
