/**
 * The demo (`deno task demo`) in memory mode, in this process: every fact its summary claims,
 * checked exactly.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { MIRROR_COLD_REQUESTS, workspace } from "../examples/demo/app.ts";
import { runDemo } from "../examples/demo/scenario.ts";

test("the demo builds 48 packages on one slot with one invocation each, deploys one at a time per environment, retries the flaky download and names the plugin cycle", async () => {
  const summary = await runDemo();

  const packages = Object.keys(workspace);
  const dependencyCalls = Object.values(workspace).reduce((sum, deps) => sum + deps.length, 0);
  assert.deepEqual(summary.statuses, {
    release: { success: 1 },
    fetchToolchain: { success: 1 },
    // The plugin cycle: mdx-plugin, remark-plugin, and the second mdx-plugin that closed it.
    build: { success: packages.length, failed: 3 },
    deploy: { success: 12 },
  });
  // main's call of mdx-plugin, release's call of every package, every dependency of every
  // package, and the two plugins' calls of each other: one invocation per package.
  assert.deepEqual(summary.builds, {
    calls: 1 + packages.length + dependencyCalls + 2,
    invocations: packages.length + 3,
  });
  assert.equal(summary.release.packages, 48);
  assert.equal(summary.release.toolchain, "node-v22.11.0-linux-x64.tar.xz");
  assert.deepEqual(summary.deploys.maxAtOncePerEnv, { staging: 1, "prod-eu": 1, "prod-us": 1 });
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
    thisProcess: 1 + 1 + packages.length + 3 + 12,
    otherProcesses: 0,
  });
});
