/**
 * The orchestrator: pynenc's `BaseOrchestrator` in TypeScript, written once over the storage
 * port ({@linkcode Store}). It routes calls with registration concurrency, hands invocations to
 * runners with running concurrency, keeps the status state machine with ownership and history,
 * and runs cycle control and blocking control.
 *
 * @module
 */

import { markRehydrated } from "./_rehydrated.ts";
import type { CallRef } from "./call_graph.ts";
import type { Clock } from "./clock.ts";
import { currentExecution } from "./context.ts";
import { setMaxListeners } from "node:events";
import { isStoreFault, retryFaults } from "./_faults.ts";
import { callTrace } from "./_telemetry.ts";
import {
  BatchProcessingError,
  CanceledError,
  ConcurrencyControlledError,
  CycleDetectedError,
  InvocationConcurrencyWithDifferentArgumentsError,
  NencError,
  SerializationError,
} from "./errors.ts";
import { callId, canonicalJson, newInvocationId } from "./ids.ts";
import { Invocation, InvocationGroup, ReusedInvocation } from "./invocation.ts";
import { refuseIdempotencyInBatch, resolveCallOptions } from "./_call_options.ts";
import { deserializeError, type ErrorClass, serializeError } from "./serializer.ts";
import { FINAL_STATUSES, type HistoryEntry, InvocationStatus, isFinalStatus } from "./status.ts";
import {
  callRefOf,
  type ChangeOutcome,
  type ClaimOutcome,
  type ClaimRequest,
  holdsSlots,
  type InvocationRecord,
  type NewInvocation,
  type RegisterOutcome,
  slotsOf,
  type StatusChange,
  type Store,
} from "./store.ts";
import type { Call, CallOptions, Task } from "./task.ts";
import { resolveSchedule } from "./_schedule_options.ts";
import type { FiredTick, Schedule, ScheduleOptions } from "./schedules.ts";
import type { Logger } from "./log.ts";
import { errorFields, invocationFields, type Reporter, reporterOf } from "./_report.ts";

/**
 * Options of the orchestrator (`new Nenc({ orchestrator: { … } })`); defaults in brackets.
 * `cycleControl` and `blockingControl` may be toggled at runtime through
 * `app.orchestrator.options`: the change takes effect on the next call.
 *
 * @example
 * ```ts
 * import { Nenc, type OrchestratorOptions } from "@nenc/nenc";
 *
 * const orchestrator: OrchestratorOptions = { maxPendingSeconds: 30, runnerTimeoutSeconds: 60 };
 * const app = new Nenc({ appId: "shop", orchestrator });
 * console.log(app.orchestrator.options.maxPendingSeconds, app.orchestrator.options.cycleControl); // 30 true
 * ```
 */
export interface OrchestratorOptions {
  /** Detect call cycles [`true`]. */
  cycleControl?: boolean;
  /**
   * Run what others wait on first [`true`]. Off, no wait is recorded (`waitingForResults`) and
   * `getBlockingInvocations` returns `[]`: the queue order alone decides the pick-up.
   */
  blockingControl?: boolean;
  /**
   * Final invocations are purged this many hours after they finish [`24`]. Once its purge time
   * has passed, an invocation reads as gone on every backend (`0`: as soon as it finishes), even
   * before the sweep (`autoPurge()`, run by the runners) deletes it.
   */
  autoFinalInvocationPurgeHours?: number;
  /** A PENDING invocation older than this is recovered and re-queued [`5`]. */
  maxPendingSeconds?: number;
  /**
   * A runner without a heartbeat for this long is dead; its invocations are recovered [`10`].
   * The upkeep lease lasts as long past its holder's last heartbeat: a dead holder's work and its
   * lease are taken over together.
   */
  runnerTimeoutSeconds?: number;
}

/**
 * Orchestrator options with the defaults filled in; `cycleControl` and `blockingControl` can be
 * changed.
 *
 * @example Turning blocking control off at runtime
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ResolvedOrchestratorOptions } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const options: ResolvedOrchestratorOptions = app.orchestrator.options;
 * options.blockingControl = false; // from the next pick-up on, the queue order alone decides
 * console.log(options.blockingControl, options.autoFinalInvocationPurgeHours); // false 24
 * ```
 */
export interface ResolvedOrchestratorOptions {
  /** See {@linkcode OrchestratorOptions.cycleControl}. */
  cycleControl: boolean;
  /** See {@linkcode OrchestratorOptions.blockingControl}. */
  blockingControl: boolean;
  /** See {@linkcode OrchestratorOptions.autoFinalInvocationPurgeHours}. */
  readonly autoFinalInvocationPurgeHours: number;
  /** See {@linkcode OrchestratorOptions.maxPendingSeconds}. */
  readonly maxPendingSeconds: number;
  /** See {@linkcode OrchestratorOptions.runnerTimeoutSeconds}. */
  readonly runnerTimeoutSeconds: number;
}

/**
 * Validates orchestrator options and fills in the defaults.
 *
 * @throws {TypeError | RangeError} naming the option.
 *
 * @example The defaults
 * ```ts
 * import { resolveOrchestratorOptions } from "@nenc/nenc/core";
 *
 * console.log(resolveOrchestratorOptions({}));
 * // {
 * //   cycleControl: true,
 * //   blockingControl: true,
 * //   autoFinalInvocationPurgeHours: 24,
 * //   maxPendingSeconds: 5,
 * //   runnerTimeoutSeconds: 10
 * // }
 * ```
 *
 * @example A bad value
 * ```ts
 * import { resolveOrchestratorOptions } from "@nenc/nenc/core";
 *
 * try {
 *   resolveOrchestratorOptions({ maxPendingSeconds: -1 });
 * } catch (error) {
 *   if (!(error instanceof RangeError)) throw error;
 *   console.log(error.message);
 *   // Cannot create the orchestrator: maxPendingSeconds must be a number ≥ 0, got -1
 * }
 * ```
 */
export function resolveOrchestratorOptions(
  options: OrchestratorOptions = {},
): ResolvedOrchestratorOptions {
  const known = [
    "cycleControl",
    "blockingControl",
    "autoFinalInvocationPurgeHours",
    "maxPendingSeconds",
    "runnerTimeoutSeconds",
  ];
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) {
      throw new TypeError(`Cannot create the orchestrator: unknown option "${name}"`);
    }
  }
  const flag = (name: "cycleControl" | "blockingControl"): boolean => {
    const value = options[name] ?? true;
    if (typeof value !== "boolean") {
      throw new TypeError(`Cannot create the orchestrator: ${name} must be a boolean`);
    }
    return value;
  };
  const amount = (
    name: "autoFinalInvocationPurgeHours" | "maxPendingSeconds" | "runnerTimeoutSeconds",
    fallback: number,
  ): number => {
    const value = options[name] ?? fallback;
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new RangeError(
        `Cannot create the orchestrator: ${name} must be a number ≥ 0, got ${value}`,
      );
    }
    return value;
  };
  return {
    cycleControl: flag("cycleControl"),
    blockingControl: flag("blockingControl"),
    autoFinalInvocationPurgeHours: amount("autoFinalInvocationPurgeHours", 24),
    maxPendingSeconds: amount("maxPendingSeconds", 5),
    runnerTimeoutSeconds: amount("runnerTimeoutSeconds", 10),
  };
}

/**
 * What the orchestrator needs from its app. A {@linkcode Nenc} app is one; a test can build an
 * orchestrator on a host of its own, here with a frozen clock.
 *
 * @example
 * ```ts
 * import { type Clock, Orchestrator, Task } from "@nenc/nenc";
 * import { MemoryStore, type OrchestratorHost } from "@nenc/nenc/core";
 *
 * const clock: Clock = { now: () => 1_000, sleep: () => Promise.resolve() };
 * const host: OrchestratorHost = { getTask: () => undefined, errorClasses: new Map(), clock };
 * const orchestrator = new Orchestrator(host, new MemoryStore());
 * const probe = new Task(orchestrator, "probe", () => 1);
 * const invocation = await probe.call();
 * console.log((await invocation.history())[0]?.timestampMs); // 1000
 * ```
 */
export interface OrchestratorHost {
  /** The task with this id, or `undefined` when this app does not define it. */
  getTask(taskId: string): Task<never, unknown> | undefined;
  /** Error classes rehydrated by name. */
  readonly errorClasses: ReadonlyMap<string, ErrorClass>;
  /** The app's clock. */
  readonly clock: Clock;
  /** The app's logger [the console, at `NENC_LOG_LEVEL`]. */
  readonly logger?: Logger;
}

