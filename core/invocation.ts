/**
 * Handles on invocations: what `task.call()` returns.
 *
 * @module
 */

import type { CancelOptions, Orchestrator, WaitOptions } from "./orchestrator.ts";
import type { HistoryEntry, InvocationStatus } from "./status.ts";
import type { InvocationRecord } from "./store.ts";

/**
 * One invocation of a task: its identity, and its status, result, history and retries read from
 * the orchestrator.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const double = app.task("double", ({ n }: { n: number }) => 2 * n);
 * await using runner = app.runner();
 * runner.start();
 * const invocation = await double.call({ n: 21 });
 * console.log(await invocation.result(), await invocation.status()); // 42 "success"
 * ```
 */
export class Invocation<Result = unknown> {
  /** The invocation id: a ULID, so ids sort by creation time. */
  readonly id: string;
  /** The call id: the task id and a hash of the arguments. */
  readonly callId: string;
  /** The task id. */
  readonly taskId: string;
  /** The invocation that made the call, or `null` for a call from outside any task. */
  readonly parentId: string | null;
  /** The arguments, each as canonical JSON. */
  readonly serializedArgs: Readonly<Record<string, string>>;
  readonly #orchestrator: Orchestrator;
  #args: Record<string, unknown> | undefined;

  /** Handles are made by the orchestrator. */
  constructor(orchestrator: Orchestrator, record: InvocationRecord) {
    this.#orchestrator = orchestrator;
    this.id = record.id;
    this.callId = record.callId;
    this.taskId = record.taskId;
    this.parentId = record.parentId;
    this.serializedArgs = record.args;
  }

  /** The arguments, parsed from their stored form. */
  get args(): Record<string, unknown> {
    this.#args ??= Object.fromEntries(
      Object.entries(this.serializedArgs).map(([name, json]) => [name, JSON.parse(json)]),
    );
    return this.#args;
  }

  /** The current status. */
  status(): Promise<InvocationStatus> {
    return this.#orchestrator.getInvocationStatus(this);
  }

  /**
   * Waits until the invocation is final, then resolves to its result, or rejects with its error
   * (same name, message and cause chain; the same class when registered with the app), or with
   * `ConcurrencyControlledError` when concurrency control finalised it without running, or
   * with `CanceledError` once it was canceled. Inside a running task, the current invocation is
   * PAUSED (its slot freed) while it waits. `signal` and `timeoutMs` stop the wait (not the
   * invocation): it rejects with the signal's reason, or a `DOMException` named `TimeoutError`.
   *
   * @example Giving up waiting after a while
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const invocation = await app.task("report", () => "pdf").call(); // no runner yet
   * const error = await invocation.result({ timeoutMs: 5 }).catch((error: unknown) => error);
   * console.log((error as Error).name, await invocation.status()); // "TimeoutError" "registered"
   * ```
   */
  result(options: WaitOptions = {}): Promise<Result> {
    return this.#orchestrator.waitForResult<Result>(this, options);
  }

  /**
   * Cancels the invocation: it becomes CANCELED (final) unless it is final already, and
   * `result()` rejects with `CanceledError`. A running one is aborted through its task's
   * `ctx.signal` by its runner, in any process, within one poll. With `cascade` [`true`], the
   * invocations it called that nothing else waits on are canceled too. Resolves to `true` when
   * this call canceled it, `false` when it was already final.
   *
   * @example Cancel a running task; it sees the abort on its signal
   * ```ts
   * import { CanceledError, Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const report = app.task("report", async (_args: undefined, ctx) => {
   *   await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
   *   return "aborted: " + (ctx.signal.reason as Error).name;
   * });
   * await using runner = app.runner();
   * runner.start();
   * const invocation = await report.call();
   * while (await invocation.status() !== "running") await new Promise((r) => setTimeout(r, 5));
   * console.log(await invocation.cancel({ reason: "the customer left" })); // true
   * const error = await invocation.result().catch((error: unknown) => error);
   * console.log(error instanceof CanceledError, (error as CanceledError).reason); // true "the customer left"
   * ```
   */
  async cancel(options: CancelOptions = {}): Promise<boolean> {
    const [canceled] = await this.#orchestrator.cancel([this], options);
    return canceled!;
  }

  /** The status history: one entry per transition, oldest first. */
  history(): Promise<HistoryEntry[]> {
    return this.#orchestrator.getInvocationHistory(this);
  }

  /** How many times the invocation was retried. */
  retries(): Promise<number> {
    return this.#orchestrator.getInvocationRetries(this);
  }
}

/**
 * An invocation that a call reused instead of creating a new one: found by its idempotency key,
 * or by registration concurrency (it has not run yet). `diffArgs` holds the arguments of the call
 * when they differ from the reused invocation's.
 *
 * @example
 * ```ts
 * import { Nenc, ReusedInvocation } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const sync = app.task("sync", ({ id }: { id: number }) => id, { registrationConcurrency: "task" });
 * const first = await sync.call({ id: 1 });
 * const second = await sync.call({ id: 2 });
 * console.log(second instanceof ReusedInvocation, second.id === first.id); // true true
 * console.log((second as ReusedInvocation).diffArgs); // { id: 2 }
 * ```
 */
export class ReusedInvocation<Result = unknown> extends Invocation<Result> {
  /** The arguments of the call that was folded into this invocation, when they differ. */
  readonly diffArgs: Readonly<Record<string, unknown>> | undefined;

  /** Handles are made by the orchestrator. */
  constructor(
    orchestrator: Orchestrator,
    record: InvocationRecord,
    diffArgs: Readonly<Record<string, unknown>> | undefined,
  ) {
    super(orchestrator, record);
    this.diffArgs = diffArgs;
  }
}

/**
 * The invocations of one `parallelize()`: results in call order or in completion order.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const inc = app.task("inc", ({ n }: { n: number }) => n + 1);
 * await using runner = app.runner({ concurrency: 4 });
 * runner.start();
 * const group = await inc.parallelize([{ n: 1 }, { n: 2 }]);
 * for await (const result of group.asCompleted()) console.log(result);
 * ```
 */
export class InvocationGroup<Result = unknown> {
  /** The invocations, in call order. */
  readonly invocations: readonly Invocation<Result>[];
  readonly #orchestrator: Orchestrator;

  /** Groups are made by `parallelize()`. */
  constructor(orchestrator: Orchestrator, invocations: readonly Invocation<Result>[]) {
    this.#orchestrator = orchestrator;
    this.invocations = invocations;
  }

  /** All results, in call order; rejects with the first error in call order. */
  results(): Promise<Result[]> {
    return this.#orchestrator.waitForResults<Result>(this.invocations);
  }

  /** The results as the invocations finish; throws an invocation's error when it comes. */
  asCompleted(): AsyncGenerator<Result, void, undefined> {
    return this.#orchestrator.resultsAsCompleted<Result>(this.invocations);
  }
}
