/**
 * End-to-end load on the Deno KV backend, on a file (`deno task bench:kv`): no-op invocations
 * through call → orchestrator → runner → result at runner concurrency 1, 10 and 32 in one
 * process, and with 4 runner processes; each next to the raw rate of concurrent atomic commits on
 * the same kind of file from the same process layout (1 process × 32 writers, 4 processes × 8),
 * measured in the same run. Also KV commits and bytes written per invocation.
 * Prints a table and one JSON line per row.
 *
 * Usage: deno run -A bench/e2e_kv.ts [--invocations N]
 *
 * @module
 */

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Nenc } from "../core/app.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { interceptKv } from "../tests/_kv.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    invocations: { type: "string", default: "2000" },
    worker: { type: "string" },
    "raw-worker": { type: "string" },
  },
});
const INVOCATIONS = Number(values.invocations);
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

async function oneProcess(concurrency: number): Promise<Row> {
  const file = newFile();
  const handle = await Deno.openKv(file);
  const counter = counting(handle);
  const app = new Nenc({ appId: "bench", kv: counter.kv });
  const noop = define(app);
  await using runner = app.runner({ concurrency, pollMs: 20 });
  runner.start();
  const start = performance.now();
  // 32 concurrent callers, as the raw rate has 32 concurrent writers.
  const invocations: Awaited<ReturnType<typeof noop.call>>[] = [];
  await Promise.all(Array.from({ length: 32 }, async (_, caller) => {
    for (let i = caller; i < INVOCATIONS; i += 32) invocations[i] = await noop.call({ i });
  }));
  const results = await Promise.all(invocations.map((invocation) => invocation.result()));
  const seconds = (performance.now() - start) / 1000;
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
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

// Each nenc row is compared with the raw rate of the same process layout, measured in this run.
const raw = await rawCommits(32);
const rawFour = await rawCommitsFourProcesses();
const rows: [Row, Row][] = [[raw, raw]];
for (const concurrency of [1, 10, 32]) rows.push([await oneProcess(concurrency), raw]);
rows.push([rawFour, rawFour], [await fourProcesses(), rawFour]);

console.log(
  "| scenario | per second | % of raw commits, same layout | commits / invocation | bytes / invocation |",
);
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const [r, baseline] of rows) {
  console.log(
    `| ${r.scenario} | ${r.perSecond} | ${
      (100 * r.perSecond / baseline.perSecond).toFixed(1)
    } % | ${r.commitsPerInvocation?.toFixed(1) ?? ""} | ${r.bytesPerInvocation ?? ""} |`,
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
