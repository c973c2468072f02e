/**
 * Logging: the {@linkcode Logger} an app writes through (`new Nenc({ logger })`), and
 * {@linkcode createLogger}, which makes the default one — the console, at the level of the
 * `NENC_LOG_LEVEL` environment variable — or one that writes elsewhere.
 *
 * @module
 */

import process from "node:process";

/**
 * Structured data of a log message: `{ invocationId, taskId, runnerId, error: { name, message } }`
 * and the like, ready for a JSON line.
 *
 * @example
 * ```ts
 * import type { LogFields } from "@nenc/nenc";
 *
 * const fields: LogFields = { invocationId: "01J…", taskId: "pay", error: { name: "RangeError", message: "declined" } };
 * console.log(Object.keys(fields)); // ["invocationId", "taskId", "error"]
 * ```
 */
export type LogFields = Record<string, unknown>;

/**
 * Where an app logs (`new Nenc({ logger })`, or `app.logger = …`): four methods, one per level,
 * each with a readable message and optional structured fields. nenc logs every failed
 * invocation, recovery, refused cycle and cancel, and its runners' troubles (a store that fails,
 * a heartbeat that does not land). A method must not throw.
 *
 * @example Routing nenc's logs into an app's own logging
 * ```ts
 * import { type Logger, Nenc } from "@nenc/nenc";
 *
 * const lines: string[] = [];
 * const logger: Logger = {
 *   debug: () => {},
 *   info: (message) => lines.push(`info ${message}`),
 *   warn: (message) => lines.push(`warn ${message}`),
 *   error: (message, fields) => lines.push(`error ${message} ${fields?.invocationId}`),
 * };
 * const app = new Nenc({ logger });
 * const pay = app.task("pay", (): string => {
 *   throw new RangeError("declined");
 * });
 * const invocation = await pay.call();
 * await app.runner().drain();
 * console.log(lines[0] === `error invocation ${invocation.id} (task pay) failed: RangeError: declined ${invocation.id}`); // true
 * ```
 */
export interface Logger {
  /** Details: off by default. */
  debug(message: string, fields?: LogFields): void;
  /** What happens: a cancel, a recovery. */
  info(message: string, fields?: LogFields): void;
  /** What may need a look: an attempt that failed and is retried, a runner presumed dead. */
  warn(message: string, fields?: LogFields): void;
  /** What went wrong: a failed invocation, a refused cycle, a store that fails. */
  error(message: string, fields?: LogFields): void;
}

/**
 * A log level, lowest first: `debug` < `info` < `warn` < `error`; `silent` logs nothing.
 *
 * @example
 * ```ts
 * import { LOG_LEVELS, type LogLevel } from "@nenc/nenc";
 *
 * const level: LogLevel = "warn";
 * console.log(LOG_LEVELS.indexOf(level)); // 2
 * ```
 */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/**
 * The log levels, lowest first.
 *
 * @example
 * ```ts
 * import { LOG_LEVELS } from "@nenc/nenc";
 *
 * console.log(LOG_LEVELS); // ["debug", "info", "warn", "error", "silent"]
 * ```
 */
export const LOG_LEVELS: readonly LogLevel[] = Object.freeze([
  "debug",
  "info",
  "warn",
  "error",
  "silent",
]);

/**
 * Writes one message that passed the level: what {@linkcode createLogger} calls.
 *
 * @example One JSON object per line
 * ```ts
 * import { createLogger, type LogWriter } from "@nenc/nenc";
 *
 * const write: LogWriter = (level, message, fields) =>
 *   console.log(JSON.stringify({ level, time: new Date(0).toISOString(), message, ...fields }));
 * createLogger({ level: "info", write }).info("hello", { runnerId: "r1" });
 * // {"level":"info","time":"1970-01-01T00:00:00.000Z","message":"hello","runnerId":"r1"}
 * ```
 */
export type LogWriter = (
  level: Exclude<LogLevel, "silent">,
  message: string,
  fields: LogFields | undefined,
) => void;

/**
 * Options of {@linkcode createLogger}; defaults in brackets.
 *
 * @example
 * ```ts
 * import { createLogger, type LoggerOptions } from "@nenc/nenc";
 *
 * const options: LoggerOptions = { level: "error" };
 * createLogger(options).warn("not shown");
 * ```
 */
export interface LoggerOptions {
  /**
   * The lowest level written [the `NENC_LOG_LEVEL` environment variable, else `info`; a value
   * there that is no level warns once and means `info`; on Deno, reading it needs
   * `--allow-env` (without it: `info`)].
   */
  level?: LogLevel;
  /**
   * Where messages go [standard error, through `console.error` at every level (standard output
   * stays the program's), each line prefixed `nenc <level>:` and followed by its fields].
   */
  write?: LogWriter;
}

/**
 * A {@linkcode Logger} that writes the messages at `level` and above through `write`: the
 * default logger of an app is `createLogger()`, the console at `NENC_LOG_LEVEL` [`info`].
 *
 * @throws {RangeError} for a level that is not one of {@linkcode LOG_LEVELS}.
 *
 * @example Only warnings and errors, to the console
 * ```ts
 * import { createLogger, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc({ logger: createLogger({ level: "warn" }) });
 * app.logger.info("not shown");
 * ```
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? levelFromEnvironment();
  const threshold = LOG_LEVELS.indexOf(level);
  if (threshold < 0) {
    throw new RangeError(
      `Cannot create the logger: level must be one of ${LOG_LEVELS.join(", ")}, got ${
        JSON.stringify(level)
      }`,
    );
  }
  const write = options.write ?? writeToConsole;
  const at = (name: Exclude<LogLevel, "silent">) => (message: string, fields?: LogFields): void => {
    if (LOG_LEVELS.indexOf(name) >= threshold) write(name, message, fields);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** The bad values of `NENC_LOG_LEVEL` warned about already: once each per process. */
const warnedLevels = new Set<string>();

/** The level `NENC_LOG_LEVEL` names, else `info` (warning once about a value that is no level). */
function levelFromEnvironment(): LogLevel {
  let value: string | undefined;
  try {
    value = process.env.NENC_LOG_LEVEL;
  } catch {
    return "info"; // no permission to read it (Deno without --allow-env)
  }
  if (value === undefined || value === "") return "info";
  const level = value.toLowerCase() as LogLevel;
  if (LOG_LEVELS.includes(level)) return level;
  if (!warnedLevels.has(value)) {
    warnedLevels.add(value);
    console.warn(
      `nenc: NENC_LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}, got ${
        JSON.stringify(value)
      }; logging at info`,
    );
  }
  return "info";
}

/** Standard error at every level: logs are diagnostics, standard output is the program's. */
const writeToConsole: LogWriter = (level, message, fields) => {
  const line = `nenc ${level}: ${message}`;
  if (fields === undefined) console.error(line);
  else console.error(line, fields);
};
