/**
 * End-to-end load on the in-memory backend (`deno task bench:e2e`): call → orchestrator → runner
 * → result, in one process. Prints a table and one JSON line per scenario.
 *
 * - noop cN: 10,000 no-op invocations through a runner with N slots (1, 10, 32);
 * - fan-out: one parent calls 1,000 children and waits for all of them (10 slots);
 * - tree: a binary tree of nested waits (each node calls 2 children and awaits both results,
 *   PAUSED meanwhile; the leaves return), depth 12 (`--tree-depth`; 8,191 invocations) on 8 slots,
 *   timed from the root's call to its result, next to noop c32 on a fresh app, rounds alternating
 *   in the same run (median of each; `--rounds`): the ratio is the goal (at least 0.5×);
 * - dedup: 10,000 calls over 100 argument sets with registration concurrency "arguments"
 *   → 100 invocations;
 * - parked: one running-concurrency key held (a task with `runningConcurrency: "task"` whose first
 *   invocation runs until the bench ends), 10,000 more of it parked behind it
 *   (CONCURRENCY_CONTROLLED), then N unrelated no-ops at 32 slots through the same app and runner,
 *   next to the same no-ops on a fresh app with the same key held and nothing parked, in the same
 *   run (rounds alternate, median of each; the goal is at least 0.8×). Also how long parking took
 *   (a pick-up parks at most CONTROL_LIMIT, 100, and a pick-up that parked some looks again at
 *   once: about 0.1 s for 10,000), the history entries per parked
 *   invocation (the memory store's writes), and how many parked invocations changed while the
 *   unrelated no-ops ran (0 expected).
 * - delayed: N no-op invocations (10,000) called with `runAt` spread evenly over S ms (10,000:
 *   one due every ms), all registered before the first is due, run by a 32-slot runner at its
 *   default pollMs (100): the lateness of each start (`Date.now()` in the function minus its
 *   `runAt`, whole ms), p50, p99 and max; an invocation started before its time fails the bench.
 *   Its seconds run from the first `runAt` to the last start (about S). The memory store has no reads to count per idle poll (the delayed heap is in the process,
 *   its earliest entry looked at by each pick-up); the KV bench counts them.
 *
 * Usage: deno run -A bench/e2e_memory.ts [--invocations N] [--parked N] [--rounds N]
 *   [--delayed N] [--spread-ms MS] [--lead-ms MS] [--tree-depth D]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Nenc } from "../core/app.ts";
import type { Invocation } from "../core/invocation.ts";
import { InvocationStatus } from "../core/status.ts";
import { waitUntil, within } from "../tests/_deadline.ts";
import { defineFanOut, defineTree, runFanOut, runTree, treeSize } from "./_shapes.ts";
import { type Lateness, lateness, latenessNote, median } from "./_stats.ts";

interface Row extends Partial<Lateness> {
  readonly scenario: string;
  readonly invocations: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly note: string;
  /** The parked row: the rate of the same no-ops with nothing parked, and what parking cost. */
  readonly parked?: number;
  readonly parkSeconds?: number;
  readonly historyEntriesPerParked?: number;
  readonly noBacklogPerSecond?: number;
  readonly ratio?: number;
  readonly parkedChangedWhileWaiting?: number;
  /** The delayed row: how the starts of invocations called with `runAt` fell after their time. */
  readonly delayed?: number;
  readonly spreadMs?: number;
  readonly pollMs?: number;
  readonly registerSeconds?: number;
  /** The tree row: the rate of noop c32 in the same rounds, and the tree's rate over it. */
  readonly flatPerSecond?: number;
  readonly ratioToFlat?: number;
}

