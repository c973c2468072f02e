/**
 * End-to-end load on the Deno KV backend, on a file (`deno task bench:kv`): no-op invocations
 * through call → orchestrator → runner → result at runner concurrency 1, 10 and 32 in one
 * process, and with 4 runner processes; each next to the raw rate of concurrent atomic commits on
 * the same kind of file from the same process layout (1 process × 32 writers, 4 processes × 8),
 * sampled for 2 s just before and just after it in the same run. Every row reports its rate as a
 * ratio to the mean of those two samples (but the delayed row, whose rate its `runAt` times set),
 * the KV commits per invocation (attempted ones: those a conflict refused count too) and the bytes
 * of the values they set (the raw rows: 1 commit and 200 bytes each).
 *
 * The nested row: a binary tree of nested waits (each node calls 2 children and awaits both
 * results, PAUSED meanwhile; the leaves return), depth 10 (`--tree-depth`; 2,047 invocations), on a
 * runner of 8 slots, timed from the root's call to its result. The fan-out row: 1 parent calls
 * 1,000 children (`--fan-out`) in one `parallelize` and awaits the group's `results()`, on a runner
 * of 32 slots. Both set against the raw rate of 1 process × 32 writers.
 *
 * The parked row: one running-concurrency key held (a task with `runningConcurrency: "task"` whose
 * first invocation runs until the bench ends), 10,000 more of it parked behind it
 * (CONCURRENCY_CONTROLLED, `park/<key>/<pos>`), then N unrelated no-ops at concurrency 32 through
 * the same app and runner, next to the same no-ops on a fresh KV file with the same key held and
 * nothing parked, in the same run (rounds alternate, median of each; the goal is at least 0.8×).
 * Also how long parking took (a pick-up parks at most CONTROL_LIMIT, 100, one after the other as
 * they share a key, and a runner whose pick-up claimed nothing waits its pollMs, 20 ms here, before
 * the next), the commits and bytes of the parking per parked invocation (in the row's commits and
 * bytes columns; registering them is not counted), and the commits that touched a parked
 * invocation (or a park/, wake/ or slot/ key) while the unrelated no-ops ran: 0 expected.
 *
 * The delayed row: N no-op invocations (10,000) called with `runAt` spread evenly over S ms
 * (10,000: one due every ms), all registered before the first is due, run by a 32-slot runner at
 * its default pollMs (100): the lateness of each start (`Date.now()` in the function minus its
 * `runAt`, whole ms), p50, p99 and max; an invocation started before its time fails the bench.
 * Its rate is theirs from the first `runAt` to the last start (set by the spread), and its commits
 * and bytes columns count registering and running them. Then the store reads
 * (`get`, `getMany` and `list` calls, and the entries the lists read) per idle poll of a 32-slot
 * runner with nothing due, on a file with no delayed invocation and on one with N due in an hour:
 * they must be the same (the bench fails otherwise). A poll is one pick-up (`store.claim`); its
 * reads are all those from its start to the next one's, so the polls that also ran the recovery
 * scan (once per heartbeatMs, 1 s) count more: the typical poll (median) is compared, and the
 * mean over the window reported.
 *
 * `--rtt MS` runs only these, on a KV file seen through a layer that answers every read (`get`,
 * `getMany`, each page of a `list`: `batchSize`, else `limit`, else 100 entries, at most 500) and
 * every commit MS later, and refuses a commit of more than 10 checks, as a denokv server one
 * round trip away does, in one process: the flat no-ops at
 * concurrency 32 (`--invocations` of them from 32 callers), as invocations finished per round trip
 * (invocations / (wall time / MS)); and the binary tree of depth 5 (`--rtt-depth`; 63 invocations)
 * on 8 slots, as its wall time and the round trips on its critical path (wall time / MS). Also the
 * round trips made (reads and commits, in sequence or not) per invocation.
 *
 * Prints one JSON line per row as it is measured, then a table.
 *
 * Usage: deno run -A bench/e2e_kv.ts [--invocations N] [--parked N] [--rounds N] [--delayed N]
 *   [--spread-ms MS] [--lead-ms MS] [--idle-ms MS] [--tree-depth D] [--fan-out N]
 *        deno run -A bench/e2e_kv.ts --rtt MS [--invocations N] [--rtt-depth D]
 *
 * @module
 */

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Nenc } from "../core/app.ts";
import { InvocationStatus } from "../core/status.ts";
import type { KvKey, KvLike } from "../kv/kv_like.ts";
import { waitUntil, within } from "../tests/_deadline.ts";
import { interceptKv } from "../tests/_kv.ts";
import { defineFanOut, defineTree, runFanOut, runTree, treeSize } from "./_shapes.ts";
import { type Lateness, lateness, latenessNote, median } from "./_stats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    invocations: { type: "string", default: "2000" },
    parked: { type: "string", default: "10000" },
    rounds: { type: "string", default: "5" },
    delayed: { type: "string", default: "10000" },
    "spread-ms": { type: "string", default: "10000" },
    "lead-ms": { type: "string", default: "2000" },
    "idle-ms": { type: "string", default: "2000" },
    "tree-depth": { type: "string", default: "10" },
    "fan-out": { type: "string", default: "1000" },
    rtt: { type: "string" },
    "rtt-depth": { type: "string", default: "5" },
    worker: { type: "string" },
    "raw-worker": { type: "string" },
  },
});
const INVOCATIONS = Number(values.invocations);
const PARKED = Number(values.parked);
const ROUNDS = Number(values.rounds);
const DELAYED = Number(values.delayed);
const SPREAD_MS = Number(values["spread-ms"]);
const LEAD_MS = Number(values["lead-ms"]);
const IDLE_MS = Number(values["idle-ms"]);
const TREE_DEPTH = Number(values["tree-depth"]);
const FAN_OUT = Number(values["fan-out"]);
const RTT_MS = values.rtt === undefined ? undefined : Number(values.rtt);
const RTT_DEPTH = Number(values["rtt-depth"]);
// The main process's files, in a folder made on first use: a worker process (this file with
// --worker or --raw-worker) opens the file it is given and makes none.
let directory: string | undefined;
let files = 0;
const newFile = (): string =>
  join(directory ??= mkdtempSync(join(tmpdir(), "nenc-bench-kv-")), `${++files}.db`);

