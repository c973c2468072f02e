/**
 * A closed KV handle: every store call, waiter and poller on it rejects with StoreClosedError
 * (its cause: the KV's own error) instead of retrying forever, and a process that closed its KV
 * exits by itself. Runs under Deno (`Deno.Kv`), Bun and Node (`@deno/kv`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Nenc } from "../core/app.ts";
import { StoreClosedError } from "../core/errors.ts";
import { isClosedKvError } from "../kv/_closed.ts";
import { interceptKv, openTestKv } from "./_kv.ts";
import { FakeClock } from "./_fake_clock.ts";

/** Settles with the promise, or with "timeout" after `ms` (a deadline, not a pause). */
function within<T>(promise: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<"timeout">((resolve) => timer = setTimeout(() => resolve("timeout"), ms)),
  ]);
}

/** The rejection of `promise` (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

/** A StoreClosedError whose cause is what the closed KV itself threw. */
function assertClosed(error: unknown, message: RegExp): void {
  assert.ok(error instanceof StoreClosedError, `not a StoreClosedError: ${error}`);
  assert.match(error.message, message);
  assert.ok(isClosedKvError(error.cause), `cause is not the KV's own error: ${error.cause}`);
}

test("[kv closed] result() of an invocation waited on while the KV is closed rejects with StoreClosedError within 5 s", async () => {
  const kv = await openTestKv(":memory:");
  let reads = 0;
  let polled!: () => void;
  const pollerRead = new Promise<void>((resolve) => polled = resolve);
  // The waiter's own read is the first getMany after the call; the poller's first read the next.
  let waiterReadAt = Infinity;
  const view = interceptKv(kv, {
    beforeGetMany: () => {
      if (++reads > waiterReadAt) polled();
    },
  });
  const app = new Nenc({ appId: "closed-result", kv: view });
  const invocation = await app.task("never-run", () => 1).call();
  waiterReadAt = reads + 1;
  const result = rejection(invocation.result());
  assert.notEqual(await within(pollerRead, 5_000), "timeout", "the poller never read");
  kv.close();
  const error = await within(result, 5_000);
  assert.notEqual(error, "timeout", "result() still waits on a closed store");
  assertClosed(
    error,
    new RegExp(`^Cannot wait for invocation ${invocation.id}: the KV store is closed$`),
  );
});

test("[kv closed] a read, a range read and a commit after close reject with StoreClosedError whose cause is the KV's own error", async () => {
  const kv = await openTestKv(":memory:");
  const app = new Nenc({ appId: "closed-calls", kv });
  const task = app.task("t", ({ n }: { n: number }) => n);
  const invocation = await task.call({ n: 1 });
  kv.close();
  const store = app.orchestrator.store;
  assertClosed(await rejection(store.get(invocation.id)), /^Cannot read: the KV store is closed$/);
  assertClosed(await rejection(store.counts()), /^Cannot read: the KV store is closed$/);
  assertClosed(await rejection(store.runners()), /^Cannot read: the KV store is closed$/);
  assertClosed(
    await rejection(store.heartbeat("r1", 0)),
    /^Cannot commit: the KV store is closed$/,
  );
  // The schema was checked a moment ago: registration goes straight to its (group) commit.
  assertClosed(await rejection(task.call({ n: 2 })), /^Cannot commit: the KV store is closed$/);
  assertClosed(await rejection(store.checkSchema()), /^Cannot read: the KV store is closed$/);
  assertClosed(await rejection(invocation.result()), /^Cannot read: the KV store is closed$/);
});

test("[kv closed] an error of an open KV passes through unchanged, not as StoreClosedError", async () => {
  const kv = await openTestKv(":memory:");
  try {
    const reset = new Error("connection reset");
    const view = interceptKv(kv, {
      beforeGetMany: () => {
        throw reset;
      },
    });
    const app = new Nenc({ appId: "closed-other", kv: view });
    assert.equal(await rejection(app.orchestrator.store.get("01ABC")), reset);
  } finally {
    kv.close();
  }
});

test("[kv closed] isClosedKvError() knows Deno's BadResource and @deno/kv's closed-handle errors, and nothing else", () => {
  const badResource = Object.assign(new Error("Bad resource ID"), { name: "BadResource" });
  assert.ok(isClosedKvError(badResource));
  assert.ok(isClosedKvError(new Error("Cannot call '.getMany' after '.close' is called")));
  assert.ok(isClosedKvError(new Error("db not found\n\nStack backtrace:\n   0: <unknown>")));
  assert.ok(!isClosedKvError(new Error("database is locked")));
  assert.ok(!isClosedKvError(new Error("connection reset")));
  assert.ok(!isClosedKvError("Bad resource ID"));
});

test("[kv closed] waitWork in progress rejects when another call finds the KV closed, and a later waitWork rejects at once", async () => {
  const kv = await openTestKv(":memory:");
  // A fake clock: the idle wait never ends by itself, only the closed store ends it.
  const app = new Nenc({ appId: "closed-work", kv, clock: new FakeClock() });
  const store = app.orchestrator.store;
  const waiting = rejection(store.waitWork());
  kv.close();
  await assert.rejects(store.get("01ABC"), StoreClosedError);
  const error = await within(waiting, 5_000);
  assert.notEqual(error, "timeout", "waitWork still waits on a closed store");
  assertClosed(error, /^Cannot wait for work: the KV store is closed$/);
  assertClosed(
    await within(rejection(store.waitWork()), 5_000),
    /^Cannot wait for work: the KV store is closed$/,
  );
});

// --- a whole process -----------------------------------------------------------------------------

const root = fileURLToPath(new URL("..", import.meta.url));
const script = join(root, "tests", "_closed_exit.ts");
const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
const onPath = (command: string): boolean =>
  spawnSync(command, ["--version"], { stdio: "ignore" }).status === 0;
const runtimes: Record<string, readonly string[] | undefined> = {
  deno: deno !== undefined || onPath("deno")
    ? [deno?.execPath() ?? "deno", "run", "-A", "--no-check", script]
    : undefined,
  bun: onPath("bun") ? ["bun", "run", script] : undefined,
  // Node strips no types by itself here (Node 20): tsx does.
  node: onPath("tsx") ? ["tsx", script] : undefined,
};

for (const [runtime, command] of Object.entries(runtimes)) {
  test(
    `[kv closed] a ${runtime} process that awaits a result, closes its KV and catches the StoreClosedError exits by itself within 20 s`,
    { skip: command === undefined ? `${runtime} is not on the PATH` : false },
    async () => {
      const directory = mkdtempSync(join(tmpdir(), "nenc-closed-"));
      try {
        const [program, ...args] = command!;
        const child = spawn(program!, [...args, join(directory, "nenc.db")], {
          cwd: root,
          stdio: ["ignore", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (chunk) => stdout += chunk);
        child.stderr.on("data", (chunk) => stderr += chunk);
        const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
        const code = await within(exited, 20_000);
        if (code === "timeout") child.kill("SIGKILL");
        assert.notEqual(code, "timeout", `the process did not exit by itself:\n${stdout}${stderr}`);
        assert.equal(code, 0, stderr);
        const outcome = JSON.parse(stdout.trim().split("\n").at(-1)!);
        assert.equal(outcome.name, "StoreClosedError", stdout);
        assert.match(
          outcome.message,
          /^Cannot (wait for invocation \S+|read): the KV store is closed$/,
        );
      } finally {
        rmSync(directory, { recursive: true, force: true });
      }
    },
  );
}
