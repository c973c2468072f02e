/**
 * nenc — a distributed task orchestrator for TypeScript on Deno and Bun, re-imagining the
 * orchestrator of the Python project pynenc. It keeps three promises: concurrency control by
 * task, arguments or key arguments; cycle control (a call loop fails with a
 * {@linkcode CycleDetectedError} that names the cycle); and blocking control (what others wait
 * on runs first, oldest first).
 *
 * Define tasks on a {@linkcode Nenc} app, call them, and run them with `app.runner()` — in one
 * process on the embedded in-memory backend, or across processes and machines on Deno KV
 * (`new Nenc({ appId, kv })`). `app.orchestrator` is pynenc's orchestrator interface; the graph
 * core ({@linkcode CallGraph}, {@linkcode WaitGraph}) and the status state machine are exported
 * too.
 *
 * @example Cycle control names the loop
 * ```ts
 * import { CallGraph, CycleDetectedError } from "@nenc/nenc";
 *
 * const graph = new CallGraph();
 * const fib = { callId: "fib#3", invocationId: "i1", label: 'fib({"n":3})' };
 * const other = { callId: "other#3", invocationId: "i2", label: 'other({"n":3})' };
 * graph.addCall(fib, other);
 * try {
 *   graph.addCall(other, { ...fib, invocationId: "i3" });
 * } catch (error) {
 *   if (!(error instanceof CycleDetectedError)) throw error;
 *   console.log(error.message);
 *   // A cycle was detected: Cycle detected:
 *   // - other({"n":3})
 *   // - fib({"n":3})
 *   // - back to other({"n":3})
 * }
 * ```
 *
 * @module
 */

// The app API. The storage port and what backend authors build on (planChange, decideSlots,
// controlChange, CONTROL_LIMIT, MemoryStore, …) are the `./core` export; the Deno KV backend's
// classes and key shapes (KvStore, Keys) the `./kv` export.
export * from "./core/app.ts";
export * from "./core/call_graph.ts";
export * from "./core/errors.ts";
export * from "./core/events.ts";
export * from "./core/invocation.ts";
export * from "./core/log.ts";
export * from "./core/runner.ts";
export * from "./core/status.ts";
export * from "./core/task.ts";
export * from "./core/wait_graph.ts";
export { systemClock } from "./core/clock.ts";
export type { Clock } from "./core/clock.ts";
export { callId, callLabel, canonicalJson, invocationIdTime, newInvocationId } from "./core/ids.ts";
export type { SerializedArguments } from "./core/ids.ts";
export { Orchestrator } from "./core/orchestrator.ts";
export type {
  ActorOptions,
  BlockingControl,
  CancelOptions,
  CycleControl,
  InvocationRef,
  OrchestratorOptions,
  WaitOptions,
} from "./core/orchestrator.ts";
export { nextTickMs } from "./core/schedules.ts";
export type { CatchUp, FiredTick, Schedule, ScheduleOptions } from "./core/schedules.ts";
export { DEFAULT_ERROR_CLASSES } from "./core/serializer.ts";
export type { ErrorClass } from "./core/serializer.ts";
export type { InvocationRecord, SerializedError, Store } from "./core/store.ts";
export type * from "./kv/kv_like.ts";
