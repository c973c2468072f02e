/**
 * `deno task demo`: a monorepo release on nenc, with a progress bar on stderr and a summary
 * table on stdout. `deno task demo --kv ./demo.db` runs it on a Deno KV file, with a second
 * worker process (the nenc CLI) sharing the work.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { isFinalStatus } from "../../mod.ts";
import {
  ANNOUNCES_PER_SECOND,
  app,
  dependenciesOf,
  DEPLOYS_IN_ALL,
  DEPLOYS_PER_ENV,
  workspace,
} from "./app.ts";
import {
  BUILD_SLOTS,
  type DemoSummary,
  DEPLOY_SLOTS,
  ENVIRONMENTS,
  NIGHTLY_SCHEDULE,
  PROBE_SCHEDULE,
  runDemo,
  SERVICES,
} from "./scenario.ts";

/** Slots of the second worker process in `--kv` mode. */
const WORKER_SLOTS = 2;
const ROOT = new URL("../../", import.meta.url).pathname;

const { values } = parseArgs({ args: Deno.args, options: { kv: { type: "string" } } });

let kv: Deno.Kv | undefined;
let worker: Worker | undefined;
try {
  if (values.kv !== undefined) {
    const path = resolve(values.kv);
    kv = await Deno.openKv(path);
    app.useKv(kv);
    // The worker imports the same app module, so both use its app id: a fresh run starts by
    // deleting that app's keys (and only those) from the file.
    await app.orchestrator.purge();
    worker = startWorker(path, WORKER_SLOTS);
    await worker.ready();
  }
  const progress = showProgress();
  const summary = await runDemo().finally(() => progress.stop());
  console.log(table(summary, values.kv));
} finally {
  await worker?.stop();
  kv?.close();
}

interface Worker {
  /** Resolves once the worker's runner has written its first heartbeat to the store. */
  ready(): Promise<void>;
  /** SIGTERM, then waits for the worker to exit. */
  stop(): Promise<void>;
}

