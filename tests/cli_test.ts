/**
 * The command line: usage errors in this process (on Deno and Bun), and every command as a real
 * `deno run -A cli/mod.ts` process on a Deno KV file in a temp dir, next to this test process on the
 * same file (Deno only). Every process stops by itself or is killed by its guard timer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type CliIo, main } from "../cli/mod.ts";
import { Nenc } from "../core/app.ts";
import type { Runner } from "../core/runner.ts";
import { CanceledError, CycleDetectedError } from "../core/errors.ts";
import type { InvocationRecord, LiveGraphs } from "../core/store.ts";
import type { Task } from "../core/task.ts";
import { APP_ID, defineTasks } from "./_cli_app.ts";
import { FakeClock } from "./_fake_clock.ts";
import { openTestKv } from "./_kv.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { Keys } from "../kv/keys.ts";
import { KV_SCHEMA_VERSION } from "../kv/store.ts";
import { findAll, parseXml, textOf, type XmlElement } from "./_xml.ts";

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
 * Starts `deno run -A cli/mod.ts …args` in the repository root; killed after 60 s at the latest.
 * `Deno.Command`, not `node:child_process`: Deno's `spawn` reports a child that handled a
 * SIGTERM and exited 0 as killed by the signal.
 */
function startCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/mod.ts", ...args],
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
async function openFixtureApp(
  path: string,
  options: { childGate?: Promise<void>; clock?: FakeClock } = {},
) {
  const kv = await openTestKv(path);
  const app = new Nenc({ appId: APP_ID, kv, ...options.clock ? { clock: options.clock } : {} });
  return { kv, app, tasks: defineTasks(app, options) };
}

/** Runs a CLI command on the KV file to its end. */
function cli(command: readonly string[], path: string, env: Record<string, string> = {}) {
  return startCli([...command, "--app", "tests/_cli_app.ts", "--kv", path], env).exit;
}

/**
 * This process's app on the KV file with a runner whose `child` and `deploy` wait until `open()`,
 * running `fn`; then the gate opens, the runner stops and the KV closes.
 */
async function withGatedRunner(
  path: string,
  fn: (
    fixture: Awaited<ReturnType<typeof openFixtureApp>> & { runner: Runner; open: () => void },
  ) => Promise<void>,
): Promise<void> {
  let open!: () => void;
  const childGate = new Promise<void>((resolve) => open = resolve);
  const fixture = await openFixtureApp(path, { childGate });
  const runner = fixture.app.runner({ concurrency: 4, pollMs: 10 });
  runner.start();
  try {
    await fn({ ...fixture, runner, open });
  } finally {
    open();
    await within(runner.stop(), DEADLINE_MS, "the runner to stop");
    fixture.kv.close();
  }
}

/**
 * Waits until the parent waits on its two children and both run (their call edges are in, and the
 * holders of both ends: graphs() lists holders, edges and waits one after the other, so a claim
 * that commits between its lists shows its edge without its holders), a hang guard, not a time
 * limit; resolves to the live graphs then.
 */