/** A KV view that counts commits and the bytes of the values they set. */
function counting(kv: KvLike): { kv: KvLike; commits: () => number; bytes: () => number } {
  let commits = 0;
  let bytes = 0;
  return {
    commits: () => commits,
    bytes: () => bytes,
    kv: interceptKv(kv, {
      beforeCommit: () => void commits++,
      onSet: (value) => void (bytes += value instanceof Uint8Array ? value.byteLength : 0),
    }),
  };
}

/**
 * A KV view that answers every read — `get`, `getMany`, each page of a `list` — and every commit
 * `ms` later (it waits, then asks `kv`), as a store one round trip away does; it counts the round
 * trips. As a denokv server does, it refuses a commit of more than 10 checks (after the trip).
 */
function latent(kv: KvLike, ms: number): { kv: KvLike; roundTrips: () => number } {
  let roundTrips = 0;
  const trip = (): Promise<void> => {
    roundTrips++;
    return new Promise((resolve) => setTimeout(resolve, ms));
  };
  const view = interceptKv(kv, { beforeGet: trip, beforeGetMany: trip, beforeCommit: trip });
  return {
    roundTrips: () => roundTrips,
    kv: {
      ...view,
      atomic: () => {
        const op = view.atomic();
        const check = op.check.bind(op);
        const commit = op.commit.bind(op);
        let checks = 0;
        op.check = (...list) => {
          checks += list.length;
          return check(...list);
        };
        op.commit = async () => {
          if (checks <= 10) return await commit();
          await trip();
          throw new Error(`too many checks: ${checks}, at most 10 (denokv's limit)`);
        };
        return op;
      },
      list: (selector, options) =>
        (async function* () {
          // Deno's page: batchSize, else limit, else 100 entries, at most 500. A full page short of
          // the limit asks for the next one (which may come back empty), as Deno's list does.
          const page = Math.min(options?.batchSize ?? options?.limit ?? 100, 500);
          const limit = options?.limit ?? Infinity;
          await trip();
          let read = 0;
          for await (const entry of kv.list(selector, options)) {
            yield entry;
            if (++read % page === 0 && read < limit) await trip();
          }
        })(),
    },
  };
}

/**
 * A KV view that counts the applied commits setting or deleting a key that `watched` picks, and
 * the keys they set that `parks` picks.
 */
function watching(
  kv: KvLike,
  watched: (key: KvKey) => boolean,
  parks: (key: KvKey) => boolean,
): { kv: KvLike; touched: () => number; parkKeys: () => number } {
  let touched = 0;
  let parkKeys = 0;
  return {
    touched: () => touched,
    parkKeys: () => parkKeys,
    kv: {
      get: (key) => kv.get(key),
      getMany: (keys) => kv.getMany(keys),
      list: (selector, options) => kv.list(selector, options),
      atomic: () => {
        const op = kv.atomic();
        const set = op.set.bind(op);
        const remove = op.delete.bind(op);
        const commit = op.commit.bind(op);
        const sets: KvKey[] = [];
        const deletes: KvKey[] = [];
        op.set = (key, value, options) => {
          sets.push(key);
          return set(key, value, options);
        };
        op.delete = (key) => {
          deletes.push(key);
          return remove(key);
        };
        op.commit = async () => {
          const result = await commit();
          if (result.ok) {
            if (sets.some(watched) || deletes.some(watched)) touched++;
            parkKeys += sets.filter(parks).length;
          }
          return result;
        };
        return op;
      },
    },
  };
}

