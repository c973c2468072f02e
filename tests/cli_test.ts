/**
 * The command line: usage errors in this process (on Deno and Bun), and every command as a real
 * `deno run -A cli.ts` process on a Deno KV file in a temp dir, next to this test process on the
 * same file (Deno only). Every process stops by itself or is killed by its guard timer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type CliIo, main } from "../cli.ts";
import { Nenc } from "../core/app.ts";
import { APP_ID, defineTasks } from "./_cli_app.ts";
import { openTestKv } from "./_kv.ts";

const onlyDeno = (globalThis as { Deno?: unknown }).Deno === undefined
  ? "the CLI runs on Deno: these tests spawn deno"
  : false;
const root = fileURLToPath(new URL("..", import.meta.url));
const fixture = (name: string): string => join(root, "tests", name);

/** Runs `main()` in this process with captured output. */
async function runMain(args: readonly string[]) {
  let stdout = "";
  let stderr = "";
  const io: CliIo = {
    stdout: (text) => stdout += text,
    stderr: (text) => stderr += text,
    isTerminal: false,
  };
  const code = await main(args, io);
  return { code, stdout, stderr };
}

interface Exit {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

interface CliProcess {
  readonly exit: Promise<Exit>;
  /** Resolves with the first match of `pattern` in the output so far or to come. */
  waitFor(pattern: RegExp, stream?: "stdout" | "stderr"): Promise<RegExpMatchArray>;
  kill(signal: Deno.Signal): void;
}

/**
 * Starts `deno run -A cli.ts …args` in the repository root; killed after 60 s at the latest.
 * `Deno.Command`, not `node:child_process`: Deno's `spawn` reports a child that handled a
 * SIGTERM and exited 0 as killed by the signal.
 */
function startCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli.ts", ...args],
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = { stdout: "", stderr: "" };
  const watchers = new Set<() => void>();
  let exited = false;
  const collect = async (stream: ReadableStream<Uint8Array>, name: "stdout" | "stderr") => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      output[name] += text;
      for (const watcher of watchers) watcher();
    }
  };
  const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const exit = Promise.all([
    child.status,
    collect(child.stdout, "stdout"),
    collect(child.stderr, "stderr"),
  ]).then(([status]) => {
    clearTimeout(guard);
    exited = true;
    for (const watcher of watchers) watcher();
    return { code: status.code, ...output };
  });
  return {
    exit,
    waitFor: (pattern, stream = "stdout") =>
      new Promise((resolve, reject) => {
        const watcher = (): void => {
          const match = output[stream].match(pattern);
          if (match !== null) {
            watchers.delete(watcher);
            resolve(match);
          } else if (exited) {
            watchers.delete(watcher);
            reject(new Error(`the CLI exited without printing ${pattern}:\n${output.stderr}`));
          }
        };
        watchers.add(watcher);
        watcher();
      }),
    kill: (signal) => {
      if (!exited) child.kill(signal);
    },
  };
}