async function parentWaiting(app: Nenc): Promise<LiveGraphs> {
  let graphs!: LiveGraphs;
  await waitUntil(async () => {
    graphs = await app.orchestrator.store.graphs();
    const held = new Set(graphs.calls.calls.map(({ callId }) => callId));
    return graphs.waits.length === 2 && graphs.calls.edges.length === 2 &&
      graphs.calls.edges.flat().every((callId) => held.has(callId));
  }, {
    intervalMs: 10,
    message: "the parent never waited on both children running",
  });
  return graphs;
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

test("cli: an unknown option, and an option of another command, exit 2", async () => {
  const unknown = await runMain(["worker", "--app", fixture("_cli_app.ts"), "--speed", "9"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Cannot parse the arguments: .*--speed/);
  const misplaced = await runMain(["status", "--app", fixture("_cli_app.ts"), "--all"]);
  assert.equal(misplaced.code, 2);
  assert.match(misplaced.stderr, /Cannot run status: --all is not an option of status/);
});

test("cli: show without an invocation id, or with two, exits 2", async () => {
  const none = await runMain(["show", "--app", fixture("_cli_app.ts")]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /Cannot run show: give the invocation id \(show <invocationId>\)/);
  const two = await runMain(["show", "A", "B", "--app", fixture("_cli_app.ts")]);
  assert.equal(two.code, 2);
  assert.match(two.stderr, /Cannot run show: unexpected argument B/);
});

test("cli: graph --format other than mermaid or dot, or --svg with --format, exits 2", async () => {
  const bad = await runMain(["graph", "--app", fixture("_cli_app.ts"), "--format", "png"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--format must be mermaid or dot, got "png"/);
  for (const format of ["mermaid", "dot"]) {
    const svg = await runMain([
      "graph",
      "--app",
      fixture("_cli_app.ts"),
      "--format",
      format,
      "--svg",
      "out.svg",
    ]);
    assert.equal(svg.code, 2);
    assert.match(svg.stderr, /--svg draws an SVG file, not text; leave out --format/);
  }
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

test("cli: status, list, show, cancel, schedules, purge and graph on an app in this process's memory (no --kv) exit 2 saying they read a shared store", async () => {
  for (
    const command of [
      ["status"],
      ["list"],
      ["show", "01ABC"],
      ["cancel", "01ABC"],
      [
        "schedules",
      ],
      ["purge"],
      ["graph"],
    ]
  ) {
    const { code, stdout, stderr } = await runMain([...command, "--app", fixture("_cli_app.ts")]);
    assert.equal(code, 2, command[0]);
    assert.equal(stdout, "");
    assert.match(
      stderr,
      new RegExp(
        `Cannot run ${command[0]}: app cli-test keeps its data in this process's memory, and ${
          command[0]
        } reads a shared store; pass --kv <path\\|url>`,
      ),
    );
  }
});

test("cli: list with a --status that is no status, a --since that is no duration, a --limit that is not an integer ≥ 1, or an empty --task exits 2 naming the value", async () => {
  const cases: [string[], RegExp][] = [
    [["--status", "done"], /--status must be among registered, .*canceled; got "done"/],
    [["--status", "success,nope"], /--status must be among .*; got "nope"/],
    [["--since", "10x"], /--since must be a duration such as 90s, 10m, 2h, 1d or 500ms; got "10x"/],
    [["--since=-5m"], /--since must be a duration .*; got "-5m"/],
    [["--limit", "0"], /--limit must be an integer ≥ 1, got "0"/],
    [["--limit", "ten"], /--limit must be an integer ≥ 1, got "ten"/],
    [["--task", ","], /--task needs a task id/],
  ];
  for (const [options, message] of cases) {
    const { code, stdout, stderr } = await runMain([
      "list",
      "--app",
      fixture("_cli_app.ts"),
      ...options,
    ]);
    assert.equal(code, 2, options.join(" "));
    assert.equal(stdout, "");
    assert.match(stderr, new RegExp(`^nenc: Cannot run list: ${message.source}`));
  }
});

test("cli: cancel without an invocation id exits 2; --tree is an option of show only", async () => {
  const none = await runMain(["cancel", "--app", fixture("_cli_app.ts")]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /Cannot run cancel: give the invocation id \(cancel <invocationId>\)/);
  const tree = await runMain(["status", "--tree", "--app", fixture("_cli_app.ts")]);
  assert.equal(tree.code, 2);
  assert.match(tree.stderr, /Cannot run status: --tree is not an option of status/);
});

test("cli: purge --force without --all exits 2", async () => {
  const { code, stderr } = await runMain(["purge", "--force", "--app", fixture("_cli_app.ts")]);
  assert.equal(code, 2);
  assert.match(stderr, /Cannot run purge: --force applies to purge --all only/);
});

test("cli: every command on an app whose own KV store is closed exits 1 saying the store is closed", async () => {
  for (
    const command of [
      ["worker"],
      ["status"],
      ["list"],
      ["show", "01ABC"],
      ["cancel", "01ABC"],
      [
        "schedules",
      ],
      ["purge"],
      ["graph"],
    ]
  ) {
    const { code, stdout, stderr } = await runMain([
      ...command,
      "--app",
      fixture("_cli_closed_app.ts"),
    ]);
    assert.equal(code, 1, `${command[0]}: ${stderr}`);
    assert.equal(stdout, "", command[0]);
    assert.match(
      stderr,
      new RegExp(
        `^nenc: Cannot run ${
          command[0]
        }: the store of app cli-closed is closed \\(Cannot (read|commit): the KV store is closed\\)\n$`,
      ),
    );
  }
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
          await within(
            Promise.all(invocations.map((invocation) => invocation.result())),
            DEADLINE_MS,
            "the worker's results",
          ),
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

/**
 * What a worker printed when it ran one `pay` (which fails) and one `add` called from this
 * process, and was stopped.
 */
interface WorkerRun {
  readonly exit: Exit;
  readonly runnerId: string;
  /** The failed invocation's id. */
  readonly failedId: string;
  /** The lines of its standard output. */
  readonly lines: string[];
}

/**
 * Runs `worker --app <module> --kv path …args` (with `env`), calls `pay({ card })` and
 * `add({ x: 1, y: 2 })` and, once both ended and the worker logged the failure (`quiet`: without
 * waiting for a log line), stops the worker with SIGTERM.
 */
async function runFailingWorker(
  path: string,
  options: {
    readonly module?: string;
    readonly args?: readonly string[];
    readonly env?: Record<string, string>;
    readonly card: string;
    readonly quiet?: boolean;
  },
): Promise<WorkerRun> {
  const module = options.module ?? "tests/_cli_app.ts";
  const worker = startCli(
    ["worker", "--app", module, "--kv", path, ...options.args ?? []],
    options.env,
  );
  const { kv, tasks } = await openFixtureApp(path);
  try {
    const [, runnerId] = await worker.waitFor(/nenc worker (\S+) started: /);
    const failed = await tasks.pay.call({ card: options.card });
    const added = await tasks.add.call({ x: 1, y: 2 });
    assert.equal(await within(added.result(), DEADLINE_MS, "the success"), 3);
    await within(failed.result().catch(() => {}), DEADLINE_MS, "the failure");
    if (!options.quiet) {
      await worker.waitFor(new RegExp(`invocation ${failed.id} \\(task pay\\) failed`));
    }
    worker.kill("SIGTERM");
    const exit = await worker.exit;
    assert.equal(exit.code, 0, exit.stderr);
    return {
      exit,
      runnerId: runnerId!,
      failedId: failed.id,
      lines: exit.stdout.trimEnd().split("\n"),
    };
  } finally {
    worker.kill("SIGKILL");
    await worker.exit;
    kv.close();
  }
}

test(
  "cli worker --log-format json: every line of standard output is one JSON object — the start and stop lines, and an error naming the failed invocation (id, task, runner, error name and message); no line per success",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const run = await runFailingWorker(path, { args: ["--log-format", "json"], card: "4242" });
      const { runnerId, failedId } = run;
      const lines = run.lines.map((line) => JSON.parse(line));
      for (const line of lines) {
        assert.equal(typeof line.level, "string");
        assert.ok(!Number.isNaN(Date.parse(line.time)), `an ISO time: ${line.time}`);
        assert.equal(typeof line.message, "string");
      }
      assert.deepEqual(lines, [
        {
          level: "info",
          time: lines[0].time,
          message:
            `nenc worker ${runnerId} started: app cli-test, backend Deno KV ${path}, concurrency 1`,
          runnerId,
          appId: "cli-test",
          backend: `Deno KV ${path}`,
          concurrency: 1,
        },
        {
          level: "error",
          time: lines[1].time,
          message:
            `invocation ${failedId} (task pay) failed: RangeError: Cannot pay with card 4242: declined`,
          runnerId,
          invocationId: failedId,
          taskId: "pay",
          attempt: 1,
          retried: false,
          error: { name: "RangeError", message: "Cannot pay with card 4242: declined" },
        },
        {
          level: "info",
          time: lines[2].time,
          message: `nenc worker ${runnerId} stopped on SIGTERM: 2 invocations finished`,
          runnerId,
          signal: "SIGTERM",
          finished: 2,
        },
      ]);
    });
  },
);

test(
  "cli worker logs as text by default: a failed invocation is one readable line with its id and fields, between the start and stop lines; NENC_LOG_LEVEL=silent leaves only those",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const { lines, runnerId, failedId } = await runFailingWorker(path, { card: "info" });
      assert.equal(lines.length, 3, lines.join("\n"));
      assert.match(lines[0]!, /^nenc worker \S+ started: app cli-test/);
      assert.equal(
        lines[1]!.replace(/^\S+ /, "TIME "),
        `TIME ERROR invocation ${failedId} (task pay) failed: RangeError: Cannot pay with card info: declined runnerId=${runnerId} invocationId=${failedId} taskId=pay attempt=1 retried=false error={"name":"RangeError","message":"Cannot pay with card info: declined"}`,
      );
      assert.ok(!Number.isNaN(Date.parse(lines[1]!.split(" ")[0]!)), "starts with an ISO time");
      assert.match(lines[2]!, /^nenc worker \S+ stopped on SIGTERM: 2 invocations finished$/);
      const silent = await runFailingWorker(path, {
        env: { NENC_LOG_LEVEL: "silent" },
        card: "silent",
        quiet: true,
      });
      assert.equal(silent.lines.length, 2, silent.lines.join("\n"));
      assert.match(silent.lines[1]!, /stopped on SIGTERM: 2 invocations finished$/);
    });
  },
);

test(
  "cli worker: an app module that sets its own logger keeps it (its lines, not the worker's), unless --log-format is given",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const module = "tests/_cli_logger_app.ts";
      const own = await runFailingWorker(path, { module, card: "own" });
      assert.equal(
        own.lines[1],
        `app-logger error: invocation ${own.failedId} (task pay) failed: RangeError: Cannot pay with card own: declined`,
      );
      const json = await runFailingWorker(path, {
        module,
        args: ["--log-format", "json"],
        card: "json",
      });
      assert.ok(!json.exit.stdout.includes("app-logger"), json.exit.stdout);
      assert.equal(JSON.parse(json.lines[1]!).invocationId, json.failedId);
    });
  },
);

