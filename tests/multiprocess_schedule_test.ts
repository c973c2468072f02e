/**
 * Cron schedules across processes (SPEC §7.3): real `deno` (and one `bun`) runner processes
 * (`_mp_schedule_worker.ts`) on one Deno KV file in a temp dir, each storing the same schedule
 * (every second) and racing to fire its ticks. What fired is read from the store (the invocations
 * and their ticks), what ran from the workers' logs. Workers stop by themselves; the test kills
 * any that outlive their deadline.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { env } from "node:process";
import { Nenc } from "../core/app.ts";
import type { InvocationRecord } from "../core/store.ts";
import { openTestKv } from "./_kv.ts";
import { waitUntil, within } from "./_deadline.ts";

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
const onlyDeno = deno === undefined ? "multi-process tests run under deno test" : false;
// The pinned Bun: from PATH (CI installs it), else fetched from npm by npx.
const bun: readonly string[] = spawnSync("bun", ["--version"]).status === 0
  ? ["bun"]
  : ["npx", "-y", "bun@1.4.5"];
const workerFile = new URL("./_mp_schedule_worker.ts", import.meta.url).pathname;
/** `NENC_TEST_VERBOSE=1` prints what the tests measured. */
const report = env.NENC_TEST_VERBOSE ? (...data: unknown[]) => console.log(...data) : () => {};

interface Worker {
  readonly exit: Promise<{ code: number | null; stderr: string }>;
  kill(): void;
}

/** Starts a runner process `tag` for `seconds` on the KV file in `directory`. */
function start(runtime: "deno" | "bun", directory: string, tag: string, seconds: number): Worker {
  const args = [join(directory, "nenc.db"), tag, String(seconds), directory];
  const [command, ...argv] = runtime === "deno"
    ? [deno!.execPath(), "run", "-A", "--no-check", workerFile, ...args]
    : [...bun, "run", workerFile, ...args];
  const child = spawn(command!, argv, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => stderr += chunk);
  const guard = setTimeout(() => child.kill("SIGKILL"), (seconds + 30) * 1_000);
  const exit = new Promise<{ code: number | null; stderr: string }>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(guard);
      resolve({ code, stderr });
    })
  );
  return { exit, kill: () => child.kill("SIGKILL") };
}

/** The ticks a worker's runs logged. */
function runsOf(directory: string, tag: string): number[] {
  const file = join(directory, `${tag}.log`);
  return existsSync(file) ? readFileSync(file, "utf8").split("\n").filter(Boolean).map(Number) : [];
}

/** The app's invocations of the schedule's task, oldest tick first. */
async function fired(app: Nenc): Promise<InvocationRecord[]> {
  const records: InvocationRecord[] = [];
  for await (const record of app.orchestrator.store.find({ taskId: "beat" })) records.push(record);
  return records.sort((a, b) => a.scheduledAtMs! - b.scheduledAtMs!);
}

/** The ticks fired, as seconds after the first: `[0, 1, …, n - 1]` when each fired once. */
function secondsOf(records: readonly InvocationRecord[]): number[] {
  const first = records[0]?.scheduledAtMs ?? 0;
  return records.map((record) => (record.scheduledAtMs! - first) / 1_000);
}

const each = (count: number): number[] => Array.from({ length: count }, (_, i) => i);

async function withKvFile(fn: (directory: string, app: Nenc) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-mp-cron-"));
  const kv = await openTestKv(join(directory, "nenc.db"));
  try {
    await fn(directory, new Nenc({ appId: "mp-cron", kv }));
  } finally {
    kv.close();
    rmSync(directory, { recursive: true, force: true });
  }
}

test(
  "4 runner processes (one of them Bun) on one KV file, a schedule every second for 20 s: each tick from the first to the last fired has exactly one invocation, and each ran once",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (directory, app) => {
      const tags = ["bun", "deno-1", "deno-2", "deno-3"];
      const workers = tags.map((tag) => start(tag === "bun" ? "bun" : "deno", directory, tag, 20));
      for (
        const [i, { code, stderr }] of (await Promise.all(workers.map((w) => w.exit))).entries()
      ) {
        assert.equal(code, 0, `worker ${tags[i]} failed:\n${stderr}`);
      }
      const records = await fired(app);
      report(`${records.length} ticks fired`);
      assert.ok(records.length >= 15, `only ${records.length} ticks fired in 20 s`);
      assert.deepEqual(secondsOf(records), each(records.length), "ticks fired twice or skipped");
      const runs = tags.flatMap((tag) => runsOf(directory, tag));
      for (const record of records) {
        const count = runs.filter((tickMs) => tickMs === record.scheduledAtMs).length;
        // The last ticks may have fired just before the last runner stopped, and not run.
        assert.equal(
          count,
          record.status === "success" ? 1 : 0,
          `runs of tick ${record.scheduledAtMs}`,
        );
      }
      const firers = new Set(
        await Promise.all(
          records.map(async (record) =>
            (await app.orchestrator.store.history(record.id))[0]!.runnerId
          ),
        ),
      );
      report(`fired by ${[...firers].join(", ")}`);
      const [schedule] = await app.orchestrator.store.schedules();
      assert.equal(schedule?.lastTickMs, records.at(-1)!.scheduledAtMs);
      assert.equal(schedule?.lastInvocationId, records.at(-1)!.id);
    });
  },
);

test(
  "kill -9 of the runner process that fired the last tick: the other fires every tick after it, each once, with no gap",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (directory, app) => {
      const workers = new Map([
        ["deno-1", start("deno", directory, "deno-1", 15)],
        ["deno-2", start("deno", directory, "deno-2", 15)],
      ]);
      try {
        await waitUntil(async () => (await fired(app)).length >= 3, {
          message: "3 ticks never fired",
          intervalMs: 50,
        });
        const last = (await fired(app)).at(-1)!;
        const firer = (await app.orchestrator.store.history(last.id))[0]!.runnerId!;
        const survivor = [...workers.keys()].find((tag) => tag !== firer)!;
        workers.get(firer)!.kill();
        const killed = await within(workers.get(firer)!.exit, 10_000, "the killed runner's exit");
        assert.equal(killed.code, null, "the killed runner exited by itself");
        const killedAt = Date.now();
        await waitUntil(async () => (await fired(app)).at(-1)!.scheduledAtMs! >= killedAt + 3_000, {
          message: "no tick fired 3 s after the kill",
          intervalMs: 50,
        });
        const { code, stderr } = await within(workers.get(survivor)!.exit, 30_000, "the survivor");
        assert.equal(code, 0, `the survivor failed:\n${stderr}`);
        const records = await fired(app);
        assert.deepEqual(secondsOf(records), each(records.length), "ticks fired twice or skipped");
        const after = records.filter((record) => record.scheduledAtMs! > killedAt);
        assert.ok(after.length >= 3);
        for (const record of after) {
          const [registered] = await app.orchestrator.store.history(record.id);
          assert.equal(registered!.runnerId, survivor, `tick ${record.scheduledAtMs}`);
        }
        report(`${records.length} ticks, ${after.length} after the kill of ${firer}`);
      } finally {
        for (const worker of workers.values()) worker.kill();
        await Promise.all([...workers.values()].map((worker) => worker.exit));
      }
    });
  },
);