/** The second process: the nenc CLI's worker on the same KV file, running the demo app. */
function startWorker(kvPath: string, concurrency: number): Worker {
  const args = ["worker", "--app", "examples/demo/app.ts", "--kv", kvPath];
  const child = spawn(
    Deno.execPath(),
    ["run", "-A", "cli/mod.ts", ...args, "--concurrency", String(concurrency)],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  const keep = (chunk: Buffer): void => void (output = (output + chunk).slice(-4000));
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise<number | null>((done) => child.on("close", done));
  return {
    async ready() {
      const deadline = Date.now() + 30_000;
      let gone = false;
      void exited.then(() => gone = true);
      while ((await app.orchestrator.store.runners()).length === 0) {
        if (gone || Date.now() > deadline) {
          throw new Error(`Cannot start the worker process (cli/mod.ts worker):\n${output}`);
        }
        await new Promise((wake) => setTimeout(wake, 50));
      }
    },
    async stop() {
      child.kill("SIGTERM");
      const guard = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(guard);
    },
  };
}

/** A progress bar on stderr: redrawn in place on a terminal, else a plain line now and then. */
function showProgress(): { stop(): Promise<void> } {
  const startedMs = performance.now();
  const terminal = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let lastLineMs = -Infinity;
  const draw = async (last: boolean): Promise<void> => {
    let total = 0;
    let final = 0;
    let paused = 0;
    for (const statuses of (await app.orchestrator.store.counts()).values()) {
      for (const [status, count] of statuses) {
        total += count;
        if (isFinalStatus(status)) final += count;
        if (status === "paused") paused += count;
      }
    }
    const width = 30;
    const filled = total === 0 ? 0 : Math.round((final / total) * width);
    const seconds = ((performance.now() - startedMs) / 1000).toFixed(1);
    const line = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${final}/${total} ` +
      `invocations final, ${paused} paused waiting on others, ${seconds} s`;
    if (terminal) {
      Deno.stderr.writeSync(encoder.encode(`\r\x1b[2K${line}${last ? "\n" : ""}`));
    } else if (last || performance.now() - lastLineMs >= 500) {
      lastLineMs = performance.now();
      console.error(line);
    }
  };
  // One draw at a time, the last one last.
  let drawing = Promise.resolve();
  const timer = setInterval(() => drawing = drawing.then(() => draw(false)), 100);
  return {
    stop() {
      clearInterval(timer);
      return drawing = drawing.then(() => draw(true));
    },
  };
}

function table(summary: DemoSummary, kvPath: string | undefined): string {
  const statuses = [...new Set(Object.values(summary.statuses).flatMap(Object.keys))];
  const tasks = Object.keys(summary.statuses);
  const taskWidth = Math.max(...tasks.map((task) => task.length), "task".length);
  const row = (cells: readonly string[]): string =>
    cells.map((cell, i) => i === 0 ? cell.padEnd(taskWidth) : cell.padStart(8)).join("  ");
  const counts = tasks.map((task) => {
    const perTask = summary.statuses[task]!;
    const cells = statuses.map((status) => String(perTask[status as keyof typeof perTask] ?? 0));
    const total = Object.values(perTask).reduce((sum, count) => sum + count, 0);
    return row([task, ...cells, String(total)]);
  });
  const { builds, release, deploys, announces, schedules, finishedBy } = summary;
  const perEnv = ENVIRONMENTS.map((env) => `${env} ${deploys.maxAtOncePerEnv[env]}`).join(", ");
  const slots = (here: number): string =>
    `${here} slot${here === 1 ? "" : "s"}` +
    (kvPath === undefined ? "" : ` here and ${WORKER_SLOTS} in the worker`);
  const facts: [string, string][] = [
    [
      "registration dedup",
      `build called ${builds.calls} times → ${builds.invocations} invocations ` +
      `(${builds.calls - builds.invocations} calls reused a queued build)`,
    ],
    [
      "fan-out / fan-in",
      `release built ${release.packages} packages, ${levels()} levels deep, on ${
        slots(BUILD_SLOTS)
      }\n` +
      `${(release.bytes / 1e6).toFixed(1)} MB of tarballs, built with ${release.toolchain}`,
    ],
    [
      "running concurrency",
      `${SERVICES.length * ENVIRONMENTS.length} deploys (${SERVICES.length} services × ` +
      `${ENVIRONMENTS.length} environments) on ${slots(DEPLOY_SLOTS)}\n` +
      `limit ${DEPLOYS_PER_ENV} per environment: at most ` +
      `${Math.max(...Object.values(deploys.maxAtOncePerEnv))} at once (${perEnv})`,
    ],
    [
      "concurrency group",
      `${SERVICES.length * ENVIRONMENTS.length} deploys and ${deploys.rollbacks} rollbacks ` +
      `share the group "deploys"\n` +
      `limit ${DEPLOYS_IN_ALL}: at most ${deploys.maxInGroup} at once\n` +
      `${deploys.refused} pick-ups refused by a full environment or group: parked (one entry each), ` +
      `woken when it had room`,
    ],
    [
      "rate limit",
      `${announces.sent} deploys announced to a status page that takes ${ANNOUNCES_PER_SECOND} ` +
      `requests a second\nat most ${announces.maxInAnyWindow} picked up in any 1,000 ms; ` +
      `first to last in ${(announces.spanMs / 1000).toFixed(1)} s`,
    ],
    [
      "schedules",
      `"${PROBE_SCHEDULE.name}" (${PROBE_SCHEDULE.cron}) fired ${schedules.probeTicks} ticks ` +
      `while the services deployed: ${schedules.duplicateTicks} twice, ` +
      `${schedules.missedTicks} missed\n` +
      `"${NIGHTLY_SCHEDULE.name}" (${schedules.nightly.cron}) fires next at ` +
      `${schedules.nightly.nextTick}`,
    ],
    ["retries", `fetchToolchain succeeded after ${summary.fetchRetries} retries`],
    ["cycle control", `build({"pkg":"mdx-plugin"}) failed:\n${summary.cycleMessage}`],
    ...(kvPath === undefined ? [] : [[
      "processes",
      `this process finished ${finishedBy.thisProcess} invocations, ` +
      `the worker process ${finishedBy.otherProcesses}`,
    ] as [string, string]]),
    ["wall time", `${(summary.wallMs / 1000).toFixed(1)} s`],
  ];
  const factWidth = Math.max(...facts.map(([name]) => name.length));
  return [
    `nenc demo: a monorepo release on ${
      kvPath === undefined
        ? "the memory backend, one process"
        : `Deno KV (${kvPath}), two processes`
    }`,
    "",
    row(["task", ...statuses, "total"]),
    ...counts,
    "",
    ...facts.map(([name, text]) =>
      `${name.padEnd(factWidth)}  ${text.replaceAll("\n", `\n${" ".repeat(factWidth + 2)}`)}`
    ),
  ].join("\n");
}

/** The levels of the workspace's dependency graph: its longest chain of dependencies. */
function levels(pkgs: readonly string[] = Object.keys(workspace)): number {
  return Math.max(0, ...pkgs.map((pkg) => 1 + levels(dependenciesOf(pkg))));
}