function define(app: Nenc) {
  return app.task("noop", ({ i }: { i: number }) => i);
}

/** Set by the 4-process row's main process once it has every result: the workers stop. */
const DONE_KEY = ["bench-done"];

/** The KV commits a process of the 4-process row made, and the bytes of the values they set. */
interface Written {
  readonly commits: number;
  readonly bytes: number;
}

// A worker process of the 4-process row: runs a runner until the main process says done (one
// point read per 50 ms, not counted: the stop signal must not load the store it measures), then
// prints what its runner wrote.
if (values.worker !== undefined) {
  const kv = await Deno.openKv(values.worker);
  const counter = counting(kv);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  define(app);
  const runner = app.runner({ concurrency: 32, pollMs: 20 });
  runner.start();
  while ((await kv.get(DONE_KEY)).versionstamp === null) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await runner.stop();
  kv.close();
  const written: Written = { commits: counter.commits(), bytes: counter.bytes() };
  console.log(JSON.stringify(written));
  Deno.exit(0);
}

/** Commits check + set of 200 bytes from `writers` concurrent writers for `ms`; returns how many. */
async function commitFor(kv: Deno.Kv, writers: number, ms: number): Promise<number> {
  const value = new Uint8Array(200);
  let commits = 0;
  const until = performance.now() + ms;
  await Promise.all(Array.from({ length: writers }, async (_, w) => {
    for (let i = 0; performance.now() < until; i++) {
      const key = ["raw", Deno.pid, w, i];
      try {
        if ((await kv.atomic().check({ key, versionstamp: null }).set(key, value).commit()).ok) {
          commits++;
        }
      } catch {
        // "database is locked": processes share the file; the write was not applied.
      }
    }
  }));
  return commits;
}

// A writer process of the raw multi-process row: prints how many commits it made.
if (values["raw-worker"] !== undefined) {
  const kv = await Deno.openKv(values["raw-worker"]);
  console.log(await commitFor(kv, 8, 2_000));
  kv.close();
  Deno.exit(0);
}

interface Row extends Partial<Lateness> {
  readonly scenario: string;
  readonly perSecond: number;
  readonly seconds: number;
  readonly invocations?: number;
  readonly commitsPerInvocation?: number;
  readonly bytesPerInvocation?: number;
  readonly note: string;
  /** The parked row: the rate of the same no-ops with nothing parked, and what parking cost. */
  readonly parked?: number;
  readonly parkSeconds?: number;
  readonly noBacklogPerSecond?: number;
  readonly ratio?: number;
  readonly commitsTouchingParkedWhileWaiting?: number;
  /**
   * The delayed row: how the starts of invocations called with `runAt` fell after their time,
   * and the reads of an idle poll with one and with `delayed` delayed far ahead.
   */
  readonly delayed?: number;
  readonly spreadMs?: number;
  readonly pollMs?: number;
  readonly registerSeconds?: number;
  readonly idleOneDelayed?: IdleReads;
  readonly idleDelayedAhead?: IdleReads;
  /**
   * The `--rtt` rows: the simulated round trip, the round trips the wall time spans (its critical
   * path), the invocations finished per such round trip, and the round trips made per invocation
   * (reads and commits, in sequence or not).
   */
  readonly rttMs?: number;
  readonly roundTripsInWallTime?: number;
  readonly invocationsPerRoundTrip?: number;
  readonly roundTripsMadePerInvocation?: number;
}

/** The reads of the idle polls of a runner in a window. */
interface IdleReads {
  readonly delayedAhead: number;
  readonly polls: number;
  /** Reads (`get`, `getMany`, `list` calls) of the typical (median) poll, and the fewest/most. */
  readonly readsPerPoll: number;
  readonly readsPerPollMin: number;
  readonly readsPerPollMax: number;
  /** All reads in the window over its polls. */
  readonly readsPerPollMean: number;
  /** The entries the lists of the typical (median) poll read, and the most. */
  readonly listedPerPoll: number;
  readonly listedPerPollMax: number;
}

async function rawCommits(writers: number): Promise<Row> {
  const kv = await Deno.openKv(newFile());
  const start = performance.now();
  const commits = await commitFor(kv, writers, 2_000);
  const seconds = (performance.now() - start) / 1000;
  kv.close();
  return {
    scenario: `raw atomic commits, ${writers} concurrent`,
    perSecond: Math.round(commits / seconds),
    seconds,
    commitsPerInvocation: 1,
    bytesPerInvocation: 200,
    note: "check + set of 200 bytes",
  };
}

