/**
 * The nenc command line, for Deno: `worker` runs an app's invocations until SIGINT or SIGTERM;
 * `status`, `list`, `show`, `schedules` and `graph` inspect the shared store, `cancel` cancels an
 * invocation, `purge` resets, `monitor` serves a live web monitor of the store (see
 * {@linkcode startMonitor}). The commands that write (`worker`, `purge`) first check that the
 * store's data is not of a newer layout than this nenc's, and `purge --all` refuses while runners
 * are alive unless `--force`; the others never create or change a store (a `--kv` file must
 * exist and be a Deno KV file). Every command
 * imports an app module (`--app ./app.ts`, which must export exactly one {@linkcode Nenc} app,
 * named or default) and, with `--kv <path|url>`, moves that app onto a Deno KV store
 * (`Deno.openKv`, then `app.useKv`) shared with other processes and machines.
 *
 * ```sh
 * deno run -A --unstable-kv jsr:@nenc/nenc/cli worker --app ./app.ts --kv ./nenc.db --concurrency 8
 * ```
 *
 * @example Running the command line from code
 * ```ts ignore
 * import { main } from "@nenc/nenc/cli";
 *
 * const code = await main(["worker", "--app", "./app.ts", "--kv", "./nenc.db"]);
 * Deno.exit(code);
 * ```
 *
 * @module
 */

import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { cwd } from "node:process";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import {
  concurrencyView,
  invocationTree,
  isAlive,
  type ListFilter,
  listInvocations,
  runnersView,
  type TreeNode,
  unservedOf,
} from "./_inspect.ts";
import { kvFileKind } from "./_kv_file.ts";
import {
  type RateReport,
  renderCycles,
  renderDot,
  renderInvocation,
  renderList,
  renderMermaid,
  renderSchedules,
  renderStatus,
  renderTree,
} from "./_render.ts";
import { formatLogLine, lineLogger, LOG_FORMATS, type LogFormat } from "./_log.ts";
import { readLiveGraphs, renderGraphsDocument } from "./_svg.ts";
import { Nenc } from "../core/app.ts";
import { isDefaultLogger } from "../core/_report.ts";
import { StoreClosedError } from "../core/errors.ts";
import { callLabel } from "../core/ids.ts";
import { MemoryStore } from "../core/memory_store.ts";
import {
  ALL_STATUSES,
  InvocationStatus,
  isFinalStatus,
  isInvocationStatus,
} from "../core/status.ts";
import { rateKeyTask, type RateWindow } from "../core/store.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { checkMonitorOptions, startMonitor } from "./monitor.ts";

export { type MonitorOptions, type RunningMonitor, startMonitor } from "./monitor.ts";

/**
 * Where the command line writes. The default is the process's standard output and error.
 *
 * @example Capturing the output
 * ```ts
 * import { type CliIo, main } from "@nenc/nenc/cli";
 *
 * let out = "";
 * const io: CliIo = { stdout: (text) => out += text, stderr: () => {}, isTerminal: false };
 * console.log(await main(["--help"], io), out.startsWith("Usage:")); // 0 true
 * ```
 */
export interface CliIo {
  /** Writes text to standard output. */
  stdout(text: string): void;
  /** Writes text to standard error. */
  stderr(text: string): void;
  /** Whether standard output is a terminal: the worker shows live progress only then. */
  readonly isTerminal: boolean;
}

