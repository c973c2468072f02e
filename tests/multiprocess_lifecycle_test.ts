/**
 * The lifecycle of SPEC §7.1 across processes: real `deno` processes
 * (`_mp_lifecycle_worker.ts`) on one Deno KV file in a temp dir, the test process being one more
 * (it calls, cancels and looks). Times are `Date.now()` of each process: one clock on one machine.
 * Workers stop by themselves (when the test asks, or at their own deadline); the test kills any
 * that outlive theirs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { env } from "node:process";
import { Nenc } from "../core/app.ts";
import { CanceledError } from "../core/errors.ts";
import { isValidHistory } from "../core/status.ts";
import { openTestKv, type TestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
const onlyDeno = deno === undefined ? "multi-process tests run under deno test" : false;
const workerFile = new URL("./_mp_lifecycle_worker.ts", import.meta.url).pathname;
/** `NENC_TEST_VERBOSE=1` prints what the tests measured. */
const report = env.NENC_TEST_VERBOSE ? (...data: unknown[]) => console.log(...data) : () => {};

interface Worker {
  readonly tag: string;
  readonly exit: Promise<{ code: number | null; stdout: string; stderr: string }>;
  readonly exited: () => boolean;
  kill(): void;
}

/** A KV file and a log dir in a temp dir; the workers started through it are stopped at the end. */
interface Run {
  readonly kv: TestKv;
  readonly app: Nenc;
  start(mode: string, tag: string): Worker;
  /** Asks the workers to stop, waits for them to exit (code 0) and returns their outputs. */
  stop<T>(...workers: Worker[]): Promise<T[]>;
  /** A value a worker put under ["mp", …], or `undefined`. */
  read<T>(...key: string[]): Promise<T | undefined>;
  /** The executions a worker logged. */
  logged<T>(tag: string): T[];
}

