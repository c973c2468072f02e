/**
 * The core of nenc: the app, tasks, invocations, the orchestrator written once over the storage
 * port, the runner, cron schedules, the in-memory backend, the status state machine, identity (ULIDs, canonical
 * JSON, call ids), the errors, and the graph core — {@linkcode CallGraph} for cycle control and
 * {@linkcode WaitGraph} for blocking control. No `Deno.*`, no `Bun.*`: it runs on Deno, Bun,
 * Node and Deno Deploy.
 *
 * @example
 * ```ts
 * import { CallGraph, WaitGraph } from "@nenc/nenc/core";
 *
 * const calls = new CallGraph();
 * calls.addCall({ callId: "a#1", invocationId: "i1" }, { callId: "b#1", invocationId: "i2" });
 *
 * const waits = new WaitGraph();
 * waits.waitFor("i1", ["i2"]);
 * console.log(waits.blocking(10)); // ["i2"]
 * ```
 *
 * @module
 */

export * from "./call_graph.ts";
export * from "./errors.ts";
export * from "./ids.ts";
export * from "./status.ts";
export * from "./wait_graph.ts";
export * from "./app.ts";
export * from "./clock.ts";
export * from "./events.ts";
export * from "./invocation.ts";
export * from "./log.ts";
export * from "./memory_store.ts";
export * from "./orchestrator.ts";
export * from "./runner.ts";
export * from "./schedules.ts";
export * from "./serializer.ts";
export * from "./store.ts";
export * from "./task.ts";
