/**
 * Exactness across processes: real `deno` (and `bun`) processes on one Deno KV file in a temp
 * dir, each counting the violations that must stay at 0. Workers stop by themselves; the test
 * kills any that outlive their deadline.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import type { TaskOptions } from "../core/task.ts";
import { isValidHistory } from "../core/status.ts";
import { openTestKv } from "./_kv.ts";
import { waitUntil } from "./_deadline.ts";

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
const onlyDeno = deno === undefined ? "multi-process tests run under deno test" : false;
// The pinned Bun: from PATH (CI installs it), else fetched from npm by npx, so a machine with
// only Node and npm runs this test too.
const bun: readonly string[] = spawnSync("bun", ["--version"]).status === 0
  ? ["bun"]
  : ["npx", "-y", "bun@1.4.5"];
const worker = new URL("./_mp_worker.ts", import.meta.url).pathname;

interface Exit {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Worker {
  readonly exit: Promise<Exit>;
  kill(signal: NodeJS.Signals): void;
}

function start(runtime: "deno" | "bun", args: readonly string[]): Worker {
  const [command, ...argv] = runtime === "deno"
    ? [deno!.execPath(), "run", "-A", "--no-check", worker, ...args]
    : [...bun, "run", worker, ...args];
  const child = spawn(command!, argv, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => stdout += chunk);
  child.stderr.on("data", (chunk) => stderr += chunk);
  const guard = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const exit = new Promise<Exit>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(guard);
      resolve({ code, stdout, stderr });
    })
  );
  return { exit, kill: (signal) => child.kill(signal) };
}

async function output<T>(worker: Worker): Promise<T> {
  const { code, stdout, stderr } = await worker.exit;
  assert.equal(code, 0, `worker failed:\n${stderr}`);
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as T;
}

async function withKvFile(fn: (path: string) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-mp-"));
  try {
    await fn(join(directory, "nenc.db"));
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** The parent's own view of the KV file: the same app id and tasks as the workers. */
async function parentApp(path: string) {
  const kv = await openTestKv(path);
  const app = new Nenc({ appId: "mp", kv });
  const decoder = new TextDecoder();
  const counter = async (...key: string[]): Promise<number> => {
    const entry = await kv.get(["mp", ...key]);
    return entry.versionstamp === null ? 0 : Number(decoder.decode(entry.value as Uint8Array));
  };
  return { kv, app, counter };
}

test(
  "6 processes (one of them Bun) × 200 calls over 20 idempotency keys create exactly 20 invocations, one per key, and every call of a key got that one",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const runtimes = Array.from({ length: 6 }, (_, i) => i === 0 ? "bun" : "deno");
      const workers = runtimes.map((runtime) =>
        start(runtime as "deno" | "bun", ["idempotent", path])
      );
      const results = await Promise.all(
        workers.map((w) => output<{ ids: Record<string, string[]> }>(w)),
      );
      const perKey = new Map<string, Set<string>>();
      for (const result of results) {
        for (const [key, ids] of Object.entries(result.ids)) {
          const set = perKey.get(key) ?? new Set<string>();
          for (const id of ids) set.add(id);
          perKey.set(key, set);
        }
      }
      assert.equal(perKey.size, 20);
      for (const [key, ids] of perKey) assert.equal(ids.size, 1, `key ${key}: ${[...ids]}`);
      const { kv, app } = await parentApp(path);
      try {
        const pay = app.task("pay", ({ cents }: { cents: number }) => cents);
        const invocations = [];
        for await (const invocation of app.orchestrator.getExistingInvocations(pay)) {
          invocations.push(invocation.id);
        }
        assert.equal(invocations.length, 20, "violations: duplicate invocations were created");
        assert.deepEqual(
          new Set(invocations),
          new Set([...perKey.values()].flatMap((ids) => [...ids])),
        );
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "8 processes (one of them Bun) × 500 calls over 50 argument sets with registration concurrency create exactly 50 invocations",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const runtimes = Array.from({ length: 8 }, (_, i) => i === 0 ? "bun" : "deno");
      const workers = runtimes.map((runtime) =>
        start(runtime as "deno" | "bun", ["register", path])
      );
      const results = await Promise.all(workers.map((w) => output<{ ids: string[] }>(w)));
      const ids = new Set(results.flatMap((result) => result.ids));
      const { kv, app } = await parentApp(path);
      try {
        const dedup = app.task("dedup", ({ k }: { k: number }) => k, {
          registrationConcurrency: "arguments",
        });
        const invocations = [];
        for await (const invocation of app.orchestrator.getExistingInvocations(dedup)) {
          invocations.push(invocation);
        }
        assert.equal(invocations.length, 50, "violations: duplicate invocations were created");
        assert.equal(ids.size, 50);
        assert.deepEqual(new Set(invocations.map((i) => i.id)), ids);
        assert.deepEqual(new Set(invocations.map((i) => i.args.k)).size, 50);
      } finally {
        kv.close();
      }
    });
  },
);

/**
 * 4 runner processes run 200 invocations of the worker's task `taskId` (over 5 keys) on one KV
 * file; the task counts what overlaps in its own atomic counters. Checks no violation, every
 * invocation run and succeeded exactly once, and returns the counter reader for more.
 */
