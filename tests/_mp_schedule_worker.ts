/**
 * A runner process for the multi-process schedule tests: `<runtime> tests/_mp_schedule_worker.ts
 * <kv file> <tag> <seconds> <log dir>`. It stores the schedule "every-second" (every process
 * does: an idempotent upsert) and runs a runner with id `<tag>` for `<seconds>`, then stops by
 * itself. Each run of the task appends its tick to `<log dir>/<tag>.log` in one write, so a
 * process killed with SIGKILL leaves every run it logged.
 */
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import type { TaskContext } from "../core/task.ts";
import { openSharedTestKv } from "./_kv.ts";

const [path, tag, seconds, logDir] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ??
  (await import("node:process")).argv.slice(2);
if (path === undefined || tag === undefined || seconds === undefined || logDir === undefined) {
  throw new Error("usage: _mp_schedule_worker.ts <kv file> <tag> <seconds> <log dir>");
}

const kv = await openSharedTestKv(path);
// A live runner is not taken for dead (and its runs recovered and run again) under load: these
// tests are about ticks, not recovery.
const app = new Nenc({ appId: "mp-cron", kv, orchestrator: { runnerTimeoutSeconds: 60 } });
app.task("beat", (_args: undefined, ctx: TaskContext) => {
  appendFileSync(join(logDir, `${tag}.log`), `${ctx.scheduledAt}\n`);
});
await app.schedule("every-second", { cron: "* * * * * *", task: "beat" });
const runner = app.runner({ runnerId: tag, concurrency: 2, heartbeatMs: 200, pollMs: 20 });
runner.start();
await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1_000));
await runner.stop();
console.log(JSON.stringify({ done: tag }));
kv.close();