/**
 * Who changes a status: a runner, or `null` for a caller without one (default: the current
 * runner).
 *
 * @example An operator takes an invocation off the queue
 * ```ts
 * import { type ActorOptions, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * const actor: ActorOptions = { runnerId: "ops" };
 * await app.orchestrator.setInvocationStatus(invocation, "concurrency_controlled_final", actor);
 * const [, last] = await invocation.history();
 * console.log(last?.status, last?.runnerId); // "concurrency_controlled_final" "ops"
 * ```
 */
export interface ActorOptions {
  /** The runner making the change. */
  runnerId?: string | null;
  /** The claim the runner holds (from `startInvocations`): the change is refused once superseded. */
  claimSeq?: number;
  /**
   * The sequence number the runner last saw: the change applies only from there, and a retry of
   * a change whose earlier try was applied (its answer lost) is recognised as done.
   */
  expectSeq?: number;
  /**
   * Called once the change is committed, before what follows it (for a final status, releasing
   * its waiters and its calls; for a pause, releasing those it waits on that ended already): the
   * runner gives back the slot of the execution that the change ends or pauses.
   */
  onCommitted?: () => void;
}

/**
 * Options of `invocation.cancel()` and `orchestrator.cancel()`; defaults in brackets.
 *
 * @example
 * ```ts
 * import { type CancelOptions, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const invocation = await app.task("report", () => "pdf").call();
 * const options: CancelOptions = { reason: "the customer left", cascade: false };
 * console.log(await invocation.cancel(options), await invocation.status()); // true "canceled"
 * ```
 */
export interface CancelOptions {
  /** Why: carried by the {@linkcode CanceledError} that `result()` rejects with. */
  reason?: string;
  /**
   * Also cancel, recursively, the invocations it called that no other live invocation waits on
   * [`true`].
   */
  cascade?: boolean;
}

/**
 * Options of `invocation.result()` and `orchestrator.waitForResults()`.
 *
 * @example Waiting at most a second
 * ```ts
 * import { Nenc, type WaitOptions } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const invocation = await app.task("slow", () => "done").call(); // no runner: it never runs
 * const options: WaitOptions = { timeoutMs: 10 };
 * const error = await invocation.result(options).catch((error: unknown) => error);
 * console.log((error as DOMException).name, await invocation.status()); // "TimeoutError" "registered"
 * ```
 */
export interface WaitOptions {
  /** Stops waiting when aborted: rejects with its reason; the invocation is left as it is. */
  signal?: AbortSignal;
  /**
   * Stops waiting after this many ms of the app's clock: rejects with a `DOMException` named
   * `TimeoutError` (as `AbortSignal.timeout` does); the invocation is left as it is.
   */
  timeoutMs?: number;
}

/**
 * Anything with an invocation id: an {@linkcode Invocation}, or `{ id }`.
 *
 * @example An id kept elsewhere (a database row, a URL) is enough
 * ```ts
 * import { type InvocationRef, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const { id } = await ping.call();
 * const ref: InvocationRef = { id };
 * console.log(await app.orchestrator.getInvocationStatus(ref)); // "registered"
 * ```
 */
export interface InvocationRef {
  /** The invocation id. */
  readonly id: string;
}

/**
 * Cycle control: the call graph between running invocations.
 *
 * @example
 * ```ts
 * import { type CycleControl, CycleDetectedError, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const a = await app.task("a", () => 1).call();
 * const b = await app.task("b", () => 2).call();
 * const cycles: CycleControl = app.orchestrator.cycleControl;
 * await cycles.addCallAndCheckCycles(a, b);
 * const error = await cycles.addCallAndCheckCycles(b, a).catch((error: unknown) => error);
 * console.log(error instanceof CycleDetectedError); // true
 * ```
 */
export interface CycleControl {
  /**
   * Adds the call edge caller → callee; throws {@linkcode CycleDetectedError} if it closes a
   * cycle. Adds nothing for a caller that is final (or purged): it cannot be part of a live cycle.
   */
  addCallAndCheckCycles(caller: InvocationRef, callee: InvocationRef): Promise<void>;
  /** Releases a finished invocation's hold on its call's edges. */
  cleanUpInvocationCycles(invocation: InvocationRef): Promise<void>;
}

/**
 * Blocking control: which invocations wait on which.
 *
 * @example
 * ```ts
 * import { type BlockingControl, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const parent = await app.task("parent", () => 1).call();
 * const child = await app.task("child", () => 2).call();
 * const blocking: BlockingControl = app.orchestrator.blockingControl;
 * await blocking.waitingForResults(parent, [child]);
 * console.log((await blocking.getBlockingInvocations(10)).map((invocation) => invocation.taskId)); // ["child"]
 * ```
 */
export interface BlockingControl {
  /** Records that `caller` waits on `invocations`. */
  waitingForResults(
    caller: InvocationRef | undefined,
    invocations: readonly InvocationRef[],
  ): Promise<void>;
  /** Removes the wait edges of a final invocation. */
  releaseWaiters(invocation: InvocationRef): Promise<void>;
  /** Invocations others wait on, that wait on nothing and are available, oldest first. */
  getBlockingInvocations(max: number): Promise<Invocation[]>;
}

/**
 * The orchestrator of an app (`app.orchestrator`): every method of pynenc's `BaseOrchestrator`,
 * camelCase, over the app's storage backend.
 *
 * @example Inspecting invocations
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const send = app.task("send", ({ to }: { to: string }) => to);
 * await send.call({ to: "ada" });
 * for await (const invocation of app.orchestrator.getExistingInvocations(send, { statuses: ["registered"] })) {
 *   console.log(invocation.args); // { to: "ada" }
 * }
 * ```
 */
export class Orchestrator {
  /** The options; `cycleControl` and `blockingControl` may be changed at runtime. */
  readonly options: ResolvedOrchestratorOptions;
  #store: Store;
  #storeUsed = false;
  /** Cycle control. */
  readonly cycleControl: CycleControl;
  /** Blocking control. */
  readonly blockingControl: BlockingControl;
  readonly #host: OrchestratorHost;
  /** The app's logger and event listeners. */
  readonly #reporter: Reporter;
  /** The tasks whose concurrency groups this process stored or checked. */
  readonly #groupsDefined = new WeakMap<object, Promise<void>>();

  /** Created by `new Nenc()`. */
  constructor(host: OrchestratorHost, store: Store, options: OrchestratorOptions = {}) {
    this.#host = host;
    this.#reporter = reporterOf(this, host);
    this.#store = store;
    this.options = resolveOrchestratorOptions(options);
    this.cycleControl = {
      addCallAndCheckCycles: async (caller, callee) => {
        // Both reads at once (one round trip on a backend that batches reads).
        const [callerRecord, calleeRecord] = await Promise.all([
          this.store.get(caller.id),
          this.#record(callee),
        ]);
        // A caller that is gone (purged) or final cannot be part of a live cycle; and its hold
        // would never be released: its clean-up ran when it became final.
        if (callerRecord === undefined || isFinalStatus(callerRecord.status)) return;
        await this.store.addCall(callRefOf(callerRecord), callRefOf(calleeRecord));
        // The caller may have become final meanwhile, and its clean-up run before our hold was
        // written: release the hold again. Its final write precedes its clean-up, and our hold
        // precedes this read, so one of the two releases sees the hold.
        const now = await this.store.get(caller.id);
        if (now === undefined || isFinalStatus(now.status)) {
          await this.store.removeCall(callHold(callerRecord));
        }
      },
      cleanUpInvocationCycles: async (invocation) => {
        const record = await this.store.get(invocation.id);
        if (record !== undefined) await this.store.removeCall(callHold(record));
      },
    };
    this.blockingControl = {
      waitingForResults: (caller, invocations) => this.waitingForResults(caller, invocations),
      releaseWaiters: (invocation) => this.releaseWaiters(invocation),
      getBlockingInvocations: (max) => this.getBlockingInvocations(max),
    };
  }

  /**
   * The storage backend. Reading it marks the backend as in use, so `app.useKv()` must come
   * first.
   */
  get store(): Store {
    this.#storeUsed = true;
    return this.#store;
  }

  /**
   * Moves the orchestrator onto another backend; only before anything has used the store
   * (`app.useKv()` calls it).
   *
   * @throws {Error} once the store has been used.
   */
  useStore(store: Store): void {
    if (this.#storeUsed) {
      throw new Error("Cannot change the backend: the app has already used its store");
    }
    this.#store = store;
  }

  // --- routing ---------------------------------------------------------------------------------