/** The same commits from 4 processes × 8 writers on one file: what SQLite's file locking allows. */
async function rawCommitsFourProcesses(): Promise<Row> {
  const file = newFile();
  (await Deno.openKv(file)).close();
  const counts = await Promise.all(
    Array.from({ length: 4 }, () =>
      new Promise<number>((resolve, reject) => {
        const child = spawn(Deno.execPath(), [
          "run",
          "-A",
          "--no-check",
          new URL(import.meta.url).pathname,
          "--raw-worker",
          file,
        ]);
        let out = "";
        child.stdout.on("data", (chunk) => out += chunk);
        child.on("close", (code) =>
          code === 0 ? resolve(Number(out.trim())) : reject(new Error(`writer exited ${code}`)));
      })),
  );
  const commits = counts.reduce((sum, count) => sum + count, 0);
  return {
    scenario: "raw atomic commits, 4 processes × 8 concurrent",
    perSecond: Math.round(commits / 2),
    seconds: 2,
    commitsPerInvocation: 1,
    bytesPerInvocation: 200,
    note: "check + set of 200 bytes; SQLite locks the file between processes",
  };
}

/** `INVOCATIONS` no-ops of `noop` from 32 concurrent callers, then every result: the seconds. */
async function callNoops(noop: ReturnType<typeof define>): Promise<number> {
  const start = performance.now();
  // 32 concurrent callers, as the raw rate has 32 concurrent writers.
  const invocations: Awaited<ReturnType<typeof noop.call>>[] = [];
  await Promise.all(Array.from({ length: 32 }, async (_, caller) => {
    for (let i = caller; i < INVOCATIONS; i += 32) invocations[i] = await noop.call({ i });
  }));
  const results = await Promise.all(invocations.map((invocation) => invocation.result()));
  const seconds = (performance.now() - start) / 1000;
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
  return seconds;
}

/**
 * An app on a new KV file, seen through a view that counts commits and bytes, and first, when
 * `rttMs` is given, through one that answers `rttMs` later; with a runner of `concurrency` slots
 * (pollMs 20), started. Disposing of it stops the runner and closes the file.
 */
async function countedApp(concurrency: number, rttMs: number | undefined) {
  const handle = await Deno.openKv(newFile());
  const slow = rttMs === undefined ? undefined : latent(handle, rttMs);
  const counter = counting(slow?.kv ?? handle);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  const runner = app.runner({ concurrency, pollMs: 20 });
  return {
    app,
    runner,
    counter,
    roundTrips: () => slow?.roundTrips() ?? 0,
    [Symbol.asyncDispose]: async (): Promise<void> => {
      await runner.stop();
      handle.close();
    },
  };
}

/**
 * The row of `invocations` that took `seconds` on `bench`: the rate, the commits and bytes per
 * invocation, and with `rttMs` the round trips.
 */
function countedRow(
  bench: Awaited<ReturnType<typeof countedApp>>,
  scenario: string,
  invocations: number,
  seconds: number,
  rttMs: number | undefined,
  note: string,
): Row {
  const r: Row = {
    scenario: rttMs === undefined ? scenario : `${scenario}, ${rttMs} ms per round trip`,
    invocations,
    perSecond: Math.round(invocations / seconds),
    seconds,
    commitsPerInvocation: bench.counter.commits() / invocations,
    bytesPerInvocation: Math.round(bench.counter.bytes() / invocations),
    note,
  };
  if (rttMs === undefined) return r;
  const roundTripsInWallTime = seconds * 1000 / rttMs;
  return {
    ...r,
    rttMs,
    roundTripsInWallTime,
    invocationsPerRoundTrip: invocations / roundTripsInWallTime,
    roundTripsMadePerInvocation: bench.roundTrips() / invocations,
  };
}

async function oneProcess(concurrency: number, rttMs?: number): Promise<Row> {
  await using bench = await countedApp(concurrency, rttMs);
  const noop = define(bench.app);
  bench.runner.start();
  const seconds = await callNoops(noop);
  return countedRow(
    bench,
    `nenc on a KV file, 1 process, concurrency ${concurrency}`,
    INVOCATIONS,
    seconds,
    rttMs,
    "32 concurrent callers; call → run → result",
  );
}

