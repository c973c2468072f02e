/**
 * The errors nenc throws for conditions callers catch. Every class sets `name`, carries its data
 * as readonly fields and chains `cause`; bad arguments are plain `TypeError` / `RangeError`.
 *
 * @module
 */

/**
 * Options accepted by every nenc error: the standard `cause`.
 *
 * @example Chaining the underlying error
 * ```ts
 * import { NencError, type NencErrorOptions, RetryError } from "@nenc/nenc";
 *
 * const options: NencErrorOptions = { cause: new Error("503 Service Unavailable") };
 * const error = new RetryError("Cannot fetch the rates: the server is busy", options);
 * console.log(error instanceof NencError, (error.cause as Error).message); // true "503 Service Unavailable"
 * ```
 */
export interface NencErrorOptions {
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * The base class of every nenc error: `instanceof NencError` catches them all.
 *
 * @example Catching any nenc error
 * ```ts
 * import { NencError, RetryError } from "@nenc/nenc";
 *
 * try {
 *   throw new RetryError("Cannot fetch: the server is busy");
 * } catch (error) {
 *   if (!(error instanceof NencError)) throw error;
 *   console.log(error.name); // "RetryError"
 * }
 * ```
 */
export class NencError extends Error {
  /** Creates the error; `options.cause` chains the underlying error. */
  constructor(message: string, options?: NencErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Adding a call would close a loop of calls. `callIds` lists the cycle starting at the caller of
 * the closing edge; `labels` renders the same calls (`task({"arg":1})`).
 *
 * @example Reading the cycle
 * ```ts
 * import { CycleDetectedError } from "@nenc/nenc";
 *
 * const error = new CycleDetectedError(["other#1", "fib#1"], ['other({"n":3})', 'fib({"n":3})']);
 * console.log(error.message);
 * // A cycle was detected: Cycle detected:
 * // - other({"n":3})
 * // - fib({"n":3})
 * // - back to other({"n":3})
 * ```
 */
export class CycleDetectedError extends NencError {
  /** The call ids of the cycle, starting at the caller of the closing edge. */
  readonly callIds: readonly string[];
  /** How each call of {@linkcode CycleDetectedError.callIds} is rendered, in the same order. */
  readonly labels: readonly string[];

  /** Creates the error; `labels` defaults to the call ids themselves. */
  constructor(
    callIds: readonly string[],
    labels: readonly string[] = callIds,
    options?: NencErrorOptions,
  ) {
    if (callIds.length === 0 || labels.length !== callIds.length) {
      throw new RangeError(
        `Cannot create CycleDetectedError: expected one label per call id, got ${labels.length} labels for ${callIds.length} calls`,
      );
    }
    const lines = labels.map((label) => `- ${label}`);
    super(
      `A cycle was detected: Cycle detected:\n${lines.join("\n")}\n- back to ${labels[0]}`,
      options,
    );
    this.callIds = Object.freeze([...callIds]);
    this.labels = Object.freeze([...labels]);
  }
}

/**
 * Registration concurrency found an invocation with the same key but different non-key
 * arguments, and the task sets `onDiffNonKeyArgsRaise: true`.
 *
 * @example
 * ```ts
 * import { InvocationConcurrencyWithDifferentArgumentsError } from "@nenc/nenc";
 *
 * const error = new InvocationConcurrencyWithDifferentArgumentsError("send", "01J0000000000000000000000", {
 *   body: { existing: '"hi"', requested: '"hello"' },
 * });
 * console.log(error.diff.body?.requested); // "\"hello\""
 * ```
 */
export class InvocationConcurrencyWithDifferentArgumentsError extends NencError {
  /** The task whose call was refused. */
  readonly taskId: string;
  /** The registered invocation that holds the key. */
  readonly existingInvocationId: string;
  /** Per differing argument, its serialized value in the existing and in the requested call. */
  readonly diff: Readonly<Record<string, ArgumentDiff>>;

  /** Creates the error. */
  constructor(
    taskId: string,
    existingInvocationId: string,
    diff: Readonly<Record<string, ArgumentDiff>>,
    options?: NencErrorOptions,
  ) {
    super(
      `Cannot register a call of ${taskId}: invocation ${existingInvocationId} holds the same key with different arguments (${
        Object.keys(diff).join(", ")
      })`,
      options,
    );
    this.taskId = taskId;
    this.existingInvocationId = existingInvocationId;
    this.diff = Object.freeze({ ...diff });
  }
}

/**
 * One argument that differs between an existing and a requested call, both serialized.
 *
 * @example
 * ```ts
 * import { type ArgumentDiff, InvocationConcurrencyWithDifferentArgumentsError, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const send = app.task("send", ({ to, body }: { to: string; body: string }) => `${to}: ${body}`, {
 *   registrationConcurrency: "keys", keyArguments: ["to"], onDiffNonKeyArgsRaise: true,
 * });
 * await send.call({ to: "ada", body: "hi" });
 * const error = await send.call({ to: "ada", body: "hello" }).catch((error: unknown) => error);
 * if (!(error instanceof InvocationConcurrencyWithDifferentArgumentsError)) throw error;
 * const body: ArgumentDiff | undefined = error.diff.body;
 * console.log(body); // { existing: '"hi"', requested: '"hello"' }
 * ```
 */
export interface ArgumentDiff {
  /** The serialized value in the existing invocation, `undefined` if it lacks the argument. */
  readonly existing: string | undefined;
  /** The serialized value in the requested call, `undefined` if it lacks the argument. */
  readonly requested: string | undefined;
}

/**
 * A batch operation was asked of something that cannot be batched, such as `routeCalls` for a
 * task with registration concurrency.
 *
 * @example
 * ```ts
 * import { BatchProcessingError } from "@nenc/nenc";
 *
 * const error = new BatchProcessingError("Cannot route in batch: task add uses registration concurrency");
 * console.log(error.name); // "BatchProcessingError"
 * ```
 */
export class BatchProcessingError extends NencError {}

/**
 * A status change that the status state machine does not allow.
 *
 * @example
 * ```ts
 * import { InvocationStatusTransitionError } from "@nenc/nenc";
 *
 * const error = new InvocationStatusTransitionError("success", "running", "01J0000000000000000000000");
 * console.log(error.message); // Cannot change the status of invocation 01J…: success → running is not allowed
 * ```
 */
export class InvocationStatusTransitionError extends NencError {
  /** The current status, `undefined` for an invocation that does not exist yet. */
  readonly from: string | undefined;
  /** The refused status. */
  readonly to: string;
  /** The invocation, when known. */
  readonly invocationId: string | undefined;

  /** Creates the error. */
  constructor(
    from: string | undefined,
    to: string,
    invocationId?: string,
    options?: NencErrorOptions,
  ) {
    super(
      `Cannot change the status of ${invocationLabel(invocationId)}: ${
        from ?? "(new)"
      } → ${to} is not allowed`,
      options,
    );
    this.from = from;
    this.to = to;
    this.invocationId = invocationId;
  }
}

/**
 * A status change by a runner that does not own the invocation.
 *
 * @example
 * ```ts
 * import { InvocationStatusOwnershipError } from "@nenc/nenc";
 *
 * const error = new InvocationStatusOwnershipError("pending", "running", "runner-a", "runner-b");
 * console.log(error.ownerId); // "runner-a"
 * ```
 */
export class InvocationStatusOwnershipError extends NencError {
  /** The current status. */
  readonly from: string;
  /** The refused status. */
  readonly to: string;
  /** The runner that owns the invocation. */
  readonly ownerId: string;
  /** The runner that asked for the change (`null`: no runner). */
  readonly runnerId: string | null;
  /** The invocation, when known. */
  readonly invocationId: string | undefined;

  /** Creates the error. */
  constructor(
    from: string,
    to: string,
    ownerId: string,
    runnerId: string | null,
    invocationId?: string,
    options?: NencErrorOptions,
  ) {
    super(
      `Cannot change the status of ${
        invocationLabel(invocationId)
      } from ${from} to ${to}: it is owned by runner ${ownerId}, not by ${
        runnerId === null ? "a caller without a runner" : `runner ${runnerId}`
      }`,
      options,
    );
    this.from = from;
    this.to = to;
    this.ownerId = ownerId;
    this.runnerId = runnerId;
    this.invocationId = invocationId;
  }
}

/**
 * The invocation was finalised by running concurrency control without running
 * (CONCURRENCY_CONTROLLED_FINAL); `result()` rejects with this error.
 *
 * @example
 * ```ts
 * import { ConcurrencyControlledError } from "@nenc/nenc";
 *
 * const error = new ConcurrencyControlledError("sync", "01J0000000000000000000000");
 * console.log(error.taskId); // "sync"
 * ```
 */
export class ConcurrencyControlledError extends NencError {
  /** The task of the invocation. */
  readonly taskId: string;
  /** The invocation that did not run. */
  readonly invocationId: string;

  /** Creates the error. */
  constructor(taskId: string, invocationId: string, options?: NencErrorOptions) {
    super(
      `Cannot get the result of ${taskId} invocation ${invocationId}: running concurrency control finalised it without running`,
      options,
    );
    this.taskId = taskId;
    this.invocationId = invocationId;
  }
}

/**
 * Thrown by a task to ask for a retry; always retriable, within the task's `maxRetries`.
 *
 * @example
 * ```ts
 * import { RetryError } from "@nenc/nenc";
 *
 * function fetchOrRetry(ok: boolean): string {
 *   if (!ok) throw new RetryError("Cannot fetch: upstream is busy");
 *   return "page";
 * }
 * console.log(fetchOrRetry(true));
 * ```
 */
export class RetryError extends NencError {}

/**
 * A task this app does not define. (A runner never fails an invocation of a task it does not
 * define: it leaves it queued for a runner that does.)
 *
 * @example
 * ```ts
 * import { TaskNotFoundError } from "@nenc/nenc";
 *
 * console.log(new TaskNotFoundError("resize").message);
 * ```
 */
export class TaskNotFoundError extends NencError {
  /** The unknown task id. */
  readonly taskId: string;

  /** Creates the error. */
  constructor(taskId: string, options?: NencErrorOptions) {
    super(`Cannot run task ${taskId}: this app does not define it`, options);
    this.taskId = taskId;
  }
}

/**
 * A value could not be serialized, or stored data could not be read back.
 *
 * @example
 * ```ts
 * import { SerializationError } from "@nenc/nenc";
 *
 * const error = new SerializationError("Cannot serialize args.when: Date is not plain JSON", { path: "args.when" });
 * console.log(error.path); // "args.when"
 * ```
 */
export class SerializationError extends NencError {
  /** Where in the value the problem is (`args.items[2]`), when known. */
  readonly path: string | undefined;

  /** Creates the error. */
  constructor(message: string, options?: NencErrorOptions & { path?: string }) {
    super(message, options);
    this.path = options?.path;
  }
}

/**
 * The invocation was canceled (`invocation.cancel()`): `result()` rejects with it, and the task's
 * `ctx.signal` aborts with it as its reason.
 *
 * @example
 * ```ts
 * import { CanceledError } from "@nenc/nenc";
 *
 * const error = new CanceledError("01J", "the customer left");
 * console.log(error.message); // "Cannot finish invocation 01J: it was canceled (the customer left)"
 * ```
 */
export class CanceledError extends NencError {
  /** The canceled invocation. */
  readonly invocationId: string;
  /** Why it was canceled, when the caller said. */
  readonly reason: string | undefined;

  /** Creates the error. */
  constructor(invocationId: string, reason?: string, options?: NencErrorOptions) {
    super(
      `Cannot finish invocation ${invocationId}: it was canceled${
        reason === undefined ? "" : ` (${reason})`
      }`,
      options,
    );
    this.invocationId = invocationId;
    this.reason = reason;
  }
}

/**
 * An attempt of a task ran past the task's `timeoutMs`: the task's `ctx.signal` aborts with it,
 * and the invocation fails with it (or is retried, when its task's `retryFor` lists it).
 *
 * @example
 * ```ts
 * import { TaskTimeoutError } from "@nenc/nenc";
 *
 * const error = new TaskTimeoutError("resize", "01J", 5_000);
 * console.log(error.message); // "Cannot finish task resize (invocation 01J): it ran past its timeout of 5000 ms"
 * ```
 */
export class TaskTimeoutError extends NencError {
  /** The task. */
  readonly taskId: string;
  /** The invocation whose attempt timed out. */
  readonly invocationId: string;
  /** The task's timeout. */
  readonly timeoutMs: number;

  /** Creates the error. */
  constructor(taskId: string, invocationId: string, timeoutMs: number, options?: NencErrorOptions) {
    super(
      `Cannot finish task ${taskId} (invocation ${invocationId}): it ran past its timeout of ${timeoutMs} ms`,
      options,
    );
    this.taskId = taskId;
    this.invocationId = invocationId;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The store was closed (a KV handle's `close()`): waiters, runners and CLI commands on it reject
 * with this error instead of polling forever.
 *
 * @example
 * ```ts
 * import { StoreClosedError } from "@nenc/nenc";
 *
 * const error = new StoreClosedError("Cannot wait for invocation 01J: the store is closed");
 * console.log(error.name); // "StoreClosedError"
 * ```
 */
export class StoreClosedError extends NencError {}

function invocationLabel(invocationId: string | undefined): string {
  return invocationId === undefined ? "an invocation" : `invocation ${invocationId}`;
}