async function runKeyed(
  path: string,
  taskId: string,
  options: TaskOptions<{ key: string; i: number }>,
  runtimes: readonly ("deno" | "bun")[],
  check: (counter: (...key: string[]) => Promise<number>) => Promise<void>,
): Promise<void> {
  const { kv, app, counter } = await parentApp(path);
  try {
    const keyed = app.task(taskId, ({ i }: { key: string; i: number }) => i, options);
    const group = await keyed.parallelize(
      Array.from({ length: 200 }, (_, i) => ({ key: `k${i % 5}`, i })),
    );
    // A runner timeout of 60 s, not the workers' 2 s: under load a live worker can go 2 s
    // without a heartbeat, and another would recover its running invocations and run them
    // again (2 runs of one invocation), which is recovery, not what this test is about.
    const workers = runtimes.map((runtime) => start(runtime, ["run", path, "200", taskId, "60"]));
    await Promise.all(workers.map((w) => output(w)));
    assert.equal(await counter("violations"), 0, "a key or a group ran over its limit");
    for (let i = 0; i < 200; i++) {
      assert.equal(await counter("runs", String(i)), 1, `runs of ${i}`);
    }
    for (const invocation of group.invocations) {
      const history = await invocation.history();
      assert.equal(await invocation.status(), "success");
      assert.ok(isValidHistory(history));
      assert.equal(history.filter((entry) => entry.status === "success").length, 1);
    }
    await check(counter);
  } finally {
    kv.close();
  }
}

test(
  "4 runner processes × 4 slots run 200 invocations of a keys-concurrency task over 5 keys with 0 overlapping runs of a key, each exactly once",
  { skip: onlyDeno },
  async () => {
    await withKvFile((path) =>
      runKeyed(
        path,
        "keyed",
        { runningConcurrency: "keys", keyArguments: ["key"] },
        ["deno", "deno", "deno", "deno"],
        async () => {},
      )
    );
  },
);

test(
  "4 runner processes (one of them Bun) × 4 slots run 200 invocations of a keys task with limit 2 over 5 keys and a group cap of 6: two of a key and six in all run at once, never more (0 violations), each exactly once",
  { skip: onlyDeno },
  async () => {
    await withKvFile((path) =>
      runKeyed(
        path,
        "pairs",
        {
          runningConcurrency: { by: "keys", limit: 2 },
          keyArguments: ["key"],
          concurrencyGroups: [{ name: "cap", limit: 6 }],
        },
        ["bun", "deno", "deno", "deno"],
        async (counter) => {
          assert.ok(await counter("pairs") > 0, "two runs of one key never overlapped");
          assert.ok(await counter("capped") > 0, "the group never had six at once");
        },
      )
    );
  },
);

test(
  "kill -9 of a runner mid-task loses nothing: another runner recovers its invocations and finishes them",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, counter } = await parentApp(path);
      try {
        const slow = app.task("slow", ({ i }: { i: number }) => i);
        const group = await slow.parallelize([{ i: 0 }, { i: 1 }, { i: 2 }]);
        const doomed = start("deno", ["hang", path]);
        await waitUntil(async () => {
          const started = await Promise.all([0, 1, 2].map((i) => counter("started", String(i))));
          return started.every((count) => count === 1);
        }, { intervalMs: 20, message: "the doomed runner never started all three invocations" });
        doomed.kill("SIGKILL");
        await doomed.exit;
        for (const invocation of group.invocations) {
          assert.equal(await invocation.status(), "running");
        }
        const killedAt = Date.now();
        await output(start("deno", ["run", path, "3", "slow"]));
        const seconds = (Date.now() - killedAt) / 1000;
        for (const invocation of group.invocations) {
          assert.equal(await invocation.status(), "success");
          const statuses = (await invocation.history()).map((entry) => entry.status);
          assert.ok(statuses.includes("running_recovery"), statuses.join(" → "));
          assert.ok(isValidHistory(await invocation.history()));
        }
        // runnerTimeoutSeconds is 2 in the workers; allow for process start-up.
        assert.ok(seconds < 20, `recovery took ${seconds} s`);
      } finally {
        kv.close();
      }
    });
  },
);

test("two processes racing A→B and B→A 100 times get exactly one CycleDetectedError per race", {
  skip: onlyDeno,
}, async () => {
  await withKvFile(async (path) => {
    const [a, b] = await Promise.all([
      output<{ outcomes: string[] }>(start("deno", ["cycle", path, "100", "A", "B"])),
      output<{ outcomes: string[] }>(start("deno", ["cycle", path, "100", "B", "A"])),
    ]);
    assert.equal(a.outcomes.length, 100);
    assert.equal(b.outcomes.length, 100);
    let violations = 0;
    for (let i = 0; i < 100; i++) {
      const cycles = [a.outcomes[i], b.outcomes[i]].filter((outcome) => outcome === "cycle").length;
      if (cycles !== 1) violations++;
    }
    assert.equal(violations, 0, `races without exactly one cycle error: ${violations}`);
  });
});
