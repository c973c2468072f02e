/**
 * End-to-end load on the Deno KV backend, on a file (`deno task bench:kv`): no-op invocations
 * through call → orchestrator → runner → result at runner concurrency 1, 10 and 32 in one
 * process, and with 4 runner processes; each next to the raw rate of concurrent atomic commits on
 * the same kind of file from the same process layout (1 process × 32 writers, 4 processes × 8),
 * measured in the same run. Also KV commits and bytes written per invocation.
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
 * Prints a table and one JSON line per row.
 *
 * Usage: deno run -A bench/e2e_kv.ts [--invocations N] [--parked N] [--rounds N] [--delayed N]
 *   [--spread-ms MS] [--lead-ms MS] [--idle-ms MS]
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

// A worker process of the 4-process row: runs a runner until the main process says done (one
// point read per 50 ms: the stop signal must not load the store it measures).
if (values.worker !== undefined) {
  const kv = await Deno.openKv(values.worker);
  const app = new Nenc({ appId: "bench", kv });
  define(app);
  const runner = app.runner({ concurrency: 32, pollMs: 20 });
  runner.start();
  while ((await kv.get(DONE_KEY)).versionstamp === null) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await runner.stop();
  kv.close();
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

async function oneProcess(concurrency: number): Promise<Row> {
  const file = newFile();
  const handle = await Deno.openKv(file);
  const counter = counting(handle);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  const noop = define(app);
  await using runner = app.runner({ concurrency, pollMs: 20 });
  runner.start();
  const seconds = await callNoops(noop);
  await runner.stop();
  handle.close();
  return {
    scenario: `nenc on a KV file, 1 process, concurrency ${concurrency}`,
    perSecond: Math.round(INVOCATIONS / seconds),
    seconds,
    commitsPerInvocation: counter.commits() / INVOCATIONS,
    bytesPerInvocation: Math.round(counter.bytes() / INVOCATIONS),
    note: "32 concurrent callers; call → run → result",
  };
}

async function fourProcesses(): Promise<Row> {
  const file = newFile();
  const kv = await Deno.openKv(file);
  const app = new Nenc({ appId: "bench", kv });
  const noop = define(app);
  const workers = Array.from({ length: 4 }, () =>
    new Promise<void>((resolve, reject) => {
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
        { stdio: "inherit" },
      );
      child.on("close", (code) =>
        code === 0 ? resolve() : reject(new Error(`worker exited ${code}`)));
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
  await Promise.all(workers);
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
  kv.close();
  return {
    scenario: "nenc on a KV file, 4 runner processes × 32 slots",
    perSecond: Math.round(INVOCATIONS / seconds),
    seconds,
    note: "clock starts once the 4 runners are up; one caller registers in batches",
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

// Each nenc row is compared with the raw rate of the same process layout, measured in this run.
const raw = await rawCommits(32);
const rawFour = await rawCommitsFourProcesses();
const rows: [Row, Row | undefined][] = [[raw, raw]];
for (const concurrency of [1, 10, 32]) rows.push([await oneProcess(concurrency), raw]);
rows.push([await parkedBacklog(PARKED), raw]);
// The delayed row's rate is set by its runAt times: no raw baseline.
rows.push([await delayedStarts(DELAYED, SPREAD_MS, LEAD_MS), undefined]);
rows.push([rawFour, rawFour], [await fourProcesses(), rawFour]);

console.log(
  "| scenario | per second | % of raw commits, same layout | commits / invocation | bytes / invocation |",
);
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const [r, baseline] of rows) {
  // The parked and delayed rows' table lines carry their notes: the rate with nothing parked, the
  // lateness and the idle reads, and what the commits and bytes columns count there.
  const label = r.ratio === undefined && r.delayed === undefined
    ? r.scenario
    : `${r.scenario}: ${r.note}`;
  const percent = baseline === undefined
    ? ""
    : `${(100 * r.perSecond / baseline.perSecond).toFixed(1)} %`;
  console.log(
    `| ${label} | ${r.perSecond} | ${percent} | ${r.commitsPerInvocation?.toFixed(1) ?? ""} | ${
      r.bytesPerInvocation ?? ""
    } |`,
  );
}
for (const [r, baseline] of rows) {
  console.log(
    JSON.stringify({
      bench: "e2e_kv",
      ...r,
      ...(baseline === undefined ? {} : {
        baseline: baseline.scenario,
        percentOfRaw: 100 * r.perSecond / baseline.perSecond,
      }),
    }),
  );
}
if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
