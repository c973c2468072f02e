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
 * Prints a table and one JSON line per row.
 *
 * Usage: deno run -A bench/e2e_kv.ts [--invocations N] [--parked N] [--rounds N]
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
import { interceptKv } from "../tests/_kv.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    invocations: { type: "string", default: "2000" },
    parked: { type: "string", default: "10000" },
    rounds: { type: "string", default: "5" },
    worker: { type: "string" },
    "raw-worker": { type: "string" },
  },
});
const INVOCATIONS = Number(values.invocations);
const PARKED = Number(values.parked);
const ROUNDS = Number(values.rounds);
const directory = mkdtempSync(join(tmpdir(), "nenc-bench-kv-"));
let files = 0;
const newFile = (): string => join(directory, `${++files}.db`);

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

interface Row {
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

/** Polls `check` every 20 ms until it holds; throws after `ms`, so a stuck bench fails, not hangs. */
async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + ms;
  while (!await check()) {
    if (performance.now() > deadline) throw new Error(`Cannot bench: ${what} within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
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
    await until(
      "the holder runs",
      10_000,
      async () => await holder.status() === InvocationStatus.RUNNING,
    );
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
  await until(
    `${parked} parked`,
    60_000 + parked * 20,
    async () => {
      if (backlog.watch.parkKeys() < parked) return false;
      const counts = await backlog.app.orchestrator.store.counts();
      return (counts.get("held")?.get(InvocationStatus.CONCURRENCY_CONTROLLED) ?? 0) === parked;
    },
  );
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

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

// Each nenc row is compared with the raw rate of the same process layout, measured in this run.
const raw = await rawCommits(32);
const rawFour = await rawCommitsFourProcesses();
const rows: [Row, Row][] = [[raw, raw]];
for (const concurrency of [1, 10, 32]) rows.push([await oneProcess(concurrency), raw]);
rows.push([await parkedBacklog(PARKED), raw]);
rows.push([rawFour, rawFour], [await fourProcesses(), rawFour]);

console.log(
  "| scenario | per second | % of raw commits, same layout | commits / invocation | bytes / invocation |",
);
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const [r, baseline] of rows) {
  // The parked row's table line carries its note: the rate with nothing parked, and what the
  // commits and bytes columns count there.
  const label = r.ratio === undefined ? r.scenario : `${r.scenario}: ${r.note}`;
  console.log(
    `| ${label} | ${r.perSecond} | ${(100 * r.perSecond / baseline.perSecond).toFixed(1)} % | ${
      r.commitsPerInvocation?.toFixed(1) ?? ""
    } | ${r.bytesPerInvocation ?? ""} |`,
  );
}
for (const [r, baseline] of rows) {
  console.log(
    JSON.stringify({
      bench: "e2e_kv",
      ...r,
      baseline: baseline.scenario,
      percentOfRaw: 100 * r.perSecond / baseline.perSecond,
    }),
  );
}
rmSync(directory, { recursive: true, force: true });