const { values } = parseArgs({
  options: {
    invocations: { type: "string", default: "10000" },
    parked: { type: "string", default: "10000" },
    rounds: { type: "string", default: "5" },
    delayed: { type: "string", default: "10000" },
    "spread-ms": { type: "string", default: "10000" },
    "lead-ms": { type: "string", default: "2000" },
    "tree-depth": { type: "string", default: "12" },
  },
});
const INVOCATIONS = Number(values.invocations);
const PARKED = Number(values.parked);
const ROUNDS = Number(values.rounds);
const DELAYED = Number(values.delayed);
const SPREAD_MS = Number(values["spread-ms"]);
const LEAD_MS = Number(values["lead-ms"]);
const TREE_DEPTH = Number(values["tree-depth"]);

/** `INVOCATIONS` no-ops of `task` called one after the other, then every result: the seconds. */
async function runNoops(task: ReturnType<typeof defineNoop>): Promise<number> {
  const start = performance.now();
  const invocations = [];
  for (let i = 0; i < INVOCATIONS; i++) invocations.push(await task.call({ i }));
  const results = await Promise.all(invocations.map((invocation) => invocation.result()));
  const seconds = (performance.now() - start) / 1000;
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
  return seconds;
}

function defineNoop(app: Nenc) {
  return app.task("noop", ({ i }: { i: number }) => i);
}

/** The seconds of `INVOCATIONS` no-ops on a fresh app whose runner has `concurrency` slots. */
async function noopSeconds(concurrency: number): Promise<number> {
  const app = new Nenc({ appId: "bench" });
  const task = defineNoop(app);
  await using runner = app.runner({ concurrency });
  runner.start();
  return await runNoops(task);
}

async function noop(concurrency: number): Promise<Row> {
  const seconds = await noopSeconds(concurrency);
  return row(`noop c${concurrency}`, INVOCATIONS, seconds, "call → run → result");
}

async function fanOut(children: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  const parent = defineFanOut(app);
  await using runner = app.runner({ concurrency: 10 });
  runner.start();
  const seconds = await runFanOut(parent, children);
  return row(`fan-out ${children}`, children + 1, seconds, "parent waits PAUSED on all children");
}

/** The seconds of the binary tree of `depth` on a fresh app whose runner has 8 slots. */
async function treeSeconds(depth: number): Promise<number> {
  const app = new Nenc({ appId: "bench" });
  const tree = defineTree(app);
  await using runner = app.runner({ concurrency: 8 });
  runner.start();
  return await runTree(tree, depth);
}

async function nested(depth: number): Promise<Row> {
  // Rounds alternate (ABBA) with noop c32, as in the parked row; the median of each is reported.
  const trees: number[] = [];
  const flats: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) flats.push(await noopSeconds(32));
    trees.push(await treeSeconds(depth));
    if (round % 2 === 1) flats.push(await noopSeconds(32));
  }
  const flatPerSecond = Math.round(INVOCATIONS / median(flats));
  const r = row(`tree depth ${depth}, c8`, treeSize(depth), median(trees), "");
  const ratioToFlat = r.perSecond / flatPerSecond;
  return {
    ...r,
    note: `each node calls 2 children and awaits both; vs noop c32 ${flatPerSecond}/s, same ` +
      `rounds: ${ratioToFlat.toFixed(2)}×`,
    flatPerSecond,
    ratioToFlat,
  };
}

async function dedup(calls: number, argumentSets: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  const task = app.task("dedup", ({ k }: { k: number }) => k, {
    registrationConcurrency: "arguments",
  });
  const start = performance.now();
  const ids = new Set<string>();
  for (let i = 0; i < calls; i++) ids.add((await task.call({ k: i % argumentSets })).id);
  await using runner = app.runner({ concurrency: 32 });
  runner.start();
  await Promise.all([...ids].map((id) => app.orchestrator.waitForResults([{ id }])));
  const seconds = (performance.now() - start) / 1000;
  if (ids.size !== argumentSets) {
    throw new Error(`Cannot bench: ${ids.size} invocations, expected ${argumentSets}`);
  }
  return row(`dedup ${calls}→${argumentSets}`, calls, seconds, `${ids.size} invocations created`);
}

