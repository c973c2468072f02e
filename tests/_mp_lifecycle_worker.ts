/**
 * A worker process for the lifecycle tests across processes (`multiprocess_lifecycle_test.ts`):
 * `deno run -A tests/_mp_lifecycle_worker.ts <mode> <kv file> <log dir> <tag>`.
 *
 * Every mode runs a runner (`drain`: a runner per slice) until the test sets `["mp", "stop", tag]`
 * in the KV, or until its own deadline; then it stops and exits by itself, printing one JSON line.
 * Task functions report what they saw with `Date.now()` timestamps (one clock for every process
 * of the machine): to the KV under `["mp", …]` (JSON bytes), and to `<log dir>/<tag>.jsonl`, one
 * line per execution.
 */
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import type { TaskContext } from "../core/task.ts";
import { openTestKv } from "./_kv.ts";

const [mode, path, dir, tag] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ??
  (await import("node:process")).argv.slice(2);
if (mode === undefined || path === undefined || dir === undefined || tag === undefined) {
  throw new Error("usage: _mp_lifecycle_worker.ts <mode> <kv file> <log dir> <tag>");
}
/** Whatever happens, this process stops by itself after this long. */
const deadline = Date.now() + 45_000;
const kv = await openTestKv(path);
const encoder = new TextEncoder();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function put(key: string[], value: unknown): Promise<void> {
  for (let tries = 0;; tries++) {
    try {
      await kv.atomic().set(["mp", ...key], encoder.encode(JSON.stringify(value))).commit();
      return;
    } catch (error) {
      // Several processes on one file: a commit can throw "database is locked"; it was not applied.
      if (!/database is locked/i.test(String(error)) || tries > 100) throw error;
      await sleep(Math.random() * 5);
    }
  }
}

function log(entry: Record<string, unknown>): void {
  appendFileSync(join(dir!, `${tag}.jsonl`), JSON.stringify({ ...entry, process: tag }) + "\n");
}

/** Resolves to the time the signal aborted, or `undefined` after `ms`. */
function abortedWithin(signal: AbortSignal, ms: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(Date.now());
    const timer = setTimeout(() => resolve(undefined), ms);
    signal.addEventListener("abort", () => {
      const at = Date.now();
      clearTimeout(timer);
      resolve(at);
    }, { once: true });
  });
}

async function stopRequested(): Promise<boolean> {
  return (await kv.get(["mp", "stop", tag!])).versionstamp !== null;
}

async function untilStopRequested(): Promise<void> {
  while (Date.now() < deadline && !await stopRequested()) await sleep(50);
}

// No recovery in these tests: a runner is taken for dead only after 60 s without a heartbeat, so
// a live runner slowed down by a loaded machine is never recovered (and its work run twice).
const app = new Nenc({ appId: "mp", kv, orchestrator: { runnerTimeoutSeconds: 60 } });
let output: unknown = null;

switch (mode) {
  case "cancel": {
    // One slot. `hold` waits for its signal and reports when it aborted, and why; without `hold`
    // it answers with the id of the runner that ran it.
    app.task("hold", async ({ hold }: { key: string; hold: boolean }, ctx: TaskContext) => {
      if (!hold) return ctx.runnerId;
      await put(["started", ctx.invocationId], { at: Date.now() });
      const at = await abortedWithin(ctx.signal, 20_000);
      const reason = ctx.signal.reason as Error | undefined;
      await put(["aborted", ctx.invocationId], {
        at: at ?? null,
        name: reason?.name ?? null,
        message: reason?.message ?? null,
      });
      return "returned after its abort";
    }, { runningConcurrency: "keys", keyArguments: ["key"] });
    const runner = app.runner({ runnerId: tag, concurrency: 1, pollMs: 100, heartbeatMs: 500 });
    runner.start();
    await untilStopRequested();
    await runner.stop({ graceMs: 1_000 });
    output = { finished: runner.finished };
    break;
  }
  case "continuous":
  case "drain": {
    // `work` takes `ms` and honours its signal: each execution logs its own start and end.
    app.task("work", async ({ key, i, ms }: { key: string; i: number; ms: number }, ctx) => {
      const start = Date.now();
      const abortedAt = await abortedWithin(ctx.signal, ms);
      const end = Date.now();
      log({ key, i, invocationId: ctx.invocationId, start, end, aborted: abortedAt !== undefined });
      ctx.signal.throwIfAborted();
      return i;
    }, { runningConcurrency: "keys", keyArguments: ["key"] });
    const options = { concurrency: 3, pollMs: 20, heartbeatMs: 200 };
    if (mode === "continuous") {
      const runner = app.runner({ ...options, runnerId: tag });
      runner.start();
      await untilStopRequested();
      await runner.stop({ graceMs: 1_000 });
      output = { finished: runner.finished };
      break;
    }
    // The Deno Deploy pattern: short drains, one runner each, as a cron or a request would.
    let slices = 0;
    let timedOut = 0;
    let finished = 0;
    while (Date.now() < deadline && !await stopRequested()) {
      const report = await app.runner({ ...options, runnerId: `${tag}-${slices}` })
        .drain({ maxMs: 300, graceMs: 100 });
      slices++;
      if (report.timedOut) timedOut++;
      finished += report.invocations;
      await sleep(30);
    }
    output = { slices, timedOut, finished };
    break;
  }
  case "deploy-old":
  case "deploy-new": {
    // The old app lacks `deployed`; the new one defines it.
    app.task("other", ({ i }: { i: number }) => i);
    if (mode === "deploy-new") {
      app.task("deployed", async ({ i }: { i: number }, ctx) => {
        log({ i, invocationId: ctx.invocationId, runnerId: ctx.runnerId, at: Date.now() });
        await sleep(20);
        return 2 * i;
      });
    }
    const runner = app.runner({ runnerId: tag, concurrency: 2, pollMs: 20, heartbeatMs: 200 });
    runner.start();
    await untilStopRequested();
    await runner.stop({ graceMs: 1_000 });
    output = { finished: runner.finished };
    break;
  }
  default:
    throw new Error(`unknown mode ${mode}`);
}

console.log(JSON.stringify(output));
kv.close();
