/**
 * The events of an app (`app.on(event, listener)`, `app.off(event, listener)`): what this
 * process does, as it does it. Events are local — the store is the shared truth.
 *
 * @module
 */

import type { InvocationStatus } from "./status.ts";

/**
 * A status transition made by this process (`app.on("invocation", …)`): a registration, a
 * pick-up, a run, a pause or resume, a retry, a final status, a hand-back, a cancel, a recovery.
 * One event per status entered, in order: a pick-up that goes straight on to RUNNING is two
 * (`registered → pending`, `pending → running`).
 *
 * @example
 * ```ts
 * import { type InvocationEvent, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const seen: string[] = [];
 * app.on("invocation", (event: InvocationEvent) => seen.push(`${event.previous} → ${event.status}`));
 * await app.task("ping", () => "pong").call();
 * await app.runner().drain();
 * console.log(seen); // ["null → registered", "registered → pending", "pending → running", "running → success"]
 * ```
 */
export interface InvocationEvent {
  /** The invocation id. */
  readonly id: string;
  /** Its task id. */
  readonly taskId: string;
  /** The status entered. */
  readonly status: InvocationStatus;
  /** The status it left; `null` for a registration. */
  readonly previous: InvocationStatus | null;
  /** The runner that made the transition, or `null` (a caller without a runner). */
  readonly runnerId: string | null;
  /** When, epoch ms (the time of its history entry). */
  readonly at: number;
}

/**
 * A runner of this process started or stopped, or this process's upkeep found a runner (of any
 * process) silent past `runnerTimeoutSeconds`, presumed it dead and recovered its work
 * (`app.on("runner", …)`).
 *
 * @example
 * ```ts
 * import { Nenc, type RunnerEvent } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const seen: RunnerEvent[] = [];
 * app.on("runner", (event) => seen.push(event));
 * await app.runner({ runnerId: "r1" }).drain();
 * console.log(seen.map((event) => event.event)); // ["started", "stopped"]
 * ```
 */
export interface RunnerEvent {
  /** The runner. */
  readonly runnerId: string;
  /** What happened to it. */
  readonly event: "started" | "stopped" | "dead";
}

/**
 * The events of an app, by name, with what their listeners receive.
 *
 * @example A listener for any event
 * ```ts
 * import { Nenc, type NencEvents } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const log = <E extends keyof NencEvents>(name: E) => (event: NencEvents[E]) =>
 *   console.log(name, event);
 * app.on("invocation", log("invocation"));
 * app.on("runner", log("runner"));
 * ```
 */
export interface NencEvents {
  /** A status transition made by this process. */
  invocation: InvocationEvent;
  /** A runner started, stopped, or was found dead. */
  runner: RunnerEvent;
}

/**
 * A listener of event `E`. It runs synchronously, right after the transition is written: keep it
 * quick. What it throws (or a promise it returns rejects with) is logged at error, and changes
 * nothing else.
 *
 * @example
 * ```ts
 * import { Nenc, type NencListener } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const failures: NencListener<"invocation"> = (event) => {
 *   if (event.status === "failed") console.log(`${event.taskId} ${event.id} failed`);
 * };
 * app.on("invocation", failures);
 * app.off("invocation", failures);
 * ```
 */
export type NencListener<E extends keyof NencEvents> = (event: NencEvents[E]) => unknown;