/** The binary tree of nested waits of `depth` on `concurrency` slots. */
async function nested(depth: number, concurrency: number, rttMs?: number): Promise<Row> {
  await using bench = await countedApp(concurrency, rttMs);
  const tree = defineTree(bench.app);
  bench.runner.start();
  const seconds = await runTree(tree, depth);
  return countedRow(
    bench,
    `nenc on a KV file, binary tree of nested waits, depth ${depth}, concurrency ${concurrency}`,
    treeSize(depth),
    seconds,
    rttMs,
    "each node calls 2 children and awaits both; root's call → its result",
  );
}

/** One parent calling `children` no-ops and awaiting them all, on 32 slots. */
async function fanOut(children: number): Promise<Row> {
  await using bench = await countedApp(32, undefined);
  const parent = defineFanOut(bench.app);
  bench.runner.start();
  const seconds = await runFanOut(parent, children);
  return countedRow(
    bench,
    `nenc on a KV file, fan-out: 1 parent awaits ${children} children, concurrency 32`,
    children + 1,
    seconds,
    undefined,
    "one parallelize, then the group's results(); parent's call → its result",
  );
}

async function fourProcesses(): Promise<Row> {
  const file = newFile();
  const kv = await Deno.openKv(file);
  const counter = counting(kv);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  const noop = define(app);
  const workers = Array.from({ length: 4 }, () =>
    new Promise<Written>((resolve, reject) => {
      const child = spawn(
        Deno.execPath(),
        [
          "run",
          "-A",
          "--no-check",
          new URL(import.meta.url).pathname,
          "--worker",
          file,
        ],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      let out = "";
      child.stdout.on("data", (chunk) => out += chunk);
      child.on("close", (code) =>
        code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`worker exited ${code}`)));
    }));
  // The clock starts once the four runners have sent their first heartbeat.
  while ((await app.orchestrator.store.runners()).length < 4) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const start = performance.now();
  const group = await noop.parallelize(Array.from({ length: INVOCATIONS }, (_, i) => ({ i })));
  const results = await group.results();
  const seconds = (performance.now() - start) / 1000;
  await kv.set(DONE_KEY, true);
  const written = [
    { commits: counter.commits(), bytes: counter.bytes() },
    ...await Promise.all(workers),
  ];
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
  kv.close();
  return {
    scenario: "nenc on a KV file, 4 runner processes × 32 slots",
    perSecond: Math.round(INVOCATIONS / seconds),
    seconds,
    commitsPerInvocation: written.reduce((sum, { commits }) => sum + commits, 0) / INVOCATIONS,
    bytesPerInvocation: Math.round(
      written.reduce((sum, { bytes }) => sum + bytes, 0) / INVOCATIONS,
    ),
    note: "clock starts once the 4 runners are up; one caller registers in batches; commits and " +
      "bytes of the caller and the 4 runners from their start to their stop",
  };
}

/**
 * An app on a new KV file whose task "held" has one running slot, taken by an invocation that runs
 * (on a runner of its own, 1 slot) until disposed of; and the no-op task with a 32-slot runner.
 * Its KV view counts commits and bytes, and the commits that touch `parkedIds` or a park/, wake/
 * or slot/ key.
 */