test("cli worker: --log-format other than text or json exits 2", async () => {
  const { code, stderr } = await runMain([
    "worker",
    "--app",
    fixture("_cli_app.ts"),
    "--log-format",
    "xml",
  ]);
  assert.equal(code, 2);
  assert.match(stderr, /Cannot run worker: --log-format must be text or json, got "xml"/);
  const misplaced = await runMain([
    "status",
    "--app",
    fixture("_cli_app.ts"),
    "--log-format",
    "json",
  ]);
  assert.equal(misplaced.code, 2);
  assert.match(misplaced.stderr, /--log-format is not an option of status/);
});

// --- inspection ----------------------------------------------------------------------------------

test(
  "cli status: prints invocations per task and status, the delayed ones with the next due, the rate limits' windows, each key in use with its limit, holder and parked, the runners with heartbeat age, tasks and the invocations they hold, and the queued tasks no live runner defines",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, tasks } = await openFixtureApp(path);
      try {
        await tasks.add.call({ x: 1, y: 2 });
        await tasks.pay.call({ card: "4242" });
        await tasks.add.call({ x: 3, y: 4 });
        const drained = await within(app.runner().drain({ maxMs: 30_000 }), 60_000, "the drain");
        assert.equal(drained.invocations, 3);
        await tasks.add.call({ x: 5, y: 6 });
        await tasks.add.call({ x: 7, y: 8 }, { delayMs: 3_600_000 });
        // One pick-up an hour: the first is taken, the second parks on the rate limit key.
        await tasks.notify.parallelize([{ to: "ada" }, { to: "bob" }]);
        // One deploy per environment at once: the second to prod parks on prod's key.
        const [prod, prodNext, dev] = (await tasks.deploy.parallelize([
          { env: "prod" },
          { env: "prod" },
          { env: "dev" },
        ])).invocations;
        const claimed = await app.orchestrator.getInvocationsToRun(10, { runnerId: "runner-live" });
        assert.equal(claimed.length, 4);
        const store = app.orchestrator.store;
        await store.heartbeat("runner-live", Date.now(), ["add", "deploy", "notify"]);
        // Only a runner presumed dead defines child: nothing will run it.
        await store.heartbeat("runner-gone", Date.now() - 60_000, ["child"]);
        await tasks.child.call({ i: 1 });
        const { code, stdout, stderr } = await cli(["status"], path);
        assert.equal(code, 0, stderr);
        const [counts, delayed, rates, keys, runners, unserved] = stdout.split("\n\n");
        assert.equal(
          counts,
          "task    registered  pending  success  failed  concurrency_controlled  total\n" +
            "add              1        1        2       0                       0      4\n" +
            "child            1        0        0       0                       0      1\n" +
            "deploy           0        2        0       0                       1      3\n" +
            "notify           0        1        0       0                       1      2\n" +
            "pay              0        0        0       1                       0      1",
        );
        const [keysHeader, ...keyRows] = keys!.split("\n");
        assert.match(
          keysHeader!,
          /^concurrency +key +limit +holders +parked +held by +parked \(next first\)$/,
        );
        // Sorted, the key without a parked invocation (dev's) comes first.
        const rows = keyRows.map((row) => row.replace(/deploy#[0-9a-f]{8}…#keys/, "KEY")).sort();
        assert.equal(rows.length, 2, keys);
        assert.match(rows[0]!, new RegExp(`^task deploy +KEY +1 +1 +0 +${dev!.id} +-$`));
        assert.match(
          rows[1]!,
          new RegExp(`^task deploy +KEY +1 +1 +1 +${prod!.id} +${prodNext!.id}$`),
        );
        const held = claimed.map(({ id }) => id).sort().join(",");
        assert.match(
          runners!,
          new RegExp(
            `^runner +last heartbeat +tasks +holds\n` +
              `runner-live +\\d+\\.\\d s ago +add,deploy,notify +${held}\n` +
              `runner-gone +\\d+\\.\\d s ago \\(silent: presumed dead\\) +child +-$`,
          ),
        );
        assert.equal(unserved, "Queued, but no live runner defines them: child\n");
        assert.equal(
          rates,
          "rate limit         limit  keys  busiest window  parked\n" +
            "notify      1 / 60.0 min     1               1       1",
        );
        assert.match(
          delayed!,
          /^delayed {2}waiting {5}next due\nadd {12}1 {2}in (59\.9|60\.0) min$/,
        );
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli show: prints a parent's record, history with ISO times, result and children, a failure's error with its cause chain, and exits 1 for an unknown id",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, tasks } = await openFixtureApp(path);
      try {
        const parent = await tasks.parent.call({ n: 2 });
        const pay = await tasks.pay.call({ card: "4242" });
        await within(app.runner({ concurrency: 2 }).drain({ maxMs: 30_000 }), 60_000, "the drain");
        assert.equal(await within(parent.result(), DEADLINE_MS, "the parent's result"), 1);
        const children: string[] = [];
        for await (const child of app.orchestrator.getExistingInvocations(tasks.child)) {
          children.push(child.id);
        }
        assert.equal(children.length, 2);

        const shown = await cli(["show", parent.id], path);
        assert.equal(shown.code, 0, shown.stderr);
        const lines = shown.stdout.split("\n");
        assert.match(shown.stdout, new RegExp(`^invocation  ${parent.id}\ntask        parent\n`));
        assert.ok(lines.includes('args        {"n":2}'), shown.stdout);
        assert.ok(lines.includes("status      success"), shown.stdout);
        assert.ok(lines.includes("retries     0"), shown.stdout);
        assert.ok(lines.includes("parent      none"), shown.stdout);
        assert.ok(lines.includes("children    2"), shown.stdout);
        for (const id of children) {
          assert.match(
            shown.stdout,
            new RegExp(`^  ${id}  child\\(\\{"i":\\d\\}\\)  success$`, "m"),
          );
        }
        assert.match(shown.stdout, /^ {2}\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z {2}registered$/m);
        assert.match(shown.stdout, /^ {2}\S+Z {2}paused +runner-/m);
        assert.ok(lines.includes("result      1"), shown.stdout);

        const child = await cli(["show", children[0]!], path);
        assert.match(
          child.stdout,
          new RegExp(`^parent      ${parent.id}  parent\\(\\{"n":2\\}\\)  success$`, "m"),
        );

        const failed = await cli(["show", pay.id], path);
        assert.equal(failed.code, 0, failed.stderr);
        assert.ok(failed.stdout.split("\n").includes("status      failed"), failed.stdout);
        assert.ok(
          failed.stdout.endsWith(
            "error       RangeError: Cannot pay with card 4242: declined\n" +
              "  caused by Error: the bank said no\n" +
              '  caused by "insufficient funds"\n',
          ),
          failed.stdout,
        );

        const unknown = await cli(["show", "01NOSUCHINVOCATION"], path);
        assert.equal(unknown.code, 1);
        assert.match(
          unknown.stderr,
          /Cannot show invocation 01NOSUCHINVOCATION: app cli-test has no such invocation/,
        );
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli list: newest first with id, task, status, age and runner; --task, --status, --since and --limit filter, together too; --json prints one JSON array of the records",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      // Two hours ago on this app's clock: add(1,2), pay (failed), add(3,4) claimed by r1.
      const clock = new FakeClock(Date.now() - 2 * 3_600_000);
      const { kv, app, tasks } = await openFixtureApp(path, { clock });
      try {
        const old = [await tasks.add.call({ x: 1, y: 2 }), await tasks.pay.call({ card: "4242" })];
        await within(app.runner().drain({ maxMs: 30_000 }), 60_000, "the drain");
        const claimed = await tasks.add.call({ x: 3, y: 4 });
        await app.orchestrator.getInvocationsToRun(1, { runnerId: "runner-1" });
        // Now: two more, queued.
        clock.advance(Date.now() - clock.now());
        const recent = [
          await tasks.add.call({ x: 5, y: 6 }),
          await tasks.notify.call({ to: "ada" }),
        ];
        const all = await cli(["list"], path);
        assert.equal(all.code, 0, all.stderr);
        const [header, ...rows] = all.stdout.trimEnd().split("\n");
        assert.match(header!, /^invocation +task +status +age +runner$/);
        assert.deepEqual(rows.map((row) => row.split(/ +/)[0]), [
          recent[1]!.id,
          recent[0]!.id,
          claimed.id,
          old[1]!.id,
          old[0]!.id,
        ]);
        assert.match(rows[0]!, /^\S+ +notify +registered +\d+\.\d s +-$/);
        assert.match(rows[2]!, /^\S+ +add +pending +2\.0 h +runner-1$/);
        assert.match(rows[3]!, /^\S+ +pay +failed +2\.0 h +-$/);

        const listed = async (...options: string[]): Promise<string[]> => {
          const { code, stdout, stderr } = await cli(["list", ...options], path);
          assert.equal(code, 0, stderr);
          return stdout.trimEnd().split("\n").slice(1).map((row) => row.split(" ")[0]!);
        };
        assert.deepEqual(await listed("--task", "add"), [recent[0]!.id, claimed.id, old[0]!.id]);
        assert.deepEqual(await listed("--task", "pay,notify"), [recent[1]!.id, old[1]!.id]);
        assert.deepEqual(await listed("--task", "pay", "--task", "notify"), [
          recent[1]!.id,
          old[1]!.id,
        ]);
        assert.deepEqual(await listed("--status", "success,failed"), [old[1]!.id, old[0]!.id]);
        assert.deepEqual(await listed("--since", "1h"), [recent[1]!.id, recent[0]!.id]);
        assert.deepEqual(await listed("--limit", "2"), [recent[1]!.id, recent[0]!.id]);
        assert.deepEqual(
          await listed("--task", "add", "--status", "registered,pending", "--since", "3h"),
          [recent[0]!.id, claimed.id],
        );
        const none = await cli(["list", "--task", "child"], path);
        assert.equal(none.stdout, "No invocations match.\n");

        const json = await cli(["list", "--json", "--task", "add", "--limit", "2"], path);
        assert.equal(json.code, 0, json.stderr);
        assert.equal(json.stdout.split("\n").length, 2, "one line");
        const records = JSON.parse(json.stdout) as InvocationRecord[];
        assert.deepEqual(records.map(({ id }) => id), [recent[0]!.id, claimed.id]);
        assert.deepEqual(records[1], await app.orchestrator.store.get(claimed.id));
        assert.equal((await cli(["list", "--json", "--task", "child"], path)).stdout, "[]\n");
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli show --tree: prints a paused parent and its two running children, with their calls and statuses, as an indented tree",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile((path) =>
      withGatedRunner(path, async ({ app, tasks, open }) => {
        const parent = await tasks.parent.call({ n: 2 });
        await parentWaiting(app);
        const children = (await app.orchestrator.store.children(parent.id)).map(({ id }) => id);
        const shown = await cli(["show", parent.id, "--tree"], path);
        assert.equal(shown.code, 0, shown.stderr);
        assert.equal(
          shown.stdout,
          `${parent.id}  parent({"n":2})  paused\n` +
            `├─ ${children[0]}  child({"i":0})  running\n` +
            `└─ ${children[1]}  child({"i":1})  running\n`,
        );
        open();
        assert.equal(await within(parent.result(), DEADLINE_MS, "the parent's result"), 1);
        const done = await cli(["show", "--tree", parent.id], path);
        assert.equal(
          done.stdout,
          `${parent.id}  parent({"n":2})  success\n` +
            `├─ ${children[0]}  child({"i":0})  success\n` +
            `└─ ${children[1]}  child({"i":1})  success\n`,
        );
        const unknown = await cli(["show", "01NOSUCHINVOCATION", "--tree"], path);
        assert.equal(unknown.code, 1);
        assert.match(
          unknown.stderr,
          /Cannot show invocation 01NOSUCHINVOCATION: app cli-test has no such invocation/,
        );
      })
    );
  },
);

test(
  "cli cancel: cancels a running invocation (it ends canceled, its result() rejects with the reason), cascades from a paused parent to its running children, says when one is already final, and exits 1 for an unknown id",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile((path) =>
      withGatedRunner(path, async ({ app, tasks, runner }) => {
        const lone = await tasks.child.call({ i: 9 });
        const parent = await tasks.parent.call({ n: 2 });
        await parentWaiting(app);
        await waitUntil(async () => await lone.status() === "running", {
          intervalMs: 10,
          message: "the lone child never ran",
        });
        const children = (await app.orchestrator.store.children(parent.id)).map(({ id }) => id);

        const canceled = await cli(["cancel", lone.id, "--reason", "the test is over"], path);
        assert.equal(canceled.code, 0, canceled.stderr);
        assert.equal(
          canceled.stdout,
          `Canceled invocation ${lone.id} (child), which was running: its runner ${runner.id} aborts it within one poll.\n`,
        );
        assert.equal(await lone.status(), "canceled");
        const error = await lone.result().catch((error: unknown) => error);
        assert.ok(error instanceof CanceledError, String(error));
        assert.equal(error.reason, "the test is over");

        const cascade = await cli(["cancel", parent.id], path);
        assert.equal(cascade.code, 0, cascade.stderr);
        assert.equal(
          cascade.stdout,
          `Canceled invocation ${parent.id} (parent), which was paused: its runner ${runner.id} aborts it within one poll.\n` +
            `Canceled with it 2 of its descendants: ${children.join(", ")}.\n`,
        );
        assert.equal(await parent.status(), "canceled");
        for (const id of children) {
          assert.equal(await app.orchestrator.getInvocationStatus({ id }), "canceled");
        }

        const again = await cli(["cancel", lone.id], path);
        assert.equal(again.code, 0, again.stderr);
        assert.equal(
          again.stdout,
          `Invocation ${lone.id} (child) is already canceled: nothing to cancel.\n`,
        );
        const unknown = await cli(["cancel", "01NOSUCHINVOCATION"], path);
        assert.equal(unknown.code, 1);
        assert.match(
          unknown.stderr,
          /^nenc: Cannot cancel invocation 01NOSUCHINVOCATION: app cli-test has no such invocation/,
        );
      })
    );
  },
);

/** The names and bytes of every file in `directory`. */
function snapshot(directory: string): Map<string, string> {
  return new Map(
    readdirSync(directory).sort().map((name) => [
      name,
      createHash("sha256").update(readFileSync(join(directory, name))).digest("hex"),
    ]),
  );
}

/** The commands that only read, with an invocation id where they take one (and cancel). */
const READ_ONLY = [
  ["status"],
  ["list"],
  ["show", "01ABC"],
  ["show", "01ABC", "--tree"],
  [
    "schedules",
  ],
  ["graph"],
  ["cancel", "01ABC"],
];

test(
  "cli: status, list, show, schedules, graph and cancel on a --kv path that does not exist exit 2 and create no file",
  { skip: onlyDeno },
  async () => {
    const directory = mkdtempSync(join(tmpdir(), "nenc-cli-missing-"));
    try {
      const path = join(directory, "nenc.db");
      for (const command of READ_ONLY) {
        const { code, stdout, stderr } = await runMain([
          ...command,
          "--app",
          fixture("_cli_app.ts"),
          "--kv",
          path,
        ]);
        assert.equal(code, 2, command.join(" "));
        assert.equal(stdout, "");
        assert.match(
          stderr,
          new RegExp(
            `^nenc: Cannot run ${command[0]}: --kv \\S+nenc\\.db does not exist, and ${
              command[0]
            } never creates a store;`,
          ),
        );
        assert.deepEqual(readdirSync(directory), [], command.join(" "));
      }
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  },
);

test(
  "cli: status, list, show, schedules, graph and cancel leave foreign files byte-identical, with no -wal or -shm file: a text file, an empty file and a SQLite database that is not KV are refused (exit 1); a KV file of another app is read",
  { skip: onlyDeno },
  async () => {
    const directory = mkdtempSync(join(tmpdir(), "nenc-cli-foreign-"));
    try {
      writeFileSync(join(directory, "notes.txt"), "not a database\n");
      writeFileSync(join(directory, "empty.db"), "");
      const { DatabaseSync } = await import("node:sqlite");
      const sqlite = new DatabaseSync(join(directory, "other.sqlite"));
      sqlite.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1);");
      sqlite.close();
      const kv = await openTestKv(join(directory, "other-app.db"));
      await kv.atomic().set(["some", "other", "app"], "data").commit();
      kv.close();
      const before = snapshot(directory);
      for (const file of ["notes.txt", "empty.db", "other.sqlite"]) {
        for (const command of READ_ONLY) {
          const { code, stdout, stderr } = await runMain([
            ...command,
            "--app",
            fixture("_cli_app.ts"),
            "--kv",
            join(directory, file),
          ]);
          assert.equal(code, 1, `${command.join(" ")} on ${file}`);
          assert.equal(stdout, "");
          assert.match(
            stderr,
            new RegExp(
              `^nenc: Cannot run ${command[0]}: --kv \\S+${
                file.replace(".", "\\.")
              } is not a Deno KV file; ${command[0]} leaves it unopened and unchanged\n$`,
            ),
          );
        }
      }
      // Opened (a process each: an app moves onto a KV once).
      for (const command of READ_ONLY) {
        const { code, stderr } = await cli(command, join(directory, "other-app.db"));
        const unknownId = command.includes("01ABC");
        assert.equal(code, unknownId ? 1 : 0, `${command.join(" ")}: ${stderr}`);
        if (unknownId) assert.match(stderr, /app cli-test has no such invocation/);
      }
      assert.deepEqual(snapshot(directory), before);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  },
);

test(
  "cli: status, list, show, schedules and graph on the app's own KV file, closed by every other process, leave it byte-identical with no -wal or -shm file",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, tasks } = await openFixtureApp(path);
      const parent = await tasks.parent.call({ n: 2 });
      await tasks.pay.call({ card: "4242" });
      await tasks.add.call({ x: 1, y: 2 });
      await within(app.runner({ concurrency: 3 }).drain({ maxMs: 30_000 }), 60_000, "the drain");
      kv.close();
      const directory = dirname(path);
      const before = snapshot(directory);
      assert.deepEqual([...before.keys()], ["nenc.db"]);
      for (
        const command of [
          ["status"],
          ["list"],
          ["list", "--json"],
          ["show", parent.id],
          [
            "show",
            parent.id,
            "--tree",
          ],
          ["schedules"],
          ["graph"],
        ]
      ) {
        const { code, stderr } = await cli(command, path);
        assert.equal(code, 0, `${command.join(" ")}: ${stderr}`);
        assert.deepEqual(snapshot(directory), before, command.join(" "));
      }
    });
  },
);

