/**
 * What an app reports about itself: its logger, and its event listeners. One {@linkcode Reporter}
 * per orchestrator, found with {@linkcode reporterOf} by the app (`on`, `off`), the orchestrator
 * (transitions, recoveries) and its runners. Private to the core and the CLI.
 *
 * @module
 */

import type { NencEvents, NencListener } from "./events.ts";
import { countsTransitions, countTransition } from "./_telemetry.ts";
import { createLogger, type LogFields, type Logger } from "./log.ts";

/** Where a reporter finds the logger: the app, whose logger may be replaced after it was made. */
export interface LoggerHost {
  readonly logger?: Logger;
}

/** The loggers apps made for themselves (no `logger` option): the CLI may replace those. */
const defaultLoggers = new WeakSet<Logger>();

/** The default logger of an app: {@linkcode createLogger}'s. */
export function defaultLogger(): Logger {
  const logger = createLogger();
  defaultLoggers.add(logger);
  return logger;
}

/** Whether `logger` is the default logger an app made for itself. */
export function isDefaultLogger(logger: Logger): boolean {
  return defaultLoggers.has(logger);
}

/** The logger of a host without one (an orchestrator built on a host of a test's own). */
let fallback: Logger | undefined;

/** The logger and the event listeners of one app. */
export class Reporter {
  readonly #host: LoggerHost;
  readonly #listeners: { [E in keyof NencEvents]: Set<NencListener<E>> } = {
    invocation: new Set(),
    runner: new Set(),
  };

  constructor(host: LoggerHost) {
    this.#host = host;
  }

  /** The app's logger. */
  get logger(): Logger {
    return this.#host.logger ?? (fallback ??= defaultLogger());
  }

  /**
   * Whether anything listens to `event`: an event is built only then. The transitions of
   * invocations are also counted while an OpenTelemetry meter provider is registered.
   */
  listens(event: keyof NencEvents): boolean {
    return this.#listeners[event].size > 0 || (event === "invocation" && countsTransitions());
  }

  on<E extends keyof NencEvents>(event: E, listener: NencListener<E>): void {
    this.#set(event, "add listeners to").add(listener);
  }

  off<E extends keyof NencEvents>(event: E, listener: NencListener<E>): void {
    this.#set(event, "remove listeners from").delete(listener);
  }

  /** Calls the listeners of `event`; what one throws (or rejects with) is logged, not thrown. */
  emit<E extends keyof NencEvents>(event: E, payload: NencEvents[E]): void {
    if (event === "invocation") countTransition(payload as NencEvents["invocation"]);
    for (const listener of this.#listeners[event]) {
      try {
        const returned = listener(payload);
        if (returned instanceof Promise) {
          returned.catch((error: unknown) => this.#listenerFailed(event, payload, error));
        }
      } catch (error) {
        this.#listenerFailed(event, payload, error);
      }
    }
  }

  #set<E extends keyof NencEvents>(event: E, what: string): Set<NencListener<E>> {
    const listeners = Object.hasOwn(this.#listeners, event) ? this.#listeners[event] : undefined;
    if (listeners === undefined) {
      throw new TypeError(
        `Cannot ${what} event ${JSON.stringify(event)}: the events are ${
          Object.keys(this.#listeners).join(", ")
        }`,
      );
    }
    return listeners;
  }

  #listenerFailed<E extends keyof NencEvents>(
    event: E,
    payload: NencEvents[E],
    error: unknown,
  ): void {
    this.logger.error(`a listener of event ${event} threw: ${describeError(error)}`, {
      event,
      payload,
      error: errorFields(error),
    });
  }
}

const reporters = new WeakMap<object, Reporter>();

/** The reporter of `orchestrator`, made for it (on `host`'s logger) at its first use. */
export function reporterOf(orchestrator: object, host?: LoggerHost): Reporter {
  let reporter = reporters.get(orchestrator);
  if (reporter === undefined) reporters.set(orchestrator, reporter = new Reporter(host ?? {}));
  return reporter;
}

/** `{ name, message }` of an error (or of what was thrown instead of one): a log field. */
export function errorFields(error: unknown): { name: string; message: string } {
  if (error instanceof Error) return { name: error.name, message: error.message };
  return { name: typeof error, message: String(error) };
}

/** An error on one line, for a log message: `Name: message`. */
export function describeError(error: unknown): string {
  const { name, message } = errorFields(error);
  return `${name}: ${message.replaceAll("\n", " ")}`;
}

/** The fields of a message about an invocation, with the error when there is one. */
export function invocationFields(
  invocation: { readonly id: string; readonly taskId: string },
  runnerId: string | null,
  more: LogFields = {},
): LogFields {
  return { invocationId: invocation.id, taskId: invocation.taskId, runnerId, ...more };
}
