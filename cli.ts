/**
 * The nenc command line, for Deno: `worker` runs an app's invocations until SIGINT or SIGTERM.
 * Every command imports an app module (`--app ./app.ts`, which must export exactly one
 * {@linkcode Nenc} app, named or default) and, with `--kv <path|url>`, moves that app onto a
 * Deno KV store (`Deno.openKv`, then `app.useKv`) shared with other processes and machines.
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
import { resolve } from "node:path";
import { cwd } from "node:process";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { Nenc } from "./core/app.ts";
import { MemoryStore } from "./core/memory_store.ts";
import type { KvLike } from "./kv/kv_like.ts";

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

Options of every command:
  --app <module>         The app module, resolved against the current directory. It must export
                         exactly one Nenc app (named or default).
  --kv <path|url>        Open this Deno KV (a file, or a KV Connect URL with the access token in
                         DENO_KV_ACCESS_TOKEN) and move the app onto it. Without it the app keeps
                         the store it creates itself.
  -h, --help             Show this help.

Exit codes: 0 done, 1 failed, 2 bad usage.
`;

/** Options each command accepts, besides --app, --kv and --help. */
const COMMANDS: Readonly<Record<string, readonly string[]>> = {
  worker: ["concurrency"],
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
 * console.log(err.split("\n")[0]); // "nenc: Cannot run launch: unknown command (commands: worker)"
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
  if (operands.length > 0) {
    throw new UsageError(`Cannot run ${command}: unexpected argument ${operands[0]}`);
  }
  if (values.app === undefined) {
    throw new UsageError(`Cannot run ${command}: --app <module> is required`);
  }
  const concurrency = values.concurrency === undefined
    ? 1
    : positiveInteger(values.concurrency, "--concurrency", command);
  const app = await loadApp(values.app);
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
    return await worker(app, { backend, concurrency }, io);
  } finally {
    kv?.close();
  }
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

/** Runs a runner until SIGINT or SIGTERM, then stops it (handing back what still runs). */
async function worker(
  app: Nenc,
  options: { readonly backend: string; readonly concurrency: number },
  io: CliIo,
): Promise<number> {
  const runner = app.runner({ concurrency: options.concurrency });
  if (options.backend === "memory") {
    io.stderr(
      `nenc: warning: app ${app.appId} keeps its data in this process's memory: this worker runs only what this process calls, and other processes cannot reach it; pass --kv <path|url> to share work\n`,
    );
  }
  let onSignal: (() => void) | undefined;
  const signals = ["SIGINT", "SIGTERM"] as const;
  const stopped = new Promise<string>((resolve) => {
    const listeners = signals.map((signal) => [signal, () => resolve(signal)] as const);
    for (const [signal, listener] of listeners) Deno.addSignalListener(signal, listener);
    onSignal = () => {
      for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
    };
  });
  runner.start();
  io.stdout(
    `nenc worker ${runner.id} started: app ${app.appId}, backend ${options.backend}, concurrency ${options.concurrency}\n`,
  );
  const progress = io.isTerminal
    ? setInterval(() => io.stdout(`\r\x1b[K${runner.finished} invocations finished`), 1000)
    : undefined;
  const signal = await stopped;
  onSignal?.();
  clearInterval(progress);
  if (io.isTerminal) io.stdout("\r\x1b[K");
  await runner.stop();
  io.stdout(
    `nenc worker ${runner.id} stopped on ${signal}: ${runner.finished} invocations finished\n`,
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