  /**
   * Routes one call. An idempotency key (`call.options.idempotencyKey`) comes first: within its
   * time to live, the invocation it names is returned, final or not. Then registration
   * concurrency: with a mode other than `"disabled"`, an invocation with the same key that has
   * not run yet (REGISTERED, REROUTED, CONCURRENCY_CONTROLLED, PENDING) is reused. Otherwise a
   * new invocation is registered and queued. Lookup and creation are one atomic step of the store.
   *
   * @throws {TypeError} when an argument is not serializable, or for a bad call option.
   * @throws {InvocationConcurrencyWithDifferentArgumentsError} when the reused invocation has
   * different arguments and the task sets `onDiffNonKeyArgsRaise`.
   */
  async routeCall<Args, Result>(call: Call<Args, Result>): Promise<Invocation<Result>> {
    const { task, args } = call;
    const invocation = this.#newInvocation(task, args, call.options);
    await this.#defineGroupsOf(task);
    // The store refuses a call from a canceled context in the registration's own step: on KV, a
    // check in its commit rather than a read of the caller before it (issue #12).
    const outcome: RegisterOutcome = await this.#registering(
      [invocation.id],
      () => this.store.register(invocation),
      ([record]) => ({ created: record! }),
    );
    if (outcome.refused !== undefined) {
      return this.#outcome<never>(outcome.refused.id, outcome.refused); // throws its CanceledError
    }
    if (outcome.created !== undefined) {
      this.#reportRegistered([outcome.created], invocation.runnerId);
      return new Invocation<Result>(this, outcome.created);
    }
    const existing = outcome.existing;
    if (existing.callId === invocation.callId) {
      return new ReusedInvocation<Result>(this, existing, undefined);
    }
    if (task.options.onDiffNonKeyArgsRaise) {
      const diff: Record<string, { existing: string | undefined; requested: string | undefined }> =
        {};
      for (
        const name of new Set([...Object.keys(existing.args), ...Object.keys(invocation.args)])
      ) {
        if (existing.args[name] !== invocation.args[name]) {
          diff[name] = { existing: existing.args[name], requested: invocation.args[name] };
        }
      }
      throw new InvocationConcurrencyWithDifferentArgumentsError(task.id, existing.id, diff);
    }
    return new ReusedInvocation<Result>(this, existing, (args ?? {}) as Record<string, unknown>);
  }

  /**
   * Routes many calls at once; only for tasks whose registration concurrency is disabled.
   *
   * @throws {BatchProcessingError} for a task with registration concurrency.
   */
  async routeCalls<Args, Result>(
    calls: readonly Call<Args, Result>[],
  ): Promise<Invocation<Result>[]> {
    for (const { task, options } of calls) {
      refuseIdempotencyInBatch(`route calls of task ${task.id} in batch`, options);
      if (task.options.registrationConcurrency !== "disabled") {
        throw new BatchProcessingError(
          `Cannot route calls of task ${task.id} in batch: its registration concurrency is "${task.options.registrationConcurrency}"`,
        );
      }
    }
    const invocations = calls.map(({ task, args, options }) =>
      this.#newInvocation(task, args, options)
    );
    await this.#refuseIfCanceled(invocations[0]?.parentId ?? null);
    for (const task of new Set(calls.map(({ task }) => task))) await this.#defineGroupsOf(task);
    const ids = invocations.map(({ id }) => id);
    let tries = 0;
    const records = await this.#registering(ids, async () => {
      if (tries++ === 0) return await this.store.registerMany(invocations);
      // A retry registers only what the failed try did not (those ids are new, so absent).
      const present = new Map((await this.store.getMany(ids)).map((record) => [record.id, record]));
      const made = await this.store.registerMany(invocations.filter(({ id }) => !present.has(id)));
      for (const record of made) present.set(record.id, record);
      return ids.map((id) => present.get(id)!);
    }, (found) => found);
    this.#reportRegistered(records, invocations[0]?.runnerId ?? null);
    return records.map((record) => new Invocation<Result>(this, record));
  }

  /**
   * Routes `argsList` as calls of `task` with the same `options` (no idempotency key), in
   * batches of its `parallelBatchSize`.
   */
  async parallelize<Args, Result>(
    task: Task<Args, Result>,
    argsList: readonly Args[],
    options?: CallOptions,
  ): Promise<InvocationGroup<Result>> {
    refuseIdempotencyInBatch(`parallelize task ${task.id}`, options);
    const withOptions = options === undefined ? {} : { options };
    // Every argument is checked before the first batch is routed, so a bad call in a later batch
    // leaves nothing registered (routeCalls is all-or-nothing only within its batch).
    for (const args of argsList) this.#newInvocation(task, args, options);
    const invocations: Invocation<Result>[] = [];
    if (task.options.registrationConcurrency === "disabled") {
      const batch = task.options.parallelBatchSize;
      for (let start = 0; start < argsList.length; start += batch) {
        const calls = argsList.slice(start, start + batch).map((args) => ({
          task,
          args,
          ...withOptions,
        }));
        invocations.push(...await this.routeCalls(calls));
      }
    } else {
      for (const args of argsList) {
        invocations.push(await this.routeCall({ task, args, ...withOptions }));
      }
    }
    return new InvocationGroup(this, invocations);
  }

  /**
   * Registers (`step`) the invocations `ids`; inside a task, through store faults: a store outage
   * must not become the task's error. A try that fails is followed by a read of its ids: when they
   * are all there, it was applied (its answer lost) and `found` makes its outcome; else it is tried
   * again — with the same ids, so nothing is registered twice. Outside a task, a fault is the
   * caller's to handle, as with any store client.
   */
  #registering<T>(
    ids: readonly string[],
    step: () => Promise<T>,
    found: (records: InvocationRecord[]) => T,
  ): Promise<T> {
    const execution = currentExecution();
    if (execution === undefined) return step();
    // No async frame per call: a task that calls many holds none of them.
    const afterFault = async (error: unknown): Promise<T> => {
      if (!isStoreFault(error)) throw error;
      const records = await this.store.getMany(ids).catch(() => []);
      if (records.length === ids.length) return found(records);
      throw error;
    };
    return retryFaults(() => {
      try {
        return step().catch(afterFault);
      } catch (error) {
        return afterFault(error);
      }
    }, { clock: this.#host.clock, signal: execution.signal });
  }

  /**
   * Stores (or checks) the limits of a task's concurrency groups with the app's data before its
   * first call in this process: every invocation then carries the limits the store holds, and a
   * process that defines a group otherwise gets the `TypeError` at its call, not a limit run over.
   */
  #defineGroupsOf(task: Task<never, unknown>): Promise<void> {
    const groups = task.options.concurrencyGroups;
    if (groups.length === 0) return Promise.resolve();
    let defined = this.#groupsDefined.get(task);
    if (defined === undefined) {
      defined = this.store.defineGroups(new Map(groups.map(({ name, limit }) => [name, limit])));
      // A failed try (a store fault, another limit) is tried again at the next call.
      defined.catch(() => this.#groupsDefined.delete(task));
      this.#groupsDefined.set(task, defined);
    }
    return defined;
  }

  /**
   * A canceled invocation calls nothing more: a call from its context is refused once the cancel
   * is recorded, even before its runner has aborted its signal (in another process, a poll away).
   */
  #refuseIfCanceled(parentId: string | null): Promise<void> | undefined {
    if (parentId === null) return undefined;
    // Read through store faults: inside a task, a store outage must not become its error.
    return this.#read(() => this.store.get(parentId), currentExecution()?.signal).then((parent) => {
      if (parent?.status === InvocationStatus.CANCELED) this.#outcome(parentId, parent); // throws
    });
  }

  /** @throws {TypeError} for arguments that are not plain JSON, or for bad call options. */
  #newInvocation<Args, Result>(
    task: Task<Args, Result>,
    args: Args,
    options?: CallOptions,
  ): NewInvocation {
    const nowMs = this.#host.clock.now();
    const { idempotency, availableAtMs, priority = task.options.priority } = resolveCallOptions(
      task.id,
      options,
      nowMs,
    );
    const serialized = task.serializeArgs(args);
    const id = callId(task.id, serialized);
    const execution = currentExecution();
    // A canceled invocation calls nothing more.
    if (execution?.signal.aborted && execution.signal.reason instanceof CanceledError) {
      throw execution.signal.reason;
    }
    const runningKey = task.runningKey(serialized, id);
    const groupSlots = task.groupSlots(args, serialized);
    const rate = task.rateLimitKey(serialized, id);
    const trace = callTrace(execution?.trace);
    return {
      id: newInvocationId(nowMs),
      taskId: task.id,
      callId: id,
      args: serialized,
      parentId: execution?.invocationId ?? null,
      registrationKey: task.registrationKey(serialized, id),
      runningKey,
      runningLimit: task.options.runningLimit,
      groupSlots,
      lane: task.lane(runningKey, groupSlots, priority),
      ...(rate !== null ? { rate } : {}),
      nowMs,
      ...(availableAtMs !== undefined ? { availableAtMs } : {}),
      ...(priority !== 0 ? { priority } : {}),
      runnerId: execution?.runnerId ?? null,
      ...(idempotency !== undefined
        ? { idempotency: { key: idempotency.key, expiresAtMs: nowMs + idempotency.ttlMs } }
        : {}),
      ...(trace !== undefined ? { trace } : {}),
    };
  }

  // --- schedules -------------------------------------------------------------------------------

  /**
   * Stores schedule `name` (SPEC §7.3), an idempotent upsert: the same definition again changes
   * nothing (every process may call it at start-up); another one replaces it and holds from now
   * on. `app.schedule()` calls it.
   *
   * @throws {TypeError} naming the schedule, for a bad name or option, a cron expression or
   * timezone croner refuses, a task the app does not define, or arguments its task refuses (not
   * plain JSON, a key argument missing); nothing is stored.
   */
  async schedule<Args>(name: string, options: ScheduleOptions<Args>): Promise<Schedule> {
    const nowMs = this.#host.clock.now();
    const { schedule, task } = resolveSchedule(name, options, {
      nowMs,
      getTask: (taskId) => this.#host.getTask(taskId),
    });
    try {
      this.#tickInvocation(task, schedule, nowMs, null); // what a tick's call would refuse
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      throw new TypeError(`Cannot schedule ${name}: ${error.message}`, { cause: error });
    }
    return await this.store.putSchedule(schedule);
  }

  /**
   * Deletes schedule `name`: none of its ticks fires afterwards. Resolves to whether there was one.
   * `app.unschedule()` calls it.
   */
  async unschedule(name: string): Promise<boolean> {
    if (typeof name !== "string") {
      throw new TypeError(`Cannot unschedule: the name must be a string, got ${String(name)}`);
    }
    return await this.store.deleteSchedule(name);
  }

  /**
   * Fires tick `tickMs` of `schedule` (a runner's step; see {@linkcode Store.fireTick}): registers
   * its invocation, with `scheduledAtMs` = the tick, in the step that claims the tick. Resolves to
   * `undefined` when the tick was fired already or the schedule is gone or changed. A store fault
   * is tried again (with the same invocation, so an applied try is recognised) until `signal`
   * aborts.
   *
   * @throws {TypeError} when the app does not define the schedule's task.
   */
  async fireTick(
    schedule: Schedule,
    tickMs: number,
    options: { readonly runnerId: string; readonly signal?: AbortSignal },
  ): Promise<FiredTick | undefined> {
    const task = this.#host.getTask(schedule.taskId);
    if (task === undefined) {
      throw new TypeError(
        `Cannot fire a tick of schedule ${schedule.name}: this app does not define task ${schedule.taskId}`,
      );
    }
    await this.#defineGroupsOf(task);
    const invocation = this.#tickInvocation(task, schedule, tickMs, options.runnerId);
    const fired = await retryFaults(() => this.store.fireTick(schedule, invocation), {
      clock: this.#host.clock,
      signal: options.signal,
    });
    if (fired !== undefined) this.#reportRegistered([fired.invocation], options.runnerId);
    return fired;
  }

  /**
   * The invocation of a tick: the schedule's call of its task, with no parent, no registration
   * key (a tick bypasses registration reuse) and the tick as `scheduledAtMs`.
   *
   * @throws {TypeError} for arguments the task refuses (a key argument missing).
   */
  #tickInvocation(
    task: Task<never, unknown>,
    schedule: Schedule,
    tickMs: number,
    runnerId: string | null,
  ): NewInvocation & { readonly scheduledAtMs: number } {
    const args = Object.fromEntries(
      Object.entries(schedule.args).map(([name, json]) => [name, JSON.parse(json)]),
    );
    // A tick starts a trace of its own, whatever is active where the runner runs.
    const { trace: _, ...invocation } = this.#newInvocation(task, args as never);
    return {
      ...invocation,
      parentId: null,
      registrationKey: null,
      runnerId,
      scheduledAtMs: tickMs,
    };
  }

  // --- reads -----------------------------------------------------------------------------------

  /**
   * Invocations of `task` whose serialized arguments match every given key argument (AND) and
   * whose status is one of `statuses` (OR); no filter: all.
   */
  async *getExistingInvocations<Args, Result>(
    task: Task<Args, Result>,
    filter: { keyArguments?: Partial<Args>; statuses?: readonly InvocationStatus[] } = {},
  ): AsyncGenerator<Invocation<Result>, void, undefined> {
    const args: Record<string, string> = {};
    for (const [name, value] of Object.entries(filter.keyArguments ?? {})) {
      if (value !== undefined) args[name] = canonicalJson(value, `keyArguments.${name}`);
    }
    const query = {
      taskId: task.id,
      args,
      ...(filter.statuses !== undefined ? { statuses: new Set(filter.statuses) } : {}),
    };
    for await (const record of this.store.find(query)) yield new Invocation<Result>(this, record);
  }

  /** The invocation with this id, or `undefined`. */
  async getInvocation(id: string): Promise<Invocation | undefined> {
    const record = await this.store.get(id);
    return record === undefined ? undefined : new Invocation(this, record);
  }

  /** The current status of an invocation. */
  async getInvocationStatus(invocation: InvocationRef): Promise<InvocationStatus> {
    return (await this.#record(invocation)).status;
  }

  /** The status history of an invocation, oldest first. */
  getInvocationHistory(invocation: InvocationRef): Promise<HistoryEntry[]> {
    return this.store.history(invocation.id);
  }

  /** How many times an invocation was retried. */
  async getInvocationRetries(invocation: InvocationRef): Promise<number> {
    return (await this.#record(invocation)).retries;
  }

  /** Counts one more retry of an invocation (outside a RETRY transition). */
  async incrementInvocationRetries(invocation: InvocationRef): Promise<void> {
    await this.store.incrementRetries(invocation.id);
  }

  /** The invocations whose status is one of `statuses`, in the order given; `[]` for no statuses. */
  async filterByStatus<T extends InvocationRef>(
    invocations: readonly T[],
    statuses: Iterable<InvocationStatus>,
  ): Promise<T[]> {
    const wanted = new Set(statuses);
    if (wanted.size === 0 || invocations.length === 0) return [];
    const records = new Map(
      (await this.store.getMany(invocations.map(({ id }) => id))).map((r) => [r.id, r]),
    );
    return invocations.filter(({ id }) => {
      const status = records.get(id)?.status;
      return status !== undefined && wanted.has(status);
    });
  }

  /** The invocations that reached a final status. */
  filterFinal<T extends InvocationRef>(invocations: readonly T[]): Promise<T[]> {
    return this.filterByStatus(invocations, FINAL_STATUSES);
  }

  // --- status changes --------------------------------------------------------------------------

  /**
   * Changes the status of an invocation through the state machine. Final statuses release
   * waiters and clean up cycles after the status is written. Returns `false` when running
   * concurrency refuses a slot (PENDING, RESUMED).
   *
   * @throws {InvocationStatusTransitionError | InvocationStatusOwnershipError} for a refused change.
   */
  setInvocationStatus(
    invocation: InvocationRef,
    status: InvocationStatus,
    options: ActorOptions = {},
  ): Promise<boolean> {
    // No async frame of its own: every resume of a paused invocation passes here.
    return this.#change(invocation, { path: [status], ...this.#actor(options) }).then((applied) =>
      applied !== undefined
    );
  }

  /** {@linkcode Orchestrator.setInvocationStatus} for many invocations. */
  async setInvocationsStatus(
    invocations: readonly InvocationRef[],
    status: InvocationStatus,
    options: ActorOptions = {},
  ): Promise<boolean[]> {
    const applied: boolean[] = [];
    for (const invocation of invocations) {
      applied.push(await this.setInvocationStatus(invocation, status, options));
    }
    return applied;
  }

  /**
   * Marks an invocation RUNNING; with a caller and cycle control on, first adds the call edge
   * caller → callee. A cycle is recorded ({@linkcode Store.recordCycle}), then fails the callee
   * with the {@linkcode CycleDetectedError}, which is then thrown.
   */
  async setInvocationRun(
    caller: InvocationRef | undefined,
    callee: InvocationRef,
    options: ActorOptions = {},
  ): Promise<void> {
    if (caller !== undefined && this.options.cycleControl) {
      try {
        await this.cycleControl.addCallAndCheckCycles(caller, callee);
      } catch (error) {
        if (error instanceof CycleDetectedError) {
          await this.#recordCycle(callee, error);
          await this.setInvocationException(callee, error, options);
          const record = await this.store.get(callee.id);
          const runnerId = this.#actor(options).runnerId;
          this.#reporter.logger.error(
            `invocation ${callee.id}${
              record === undefined ? "" : ` (task ${record.taskId})`
            } failed: it would close a call cycle: ${error.labels.join(" → ")} → ${
              error.labels[0]
            }`,
            {
              invocationId: callee.id,
              ...(record !== undefined ? { taskId: record.taskId } : {}),
              runnerId,
              error: errorFields(error),
              cycle: error.labels,
              callIds: error.callIds,
            },
          );
        }
        throw error;
      }
    }
    await this.#change(callee, { path: [InvocationStatus.RUNNING], ...this.#actor(options) });
  }

  /**
   * Keeps a refused cycle for inspection, before the callee fails with it (whoever sees the
   * failure finds the cycle listed). A failed write is logged, never thrown: the cycle's error is
   * what the caller gets.
   */
  async #recordCycle(callee: InvocationRef, error: CycleDetectedError): Promise<void> {
    try {
      await this.store.recordCycle({
        invocationId: callee.id,
        callIds: error.callIds,
        labels: error.labels,
        atMs: this.#host.clock.now(),
      });
    } catch (fault) {
      this.#reporter.logger.error(
        `could not record the cycle refused to invocation ${callee.id}; it fails with it all the same`,
        { invocationId: callee.id, error: errorFields(fault) },
      );
    }
  }

  /**
   * Stores the result and marks the invocation SUCCESS. A result that is not plain JSON fails
   * the invocation with a {@linkcode SerializationError} instead.
   */
  async setInvocationResult(
    invocation: InvocationRef,
    result: unknown,
    options: ActorOptions = {},
  ): Promise<void> {
    let serialized: string | undefined;
    try {
      serialized = result === undefined ? undefined : canonicalJson(result, "result");
    } catch (error) {
      const record = await this.#record(invocation);
      const message = error instanceof Error ? error.message : String(error);
      return this.setInvocationException(
        invocation,
        new SerializationError(`Cannot store the result of task ${record.taskId}: ${message}`, {
          cause: error,
        }),
        options,
      );
    }
    await this.#change(invocation, {
      path: [InvocationStatus.SUCCESS],
      ...this.#actor(options),
      ...(serialized !== undefined ? { result: serialized } : {}),
    }, options.onCommitted);
  }

  /** Stores the error and marks the invocation FAILED. */
  async setInvocationException(
    invocation: InvocationRef,
    error: unknown,
    options: ActorOptions = {},
  ): Promise<void> {
    await this.#change(invocation, {
      path: [InvocationStatus.FAILED],
      ...this.#actor(options),
      error: serializeError(error),
    }, options.onCommitted);
  }

  /**
   * Marks the invocation RETRY, counts the retry and re-queues it after the task's back-off, in
   * one atomic step.
   */
  async setInvocationRetry(
    invocation: InvocationRef,
    error: unknown,
    options: ActorOptions = {},
  ): Promise<void> {
    const record = await this.#record(invocation);
    const actor = this.#actor(options);
    const delayMs = this.#host.getTask(record.taskId)?.retryDelayMs(record.retries + 1) ?? 0;
    await this.#change(invocation, {
      path: [InvocationStatus.RETRY],
      ...actor,
      error: serializeError(error),
      incrementRetries: true,
      availableAtMs: actor.nowMs + delayMs,
    }, options.onCommitted);
  }

  /** Re-queues invocations: REROUTED, back in the queue. */
  async rerouteInvocations(
    invocations: readonly InvocationRef[],
    options: ActorOptions = {},
  ): Promise<void> {
    for (const invocation of invocations) {
      await this.#change(invocation, {
        path: [InvocationStatus.REROUTED],
        ...this.#actor(options),
      });
    }
  }

  /**
   * Hands an invocation back from wherever its execution is (PENDING, RUNNING, PAUSED, RESUMED):
   * KILLED → REROUTED in one atomic step, re-queued for another runner. A stopping runner's
   * hand-back.
   *
   * @throws {InvocationStatusTransitionError | InvocationStatusOwnershipError} for a refused change.
   */
  async handBackInvocation(invocation: InvocationRef, options: ActorOptions = {}): Promise<void> {
    await this.#change(invocation, {
      path: [InvocationStatus.KILLED, InvocationStatus.REROUTED],
      ...this.#actor(options),
    });
  }

  /**
   * Cancels invocations: each one not final yet becomes CANCELED (by anyone: like recovery it
   * overrides ownership), leaves the queue in the same atomic step, and its `result()` rejects
   * with a {@linkcode CanceledError} carrying the reason. A running, paused or resumed one is
   * aborted by its runner, in any process, within one poll; its slots are given back when its
   * function has returned. With `cascade` [`true`], the invocations it called that no other live
   * invocation waits on are canceled too, recursively, before this resolves. Returns, per
   * invocation, whether this call canceled it (`false`: already final, or gone).
   */
  async cancel(
    invocations: readonly InvocationRef[],
    options: CancelOptions & ActorOptions = {},
  ): Promise<boolean[]> {
    const canceled: boolean[] = [];
    for (const { id } of invocations) canceled.push(await this.#cancel(id, options));
    return canceled;
  }

  async #cancel(id: string, options: CancelOptions & ActorOptions): Promise<boolean> {
    const reason = options.reason;
    const error = serializeError(new CanceledError(id, reason));
    let canceled = false;
    try {
      // Not fenced by a sequence number: CANCELED is allowed from every non-final status, so a
      // concurrent change is either overridden or was final (and the transition is refused).
      const actor = this.#actor({ runnerId: options.runnerId ?? null });
      const record = (await this.#change({ id }, {
        path: [InvocationStatus.CANCELED],
        ...actor,
        error,
      }))?.record;
      canceled = true;
      if (record !== undefined) {
        this.#reporter.logger.info(
          `invocation ${id} (task ${record.taskId}) canceled${
            reason === undefined ? "" : `: ${reason}`
          }`,
          invocationFields(record, actor.runnerId, reason === undefined ? {} : { reason }),
        );
      }
    } catch (failure) {
      const record = await this.#read(() => this.store.get(id));
      if (record !== undefined && !isFinalStatus(record.status)) throw failure;
    }
    if (options.cascade ?? true) {
      for (const child of await this.store.children(id)) {
        if (isFinalStatus(child.status)) continue;
        // The canceled parent's own wait edges went with its final status.
        if ((await this.store.waiters(child.id)).length > 0) continue;
        await this.#cancel(child.id, { ...options, reason: reason ?? `parent ${id} was canceled` });
      }
    }
    return canceled;
  }

  /**
   * Ends the execution of a CANCELED invocation whose function has returned: gives its slots back
   * and clears the runner's cancel request, in one atomic step. Called by the runner that
   * executed it (`claimSeq`); recovery does it for a runner that died.
   */
  async endExecution(invocation: InvocationRef, options: ActorOptions = {}): Promise<void> {
    const actor = this.#actor(options);
    // The purge clock of a canceled invocation starts when its execution ends.
    await this.#change(invocation, {
      path: [],
      endExecution: true,
      ...actor,
      purgeAtMs: this.#purgeAtMs(actor.nowMs),
    });
  }

  // --- concurrency and pick-up -----------------------------------------------------------------

  /**
   * Whether running concurrency lets the invocation be picked up now: each of its slot keys (its
   * running key, its concurrency groups') has a free slot, or holds it already.
   */
  async isCandidateToRunByConcurrencyControl(invocation: InvocationRef): Promise<boolean> {
    const record = await this.#record(invocation);
    for (const { key, limit } of slotsOf(record)) {
      const holders = await this.store.slotHolders(key);
      if (!holders.includes(record.id) && holders.length >= limit) return false;
    }
    return true;
  }

  /** Whether running concurrency lets the invocation start: it holds all its slots (or needs none). */
  async isAuthorizedToRunByConcurrencyControl(invocation: InvocationRef): Promise<boolean> {
    const record = await this.#record(invocation);
    for (const { key } of slotsOf(record)) {
      if (!(await this.store.slotHolders(key)).includes(record.id)) return false;
    }
    return true;
  }

  /**
   * The pick-up for a runner: blocking invocations first (oldest first), then the queue, whose
   * fairness lanes take turns. Each returned invocation was moved to PENDING, owned by the runner,
   * together with all its slots, in one atomic step; candidates refused by a full key were parked
   * on it or finalised. Nothing is handed out twice; a runner that dies before running what it got is
   * recovered after `maxPendingSeconds`.
   */
  async getInvocationsToRun(max: number, options: { runnerId: string }): Promise<Invocation[]> {
    return (await this.#claim(max, options.runnerId, false, undefined)).claimed.map((record) =>
      new Invocation(this, record)
    );
  }

  /**
   * The runner's pick-up: {@linkcode Orchestrator.getInvocationsToRun}, except that an invocation
   * with nothing to check before it runs (no caller or cycle control off, and a task this app
   * defines) goes straight through
   * PENDING to RUNNING in the same atomic step — one storage round trip less per invocation. The
   * others stop at PENDING; the runner calls {@linkcode Orchestrator.setInvocationRun} for them.
   * With `ready`, it reads at once and claims once that resolves, or with the ends of `freedBy`
   * (see `ClaimRequest.ready` and `ClaimRequest.freedBy`).
   * `more`: it took all it could and saw more queued behind (see `ClaimOutcome.more`).
   */
  async startInvocations(
    max: number,
    options: {
      runnerId: string;
      accepts?: (taskId: string) => boolean;
      ready?: Promise<void>;
      freedBy?: readonly string[];
      widen?: () => number;
    },
  ): Promise<
    {
      readonly invocation: Invocation;
      readonly running: boolean;
      readonly claimSeq: number;
      /** The sequence number of the claimed record: the runner's writes name it. */
      readonly seq: number;
      /** Retries so far: the attempt this run is. */
      readonly attempt: number;
      /** The tick of the schedule that fired it (epoch ms), or `null`. */
      readonly scheduledAt: number | null;
      /** Since when it could be picked up, epoch ms. */
      readonly availableAtMs: number;
      /** The trace context stored with it, if any. */
      readonly trace: string | undefined;
    }[] & { readonly more: boolean }
  > {
    const outcome = await this.#claim(max, options.runnerId, true, options.accepts, options);
    const started = outcome.claimed.map((record) => ({
      invocation: new Invocation(this, record),
      running: record.status === InvocationStatus.RUNNING,
      claimSeq: record.claimSeq!,
      seq: record.seq,
      attempt: record.retries,
      scheduledAt: record.scheduledAtMs ?? null,
      availableAtMs: record.availableAtMs,
      trace: record.trace,
    }));
    return Object.assign(started, { more: outcome.more ?? false });
  }

  async #claim(
    max: number,
    runnerId: string,
    start: boolean,
    accepts: ((taskId: string) => boolean) | undefined,
    { ready, freedBy, widen }: Pick<ClaimRequest, "ready" | "freedBy" | "widen"> = {},
  ): Promise<ClaimOutcome> {
    const nowMs = this.#host.clock.now();
    const cycleControl = this.options.cycleControl;
    const outcome = await this.store.claim({
      runnerId,
      nowMs,
      max,
      blocking: this.options.blockingControl,
      rerouteOnConcurrencyControl: (taskId) =>
        this.#host.getTask(taskId)?.options.rerouteOnConcurrencyControl ?? true,
      purgeAtMs: this.#purgeAtMs(nowMs),
      ...(accepts !== undefined ? { accepts } : {}),
      ...(ready !== undefined ? { ready } : {}),
      ...(freedBy !== undefined ? { freedBy } : {}),
      ...(widen !== undefined ? { widen } : {}),
      ...(start
        ? {
          // Nothing to check: no call edge to add, and a task this app defines.
          runAtOnce: (record: InvocationRecord) =>
            (record.parentId === null || !cycleControl) &&
            this.#host.getTask(record.taskId) !== undefined,
          // A call edge to add first, in the claim's step where the backend can.
          runWithCall: (record: InvocationRecord) =>
            record.parentId !== null && cycleControl &&
            this.#host.getTask(record.taskId) !== undefined,
        }
        : {}),
    });
    if (this.#reporter.listens("invocation")) this.#reportClaim(outcome, runnerId);
    for (const record of outcome.finalised) await this.#afterFinal(record);
    return outcome;
  }

  /**
   * Invocations that others wait on, that wait on nothing and can run, oldest first; a pure read.
   * With `blockingControl` off: `[]`.
   */
  async getBlockingInvocations(max: number): Promise<Invocation[]> {
    if (!this.options.blockingControl) return [];
    const ids = await this.store.blocking(max, this.#host.clock.now());
    return (await this.store.getMany(ids)).map((record) => new Invocation(this, record));
  }

  /**
   * Records that `caller` (the running invocation) waits on `invocations`. An empty list warns;
   * with `blockingControl` off, nothing is recorded.
   */
  async waitingForResults(
    caller: InvocationRef | undefined,
    invocations: readonly InvocationRef[],
  ): Promise<void> {
    if (invocations.length === 0) {
      console.warn(
        "nenc: waitingForResults() called with no invocations to wait for; nothing recorded",
      );
      return;
    }
    if (caller === undefined || !this.options.blockingControl) return;
    const ids = invocations.map(({ id }) => id);
    await this.store.waitFor(caller.id, ids, this.#host.clock.now());
    await this.#releaseEnded(ids);
  }

  /**
   * Marks the running `invocation` PAUSED while it waits on `invocations`: its slot is freed, and
   * the wait edges (with `blockingControl`) are recorded in the same atomic step, so what it waits
   * on is preferred by the next pick-up. The runner's way to wait; `waitingForResults` adds edges
   * alone (a paused invocation that waits on more).
   *
   * @throws {InvocationStatusTransitionError | InvocationStatusOwnershipError} for a refused change.
   */
  async pauseForResults(
    invocation: InvocationRef,
    invocations: readonly InvocationRef[],
    options: ActorOptions = {},
  ): Promise<void> {
    const ids = this.options.blockingControl ? invocations.map(({ id }) => id) : [];
    if (ids.includes(invocation.id)) {
      throw new RangeError(`Cannot wait: invocation ${invocation.id} cannot wait on itself`);
    }
    const outcome = await this.#change(invocation, {
      path: [InvocationStatus.PAUSED],
      ...this.#actor(options),
      ...(ids.length > 0 ? { waitFor: ids } : {}),
    }, options.onCommitted);
    if (outcome?.endedReleased !== true) await this.#releaseEnded(ids);
  }

  /**
   * Releases the waiters of those of `ids` that are final (or purged), just after edges to them
   * were written: one that became final before its edge was written released its waiters without
   * it. Its final write precedes its own release, and the edge precedes this read, so at least
   * one of the two releases sees the edge.
   */
  async #releaseEnded(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    const live = new Map((await this.store.getMany(ids)).map((record) => [record.id, record]));
    const ended = ids.filter((id) => {
      const record = live.get(id);
      return record === undefined || isFinalStatus(record.status);
    });
    await Promise.all(ended.map((id) => this.store.releaseWaiters(id)));
  }

  /** Removes the wait edges of a final invocation; its waiters may become blocking again. */
  async releaseWaiters(invocation: InvocationRef): Promise<void> {
    await this.store.releaseWaiters(invocation.id);
  }

  // --- recovery and purge ----------------------------------------------------------------------

  /**
   * Recovers invocations: PENDING older than `maxPendingSeconds`, or owned by a runner whose
   * heartbeat is older than `runnerTimeoutSeconds` (PENDING_RECOVERY → REROUTED), and RUNNING /
   * PAUSED / RESUMED owned by such a runner (RUNNING_RECOVERY → REROUTED); a CANCELED one whose
   * dead runner held its slots gets them back. Each is fenced by its sequence number, so a
   * concurrent change wins. The heartbeat entries of runners silent past the timeout are
   * removed. Returns the recovered invocations. The runners call it only while they hold the
   * upkeep lease ({@linkcode Store.takeUpkeepLease}); what it reads does not grow with what live
   * runners execute ({@linkcode Store.recoverable}).
   */
  async recoverInvocations(
    options: ActorOptions & { max?: number; ids?: readonly string[] } = {},
  ): Promise<Invocation[]> {
    const actor = this.#actor(options);
    const heartbeatBeforeMs = actor.nowMs - this.options.runnerTimeoutSeconds * 1000;
    // With `ids`: a live runner taking back what the store says it executes but it does not
    // (whatever their age): only those it owns.
    const candidates = options.ids !== undefined
      ? (await this.store.getMany(options.ids)).filter((record) =>
        record.ownerId !== null && record.ownerId === actor.runnerId
      )
      : await this.store.recoverable({
        pendingBeforeMs: actor.nowMs - this.options.maxPendingSeconds * 1000,
        heartbeatBeforeMs,
        max: options.max ?? 1000,
      });
    const recovered: Invocation[] = [];
    for (const record of candidates) {
      // A runner never takes its own work for dead by its heartbeat (it fences itself first);
      // what it owns but does not run, it names in `ids`.
      if (
        options.ids === undefined && record.ownerId !== null && record.ownerId === actor.runnerId
      ) {
        continue;
      }
      if (record.status === InvocationStatus.CANCELED) {
        // Canceled, and its runner died before the function returned: give its slots back.
        if (holdsSlots(record)) {
          const outcome = await this.#storeChange(record.id, {
            path: [],
            endExecution: true,
            ...actor,
            expectSeq: record.seq,
            purgeAtMs: this.#purgeAtMs(actor.nowMs),
          });
          if (outcome.ok) {
            this.#reporter.logger.info(
              `recovered the slots of canceled invocation ${record.id} (task ${record.taskId}) from runner ${record.ownerId}`,
              invocationFields(record, actor.runnerId, { fromRunnerId: record.ownerId }),
            );
          }
        }
        continue;
      }
      if (!RECOVERABLE_STATUSES.has(record.status)) continue;
      const recovery = record.status === InvocationStatus.PENDING
        ? InvocationStatus.PENDING_RECOVERY
        : InvocationStatus.RUNNING_RECOVERY;
      const outcome = await this.#storeChange(record.id, {
        path: [recovery, InvocationStatus.REROUTED],
        ...actor,
        expectSeq: record.seq,
      });
      if (!outcome.ok) continue;
      recovered.push(new Invocation(this, outcome.record));
      const from = record.ownerId === null ? "" : ` from runner ${record.ownerId}`;
      this.#reporter.logger.warn(
        `recovered invocation ${record.id} (task ${record.taskId})${from}: it was ${record.status}; re-queued`,
        invocationFields(record, actor.runnerId, {
          fromRunnerId: record.ownerId,
          previous: record.status,
        }),
      );
    }
    if (options.ids !== undefined) return recovered;
    // A runner silent past the timeout is dead: its heartbeat entry goes. What it still owns is
    // recovered all the same (by the age of the invocation), and if it was only asleep, its next
    // heartbeat writes the entry again while claim fencing refuses its stale writes.
    for (const runner of await this.store.runners()) {
      if (runner.lastSeenMs < heartbeatBeforeMs) {
        await this.store.removeRunner(runner.runnerId, heartbeatBeforeMs);
        this.#reporter.logger.warn(
          `runner ${runner.runnerId} is presumed dead: no heartbeat for ${
            actor.nowMs - runner.lastSeenMs
          } ms; its invocations are recovered`,
          {
            runnerId: actor.runnerId,
            deadRunnerId: runner.runnerId,
            lastSeenMs: runner.lastSeenMs,
          },
        );
        if (this.#reporter.listens("runner")) {
          this.#reporter.emit("runner", { runnerId: runner.runnerId, event: "dead" });
        }
      }
    }
    return recovered;
  }

  /** Sets a final invocation to be purged `autoFinalInvocationPurgeHours` from now. */
  async setUpInvocationAutoPurge(invocation: InvocationRef): Promise<void> {
    await this.store.schedulePurge(invocation.id, this.#purgeAtMs(this.#host.clock.now()));
  }

  /** Purges final invocations whose purge time has passed; returns how many. */
  autoPurge(): Promise<number> {
    return this.store.purgeDue(this.#host.clock.now());
  }

  /** Deletes everything of this app: for tests and resets. */
  purge(): Promise<void> {
    return this.store.purgeAll();
  }

  // --- results ---------------------------------------------------------------------------------

  /**
   * Waits until every invocation is final and returns their results in order, or throws the first
   * error in order. Inside a running task the current invocation waits PAUSED.
   */
  waitForResults<Result>(
    invocations: readonly InvocationRef[],
    options: WaitOptions = {},
  ): Promise<Result[]> {
    const ids = invocations.map(({ id }) => id);
    // No frame held through the wait (see #wait): the results are read in a step of their own.
    return this.#wait(ids, "all", options).then(() => this.#results<Result>(ids));
  }

  /**
   * {@linkcode Orchestrator.waitForResults} of one invocation: its result, or its error. Inside a
   * running task the current invocation waits PAUSED.
   */
  waitForResult<Result>(invocation: InvocationRef, options: WaitOptions = {}): Promise<Result> {
    const { id } = invocation;
    // The result is picked once it is read, not by a step of its own held through the wait; from
    // the final record the wait saw, when it saw one (read only otherwise).
    return this.#wait([id], "all", options).then((seen) =>
      seen === undefined
        ? this.#results<Result>([id]).then(([result]) => result!)
        : this.#outcome<Result>(id, seen)
    );
  }

  /** The outcomes of final invocations, in order; throws the first error in order. */
  async #results<Result>(ids: readonly string[]): Promise<Result[]> {
    const records = await this.#read(() => this.store.getMany(ids));
    const byId = new Map(records.map((record) => [record.id, record]));
    return ids.map((id) => this.#outcome<Result>(id, byId.get(id)));
  }

  /** Yields results as the invocations finish. */
  async *resultsAsCompleted<Result>(
    invocations: readonly InvocationRef[],
  ): AsyncGenerator<Result, void, undefined> {
    const pending = new Set(invocations.map(({ id }) => id));
    while (pending.size > 0) {
      await this.#wait([...pending], "any", {});
      const records = new Map(
        (await this.#read(() => this.store.getMany([...pending]))).map((r) => [r.id, r]),
      );
      const finishedAt = (id: string): number => records.get(id)?.finishedAtMs ?? -Infinity;
      const done = [...pending]
        .filter((id) => !records.has(id) || isFinalStatus(records.get(id)!.status))
        .sort((a, b) => finishedAt(a) - finishedAt(b));
      for (const id of done) {
        pending.delete(id);
        yield this.#outcome<Result>(id, records.get(id));
      }
    }
  }

  /**
   * Resolves when the invocation is final (or purged), or `signal` aborts: with the final record
   * the wait saw, when it saw one (see {@linkcode Store.waitFinal}).
   */
  waitForFinal(
    invocation: InvocationRef,
    signal?: AbortSignal,
  ): Promise<InvocationRecord | undefined> {
    return this.store.waitFinal(invocation.id, signal);
  }

  /**
   * Resolves when all (`"all"`) or one (`"any"`) of the invocations is final (or purged); rejects
   * with the reason of `signal` once it aborts. Store faults meanwhile are tried again. The wait
   * of one invocation resolves with the final record it saw, when it saw one (see
   * {@linkcode Store.waitFinal}).
   */
  waitForFinals(
    ids: readonly string[],
    mode: "all" | "any",
    signal?: AbortSignal,
  ): Promise<InvocationRecord | void> {
    // One invocation (the common wait: a result()): no other wait to stop when it ends or fails.
    return ids.length === 1
      ? this.#waitForFinal(ids[0]!, signal)
      : this.#waitForFinalsOf(ids, mode, signal);
  }

  /**
   * {@linkcode Orchestrator.waitForFinals} of one invocation, without a frame: a paused invocation
   * holds it for as long as it waits, and the garbage collector copies what it holds.
   */
  #waitForFinal(
    id: string,
    signal: AbortSignal | undefined,
  ): Promise<InvocationRecord | undefined> {
    return retryFaults(
      () => this.waitForFinal({ id }, signal),
      { clock: this.#host.clock, signal },
      (seen) => {
        signal?.throwIfAborted();
        return seen;
      },
    );
  }

  async #waitForFinalsOf(
    ids: readonly string[],
    mode: "all" | "any",
    signal: AbortSignal | undefined,
  ): Promise<void> {
    if (mode === "all" && signal === undefined) {
      // Nothing to stop early: the plain wait.
      await Promise.all(ids.map((id) => this.#read(() => this.waitForFinal({ id }))));
      return;
    }
    const done = new AbortController();
    // One listener per awaited invocation (a fan-out of hundreds is ordinary), not a leak.
    setMaxListeners(0, done.signal);
    const stop = (): void => done.abort();
    signal?.addEventListener("abort", stop, { once: true });
    try {
      const waitOne = (id: string): Promise<unknown> =>
        this.#read(() => this.waitForFinal({ id }, done.signal), done.signal);
      if (mode === "all") await Promise.all(ids.map(waitOne));
      else await Promise.race(ids.map(waitOne));
    } finally {
      signal?.removeEventListener("abort", stop);
      done.abort();
    }
    signal?.throwIfAborted();
  }

  /** Reads through store faults: tried again after a growing pause until `signal` aborts. */
  #read<T>(step: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return retryFaults(step, { clock: this.#host.clock, signal });
  }

  /**
   * Resolves when the invocations are final (see {@linkcode Orchestrator.waitForFinals}): for one
   * invocation, with the final record the wait saw, when it saw one (inside a running task too,
   * once it has resumed).
   */
  #wait(
    ids: readonly string[],
    mode: "all" | "any",
    options: WaitOptions,
  ): Promise<InvocationRecord | void> {
    const { timeoutMs } = options;
    // No timer to clear afterwards: the wait itself, without a frame of its own (a paused
    // invocation holds its waits for long, and the garbage collector copies what they hold).
    if (timeoutMs === undefined) return this.#waitUntil(ids, mode, options.signal);
    return this.#waitWithTimeout(ids, mode, options.signal, timeoutMs);
  }

  async #waitWithTimeout(
    ids: readonly string[],
    mode: "all" | "any",
    given: AbortSignal | undefined,
    timeoutMs: number,
  ): Promise<InvocationRecord | void> {
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new RangeError(`Cannot wait: timeoutMs must be a number ≥ 0, got ${timeoutMs}`);
    }
    const timer = new AbortController();
    const timeout = new AbortController();
    void this.#host.clock.sleep(timeoutMs, timer.signal).then(() => {
      if (!timer.signal.aborted) {
        timeout.abort(new DOMException(`Cannot wait: ${timeoutMs} ms passed`, "TimeoutError"));
      }
    });
    const signal = given === undefined ? timeout.signal : AbortSignal.any([given, timeout.signal]);
    try {
      return await this.#waitUntil(ids, mode, signal);
    } finally {
      timer.abort();
    }
  }

  /** Waits in the current execution (PAUSED meanwhile) or, outside any, for the finals alone. */
  #waitUntil(
    ids: readonly string[],
    mode: "all" | "any",
    signal?: AbortSignal,
  ): Promise<InvocationRecord | void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const execution = currentExecution();
    return execution !== undefined
      ? execution.waitFor(ids, mode, signal)
      : this.waitForFinals(ids, mode, signal);
  }

  #outcome<Result>(id: string, record: InvocationRecord | undefined): Result {
    if (record === undefined) {
      throw new NencError(
        `Cannot get the result of invocation ${id}: it does not exist (purged, or never registered here)`,
      );
    }
    switch (record.status) {
      case InvocationStatus.SUCCESS:
        return (record.result === undefined ? undefined : JSON.parse(record.result)) as Result;
      case InvocationStatus.FAILED:
        throw record.error === undefined
          ? new NencError(`Cannot get the result of invocation ${id}: it failed without an error`)
          : markRehydrated(deserializeError(record.error, this.#host.errorClasses));
      case InvocationStatus.CONCURRENCY_CONTROLLED_FINAL:
        throw new ConcurrencyControlledError(record.taskId, record.id);
      case InvocationStatus.CANCELED:
        throw record.error === undefined
          ? new CanceledError(id)
          : markRehydrated(deserializeError(record.error, this.#host.errorClasses));
      default:
        throw new NencError(
          `Cannot get the result of invocation ${id}: it is ${record.status}, not final`,
        );
    }
  }

  // --- internals -------------------------------------------------------------------------------

  #actor(
    options: ActorOptions,
  ): { runnerId: string | null; nowMs: number; claimSeq?: number; expectSeq?: number } {
    return {
      runnerId: options.runnerId !== undefined
        ? options.runnerId
        : currentExecution()?.runnerId ?? null,
      nowMs: this.#host.clock.now(),
      ...(options.claimSeq !== undefined ? { claimSeq: options.claimSeq } : {}),
      ...(options.expectSeq !== undefined ? { expectSeq: options.expectSeq } : {}),
    };
  }

  #purgeAtMs(nowMs: number): number {
    return nowMs + this.options.autoFinalInvocationPurgeHours * 3_600_000;
  }

  /** Applies a change; `undefined` when running concurrency refused a slot. */
  async #change(
    invocation: InvocationRef,
    change: StatusChange,
    onCommitted?: () => void,
  ): Promise<Extract<ChangeOutcome, { ok: true }> | undefined> {
    const path = change.path;
    const final = FINAL_STATUSES.has(path[path.length - 1]!);
    const outcome = await this.#storeChange(
      invocation.id,
      final ? { ...change, purgeAtMs: this.#purgeAtMs(change.nowMs) } : change,
    );
    if (!outcome.ok) {
      if (outcome.reason === "slot-busy") return undefined;
      throw new NencError(
        outcome.reason === "missing"
          ? `Cannot change the status of invocation ${invocation.id}: it does not exist`
          : `Cannot change the status of invocation ${invocation.id}: it changed concurrently`,
      );
    }
    onCommitted?.();
    if (final && outcome.holdsNoCall !== true) await this.#afterFinal(outcome.record);
    return outcome;
  }

  /**
   * A change through the store, its transitions reported: every change of the orchestrator. With
   * no listener, the store's promise as it is.
   */
  #storeChange(id: string, change: StatusChange): Promise<ChangeOutcome> {
    const changed = this.store.change(id, change);
    if (!this.#reporter.listens("invocation")) return changed;
    return changed.then((outcome) => {
      if (outcome.ok) this.#report(outcome.record, outcome.previous, outcome.entries);
      return outcome;
    });
  }

  /** Reports the registrations of `records` by `runnerId` (`null`: a caller without a runner). */
  #reportRegistered(records: readonly InvocationRecord[], runnerId: string | null): void {
    if (!this.#reporter.listens("invocation")) return;
    for (const record of records) {
      this.#report(record, null, [
        { status: InvocationStatus.REGISTERED, runnerId, timestampMs: record.createdAtMs },
      ]);
    }
  }

  /** Reports what a claim did: pick-ups (on to RUNNING or not), parked and finalised ones. */
  #reportClaim(outcome: ClaimOutcome, runnerId: string): void {
    const { PENDING, RUNNING } = InvocationStatus;
    for (const record of [...outcome.claimed, ...outcome.parked, ...outcome.finalised]) {
      const at = record.updatedAtMs;
      const entries = record.status === RUNNING ? [PENDING, RUNNING] : [record.status];
      this.#report(
        record,
        outcome.previous.get(record.id) ?? null,
        entries.map((status) => ({ status, runnerId, timestampMs: at })),
      );
    }
  }

  /**
   * The one place events of transitions are made: the statuses `record` entered in one step of
   * this process, from `previous`, in order.
   */
  #report(
    record: Pick<InvocationRecord, "id" | "taskId">,
    previous: InvocationStatus | null,
    entries: readonly Pick<HistoryEntry, "status" | "runnerId" | "timestampMs">[],
  ): void {
    let from = previous;
    for (const { status, runnerId, timestampMs } of entries) {
      this.#reporter.emit("invocation", {
        id: record.id,
        taskId: record.taskId,
        status,
        previous: from,
        runnerId,
        at: timestampMs,
      });
      from = status;
    }
  }

  /**
   * The side effect of a final status, after it is written: clean up cycles. (Its waiters were
   * released in the step that wrote it.)
   */
  async #afterFinal(record: InvocationRecord): Promise<void> {
    await this.store.removeCall(callHold(record));
  }

  async #record(invocation: InvocationRef): Promise<InvocationRecord> {
    const record = await this.store.get(invocation.id);
    if (record === undefined) {
      throw new NencError(`Cannot read invocation ${invocation.id}: it does not exist`);
    }
    return record;
  }
}

/** The statuses recovery moves on (RUNNING_RECOVERY / PENDING_RECOVERY → REROUTED). */
const RECOVERABLE_STATUSES: ReadonlySet<InvocationStatus> = new Set([
  InvocationStatus.PENDING,
  InvocationStatus.RUNNING,
  InvocationStatus.PAUSED,
  InvocationStatus.RESUMED,
]);

/** An invocation's hold on its call: what releasing it needs (no label to render). */
function callHold(record: InvocationRecord): Pick<CallRef, "callId" | "invocationId"> {
  return { callId: record.callId, invocationId: record.id };
}
