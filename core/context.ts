/**
 * The invocation a piece of code runs in, carried by `AsyncLocalStorage` (available on Deno, Bun,
 * Node and Deno Deploy): a call made inside a task gets that invocation as its parent, and a
 * `result()` awaited inside a task pauses that invocation.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import type { InvocationRecord } from "./store.ts";

/** How a running invocation waits for others: the runner's side of `result()`. */
export interface ExecutionContext {
  /** The running invocation's id. */
  readonly invocationId: string;
  /** The runner executing it. */
  readonly runnerId: string;
  /** The trace context of the run (a W3C `traceparent`): what the calls made from it store. */
  readonly trace?: string | undefined;
  /** Aborted on cancel, timeout and runner stop, with the cause as its reason. */
  readonly signal: AbortSignal;
  /**
   * Waits until all (`"all"`) or one (`"any"`) of `ids` is final: records the wait for blocking
   * control, pauses the invocation (its slot is freed) and resumes it afterwards. Rejects with
   * the reason of `signal` or of the execution's own signal, whichever aborts first. The wait of
   * one invocation resolves with the final record it saw, when it saw one (see `Store.waitFinal`).
   */
  waitFor(
    ids: readonly string[],
    mode: "all" | "any",
    signal?: AbortSignal,
  ): Promise<InvocationRecord | void>;
}

const storage = new AsyncLocalStorage<ExecutionContext>();

/** The execution the caller runs in, or `undefined` outside any task. */
export function currentExecution(): ExecutionContext | undefined {
  return storage.getStore();
}

/** Runs `fn` inside `context`. */
export function runInExecution<T>(context: ExecutionContext, fn: () => T): T {
  return storage.run(context, fn);
}