async function heldKeyApp(parkedIds: ReadonlySet<string>) {
  const handle = await Deno.openKv(newFile());
  const counter = counting(handle);
  const watch = watching(
    counter.kv,
    (key) =>
      key[2] === "park" || key[2] === "wake" || key[2] === "slot" ||
      key.some((part) => typeof part === "string" && parkedIds.has(part)),
    (key) => key[2] === "park",
  );
  const app = new Nenc({ appId: "bench", kv: watch.kv });
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const held = app.task("held", async ({ i }: { i: number }) => {
    await released;
    return i;
  }, { runningConcurrency: "task" });
  const noop = define(app);
  const holderRunner = app.runner({ concurrency: 1, pollMs: 20 });
  holderRunner.start();
  const holder = await held.call({ i: -1 });
  const runner = app.runner({ concurrency: 32, pollMs: 20 });
  const stop = async (): Promise<void> => {
    // The parked stay parked: the no-op runner stops before the key is released.
    await runner.stop();
    release();
    await holderRunner.stop();
    handle.close();
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
  return { app, held, noop, runner, counter, watch, [Symbol.asyncDispose]: stop };
}

async function parkedBacklog(parked: number): Promise<Row> {
  const parkedIds = new Set<string>();
  await using fresh = await heldKeyApp(new Set());
  await using backlog = await heldKeyApp(parkedIds);
  fresh.runner.start();
  const group = await backlog.held.parallelize(Array.from({ length: parked }, (_, i) => ({ i })));
  for (const { id } of group.invocations) parkedIds.add(id);
  // Registered with the key held and no free runner: the 32-slot runner parks them. The counts
  // (a scan of every invocation) are read once the park/ keys written say they are all parked.
  const commits = backlog.counter.commits();
  const bytes = backlog.counter.bytes();
  const parkStart = performance.now();
  backlog.runner.start();
  await waitUntil(async () => {
    if (backlog.watch.parkKeys() < parked) return false;
    const counts = await backlog.app.orchestrator.store.counts();
    return (counts.get("held")?.get(InvocationStatus.CONCURRENCY_CONTROLLED) ?? 0) === parked;
  }, {
    message: `Cannot bench: ${parked} not parked`,
    timeoutMs: 60_000 + parked * 20,
    intervalMs: 20,
  });
  const parkSeconds = (performance.now() - parkStart) / 1000;
  const parkCommits = backlog.counter.commits() - commits;
  const parkBytes = backlog.counter.bytes() - bytes;
  // Rounds alternate (ABBA), so both files see the same warm-up, the same load from elsewhere on
  // the machine and the same growing count of finished no-ops; the median of each is reported.
  const touchedBefore = backlog.watch.touched();
  const withBacklog: number[] = [];
  const without: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) without.push(await callNoops(fresh.noop));
    withBacklog.push(await callNoops(backlog.noop));
    if (round % 2 === 1) without.push(await callNoops(fresh.noop));
  }
  const touched = backlog.watch.touched() - touchedBefore;
  const seconds = median(withBacklog);
  const perSecond = Math.round(INVOCATIONS / seconds);
  const noBacklogPerSecond = Math.round(INVOCATIONS / median(without));
  return {
    scenario: `nenc on a KV file, 1 process, concurrency 32, ${parked} parked`,
    perSecond,
    seconds,
    commitsPerInvocation: parkCommits / Math.max(parked, 1),
    bytesPerInvocation: Math.round(parkBytes / Math.max(parked, 1)),
    note: `${(perSecond / noBacklogPerSecond).toFixed(2)}× of ${noBacklogPerSecond}/s with ` +
      `nothing parked (same run); parked in ${parkSeconds.toFixed(1)} s, commits and bytes ` +
      `per parked invocation; ${touched} commits touched the parked meanwhile`,
    parked,
    parkSeconds,
    noBacklogPerSecond,
    ratio: perSecond / noBacklogPerSecond,
    commitsTouchingParkedWhileWaiting: touched,
  };
}

/** A KV view that counts the entries its `list` calls read. */
function listing(kv: KvLike): { kv: KvLike; listed: () => number } {
  let listed = 0;
  return {
    listed: () => listed,
    kv: {
      get: (key) => kv.get(key),
      getMany: (keys) => kv.getMany(keys),
      list: (selector, options) =>
        (async function* () {
          for await (const entry of kv.list(selector, options)) {
            listed++;
            yield entry;
          }
        })(),
      atomic: () => kv.atomic(),
    },
  };
}

/** Calls `task` with each of `runAt`, from 32 concurrent callers. */
async function callAt(task: ReturnType<typeof define>, runAt: readonly number[]): Promise<void> {
  await Promise.all(Array.from({ length: 32 }, async (_, caller) => {
    for (let i = caller; i < runAt.length; i += 32) await task.call({ i }, { runAt: runAt[i]! });
  }));
}

/**
 * `delayed` no-ops called with `runAt` = t0 + i·spreadMs/delayed, t0 being `leadMs` after the
 * bench starts registering (every call must be made by then), run by a 32-slot runner started
 * before them, at the default pollMs; then the reads of idle polls.
 */