async function withKvFile(fn: (path: string) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-cli-"));
  try {
    await fn(join(directory, "nenc.db"));
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** This process's view of the KV file: the fixture's app id and tasks. */
async function openFixtureApp(path: string, options: Parameters<typeof defineTasks>[1] = {}) {
  const kv = await openTestKv(path);
  const app = new Nenc({ appId: APP_ID, kv });
  return { kv, app, tasks: defineTasks(app, options) };
}

// --- usage ---------------------------------------------------------------------------------------

test("cli: --help and no command print the usage and exit 0", async () => {
  for (const args of [["--help"], []]) {
    const { code, stdout, stderr } = await runMain(args);
    assert.equal(code, 0);
    assert.match(stdout, /^Usage: nenc <command> --app <module>/);
    assert.match(stdout, /worker/);
    assert.equal(stderr, "");
  }
});

test("cli: an unknown command exits 2 and names the commands", async () => {
  const { code, stdout, stderr } = await runMain(["launch", "--app", fixture("_cli_app.ts")]);
  assert.equal(code, 2);
  assert.equal(stdout, "");
  assert.match(stderr, /Cannot run launch: unknown command \(commands: worker/);
  assert.match(stderr, /Run with --help for usage/);
});

test("cli: a command without --app exits 2 saying --app is required", async () => {
  const { code, stderr } = await runMain(["worker"]);
  assert.equal(code, 2);
  assert.match(stderr, /Cannot run worker: --app <module> is required/);
});

test("cli: an unknown option exits 2", async () => {
  const unknown = await runMain(["worker", "--app", fixture("_cli_app.ts"), "--speed", "9"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Cannot parse the arguments: .*--speed/);
});

test("cli: --concurrency that is not an integer ≥ 1 exits 2", async () => {
  for (const bad of ["0", "-1", "1.5", "many", ""]) {
    const { code, stderr } = await runMain([
      "worker",
      "--app",
      fixture("_cli_app.ts"),
      `--concurrency=${bad}`,
    ]);
    assert.equal(code, 2, bad);
    assert.match(stderr, new RegExp(`--concurrency must be an integer ≥ 1, got "${bad}"`));
  }
});

test("cli: an --app path that does not exist exits 2 with the resolved path", async () => {
  const { code, stderr } = await runMain(["worker", "--app", fixture("_nope.ts")]);
  assert.equal(code, 2);
  assert.match(stderr, /Cannot load the app: .*_nope\.ts does not exist \(resolved to /);
});

test("cli: a module that exports no Nenc app exits 1 saying to export exactly one", async () => {
  const { code, stderr } = await runMain(["worker", "--app", fixture("_cli_no_app.ts")]);
  assert.equal(code, 1);
  assert.match(stderr, /_cli_no_app\.ts exports no Nenc app; export exactly one, named or default/);
});

test("cli: a module that exports two Nenc apps exits 1 naming them", async () => {
  const { code, stderr } = await runMain(["worker", "--app", fixture("_cli_two_apps.ts")]);
  assert.equal(code, 1);
  assert.match(stderr, /exports 2 Nenc apps \(billing, shop\); export exactly one/);
});

// --- worker --------------------------------------------------------------------------------------

test(
  "cli worker: runs invocations called from another process on the same KV file, and on SIGTERM stops cleanly (exit 0, heartbeat gone)",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const worker = startCli([
        "worker",
        "--app",
        "tests/_cli_app.ts",
        "--kv",
        path,
        "--concurrency",
        "2",
      ]);
      const { kv, app, tasks } = await openFixtureApp(path);
      try {
        const [, runnerId] = await worker.waitFor(
          /nenc worker (\S+) started: app cli-test, backend Deno KV .*nenc\.db, concurrency 2\n/,
        );
        const invocations = await Promise.all([1, 2, 3].map((x) => tasks.add.call({ x, y: 10 })));
        assert.deepEqual(
          await Promise.all(invocations.map((invocation) => invocation.result())),
          [11, 12, 13],
        );
        for (const invocation of invocations) {
          const history = await invocation.history();
          assert.equal(history.at(-1)?.runnerId, runnerId, "run by the CLI's worker");
        }
        const runners = await app.orchestrator.store.runners();
        assert.ok(
          runners.some((runner) => runner.runnerId === runnerId),
          "heartbeat while running",
        );
        worker.kill("SIGTERM");
        const exit = await worker.exit;
        assert.equal(exit.code, 0, exit.stderr);
        assert.match(
          exit.stdout,
          new RegExp(`nenc worker ${runnerId} stopped on SIGTERM: 3 invocations finished\n$`),
        );
        const after = await app.orchestrator.store.runners();
        assert.ok(after.every((runner) => runner.runnerId !== runnerId), "heartbeat removed");
      } finally {
        worker.kill("SIGKILL");
        await worker.exit;
        kv.close();
      }
    });
  },
);

test(
  "cli worker: on an app without --kv it warns that other processes cannot reach it, and stops on SIGINT with exit 0",
  {
    skip: onlyDeno,
  },
  async () => {
    const worker = startCli(["worker", "--app", "tests/_cli_app.ts"]);
    try {
      await worker.waitFor(/backend memory, concurrency 1\n/);
      await worker.waitFor(
        /warning: app cli-test keeps its data in this process's memory/,
        "stderr",
      );
      worker.kill("SIGINT");
      const exit = await worker.exit;
      assert.equal(exit.code, 0, exit.stderr);
      assert.match(exit.stdout, /stopped on SIGINT: 0 invocations finished\n$/);
      assert.match(exit.stderr, /other processes cannot reach it; pass --kv <path\|url>/);
    } finally {
      worker.kill("SIGKILL");
      await worker.exit;
    }
  },
);