test(
  "cli schedules: prints each schedule's cron, timezone, call and next tick, and the last tick fired with its invocation and that one's status",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      // On this app's clock, the tick of a minute a few minutes ago fired and ran.
      const minuteMs = Math.floor(Date.now() / 60_000) * 60_000 - 5 * 60_000;
      const clock = new FakeClock(minuteMs + 30_000);
      const { kv, app, tasks } = await openFixtureApp(path, { clock });
      try {
        await app.schedule("minutely", {
          cron: "* * * * *",
          task: tasks.add,
          args: { x: 1, y: 2 },
        });
        await app.schedule("new-year", {
          cron: "0 0 1 1 *",
          task: "pay",
          args: { card: "4242" },
          timezone: "Europe/Berlin",
        });
        clock.advance(31_000);
        await within(app.runner().drain({ maxMs: 30_000 }), 60_000, "the drain");
        const [minutely] = await app.orchestrator.store.schedules();
        assert.equal(minutely!.lastTickMs, minuteMs + 60_000);
        const tick = new Date(minuteMs + 60_000).toISOString().replace(".", "\\.");

        const { code, stdout, stderr } = await cli(["schedules"], path);
        assert.equal(code, 0, stderr);
        const [header, first, second, end] = stdout.split("\n");
        assert.match(
          header!,
          /^schedule +cron +timezone +task +next tick +last tick +last invocation +status$/,
        );
        assert.match(
          first!,
          new RegExp(
            `^minutely +\\* \\* \\* \\* \\* +UTC +add\\(\\{"x":1,"y":2\\}\\) +\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:00\\.000Z +${tick} +${
              minutely!.lastInvocationId
            } +success$`,
          ),
        );
        // The next new year in Berlin after now (the CLI's clock): 23:00 UTC on December 31.
        const now = new Date();
        const newYear = Date.UTC(now.getUTCFullYear(), 11, 31, 23);
        const next = new Date(
          Date.now() < newYear ? newYear : Date.UTC(now.getUTCFullYear() + 1, 11, 31, 23),
        );
        assert.match(
          second!,
          new RegExp(
            `^new-year +0 0 1 1 \\* +Europe/Berlin +pay\\(\\{"card":"4242"\\}\\) +${
              next.toISOString().replace(/\./, "\\.")
            } +- +- +-$`,
          ),
        );
        assert.equal(end, "");
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli purge: deletes the final invocations past their purge time and prints how many; --all deletes everything of the app",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      // Finished two days ago on this app's clock: past the default 24 h purge horizon now.
      const clock = new FakeClock(Date.now() - 48 * 3_600_000);
      const { kv, app, tasks } = await openFixtureApp(path, { clock });
      try {
        const done = [await tasks.add.call({ x: 1, y: 2 }), await tasks.add.call({ x: 3, y: 4 })];
        const claimed = await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" });
        assert.equal(claimed.length, 2);
        for (const invocation of done) {
          await app.orchestrator.setInvocationRun(undefined, invocation, { runnerId: "r1" });
          await app.orchestrator.setInvocationResult(invocation, 0, { runnerId: "r1" });
        }
        const waiting = await tasks.add.call({ x: 5, y: 6 });

        const purged = await cli(["purge"], path);
        assert.equal(purged.code, 0, purged.stderr);
        assert.equal(
          purged.stdout,
          "Purged 2 final invocations of app cli-test past their purge time (autoFinalInvocationPurgeHours: 24).\n",
        );
        assert.equal(await app.orchestrator.getInvocation(done[0]!.id), undefined);
        assert.equal((await app.orchestrator.getInvocation(waiting.id))?.id, waiting.id);

        const all = await cli(["purge", "--all"], path);
        assert.equal(all.code, 0, all.stderr);
        assert.equal(all.stdout, "Purged all data of app cli-test.\n");
        assert.equal(await app.orchestrator.getInvocation(waiting.id), undefined);
        assert.equal((await cli(["status"], path)).stdout, "No invocations.\n\nNo runners.\n");
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli graph: prints the live call and wait graphs of a parent waiting on two children as Mermaid and DOT, and nothing live once they finish",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile((path) =>
      withGatedRunner(path, async ({ app, tasks, open }) => {
        const parent = await tasks.parent.call({ n: 2 });
        await parentWaiting(app);
        const mermaid = await cli(["graph"], path);
        assert.equal(mermaid.code, 0, mermaid.stderr);
        assert.match(
          mermaid.stdout,
          /^flowchart LR\n {2}subgraph calls \["call graph: caller → callee"\]\n/,
        );
        assert.match(
          mermaid.stdout,
          new RegExp(`c\\d\\["parent\\(\\{#quot;n#quot;:2\\}\\)<br/>${parent.id}"\\]`),
        );
        assert.match(
          mermaid.stdout,
          new RegExp(`w0\\["parent\\(\\{#quot;n#quot;:2\\}\\) paused<br/>${parent.id}"\\]`),
        );
        assert.match(mermaid.stdout, /w\d\["child\(\{#quot;i#quot;:0\}\) running<br\/>/);
        assert.equal(mermaid.stdout.match(/^ {4}c\d --> c\d$/gm)?.length, 2);
        assert.deepEqual(mermaid.stdout.match(/^ {4}w\d --> w\d$/gm), [
          "    w0 --> w1",
          "    w0 --> w2",
        ]);

        const dot = await cli(["graph", "--format", "dot"], path);
        assert.equal(dot.code, 0, dot.stderr);
        assert.match(dot.stdout, /^digraph nenc \{\n/);
        assert.match(
          dot.stdout,
          new RegExp(`\\[label="parent\\(\\{\\\\"n\\\\":2\\}\\)\\\\n${parent.id}"\\]`),
        );
        assert.equal(dot.stdout.match(/^ {4}c\d -> c\d;$/gm)?.length, 2);
        assert.deepEqual(dot.stdout.match(/^ {4}w\d -> w\d;$/gm), [
          "    w0 -> w1;",
          "    w0 -> w2;",
        ]);

        open();
        assert.equal(await within(parent.result(), DEADLINE_MS, "the parent's result"), 1);
        const empty = await cli(["graph"], path);
        assert.equal(empty.stdout, "flowchart LR\n  %% no live calls, no waits\n");
      })
    );
  },
);

test(
  "cli graph --svg: draws the live graphs of a parent paused waiting on two running children into an SVG file that parses as XML — both children and the parent in each graph, as many arrows as edges — with no Graphviz on the PATH",
  { skip: onlyDeno },
  async () => {
    await withKvFile((path) =>
      withGatedRunner(path, async ({ app, tasks }) => {
        const parent = await tasks.parent.call({ n: 2 });
        const graphs = await parentWaiting(app);
        const noDot = mkdtempSync(join(tmpdir(), "nenc-no-dot-"));
        try {
          const file = join(noDot, "live.svg");
          const drawn = await cli(["graph", "--svg", file], path, { PATH: noDot });
          assert.equal(drawn.code, 0, drawn.stderr);
          assert.equal(drawn.stdout, `Wrote ${file}.\n`);
          const tree = parseXml(readFileSync(file, "utf8"));
          assert.equal(tree.name, "svg");
          const section = (name: string): XmlElement =>
            findAll(tree, (element) => element.attributes["data-graph"] === name)[0]!;
          const nodesOf = (name: string): Map<string, Readonly<Record<string, string>>> =>
            new Map(
              findAll(section(name), (element) => element.attributes["data-node"] !== undefined)
                .map((node) => [node.attributes["data-node"]!, node.attributes]),
            );
          const edgesOf = (name: string): XmlElement[] =>
            findAll(section(name), (element) => element.attributes["data-from"] !== undefined);
          // The wait-for graph: the parent, paused (it freed its slot), and its running children.
          const children = graphs.waits.map(([, child]) => child);
          const waits = nodesOf("waits");
          assert.deepEqual([...waits.keys()].sort(), [parent.id, ...children].sort());
          assert.equal(waits.get(parent.id)!["data-status"], "paused");
          assert.equal(waits.get(parent.id)!["data-slot"], "freed");
          for (const child of children) assert.equal(waits.get(child)!["data-status"], "running");
          assert.equal(edgesOf("waits").length, graphs.waits.length);
          // The call graph: the parent's call and its children's, each with its invocation.
          const calls = nodesOf("calls");
          assert.deepEqual(
            [...calls.keys()].sort(),
            graphs.calls.calls.map((call) => call.callId).sort(),
          );
          const callTexts = findAll(
            section("calls"),
            (e) => e.attributes["data-node"] !== undefined,
          )
            .map((node) => textOf(node));
          const shows = (task: string, status: string, id: string): boolean =>
            callTexts.some((text) =>
              text.startsWith(`${task}(`) && text.includes(`${status} ${id}`)
            );
          assert.ok(shows("parent", "paused", parent.id), callTexts.join(" | "));
          for (const child of children) assert.ok(shows("child", "running", child), child);
          assert.equal(edgesOf("calls").length, graphs.calls.edges.length);
          const edges = findAll(tree, (element) => element.attributes["data-from"] !== undefined);
          assert.equal(edges.length, 4);
        } finally {
          rmSync(noDot, { recursive: true, force: true });
        }
      })
    );
  },
);

test(
  "cli graph: a cycle whose error the caller caught is listed with its path after the graphs, as Mermaid and DOT comments, and in the SVG",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app } = await openFixtureApp(path);
      const directory = mkdtempSync(join(tmpdir(), "nenc-cycles-"));
      try {
        const plugin: Task<{ pkg: string }, string> = app.task(
          "plugin",
          async ({ pkg }: { pkg: string }): Promise<string> => {
            const other = pkg === "mdx" ? "remark" : "mdx";
            try {
              return await (await plugin.call({ pkg: other })).result();
            } catch (error) {
              if (!(error instanceof CycleDetectedError)) throw error;
              return "caught";
            }
          },
        );
        const outer = await plugin.call({ pkg: "mdx" });
        await within(app.runner().drain(), DEADLINE_MS, "the drain");
        assert.equal(await outer.result(), "caught");
        const [cycle] = await app.orchestrator.store.cycles();
        const when = new Date(cycle!.atMs).toISOString();
        const path_ =
          'plugin({"pkg":"remark"}) → plugin({"pkg":"mdx"}) → back to plugin({"pkg":"remark"})';
        const line = `${when}  ${cycle!.invocationId}: ${path_}`;

        const mermaid = await cli(["graph"], path);
        assert.equal(mermaid.code, 0, mermaid.stderr);
        assert.equal(
          mermaid.stdout,
          `flowchart LR\n  %% no live calls, no waits\n%% refused cycles, most recent first:\n%% ${line}\n`,
        );
        const dot = await cli(["graph", "--format", "dot"], path);
        assert.equal(dot.code, 0, dot.stderr);
        assert.match(dot.stdout, /\n\}\n\/\/ refused cycles, most recent first:\n/);
        assert.ok(dot.stdout.endsWith(`\n// ${line}\n`), dot.stdout);
        const file = join(directory, "cycles.svg");
        assert.equal((await cli(["graph", "--svg", file], path)).code, 0);
        const [drawn] = findAll(
          parseXml(readFileSync(file, "utf8")),
          (element) => element.attributes["data-graph"] === "cycles",
        );
        assert.deepEqual(findAll(drawn!, (element) => element.name === "text").map(textOf), [
          "Refused cycles, most recent first",
          `${when} ${cycle!.invocationId}`,
          'plugin({"pkg":"remark"})',
          '→ plugin({"pkg":"mdx"})',
          '→ back to plugin({"pkg":"remark"})',
        ]);
      } finally {
        kv.close();
        rmSync(directory, { recursive: true, force: true });
      }
    });
  },
);