async function delayedStarts(delayed: number, spreadMs: number, leadMs: number): Promise<Row> {
  const handle = await Deno.openKv(newFile());
  const counter = counting(handle);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  // Date.now() in the function: the clock the store compares `runAt` with.
  const startedAt = new Float64Array(delayed).fill(NaN);
  let runs = 0;
  let allRan!: () => void;
  const ran = new Promise<void>((resolve) => allRan = resolve);
  const task = app.task("noop", ({ i }: { i: number }) => {
    startedAt[i] = Date.now();
    if (++runs === delayed) allRan();
    return i;
  });
  const runner = app.runner({ concurrency: 32 });
  let registerSeconds: number;
  let t0: number;
  let runAt: number[];
  try {
    runner.start();
    const registerStart = Date.now();
    t0 = registerStart + leadMs;
    runAt = Array.from({ length: delayed }, (_, i) => t0 + Math.floor(i * spreadMs / delayed));
    await callAt(task, runAt);
    const registered = Date.now();
    registerSeconds = (registered - registerStart) / 1000;
    if (registered >= t0) {
      throw new Error(
        `Cannot bench: registering took ${
          registered - registerStart
        } ms, not within --lead-ms ${leadMs}`,
      );
    }
    await within(ran, leadMs + spreadMs + 30_000, `${delayed} delayed invocations to run`);
  } finally {
    await runner.stop();
    handle.close();
  }
  // As many runs as invocations and none without a start: each ran once.
  if (runs !== delayed || startedAt.some(Number.isNaN)) {
    throw new Error(`Cannot bench: ${runs} runs of ${delayed} invocations, not one each`);
  }
  const late = lateness(Array.from(startedAt, (started, i) => started - runAt[i]!));
  const lastStart = Math.max(...startedAt);
  const stats = { delayed, spreadMs, pollMs: runner.pollMs, registerSeconds, ...late };
  if (late.early > 0) {
    console.log(JSON.stringify({ bench: "e2e_kv", ...stats }));
    throw new Error(`Cannot bench: ${late.early} delayed invocations started before their runAt`);
  }
  // One delayed invocation ahead against all of them: an idle runner reads the next due time
  // (one entry) either way; what must not grow is the reading with their number.
  const none = await idleReads(1);
  const ahead = await idleReads(delayed);
  const r: Row = {
    scenario: `nenc on a KV file, delayed ${delayed} over ${spreadMs / 1000} s, concurrency 32`,
    perSecond: Math.round(delayed / ((lastStart - t0) / 1000)),
    seconds: (lastStart - t0) / 1000,
    commitsPerInvocation: counter.commits() / delayed,
    bytesPerInvocation: Math.round(counter.bytes() / delayed),
    note:
      `${latenessNote(late, runner.pollMs)}; registered in ${
        registerSeconds.toFixed(1)
      } s; reads per idle poll ${none.readsPerPoll} with 1 delayed, ${ahead.readsPerPoll} ` +
      `with ${delayed} due in 1 h (${none.listedPerPoll} and ${ahead.listedPerPoll} entries ` +
      `listed; ${none.polls} and ${ahead.polls} polls in ${IDLE_MS / 1000} s, mean ${
        none.readsPerPollMean.toFixed(2)
      } and ${ahead.readsPerPollMean.toFixed(2)} with the recovery scan and heartbeat once a s)`,
    ...stats,
    idleOneDelayed: none,
    idleDelayedAhead: ahead,
  };
  if (none.readsPerPoll !== ahead.readsPerPoll || none.listedPerPoll !== ahead.listedPerPoll) {
    console.log(JSON.stringify({ bench: "e2e_kv", ...r }));
    throw new Error(
      `Cannot bench: an idle poll reads more with ${delayed} delayed (${ahead.readsPerPoll} ` +
        `reads, ${ahead.listedPerPoll} entries) than with 1 (${none.readsPerPoll}, ` +
        `${none.listedPerPoll})`,
    );
  }
  return r;
}

/**
 * The reads of each idle poll (pick-up) of a 32-slot runner at the default pollMs, in a window of
 * IDLE_MS after it settled, on a new file where `delayedAhead` invocations are due in an hour.
 */
async function idleReads(delayedAhead: number): Promise<IdleReads> {
  const handle = await Deno.openKv(newFile());
  const lists = listing(handle);
  let reads = 0;
  const kv = interceptKv(lists.kv, {
    beforeGet: () => void reads++,
    beforeGetMany: () => void reads++,
    beforeList: () => void reads++,
  });
  const app = new Nenc({ appId: "bench", kv });
  const task = define(app);
  const inAnHour = Date.now() + 3_600_000;
  await callAt(
    task,
    Array.from(
      { length: delayedAhead },
      (_, i) => inAnHour + Math.floor(i * SPREAD_MS / delayedAhead),
    ),
  );
  // Each pick-up marks the reads and entries so far: a poll's are those up to the next mark.
  const store = app.orchestrator.store;
  const claim = store.claim.bind(store);
  const marks: [number, number][] = [];
  store.claim = (request) => {
    marks.push([reads, lists.listed()]);
    return claim(request);
  };
  const runner = app.runner({ concurrency: 32 });
  let from: number;
  let to: number;
  try {
    runner.start();
    // Settled: the first heartbeat and recovery scan made, KV's empty-claim back-off (5, 10, 20,
    // 40, 80 ms) past pollMs.
    await new Promise((resolve) => setTimeout(resolve, 500));
    from = marks.length;
    await new Promise((resolve) => setTimeout(resolve, IDLE_MS));
    to = marks.length;
  } finally {
    await runner.stop();
    handle.close();
  }
  if (from === 0) throw new Error("Cannot bench: no pick-up within 500 ms of the runner's start");
  const window = marks.slice(from - 1, to);
  const perPoll = window.slice(1).map(([r], i) => r - window[i]![0]);
  const listed = window.slice(1).map(([, l], i) => l - window[i]![1]);
  if (perPoll.length === 0) throw new Error(`Cannot bench: no idle poll within ${IDLE_MS} ms`);
  return {
    delayedAhead,
    polls: perPoll.length,
    readsPerPoll: median(perPoll),
    readsPerPollMin: Math.min(...perPoll),
    readsPerPollMax: Math.max(...perPoll),
    readsPerPollMean: perPoll.reduce((sum, n) => sum + n, 0) / perPoll.length,
    listedPerPoll: median(listed),
    listedPerPollMax: Math.max(...listed),
  };
}

