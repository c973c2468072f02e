/**
 * nenc — a distributed task orchestrator for TypeScript on Deno and Bun, re-imagining the
 * orchestrator of the Python project pynenc. It keeps three promises: concurrency control by
 * task, arguments or key arguments; cycle control (a call loop fails with a
 * {@linkcode CycleDetectedError} that names the cycle); and blocking control (what others wait
 * on runs first, oldest first).
 *
 * This release ships the graph core those promises stand on: {@linkcode CallGraph} (incremental
 * cycle detection) and {@linkcode WaitGraph} (blocking selection), with the status state machine
 * and identity helpers.
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

export * from "./core/mod.ts";
export * from "./kv/mod.ts";