async function withWorkers(fn: (run: Run) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-mp-lifecycle-"));
  const path = join(directory, "nenc.db");
  const kv = await openTestKv(path);
  const app = new Nenc({ appId: "mp", kv, orchestrator: { runnerTimeoutSeconds: 60 } });
  const workers: Worker[] = [];
  const decoder = new TextDecoder();
  const requestStop = async (tag: string): Promise<void> => {
    await kv.atomic().set(["mp", "stop", tag], new Uint8Array([1])).commit();
  };
  const run: Run = {
    kv,
    app,
    start(mode, tag) {
      const child = spawn(
        deno!.execPath(),
        ["run", "-A", "--no-check", workerFile, mode, path, directory, tag],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let stdout = "";
      let stderr = "";
      let exited = false;
      child.stdout.on("data", (chunk) => stdout += chunk);
      child.stderr.on("data", (chunk) => stderr += chunk);
      // The worker's own deadline is 45 s; this one is for a worker that hangs anyway.
      const guard = setTimeout(() => child.kill("SIGKILL"), 55_000);
      const exit = new Promise<{ code: number | null; stdout: string; stderr: string }>((
        resolve,
      ) =>
        child.on("close", (code) => {
          exited = true;
          clearTimeout(guard);
          resolve({ code, stdout, stderr });
        })
      );
      const worker = { tag, exit, exited: () => exited, kill: () => child.kill("SIGKILL") };
      workers.push(worker);
      return worker;
    },
    async stop<T>(...stopping: Worker[]): Promise<T[]> {
      for (const { tag } of stopping) await requestStop(tag);
      const exits = await Promise.all(
        stopping.map(({ tag, exit }) => within(exit, DEADLINE_MS, `worker ${tag} to exit`)),
      );
      return exits.map(({ code, stdout, stderr }, i) => {
        assert.equal(code, 0, `worker ${stopping[i]!.tag} failed:\n${stderr}`);
        return JSON.parse(stdout.trim().split("\n").at(-1)!) as T;
      });
    },
    async read<T>(...key: string[]): Promise<T | undefined> {
      const entry = await kv.get(["mp", ...key]);
      return entry.versionstamp === null
        ? undefined
        : JSON.parse(decoder.decode(entry.value as Uint8Array)) as T;
    },
    logged<T>(tag: string): T[] {
      const file = join(directory, `${tag}.jsonl`);
      if (!existsSync(file)) return [];
      return readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((line) =>
        JSON.parse(line) as T
      );
    },
  };
  try {
    await fn(run);
  } finally {
    // A failed test still ends its workers: asked first, killed when they do not go.
    const left = workers.filter((worker) => !worker.exited());
    for (const { tag } of left) {
      await requestStop(tag).catch(() => {});
    }
    await Promise.all(
      left.map((worker) => within(worker.exit, 10_000, "").catch(() => worker.kill())),
    );
    await Promise.all(left.map((worker) => worker.exit));
    kv.close();
    rmSync(directory, { recursive: true, force: true });
  }
}

test(
  "a cancel from one process aborts the function running in another within 1 s, rejects result() with CanceledError and frees the key's slot there",
  { skip: onlyDeno },
  async () => {
    await withWorkers(async (run) => {
      // The test process calls and cancels (process A); the worker B runs, with one slot.
      const hold = run.app.task(
        "hold",
        ({ hold }: { key: string; hold: boolean }) => hold ? "never here" : "nor here",
        { runningConcurrency: "keys", keyArguments: ["key"] },
      );
      const b = run.start("cancel", "B");
      const first = await hold.call({ key: "k", hold: true });
      await waitUntil(async () => await run.read("started", first.id) !== undefined, {
        message: "worker B never started the first invocation",
        intervalMs: 10,
      });
      assert.equal(await first.status(), "running");

      assert.equal(await first.cancel({ reason: "the test cancels it" }), true);
      const canceledAt = Date.now();
      const error = await within(first.result().catch((e: unknown) => e), 1_000, "result()");
      const rejectedMs = Date.now() - canceledAt;
      assert.ok(error instanceof CanceledError, `result() rejected with ${error}`);
      assert.equal(error.reason, "the test cancels it");
      assert.equal(await first.status(), "canceled");

      type Aborted = { at: number | null; name: string | null; message: string | null };
      let aborted: Aborted | undefined;
      await waitUntil(
        async () => (aborted = await run.read<Aborted>("aborted", first.id)) !== undefined,
        {
          message: "worker B never reported the abort",
          intervalMs: 10,
        },
      );
      assert.notEqual(aborted!.at, null, "the function's signal never aborted (it waited 20 s)");
      const latencyMs = aborted!.at! - canceledAt;
      report(`cancel → abort in B: ${latencyMs} ms; result() rejected after ${rejectedMs} ms`);
      assert.ok(
        latencyMs < 1_000,
        `B's function saw its signal abort ${latencyMs} ms after cancel()`,
      );
      assert.equal(aborted!.name, "CanceledError");
      assert.match(aborted!.message!, /the test cancels it/);

      // B's only slot, and key k's running-concurrency slot, are free again: the same key runs
      // there (no other runner exists).
      const second = await hold.call({ key: "k", hold: false });
      assert.equal(await within(second.result(), DEADLINE_MS, "the second invocation"), "B");
      assert.equal(await first.status(), "canceled");
      const history = await first.history();
      assert.ok(isValidHistory(history), history.map((entry) => entry.status).join(" → "));
      assert.ok(isValidHistory(await second.history()));
      await run.stop(b);
    });
  },
);

test(
  "drain() slices in one process beside a continuous runner in another run a keys-concurrency task with 0 overlapping executions of a key, each invocation succeeding exactly once",
  { skip: onlyDeno },
  async () => {
    await withWorkers(async (run) => {
      const work = run.app.task(
        "work",
        ({ i }: { key: string; i: number; ms: number }) => i,
        { runningConcurrency: "keys", keyArguments: ["key"] },
      );
      // 60 invocations over 6 keys, 150–390 ms each: longer than many a slice's grace (drains of
      // 300 ms with 100 ms of grace), so some are aborted and handed back mid-run.
      const group = await work.parallelize(
        Array.from({ length: 60 }, (_, i) => ({ key: `k${i % 6}`, i, ms: 150 + (i * 37) % 240 })),
      );
      const continuous = run.start("continuous", "C");
      const drains = run.start("drain", "D");
      await waitUntil(
        async () =>
          ((await run.app.orchestrator.store.counts()).get("work")?.get("success") ?? 0) === 60,
        { message: "the 60 invocations did not all succeed", intervalMs: 50 },
      );
      const [, slices] = await run.stop<{ slices: number; timedOut: number; finished: number }>(
        continuous,
        drains,
      );

      type Execution = {
        key: string;
        i: number;
        start: number;
        end: number;
        aborted: boolean;
        process: string;
      };
      const executions = [...run.logged<Execution>("C"), ...run.logged<Execution>("D")];
      const overlaps: string[] = [];
      for (let k = 0; k < 6; k++) {
        const ofKey = executions.filter((e) => e.key === `k${k}`).sort((a, b) => a.start - b.start);
        for (let j = 1; j < ofKey.length; j++) {
          const [before, after] = [ofKey[j - 1]!, ofKey[j]!];
          if (after.start < before.end) {
            overlaps.push(
              `k${k}: #${before.i} (${before.process}) and #${after.i} (${after.process})`,
            );
          }
        }
      }
      const inDrains = executions.filter((e) => e.process === "D");
      const aborted = executions.filter((e) => e.aborted);
      report(
        `drain slices: ${slices!.slices} (${
          slices!.timedOut
        } timed out), executions: ${executions.length} (${inDrains.length} in drains, ${aborted.length} aborted and handed back)`,
      );
      assert.deepEqual(overlaps, [], "executions of one key overlapped");
      assert.ok(inDrains.length > 0, "the drains ran nothing: the test proves nothing");

      for (const [i, invocation] of group.invocations.entries()) {
        const history = await invocation.history();
        const statuses = history.map((entry) => entry.status);
        assert.ok(isValidHistory(history), statuses.join(" → "));
        assert.equal(
          statuses.filter((status) => status === "success").length,
          1,
          statuses.join(" → "),
        );
        assert.equal(await invocation.result(), i);
        // Every execution of it but the one that counted was aborted (a hand-back).
        const completed = executions.filter((e) => e.i === i && !e.aborted);
        assert.equal(completed.length, 1, `unaborted executions of #${i}: ${completed.length}`);
      }
    });
  },
);

test(
  "in a rolling deploy, invocations of a task the old worker lacks stay registered until a worker that defines it starts, then each succeeds exactly once",
  { skip: onlyDeno },
  async () => {
    await withWorkers(async (run) => {
      const other = run.app.task("other", ({ i }: { i: number }) => i);
      const deployed = run.app.task("deployed", ({ i }: { i: number }) => 2 * i);
      const old = run.start("deploy-old", "old");
      const group = await deployed.parallelize(Array.from({ length: 10 }, (_, i) => ({ i })));
      // The old worker is alive and picking up: it runs what it knows.
      const known = await other.parallelize([{ i: 1 }, { i: 2 }, { i: 3 }]);
      assert.deepEqual(await within(known.results(), DEADLINE_MS, "the old worker's work"), [
        1,
        2,
        3,
      ]);
      // …and polls some fifty times more (every 20 ms) past the invocations it cannot run.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      for (const invocation of group.invocations) {
        assert.equal(await invocation.status(), "registered");
        assert.deepEqual((await invocation.history()).map((entry) => entry.status), ["registered"]);
      }

      // The new version starts while the old one still runs.
      const fresh = run.start("deploy-new", "new");
      assert.deepEqual(
        await within(group.results(), DEADLINE_MS, "the deployed task's results"),
        Array.from({ length: 10 }, (_, i) => 2 * i),
      );
      await run.stop(old, fresh);
      type Ran = { i: number; runnerId: string };
      const ran = run.logged<Ran>("new");
      for (const [i, invocation] of group.invocations.entries()) {
        const history = await invocation.history();
        const statuses = history.map((entry) => entry.status);
        assert.ok(isValidHistory(history), statuses.join(" → "));
        assert.equal(statuses.filter((status) => status === "success").length, 1);
        assert.equal(statuses.includes("failed"), false, statuses.join(" → "));
        assert.deepEqual(ran.filter((r) => r.i === i).map((r) => r.runnerId), ["new"]);
      }
    });
  },
);