/** The table of the `--rtt` rows. */
function printRoundTrips(rows: readonly Row[]): void {
  console.log(
    "| scenario | invocations | seconds | round trips in the wall time | invocations / round trip " +
      "| round trips made / invocation | commits / invocation | bytes / invocation |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of rows) {
    console.log(
      `| ${r.scenario} | ${r.invocations} | ${r.seconds.toFixed(2)} | ${
        r.roundTripsInWallTime!.toFixed(0)
      } | ${r.invocationsPerRoundTrip!.toFixed(2)} | ${
        r.roundTripsMadePerInvocation!.toFixed(1)
      } | ${r.commitsPerInvocation!.toFixed(2)} | ${r.bytesPerInvocation} |`,
    );
  }
}

/** The JSON line of a row, with its raw baseline (if any). */
function printJson(r: Row, baseline: Row | undefined): void {
  console.log(
    JSON.stringify({
      bench: "e2e_kv",
      ...r,
      ...(baseline === undefined ? {} : {
        baseline: baseline.scenario,
        baselinePerSecond: baseline.perSecond,
        ratioToRaw: r.perSecond / baseline.perSecond,
      }),
    }),
  );
}

/** The table of the rows, each next to its raw baseline (if any). */
function printTable(rows: readonly [Row, Row | undefined][]): void {
  console.log(
    "| scenario | per second | × raw commits, same layout | commits / invocation | bytes / invocation |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const [r, baseline] of rows) {
    // The parked and delayed rows' table lines carry their notes: the rate with nothing parked, the
    // lateness and the idle reads, and what the commits and bytes columns count there.
    const label = r.ratio === undefined && r.delayed === undefined
      ? r.scenario
      : `${r.scenario}: ${r.note}`;
    const ratio = baseline === undefined
      ? "n/a: set by runAt"
      : `${(r.perSecond / baseline.perSecond).toFixed(3)}×`;
    console.log(
      `| ${label} | ${r.perSecond} | ${ratio} | ${
        r.commitsPerInvocation?.toFixed(2)
      } | ${r.bytesPerInvocation} |`,
    );
  }
}

if (RTT_MS !== undefined) {
  const rows: Row[] = [];
  for (const measure of [() => oneProcess(32, RTT_MS), () => nested(RTT_DEPTH, 8, RTT_MS)]) {
    rows.push(await measure());
    printJson(rows.at(-1)!, undefined);
  }
  printRoundTrips(rows);
} else {
  // Each nenc row is set against the raw rate of its process layout sampled just before and just
  // after it (their mean): the machine is shared, and its commit rate moves by several times
  // within minutes. Each JSON line is printed once its row and baseline are known; the table last.
  const rows: [Row, Row | undefined][] = [];
  const add = (r: Row, baseline: Row | undefined): void => {
    rows.push([r, baseline]);
    printJson(r, baseline);
  };
  let before: Row;
  const startRaw = async (sample: () => Promise<Row>): Promise<void> => {
    before = await sample();
    add(before, before);
  };
  const nextToRaw = async (measure: () => Promise<Row>, sample: () => Promise<Row>) => {
    const r = await measure();
    const after = await sample();
    add(r, {
      scenario: `${after.scenario}, mean of the samples before and after`,
      perSecond: Math.round((before.perSecond + after.perSecond) / 2),
      seconds: before.seconds + after.seconds,
      note: after.note,
    });
    add(after, after);
    before = after;
  };
  const raw = (): Promise<Row> => rawCommits(32);
  await startRaw(raw);
  for (const concurrency of [1, 10, 32]) await nextToRaw(() => oneProcess(concurrency), raw);
  await nextToRaw(() => nested(TREE_DEPTH, 8), raw);
  await nextToRaw(() => fanOut(FAN_OUT), raw);
  await nextToRaw(() => parkedBacklog(PARKED), raw);
  // The delayed row's rate is set by its runAt times: no raw baseline.
  add(await delayedStarts(DELAYED, SPREAD_MS, LEAD_MS), undefined);
  await startRaw(rawCommitsFourProcesses);
  await nextToRaw(fourProcesses, rawCommitsFourProcesses);
  printTable(rows);
}
if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