test(
  "cli worker, purge and cancel on data of a newer schema version exit 1 naming both versions, and change nothing",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, tasks } = await openFixtureApp(path);
      try {
        const invocation = await tasks.add.call({ x: 1, y: 2 });
        const newer = KV_SCHEMA_VERSION + 1;
        await kv.atomic().set(new Keys(APP_ID).schema(), new TextEncoder().encode(String(newer)))
          .commit();
        const refused = new RegExp(
          `^nenc: Cannot use the KV store of app cli-test: its data has schema version ${newer}, newer than this nenc's ${KV_SCHEMA_VERSION}; upgrade nenc\n$`,
        );
        const commands = [["worker"], ["purge"], ["purge", "--all", "--force"], [
          "cancel",
          invocation.id,
        ]];
        for (const command of commands) {
          const { code, stdout, stderr } = await cli(command, path);
          assert.equal(code, 1, command.join(" "));
          assert.equal(stdout, "", command.join(" "));
          assert.match(stderr, refused, command.join(" "));
        }
        assert.equal(await app.orchestrator.getInvocationStatus(invocation), "registered");
        assert.deepEqual(await app.orchestrator.store.runners(), [], "no worker started");
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "cli purge --all refuses while a runner's heartbeat is within runnerTimeoutSeconds, naming it (not a silent one), and exits 1; --force purges",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, tasks } = await openFixtureApp(path);
      try {
        const invocation = await tasks.add.call({ x: 1, y: 2 });
        const store = app.orchestrator.store;
        await store.heartbeat("runner-live", Date.now());
        // The fixture app's runnerTimeoutSeconds is the default, 10 s: this one is presumed dead.
        await store.heartbeat("runner-silent", Date.now() - 60_000);
        const refused = await cli(["purge", "--all"], path);
        assert.equal(refused.code, 1);
        assert.equal(refused.stdout, "");
        assert.match(
          refused.stderr,
          /^nenc: Cannot purge all data of app cli-test: 1 runner is alive \(a heartbeat within runnerTimeoutSeconds, 10 s\): runner-live \(\d+\.\d s ago\); stop them first, or pass --force\n$/,
        );
        assert.equal((await app.orchestrator.getInvocation(invocation.id))?.id, invocation.id);

        const forced = await cli(["purge", "--all", "--force"], path);
        assert.equal(forced.code, 0, forced.stderr);
        assert.equal(forced.stdout, "Purged all data of app cli-test.\n");
        assert.equal(await app.orchestrator.getInvocation(invocation.id), undefined);
        assert.deepEqual(await store.runners(), []);
      } finally {
        kv.close();
      }
    });
  },
);
