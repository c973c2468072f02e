/**
 * The worker's log lines (`worker --log-format text|json`): a readable line, or one JSON object
 * per line (`{ level, time, message, ...fields }`). Private to the command line.
 *
 * @module
 */

import { createLogger, type LogFields, type Logger, type LogLevel } from "../core/log.ts";

/** The formats of `--log-format`. */
export const LOG_FORMATS = ["text", "json"] as const;

/** A format of `--log-format`. */
export type LogFormat = typeof LOG_FORMATS[number];

/**
 * One log line, with its newline. `text`: `time LEVEL message key=value …` (a value with spaces,
 * quotes or structure as JSON; newlines of the message escaped); `json`: one JSON object, its
 * fields after `level`, `time` and `message`.
 */
export function formatLogLine(
  format: LogFormat,
  level: Exclude<LogLevel, "silent">,
  message: string,
  fields: LogFields | undefined,
  timeMs: number,
): string {
  const time = new Date(timeMs).toISOString();
  if (format === "json") return `${JSON.stringify({ level, time, message, ...fields })}\n`;
  const pairs = Object.entries(fields ?? {})
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => ` ${name}=${textValue(value)}`);
  return `${time} ${level.toUpperCase().padEnd(5)} ${message.replaceAll("\n", "\\n")}${
    pairs.join("")
  }\n`;
}

/** A field's value in a text line: plain when it is one word, else JSON. */
function textValue(value: unknown): string {
  if (typeof value === "string" && /^[^\s"=]+$/.test(value)) return value;
  if (typeof value === "number" || typeof value === "boolean" || value === null) {
    return String(value);
  }
  return JSON.stringify(value) ?? String(value);
}

/**
 * The worker's logger: lines in `format` through `write`, at the level of `NENC_LOG_LEVEL`
 * [`info`], timed by `now`.
 */
export function lineLogger(
  format: LogFormat,
  write: (line: string) => void,
  now: () => number,
): Logger {
  return createLogger({
    write: (level, message, fields) => write(formatLogLine(format, level, message, fields, now())),
  });
}
