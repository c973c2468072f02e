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

export * from "./core/mod.ts";
export * from "./kv/mod.ts";