const USAGE = `Usage: nenc <command> --app <module> [--kv <path|url>] [options]

Commands:
  worker                 Run the app's invocations until SIGINT or SIGTERM, then stop cleanly:
                         what still runs is handed back (re-queued) for another worker.
    --concurrency <n>    Invocations run at once [1].
    --log-format <f>     text or json [text]: how it logs each failed invocation, recovery,
                         refused cycle and cancel (with the invocation id), on standard output,
                         at the level of NENC_LOG_LEVEL [info]. json: one JSON object per line
                         ({ level, time, message, ...fields }), the start and stop lines too.
                         Without it, an app module that sets its own logger keeps it.
  status                 Invocations per task and status, delayed ones, rate limits, per-key
                         concurrency (limit, holders, parked), the runners (heartbeat, tasks
                         defined, invocations held), and queued tasks no live runner defines.
  list                   Invocations, newest first: id, task, status, age, runner.
    --task <t1,t2>       Only these tasks (repeatable).
    --status <s1,s2>     Only these statuses (repeatable).
    --since <duration>   Only those registered within it: 90s, 10m, 2h, 1d, 500ms.
    --limit <n>          At most n [50].
    --json               One JSON array of the invocation records instead.
  show <invocationId>    One invocation: record, history, result or error (with its cause
                         chain), parent and children.
    --tree               The invocation and its descendants with their statuses, as a tree.
  cancel <invocationId>  Cancel the invocation (and what it called that nothing else waits on);
                         a running one is aborted by its runner within one poll.
    --reason <text>      Why: carried by the CanceledError its result() rejects with.
  schedules              The cron schedules: expression, timezone, task and arguments, next
                         tick, and the last tick fired with its invocation and that one's status.
  purge                  Delete the final invocations whose purge time has passed (what the
                         runners' auto-purge deletes), and print how many.
    --all                Delete ALL data of the app instead: invocations, queue, graphs,
                         schedules and runner heartbeats. Refused while a runner is alive (a heartbeat
                         within runnerTimeoutSeconds): stop the workers first.
    --force              With --all: purge even while runners are alive.
  graph                  The live call graph and wait graph as text, then the cycles refused in
                         the last hour with their path (as comments).
    --format <format>    mermaid or dot [mermaid].
    --svg <file>         Draw both graphs and the refused cycles into this SVG file instead (laid
                         out by nenc itself: no Graphviz needed).
  monitor                A live web monitor of the store until SIGINT or SIGTERM: overview,
                         invocations, the graphs, concurrency, runners; cancel is its only write.
    --port <port>        The port [8787] (0: any free port).
    --host <host>        The address [127.0.0.1]. Any but 127.0.0.1, ::1 and localhost needs
                         --token.
    --token <token>      Every request must carry it (Authorization: Bearer <token>, or
                         ?token=<token>), or gets 401. At least 16 characters.

Options of every command:
  --app <module>         The app module, resolved against the current directory. It must export
                         exactly one Nenc app (named or default).
  --kv <path|url>        Open this Deno KV (a file, or a KV Connect URL with the access token in
                         DENO_KV_ACCESS_TOKEN) and move the app onto it. Without it the app keeps
                         the store it creates itself; every command but worker needs a shared one.
  -h, --help             Show this help.

worker and purge refuse a store whose data has a newer schema version than this nenc's. The other
commands never create or change a store: a --kv file that does not exist is bad usage, and one that
is not a Deno KV file is refused unopened.

Exit codes: 0 done, 1 failed (also: the data is of a newer schema version, live runners block
purge --all, the store is closed, an unknown invocation, a --kv file that is not a Deno KV file),
2 bad usage (also: a --kv file that does not exist).
`;

/** Options each command accepts, besides --app, --kv and --help. */
const COMMANDS: Readonly<Record<string, readonly string[]>> = {
  worker: ["concurrency", "log-format"],
  status: [],
  list: ["task", "status", "since", "limit", "json"],
  show: ["tree"],
  cancel: ["reason"],
  schedules: [],
  purge: ["all", "force"],
  graph: ["format", "svg"],
  monitor: ["port", "host", "token"],
};

/** A mistake in the arguments: exit code 2, with the usage hint. */
class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * Runs the command line on `args` (without the program name) and returns the exit code: 0 done,
 * 1 failed, 2 bad usage. Errors go to `io.stderr`, never thrown.
 *
 * @example
 * ```ts
 * import { type CliIo, main } from "@nenc/nenc/cli";
 *
 * let err = "";
 * const io: CliIo = { stdout: () => {}, stderr: (text) => err += text, isTerminal: false };
 * console.log(await main(["launch"], io)); // 2
 * console.log(err.split("\n")[0]); // "nenc: Cannot run launch: unknown command (commands: worker, status, list, show, cancel, schedules, purge, graph, monitor)"
 * ```
 */
export async function main(args: readonly string[], io: CliIo = processIo()): Promise<number> {
  try {
    return await run(args, io);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof UsageError) {
      io.stderr(`nenc: ${message}\nRun with --help for usage.\n`);
      return 2;
    }
    io.stderr(`nenc: ${message}\n`);
    return 1;
  }
}