/**
 * An app whose task "held" has one running slot, taken by an invocation that runs (on a runner of
 * its own, 1 slot) until disposed of; and the no-op task with a 32-slot runner.
 */
async function heldKeyApp() {
  const app = new Nenc({ appId: "bench" });
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const held = app.task("held", async ({ i }: { i: number }) => {
    await released;
    return i;
  }, { runningConcurrency: "task" });
  const task = defineNoop(app);
  const holderRunner = app.runner({ concurrency: 1 });
  holderRunner.start();
  const holder = await held.call({ i: -1 });
  const runner = app.runner({ concurrency: 32 });
  const stop = async (): Promise<void> => {
    // The parked stay parked: the no-op runner stops before the key is released.
    await runner.stop();
    release();
    await holderRunner.stop();
  };
  try {
    await waitUntil(async () => await holder.status() === InvocationStatus.RUNNING, {
      message: "Cannot bench: the holder does not run",
      timeoutMs: 10_000,
      intervalMs: 20,
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { app, held, task, runner, [Symbol.asyncDispose]: stop };
}

/** The `seq` of each of `invocations` still parked, -1 for any other: unchanged while parked. */
async function seqs(app: Nenc, invocations: readonly Invocation[]): Promise<number[]> {
  const records = await app.orchestrator.store.getMany(invocations.map(({ id }) => id));
  return records.map((record) =>
    record.status === InvocationStatus.CONCURRENCY_CONTROLLED ? record.seq : -1
  );
}

async function parkedBacklog(parked: number): Promise<Row> {
  await using fresh = await heldKeyApp();
  await using backlog = await heldKeyApp();
  fresh.runner.start();
  const group = await backlog.held.parallelize(Array.from({ length: parked }, (_, i) => ({ i })));
  // Registered with the key held and no free runner: the 32-slot runner parks them.
  const parkStart = performance.now();
  backlog.runner.start();
  const controlled = async (): Promise<number> =>
    (await backlog.app.orchestrator.store.counts()).get("held")
      ?.get(InvocationStatus.CONCURRENCY_CONTROLLED) ?? 0;
  await waitUntil(async () => await controlled() === parked, {
    message: `Cannot bench: ${parked} not parked`,
    timeoutMs: 60_000 + parked * 20,
    intervalMs: 20,
  });
  const parkSeconds = (performance.now() - parkStart) / 1000;
  let entries = 0;
  for (const invocation of group.invocations) entries += (await invocation.history()).length;
  const before = await seqs(backlog.app, group.invocations);
  // Rounds alternate (ABBA), so both apps see the same warm-up, the same load from elsewhere on
  // the machine and the same growing count of finished no-ops; the median of each is reported.
  const withBacklog: number[] = [];
  const without: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) without.push(await runNoops(fresh.task));
    withBacklog.push(await runNoops(backlog.task));
    if (round % 2 === 1) without.push(await runNoops(fresh.task));
  }
  const after = await seqs(backlog.app, group.invocations);
  const moved = before.filter((seq, i) => seq === -1 || seq !== after[i]).length;
  const seconds = median(withBacklog);
  const noBacklogPerSecond = Math.round(INVOCATIONS / median(without));
  const r = row(
    `noop c32, ${parked} parked`,
    INVOCATIONS,
    seconds,
    `vs ${noBacklogPerSecond}/s with nothing parked, same run: ${
      (Math.round(INVOCATIONS / seconds) / noBacklogPerSecond).toFixed(2)
    }×; parked in ${parkSeconds.toFixed(1)} s, ${
      entries / Math.max(parked, 1)
    } history entries each, ${moved} changed meanwhile`,
  );
  return {
    ...r,
    parked,
    parkSeconds,
    historyEntriesPerParked: entries / Math.max(parked, 1),
    noBacklogPerSecond,
    ratio: r.perSecond / noBacklogPerSecond,
    parkedChangedWhileWaiting: moved,
  };
}

/**
 * `delayed` no-ops called with `runAt` = t0 + i·spreadMs/delayed, t0 being `leadMs` after the
 * bench starts registering (every call must be made by then), run by a 32-slot runner started
 * before them, at the default pollMs.
 */
async function delayedStarts(delayed: number, spreadMs: number, leadMs: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  // Date.now() in the function: the clock the store compares `runAt` with.
  const startedAt = new Float64Array(delayed).fill(NaN);
  let runs = 0;
  let allRan!: () => void;
  const ran = new Promise<void>((resolve) => allRan = resolve);
  const task = app.task("delayed", ({ i }: { i: number }) => {
    startedAt[i] = Date.now();
    if (++runs === delayed) allRan();
    return i;
  });
  await using runner = app.runner({ concurrency: 32 });
  runner.start();
  const registerStart = Date.now();
  const t0 = registerStart + leadMs;
  const runAt = Array.from({ length: delayed }, (_, i) => t0 + Math.floor(i * spreadMs / delayed));
  for (let i = 0; i < delayed; i++) await task.call({ i }, { runAt: runAt[i]! });
  const registered = Date.now();
  if (registered >= t0) {
    throw new Error(
      `Cannot bench: registering took ${
        registered - registerStart
      } ms, not within --lead-ms ${leadMs}`,
    );
  }
  await within(ran, leadMs + spreadMs + 30_000, `${delayed} delayed invocations to run`);
  const lastStart = Math.max(...startedAt);
  await runner.stop();
  // As many runs as invocations and none without a start: each ran once.
  if (runs !== delayed || startedAt.some(Number.isNaN)) {
    throw new Error(`Cannot bench: ${runs} runs of ${delayed} invocations, not one each`);
  }
  return delayedRow(
    delayed,
    spreadMs,
    runner.pollMs,
    (registered - registerStart) / 1000,
    (lastStart - t0) / 1000,
    Array.from(startedAt, (started, i) => started - runAt[i]!),
  );
}

function delayedRow(
  delayed: number,
  spreadMs: number,
  pollMs: number,
  registerSeconds: number,
  seconds: number,
  latenessMs: readonly number[],
): Row {
  const late = lateness(latenessMs);
  const stats = { delayed, spreadMs, pollMs, registerSeconds, ...late };
  const r: Row = {
    ...row(
      `delayed ${delayed} over ${spreadMs / 1000} s, c32`,
      delayed,
      seconds,
      `${latenessNote(late, pollMs)}; registered in ${registerSeconds.toFixed(1)} s; ` +
        "no store reads to count on memory (in-process heap)",
    ),
    ...stats,
  };
  if (late.early > 0) {
    console.log(JSON.stringify({ bench: "e2e_memory", ...r }));
    throw new Error(`Cannot bench: ${late.early} delayed invocations started before their runAt`);
  }
  return r;
}

function row(scenario: string, invocations: number, seconds: number, note: string): Row {
  return { scenario, invocations, seconds, perSecond: Math.round(invocations / seconds), note };
}

const rows: Row[] = [];
for (const concurrency of [1, 10, 32]) rows.push(await noop(concurrency));
rows.push(await fanOut(1_000));
rows.push(await nested(TREE_DEPTH));
rows.push(await dedup(INVOCATIONS, 100));
rows.push(await parkedBacklog(PARKED));
rows.push(await delayedStarts(DELAYED, SPREAD_MS, LEAD_MS));

console.log("| scenario | invocations | seconds | invocations/s | note |");
console.log("| --- | ---: | ---: | ---: | --- |");
for (const r of rows) {
  console.log(
    `| ${r.scenario} | ${r.invocations} | ${r.seconds.toFixed(3)} | ${r.perSecond} | ${r.note} |`,
  );
}
for (const r of rows) console.log(JSON.stringify({ bench: "e2e_memory", ...r }));
