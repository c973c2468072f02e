/**
 * The demo (`deno task demo`): in memory mode in this process, every fact its summary claims,
 * checked exactly; in `--kv` mode, as a real run with its second worker process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  ANNOUNCES_PER_SECOND,
  DEPLOYS_IN_ALL,
  DEPLOYS_PER_ENV,
  MIRROR_COLD_REQUESTS,
  workspace,
} from "../examples/demo/app.ts";
import { ENVIRONMENTS, runDemo } from "../examples/demo/scenario.ts";
import { LONG_DEADLINE_MS, within } from "./_deadline.ts";

test("the demo builds 48 packages on one slot with one invocation each, deploys two at a time per environment and five with rollbacks in all, announces five a second, probes once per tick, stores the nightly schedule, retries the flaky download and names the plugin cycle", async () => {
  const summary = await within(runDemo(), LONG_DEADLINE_MS, "the demo");

  const packages = Object.keys(workspace);
  const dependencyCalls = Object.values(workspace).reduce((sum, deps) => sum + deps.length, 0);
  assert.deepEqual(summary.statuses, {
    release: { success: 1 },
    fetchToolchain: { success: 1 },
    // The plugin cycle: mdx-plugin, remark-plugin, and the second mdx-plugin that closed it.
    build: { success: packages.length, failed: 3 },
    deploy: { success: 12 },
    rollback: { success: 3 },
    announce: { success: 12 },
    probe: { success: summary.schedules.probeTicks },
  });
  // main's call of mdx-plugin, release's call of every package, every dependency of every
  // package, and the two plugins' calls of each other: one invocation per package.
  assert.deepEqual(summary.builds, {
    calls: 1 + packages.length + dependencyCalls + 2,
    invocations: packages.length + 3,
  });
  assert.equal(summary.release.packages, 48);
  assert.equal(summary.release.toolchain, "node-v22.11.0-linux-x64.tar.xz");
  // From the histories in the store: the limits held, and were reached. The 15 deploys and
  // rollbacks are queued before the runner's 8 slots start, so its first pick-up fills the group
  // (5), which puts 2 deploys in at least one environment.
  const { maxAtOncePerEnv, maxInGroup, rollbacks } = summary.deploys;
  assert.deepEqual(Object.keys(maxAtOncePerEnv).sort(), [...ENVIRONMENTS].sort());
  for (const [env, most] of Object.entries(maxAtOncePerEnv)) {
    assert.ok(most >= 1 && most <= DEPLOYS_PER_ENV, `${env}: ${most} at once`);
  }
  assert.equal(Math.max(...Object.values(maxAtOncePerEnv)), DEPLOYS_PER_ENV);
  assert.ok(maxInGroup > 2 && maxInGroup <= DEPLOYS_IN_ALL, `${maxInGroup} at once in the group`);
  assert.equal(rollbacks, 3);
  // The rate limit: 12 announcements at 5 a second take at least 2 s, never 6 in 1,000 ms.
  assert.deepEqual(
    { sent: summary.announces.sent, maxInAnyWindow: summary.announces.maxInAnyWindow },
    { sent: 12, maxInAnyWindow: ANNOUNCES_PER_SECOND },
  );
  assert.ok(summary.announces.spanMs >= 2_000, `${summary.announces.spanMs} ms`);
  // The probe schedule fired every second while the announcements took ≥ 2 s: each tick once.
  assert.ok(summary.schedules.probeTicks >= 2, `${summary.schedules.probeTicks} ticks`);
  assert.equal(summary.schedules.duplicateTicks, 0);
  assert.equal(summary.schedules.missedTicks, 0);
  const nextNightly = new Date(summary.schedules.nightly.nextTick);
  assert.equal(summary.schedules.nightly.cron, "0 3 * * *");
  assert.deepEqual(
    [nextNightly.getUTCHours(), nextNightly.getUTCMinutes(), nextNightly.getUTCSeconds()],
    [3, 0, 0],
  );
  assert.ok(nextNightly.getTime() - Date.now() <= 24 * 3_600_000);
  assert.equal(summary.fetchRetries, MIRROR_COLD_REQUESTS);
  assert.equal(
    summary.cycleMessage,
    [
      "A cycle was detected: Cycle detected:",
      '- build({"pkg":"remark-plugin"})',
      '- build({"pkg":"mdx-plugin"})',
      '- back to build({"pkg":"remark-plugin"})',
    ].join("\n"),
  );
  assert.deepEqual(summary.finishedBy, {
    thisProcess: 1 + 1 + packages.length + 3 + 12 + 3 + 12 + summary.schedules.probeTicks,
    otherProcesses: 0,
  });
});

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;

test(
  "deno task demo --kv runs the demo on a KV file with a second worker process (the CLI), and both processes run invocations",
  {
    skip: deno === undefined
      ? "the --kv demo starts deno processes: it runs under deno test"
      : false,
  },
  async () => {
    const directory = mkdtempSync(join(tmpdir(), "nenc-demo-"));
    try {
      const main = new URL("../examples/demo/main.ts", import.meta.url).pathname;
      const child = spawn(
        deno!.execPath(),
        ["run", "-A", main, "--kv", join(directory, "demo.db")],
        { stdio: ["ignore", "pipe", "pipe"], detached: true },
      );
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (chunk) => stdout += chunk);
      child.stderr.on("data", (chunk) => stderr += chunk);
      // Its own process group: the guard stops the demo and its worker together.
      const guard = setTimeout(() => process.kill(-child.pid!, "SIGKILL"), 90_000);
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      clearTimeout(guard);
      assert.equal(code, 0, stderr);

      const row = (task: string): string[] =>
        stdout.split("\n").find((line) => line.startsWith(`${task} `))!.trim().split(/\s+/);
      // task, success, failed, total: the same outcomes as in memory, whichever process ran what
      // (a dependency the worker took from the queue before its dependents called it is built
      // again, so the number of builds varies).
      assert.deepEqual(row("release"), ["release", "1", "0", "1"]);
      assert.deepEqual(row("fetchToolchain"), ["fetchToolchain", "1", "0", "1"]);
      assert.deepEqual(row("deploy"), ["deploy", "12", "0", "12"]);
      assert.deepEqual(row("rollback"), ["rollback", "3", "0", "3"]);
      assert.equal(row("build")[2], "3");
      // The limits hold across the two processes (read back from the histories in the file).
      const [, mostPerEnv, ...perEnv] = stdout.match(
        /limit 2 per environment: at most (\d+) at once \(staging (\d+), prod-eu (\d+), prod-us (\d+)\)/,
      )!;
      for (const most of [mostPerEnv, ...perEnv]) {
        assert.ok(Number(most) >= 1 && Number(most) <= DEPLOYS_PER_ENV, stdout);
      }
      const [, mostInGroup] = stdout.match(/limit 5: at most (\d+) at once/)!;
      assert.ok(Number(mostInGroup) >= 1 && Number(mostInGroup) <= DEPLOYS_IN_ALL, stdout);
      // The rate limit and the schedule hold across the two processes too.
      assert.deepEqual(row("announce"), ["announce", "12", "0", "12"]);
      assert.match(stdout, /at most 5 picked up in any 1,000 ms/);
      assert.match(stdout, /fired \d+ ticks while the services deployed: 0 twice, 0 missed/);
      assert.match(
        stdout,
        /- build\(\{"pkg":"remark-plugin"\}\)\n.*- build\(\{"pkg":"mdx-plugin"\}\)/,
      );
      // No rule makes the worker run a share, but it is up and polling before the first call, and
      // some 80 invocations, most of them waiting on others, spread over its 2 slots and this one.
      const [, here, worker] = stdout.match(
        /this process finished (\d+) invocations, the worker process (\d+)/,
      )!;
      assert.ok(Number(here) > 0 && Number(worker) > 0, `this process ${here}, worker ${worker}`);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  },
);