async function run(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      allowPositionals: true,
      options: {
        app: { type: "string" },
        kv: { type: "string" },
        concurrency: { type: "string" },
        "log-format": { type: "string" },
        all: { type: "boolean" },
        force: { type: "boolean" },
        format: { type: "string" },
        svg: { type: "string" },
        task: { type: "string", multiple: true },
        status: { type: "string", multiple: true },
        since: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
        tree: { type: "boolean" },
        reason: { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        token: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw new UsageError(`Cannot parse the arguments: ${(error as Error).message}`);
  }
  const { values, positionals } = parsed;
  const [command, ...operands] = positionals;
  if (values.help || command === undefined) {
    io.stdout(USAGE);
    return 0;
  }
  const accepted = COMMANDS[command];
  if (accepted === undefined) {
    throw new UsageError(
      `Cannot run ${command}: unknown command (commands: ${Object.keys(COMMANDS).join(", ")})`,
    );
  }
  for (const option of Object.keys(values)) {
    if (!["app", "kv", "help", ...accepted].includes(option)) {
      throw new UsageError(`Cannot run ${command}: --${option} is not an option of ${command}`);
    }
  }
  const [invocationId, extra] = operands;
  const takesId = command === "show" || command === "cancel";
  if (takesId && invocationId === undefined) {
    throw new UsageError(
      `Cannot run ${command}: give the invocation id (${command} <invocationId>)`,
    );
  }
  if (takesId ? extra !== undefined : invocationId !== undefined) {
    throw new UsageError(`Cannot run ${command}: unexpected argument ${operands.at(-1)}`);
  }
  if (values.force === true && values.all !== true) {
    throw new UsageError("Cannot run purge: --force applies to purge --all only");
  }
  if (values.app === undefined) {
    throw new UsageError(`Cannot run ${command}: --app <module> is required`);
  }
  const concurrency = values.concurrency === undefined
    ? 1
    : positiveInteger(values.concurrency, "--concurrency", command);
  const format = values.format ?? "mermaid";
  if (format !== "mermaid" && format !== "dot") {
    throw new UsageError(`Cannot run graph: --format must be mermaid or dot, got "${format}"`);
  }
  if (values.svg !== undefined && values.format !== undefined) {
    throw new UsageError("Cannot run graph: --svg draws an SVG file, not text; leave out --format");
  }
  const listing = command === "list" ? listOptions(values) : undefined;
  const logFormat = values["log-format"] ?? "text";
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    throw new UsageError(
      `Cannot run worker: --log-format must be ${LOG_FORMATS.join(" or ")}, got "${logFormat}"`,
    );
  }
  const monitor = {
    host: values.host ?? "127.0.0.1",
    port: values.port === undefined ? 8787 : port(values.port),
    ...(values.token === undefined ? {} : { token: values.token }),
  };
  if (command === "monitor") {
    try {
      checkMonitorOptions(monitor);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
  }
  const app = await loadApp(values.app);
  // Only worker and purge may create a store: the others look before Deno.openKv would.
  if (values.kv !== undefined && command !== "worker" && command !== "purge") {
    await refuseNonKvFile(values.kv, command);
  }
  const kv = values.kv === undefined ? undefined : await openKv(values.kv);
  try {
    if (kv !== undefined) {
      try {
        app.useKv(kv);
      } catch (error) {
        throw new Error(`Cannot use --kv: ${(error as Error).message}`, { cause: error });
      }
    }
    const backend = values.kv !== undefined
      ? `Deno KV ${values.kv}`
      : app.orchestrator.store instanceof MemoryStore
      ? "memory"
      : "the app's own store";
    if (command !== "worker" && backend === "memory") {
      throw new UsageError(
        `Cannot run ${command}: app ${app.appId} keeps its data in this process's memory, and ${command} reads a shared store; pass --kv <path|url> (the Deno KV your workers use)`,
      );
    }
    try {
      // The commands that write refuse data of a newer layout before they change anything.
      if (command === "worker" || command === "purge" || command === "cancel") {
        await app.orchestrator.store.checkSchema();
      }
      if (command === "worker") {
        const logs = { format: logFormat as LogFormat, given: values["log-format"] !== undefined };
        return await worker(app, { backend, concurrency, logs }, io);
      }
      if (command === "monitor") return await serveMonitor(app, { backend, ...monitor }, io);
      if (command === "status") return await status(app, io);
      if (command === "list") return await list(app, listing!, values.json === true, io);
      if (command === "show") {
        return await (values.tree === true ? showTree : show)(app, invocationId!, io);
      }
      if (command === "cancel") return await cancel(app, invocationId!, values.reason, io);
      if (command === "schedules") return await schedules(app, io);
      if (command === "purge") {
        return await purge(app, { all: values.all === true, force: values.force === true }, io);
      }
      return await graph(app, { format, svg: values.svg }, io);
    } catch (error) {
      if (!(error instanceof StoreClosedError)) throw error;
      throw new Error(
        `Cannot run ${command}: the store of app ${app.appId} is closed (${error.message})`,
        { cause: error },
      );
    }
  } finally {
    kv?.close();
  }
}

/** The filter of `list` with `--since` as a duration before now, ms. */
type ListOptions = Omit<ListFilter, "sinceMs"> & { readonly sinceAgoMs: number | undefined };

/** The filter of `list`, from its options; bad values are usage errors. */
function listOptions(values: {
  readonly task?: readonly string[] | undefined;
  readonly status?: readonly string[] | undefined;
  readonly since?: string | undefined;
  readonly limit?: string | undefined;
}): ListOptions {
  const split = (texts: readonly string[]): string[] =>
    texts.flatMap((text) => text.split(",")).map((item) => item.trim()).filter((item) => item);
  const taskIds = values.task === undefined ? undefined : split(values.task);
  if (taskIds?.length === 0) throw new UsageError("Cannot run list: --task needs a task id");
  let statuses: Set<InvocationStatus> | undefined;
  if (values.status !== undefined) {
    statuses = new Set();
    for (const status of split(values.status)) {
      if (!isInvocationStatus(status)) {
        throw new UsageError(
          `Cannot run list: --status must be among ${ALL_STATUSES.join(", ")}; got "${status}"`,
        );
      }
      statuses.add(status);
    }
    if (statuses.size === 0) throw new UsageError("Cannot run list: --status needs a status");
  }
  const sinceAgoMs = values.since === undefined ? undefined : durationMs(values.since);
  const limit = values.limit === undefined ? 50 : positiveInteger(values.limit, "--limit", "list");
  return { taskIds, statuses, sinceAgoMs, limit };
}

const UNIT_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** A duration such as `90s`, `10m`, `2h`, `1d` or `500ms`, in ms. */
function durationMs(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (match === null) {
    throw new UsageError(
      `Cannot run list: --since must be a duration such as 90s, 10m, 2h, 1d or 500ms; got "${text}"`,
    );
  }
  return Number(match[1]) * UNIT_MS[match[2]!]!;
}

/**
 * Refuses a `--kv` file that a command must not create or change: missing (bad usage), or not a
 * Deno KV file. A URL (KV Connect) and `:memory:` are not files: they are opened as they are.
 */
async function refuseNonKvFile(where: string, command: string): Promise<void> {
  if (where === ":memory:" || /^[a-z][a-z0-9+.-]*:\/\//i.test(where)) return;
  const kind = await kvFileKind(where);
  if (kind === "missing") {
    throw new UsageError(
      `Cannot run ${command}: --kv ${where} does not exist, and ${command} never creates a store; give the path of the Deno KV your workers use (a worker creates it)`,
    );
  }
  if (kind === "other") {
    throw new Error(
      `Cannot run ${command}: --kv ${where} is not a Deno KV file; ${command} leaves it unopened and unchanged`,
    );
  }
}

function port(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value > 65_535) {
    throw new UsageError(`Cannot run monitor: --port must be an integer 0-65535, got "${text}"`);
  }
  return value;
}

function positiveInteger(text: string, option: string, command: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < 1) {
    throw new UsageError(`Cannot run ${command}: ${option} must be an integer ≥ 1, got "${text}"`);
  }
  return value;
}

/** Imports the module at `path` (against the current directory) and finds its one app. */
async function loadApp(path: string): Promise<Nenc> {
  const file = resolve(cwd(), path);
  if (!existsSync(file)) {
    throw new UsageError(`Cannot load the app: ${path} does not exist (resolved to ${file})`);
  }
  let module: Record<string, unknown>;
  try {
    module = await import(pathToFileURL(file).href);
  } catch (error) {
    throw new Error(`Cannot load the app: importing ${path} failed: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const apps = new Map<Nenc, string[]>();
  for (const [name, value] of Object.entries(module)) {
    if (value instanceof Nenc) apps.set(value, [...apps.get(value) ?? [], name]);
  }
  if (apps.size !== 1) {
    const found = [...apps.values()].map((names) => names.join(" = ")).join(", ");
    throw new Error(
      apps.size === 0
        ? `Cannot load the app: ${path} exports no Nenc app; export exactly one, named or default (export default new Nenc({ appId: "shop" }))`
        : `Cannot load the app: ${path} exports ${apps.size} Nenc apps (${found}); export exactly one`,
    );
  }
  return [...apps.keys()][0]!;
}

/** A KV handle the CLI opened: it closes it when the command ends. */
type OpenedKv = KvLike & { close(): void };

/** Opens a Deno KV: a file path, or a KV Connect URL (Deno reads DENO_KV_ACCESS_TOKEN). */
async function openKv(where: string): Promise<OpenedKv> {
  // Structural, so that type-checking the CLI does not need Deno's unstable KV types.
  const deno = (globalThis as { Deno?: { openKv?: (path: string) => Promise<OpenedKv> } }).Deno;
  if (typeof deno?.openKv !== "function") {
    throw new Error(
      "Cannot open the KV: Deno.openKv is not available; run with deno run -A --unstable-kv",
    );
  }
  try {
    return await deno.openKv(where);
  } catch (error) {
    throw new Error(`Cannot open the KV at ${where}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Runs a runner until SIGINT or SIGTERM, then stops it (handing back what still runs). Its logs
 * (and, in json, its start and stop lines) go to standard output in the format asked; an app
 * module that set its own logger keeps it unless `--log-format` is given.
 */
async function worker(
  app: Nenc,
  options: {
    readonly backend: string;
    readonly concurrency: number;
    readonly logs: { readonly format: LogFormat; readonly given: boolean };
  },
  io: CliIo,
): Promise<number> {
  const json = options.logs.format === "json";
  const now = (): number => app.clock.now();
  // A log line clears the progress line it interrupts (the next second draws it again).
  const write = (line: string): void =>
    io.stdout(io.isTerminal && !json ? `\r\x1b[K${line}` : line);
  if (options.logs.given || isDefaultLogger(app.logger)) {
    app.logger = lineLogger(options.logs.format, write, now);
  }
  const say = (message: string, fields: Record<string, unknown>): void =>
    write(json ? formatLogLine("json", "info", message, fields, now()) : `${message}\n`);
  const runner = app.runner({ concurrency: options.concurrency });
  if (options.backend === "memory") {
    io.stderr(
      `nenc: warning: app ${app.appId} keeps its data in this process's memory: this worker runs only what this process calls, and other processes cannot reach it; pass --kv <path|url> to share work\n`,
    );
  }
  const stopped = stopSignal();
  runner.start();
  say(
    `nenc worker ${runner.id} started: app ${app.appId}, backend ${options.backend}, concurrency ${options.concurrency}`,
    {
      runnerId: runner.id,
      appId: app.appId,
      backend: options.backend,
      concurrency: options.concurrency,
    },
  );
  const progress = io.isTerminal && !json
    ? setInterval(() => io.stdout(`\r\x1b[K${runner.finished} invocations finished`), 1000)
    : undefined;
  const signal = await stopped;
  clearInterval(progress);
  if (progress !== undefined) io.stdout("\r\x1b[K");
  await runner.stop();
  say(
    `nenc worker ${runner.id} stopped on ${signal}: ${runner.finished} invocations finished`,
    { runnerId: runner.id, signal, finished: runner.finished },
  );
  return 0;
}

/** Resolves with the name of the first SIGINT or SIGTERM, and stops listening for them. */
function stopSignal(): Promise<string> {
  return new Promise((resolve) => {
    const listeners = (["SIGINT", "SIGTERM"] as const).map((signal) => {
      const listener = (): void => {
        for (const [name, other] of listeners) Deno.removeSignalListener(name, other);
        resolve(signal);
      };
      return [signal, listener] as const;
    });
    for (const [signal, listener] of listeners) Deno.addSignalListener(signal, listener);
  });
}

/** Serves the web monitor until SIGINT or SIGTERM. The token is never printed. */
async function serveMonitor(
  app: Nenc,
  options: {
    readonly backend: string;
    readonly host: string;
    readonly port: number;
    readonly token?: string;
  },
  io: CliIo,
): Promise<number> {
  const monitor = await startMonitor(app, options);
  const stopped = stopSignal();
  io.stdout(
    `nenc monitor of app ${app.appId} (backend ${options.backend}) on ${monitor.url}${
      options.token === undefined ? "" : " (every request needs the token)"
    }\n`,
  );
  const signal = await stopped;
  await monitor.close();
  io.stdout(`nenc monitor stopped on ${signal}\n`);
  return 0;
}

async function status(app: Nenc, io: CliIo): Promise<number> {
  const store = app.orchestrator.store;
  const nowMs = app.clock.now();
  const [counts, delayed, windows, concurrency, runners] = await Promise.all([
    store.counts(),
    store.delayedCounts(nowMs),
    store.rateWindows(),
    concurrencyView(app),
    runnersView(app, nowMs),
  ]);
  const unserved = unservedOf(counts, runners);
  io.stdout(renderStatus({
    counts,
    delayed,
    rates: rateReports(app, windows, nowMs),
    concurrency,
    runners,
    unserved,
    nowMs,
  }));
  return 0;
}

async function list(
  app: Nenc,
  { sinceAgoMs, ...filter }: ListOptions,
  json: boolean,
  io: CliIo,
): Promise<number> {
  const nowMs = app.clock.now();
  const sinceMs = sinceAgoMs === undefined ? undefined : nowMs - sinceAgoMs;
  const records = await listInvocations(app, { ...filter, sinceMs });
  io.stdout(json ? JSON.stringify(records) + "\n" : renderList(records, nowMs));
  return 0;
}

/**
 * The rate limits' windows per task, from its keys' states and the task's `rateLimit` as this
 * process defines it (a key of a task the app does not define, or defines without a limit, is
 * left out: its window is unknown here).
 */
function rateReports(
  app: Nenc,
  windows: readonly RateWindow[],
  nowMs: number,
): Map<string, RateReport> {
  const reports = new Map<string, RateReport>();
  for (const { key, starts, parked } of windows) {
    const taskId = rateKeyTask(key)!;
    const limit = app.tasks().find((task) => task.id === taskId)?.options.rateLimit;
    if (limit === undefined) continue;
    const inWindow = starts.filter((startMs) => startMs > nowMs - limit.intervalMs).length;
    const report = reports.get(taskId);
    reports.set(taskId, {
      limit: limit.limit,
      intervalMs: limit.intervalMs,
      keys: (report?.keys ?? 0) + 1,
      busiest: Math.max(report?.busiest ?? 0, inWindow),
      parked: (report?.parked ?? 0) + parked,
    });
  }
  return reports;
}

async function show(app: Nenc, id: string, io: CliIo): Promise<number> {
  const store = app.orchestrator.store;
  const record = await store.get(id);
  if (record === undefined) throw unknownInvocation(app, "show", id);
  const [history, parent, children] = await Promise.all([
    store.history(id),
    record.parentId === null ? undefined : store.get(record.parentId),
    store.children(id),
  ]);
  io.stdout(renderInvocation({ record, history, parent, children }));
  return 0;
}

async function showTree(app: Nenc, id: string, io: CliIo): Promise<number> {
  const tree = await invocationTree(app, id);
  if (tree === undefined) throw unknownInvocation(app, "show", id);
  io.stdout(renderTree(tree));
  return 0;
}

function unknownInvocation(app: Nenc, command: string, id: string): Error {
  return new Error(
    `Cannot ${command} invocation ${id}: app ${app.appId} has no such invocation (never registered, or purged)`,
  );
}

/**
 * Cancels through the orchestrator, as `invocation.cancel()` does (cascading to what it called
 * that nothing else waits on), and says what happened.
 */
async function cancel(
  app: Nenc,
  id: string,
  reason: string | undefined,
  io: CliIo,
): Promise<number> {
  const before = await invocationTree(app, id);
  if (before === undefined) throw unknownInvocation(app, "cancel", id);
  const { record } = before;
  if (isFinalStatus(record.status)) {
    io.stdout(
      `Invocation ${id} (${record.taskId}) is already ${record.status}: nothing to cancel.\n`,
    );
    return 0;
  }
  const [canceled] = await app.orchestrator.cancel(
    [{ id }],
    reason === undefined ? {} : { reason },
  );
  if (canceled !== true) {
    const now = await app.orchestrator.store.get(id);
    io.stdout(
      `Invocation ${id} (${record.taskId}) ended before the cancel: ${now?.status ?? "purged"}.\n`,
    );
    return 0;
  }
  const executing = EXECUTING.has(record.status);
  io.stdout(
    `Canceled invocation ${id} (${record.taskId}), which was ${record.status}${
      executing ? `: its runner ${record.ownerId} aborts it within one poll` : ""
    }.\n`,
  );
  const after = await invocationTree(app, id);
  const was = new Map(flatten(before).map((node) => [node.record.id, node.record.status]));
  const descendants = flatten(after!).slice(1).filter((node) => {
    const previous = was.get(node.record.id);
    return node.record.status === InvocationStatus.CANCELED && previous !== undefined &&
      !isFinalStatus(previous);
  });
  if (descendants.length > 0) {
    io.stdout(
      `Canceled with it ${descendants.length} of its descendants: ${
        descendants.map((node) => node.record.id).join(", ")
      }.\n`,
    );
  }
  return 0;
}

/** The statuses in which a function runs (or waits, paused): its runner aborts it. */
const EXECUTING: ReadonlySet<InvocationStatus> = new Set([
  InvocationStatus.RUNNING,
  InvocationStatus.PAUSED,
  InvocationStatus.RESUMED,
]);

/** The nodes of a tree, depth first. */
function flatten(node: TreeNode): TreeNode[] {
  return [node, ...node.children.flatMap(flatten)];
}

async function schedules(app: Nenc, io: CliIo): Promise<number> {
  const store = app.orchestrator.store;
  const list = await store.schedules();
  const lastInvocations = await store.getMany(
    list.flatMap((schedule) => schedule.lastInvocationId ?? []),
  );
  io.stdout(renderSchedules({ schedules: list, lastInvocations, nowMs: app.clock.now() }));
  return 0;
}

async function purge(
  app: Nenc,
  options: { readonly all: boolean; readonly force: boolean },
  io: CliIo,
): Promise<number> {
  if (options.all) {
    const nowMs = app.clock.now();
    const alive = (await app.orchestrator.store.runners()).filter(isAlive(app, nowMs));
    if (alive.length > 0 && !options.force) {
      const named = alive.map((runner) =>
        `${runner.runnerId} (${((nowMs - runner.lastSeenMs) / 1000).toFixed(1)} s ago)`
      );
      throw new Error(
        `Cannot purge all data of app ${app.appId}: ${alive.length} runner${
          alive.length === 1 ? " is" : "s are"
        } alive (a heartbeat within runnerTimeoutSeconds, ${app.orchestrator.options.runnerTimeoutSeconds} s): ${
          named.join(", ")
        }; stop them first, or pass --force`,
      );
    }
    await app.orchestrator.purge();
    io.stdout(`Purged all data of app ${app.appId}.\n`);
  } else {
    const purged = await app.orchestrator.autoPurge();
    io.stdout(
      `Purged ${purged} final invocations of app ${app.appId} past their purge time (autoFinalInvocationPurgeHours: ${app.orchestrator.options.autoFinalInvocationPurgeHours}).\n`,
    );
  }
  return 0;
}

async function graph(
  app: Nenc,
  options: { readonly format: "mermaid" | "dot"; readonly svg: string | undefined },
  io: CliIo,
): Promise<number> {
  const live = await readLiveGraphs(app);
  if (options.svg !== undefined) {
    try {
      await writeFile(options.svg, renderGraphsDocument(live));
    } catch (error) {
      throw new Error(`Cannot write ${options.svg}: ${(error as Error).message}`, { cause: error });
    }
    io.stdout(`Wrote ${options.svg}.\n`);
    return 0;
  }
  const labels = new Map(
    live.records.map((record) => [
      record.id,
      `${callLabel(record.taskId, record.args)} ${record.status}`,
    ]),
  );
  io.stdout(
    options.format === "mermaid"
      ? renderMermaid(live.graphs, labels) + renderCycles(live.cycles, "%%")
      : renderDot(live.graphs, labels) + renderCycles(live.cycles, "//"),
  );
  return 0;
}

function processIo(): CliIo {
  const encoder = new TextEncoder();
  const writeAll = (file: { writeSync(bytes: Uint8Array): number }, text: string): void => {
    for (let bytes = encoder.encode(text); bytes.length > 0;) {
      bytes = bytes.subarray(file.writeSync(bytes));
    }
  };
  return {
    stdout: (text) => writeAll(Deno.stdout, text),
    stderr: (text) => writeAll(Deno.stderr, text),
    isTerminal: Deno.stdout.isTerminal(),
  };
}

if (import.meta.main) Deno.exit(await main(Deno.args));
