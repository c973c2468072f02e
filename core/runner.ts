/**
 * The runner: runs an app's invocations in async slots, pauses those that wait on results so
 * their slots serve what they wait on, and keeps the system alive: heartbeats, and — one runner
 * at a time, the holder of the upkeep lease — recovery and auto-purge. Its own writes survive
 * store faults: each names the sequence number it expects, so a retry of a write that was applied
 * but answered with an error is recognised as done, and a store error is tried again, never
 * turned into the task's error.
 *
 * @module
 */

import { setMaxListeners } from "node:events";
import { faultPauseMs, isStoreFault, retryFaults, retryFaultsAfter } from "./_faults.ts";
import { abortQuietly, quietController } from "./_listeners.ts";
import { isGroupLimitMismatch } from "./_group_limits.ts";
import {
  type RunnerGauges,
  runnerStarted,
  runnerStopped,
  runStarted,
  RunTelemetry,
} from "./_telemetry.ts";
import { type Clock, systemClock } from "./clock.ts";
import { type ExecutionContext, runInExecution } from "./context.ts";
import { CanceledError, NencError, StoreClosedError, TaskTimeoutError } from "./errors.ts";
import type { Invocation } from "./invocation.ts";
import type { ActorOptions, InvocationRef, Orchestrator } from "./orchestrator.ts";
import { DEFAULT_ERROR_CLASSES, deserializeError, errorClassMap } from "./serializer.ts";
import { InvocationStatus, isFinalStatus } from "./status.ts";
import { type InvocationRecord, slotsOf } from "./store.ts";
import type { Task, TaskContext } from "./task.ts";
import { dueTicks, isSameSchedule, nextTickMs, type Schedule } from "./schedules.ts";
import type { LogFields } from "./log.ts";
import {
  describeError,
  errorFields,
  invocationFields,
  type Reporter,
  reporterOf,
} from "./_report.ts";

/**
 * Options of `app.runner()`; defaults in brackets.
 *
 * @example
 * ```ts
 * import { Nenc, type RunnerOptions } from "@nenc/nenc";
 *
 * const options: RunnerOptions = { concurrency: 16, heartbeatMs: 500, graceMs: 30_000 };
 * await using runner = new Nenc().runner(options);
 * console.log(runner.concurrency); // 16
 * ```
 */
export interface RunnerOptions {
  /** How many invocations run at once; a paused invocation does not count [`1`]. */
  concurrency?: number;
  /** The runner's id [a random UUID]. */
  runnerId?: string;
  /** Stops the runner when aborted. */
  signal?: AbortSignal;
  /** How often an idle runner looks for work (and for cancels) not announced to it [`100`]. */
  pollMs?: number;
  /**
   * How often the runner writes its heartbeat, takes back its own orphans and reads the cron
   * schedules (those another process stored) [`1000`]. At the same pace it takes or renews the
   * upkeep lease (`Store.takeUpkeepLease`, until `runnerTimeoutSeconds` after its last heartbeat
   * that landed): the one runner that holds it recovers the stale invocations of every runner.
   * Its orphans (invocations the store says it executes but it does not) it looks for among 500
   * of its executions a heartbeat, in one range read, the next 500 each time: of `n` executions,
   * each is looked at every ⌊n / 500⌋ + 1 heartbeats (every heartbeat while it has fewer than 500).
   */
  heartbeatMs?: number;
  /**
   * How often the runner purges final invocations that are due, while it holds the upkeep lease
   * [`60000`].
   */
  purgeIntervalMs?: number;
  /**
   * How long a function whose signal was aborted (cancel, timeout, stop) may still run before
   * the runner stops waiting for it, warns, and records its end anyway; also the default of
   * `stop()` and `drain()` [`10000`].
   */
  graceMs?: number;
}

/**
 * Options of {@linkcode Runner.stop}.
 *
 * @example
 * ```ts
 * import { Nenc, type StopOptions } from "@nenc/nenc";
 *
 * const runner = new Nenc().runner();
 * runner.start();
 * const options: StopOptions = { graceMs: 2_000 };
 * await runner.stop(options);
 * ```
 */
export interface StopOptions {
  /**
   * How long running functions may finish on their own (their outcomes are recorded), and then
   * how long they get after their signals are aborted [the runner's `graceMs`].
   */
  graceMs?: number;
}

/**
 * Options of {@linkcode Runner.drain}.
 *
 * @example
 * ```ts
 * import { type DrainOptions, Nenc } from "@nenc/nenc";
 *
 * const options: DrainOptions = { maxMs: 50_000, graceMs: 5_000 };
 * console.log(await new Nenc().runner().drain(options)); // { invocations: 0, timedOut: false }
 * ```
 */
export interface DrainOptions extends StopOptions {
  /** Stop picking up work after this long [`50000`]. */
  maxMs?: number;
}

/**
 * What {@linkcode Runner.drain} did.
 *
 * @example
 * ```ts
 * import { type DrainReport, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const square = app.task("square", ({ n }: { n: number }) => n * n);
 * await square.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }]);
 * const report: DrainReport = await app.runner({ concurrency: 2 }).drain({ maxMs: 10_000 });
 * console.log(report); // { invocations: 3, timedOut: false }
 * ```
 */
export interface DrainReport {
  /** Invocations this runner finished (succeeded, failed or re-queued for retry). */
  readonly invocations: number;
  /** Whether `maxMs` ran out before the work did (what still ran was handed back). */
  readonly timedOut: boolean;
}

/**
 * What a runner needs from its app. A {@linkcode Nenc} app is one; a test can wrap it, here to
 * see which tasks the runner looks up.
 *
 * @example
 * ```ts
 * import { Nenc, Runner, type RunnerHost } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const lookedUp: string[] = [];
 * const host: RunnerHost = {
 *   orchestrator: app.orchestrator,
 *   clock: app.clock,
 *   getTask: (taskId) => (lookedUp.push(taskId), app.getTask(taskId)),
 * };
 * const invocation = await ping.call();
 * await new Runner(host).drain();
 * console.log(await invocation.result(), lookedUp.includes("ping")); // "pong" true
 * ```
 */
export interface RunnerHost {
  /** The orchestrator. */
  readonly orchestrator: Orchestrator;
  /** The clock. */
  readonly clock: Clock;
  /** The task with this id, if the app defines it. */
  getTask(taskId: string): Task<never, unknown> | undefined;
  /** Every task the app defines: the heartbeat lists them. */
  tasks?(): readonly Task<never, unknown>[];
}

const RUNNER_OPTIONS = new Set([
  "concurrency",
  "runnerId",
  "signal",
  "pollMs",
  "heartbeatMs",
  "purgeIntervalMs",
  "graceMs",
]);

/** What a runner's pick-up claimed (see {@linkcode Orchestrator.startInvocations}). */
type Claimed = Awaited<ReturnType<Orchestrator["startInvocations"]>>;

/**
 * The slots passed to one pick-up ahead of their release: `ready` resolves once all are given
 * back (the pick-up claims then), and rejects if the runner stops first (it claims nothing).
 */
class SlotsAhead {
  /** The slots passed to it. */
  count = 0;
  /** The invocations whose ends give them back (see `ClaimRequest.freedBy`). */
  readonly freedBy: string[] = [];
  readonly ready: Promise<void>;
  #given = 0;
  /** Slots its pick-up claimed in the commits of their ends, given back after it ended. */
  #owed = 0;
  #closed = false;
  #resolve!: () => void;
  readonly #stop: AbortSignal;
  readonly #stopped: () => void;

  constructor(stop: AbortSignal) {
    this.#stop = stop;
    let reject!: (reason: unknown) => void;
    this.ready = new Promise((resolve, fail) => {
      this.#resolve = resolve;
      reject = fail;
    });
    this.ready.catch(() => {}); // its pick-up sees it
    this.#stopped = () => reject(new NencError("Cannot pick up: the runner is stopping"));
    if (stop.aborted) this.#stopped();
    else stop.addEventListener("abort", this.#stopped, { once: true });
  }

  /**
   * A slot passed to it is given back: `false` once its pick-up ended (the runner takes it), unless
   * that pick-up claimed it already (in the commit of its end, see `ClaimRequest.freedBy`).
   */
  handOff(): boolean {
    if (this.#closed) {
      if (this.#owed === 0) return false;
      this.#owed--;
      return true;
    }
    if (++this.#given === this.count) this.#resolve();
    return true;
  }

  /** Its pick-up ended, having claimed `claimed`: the slots given back that it left. */
  close(claimed: number): number {
    this.#closed = true;
    this.#stop.removeEventListener("abort", this.#stopped);
    // A claim made in an end's commit may come back before that end's slot (a stopping runner's
    // pick-up does not wait for them): that slot is the claim's when it comes.
    this.#owed = Math.max(0, claimed - this.#given);
    return Math.max(0, this.#given - claimed);
  }
}

/** Error classes a runner rehydrates a cancel reason with. */
const BUILT_IN_ERRORS = errorClassMap(DEFAULT_ERROR_CLASSES);

/**
 * What ends the waits of an idle pick-up loop (its sleep, its wait for work): nothing reads it,
 * and the default reason, a `DOMException`, costs a stack trace on every wake-up.
 */
const IDLE_OVER = "idle over";

/**
 * A runner fences itself when its heartbeat has not landed for this share of the orchestrator's
 * `runnerTimeoutSeconds`: before the others take it for dead and run its work again.
 */
const FENCE_SHARE = 0.75;

/**
 * The executions a runner reads of its own range per heartbeat, looking for orphans: one batch of
 * a KV list, one round trip.
 */
const ORPHAN_PAGE = 500;

/**
 * A runner of an app's invocations. `start()` begins picking up work; `stop()` (or
 * `await using`) stops picking up, lets what runs finish for a grace period, then aborts it and
 * hands it back (RUNNING → KILLED → REROUTED) once its function has returned, for another runner
 * to pick up: nothing is lost, and no invocation runs twice at once.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * await using runner = app.runner({ concurrency: 2 });
 * runner.start();
 * console.log(await (await ping.call()).result()); // "pong"
 * ```
 */
export class Runner implements AsyncDisposable {
  /** The runner id: the owner of what it runs. */
  readonly id: string;
  /** Slots: invocations running at once. */
  readonly concurrency: number;
  /** See {@linkcode RunnerOptions.graceMs}. */
  readonly graceMs: number;
  readonly #host: RunnerHost;
  /** The app's logger and event listeners. */
  readonly #reporter: Reporter;
  readonly #pollMs: number;
  readonly #heartbeatMs: number;
  readonly #purgeIntervalMs: number;
  /** Aborted when the runner stops picking up work. */
  readonly #stop = new AbortController();
  /** Aborted when the runner gives up on writes still being tried (the end of a stop). */
  readonly #abandon = new AbortController();
  /**
   * Aborted when the runner has ended (after its stop handed everything back): its heartbeat,
   * its fence watch and its cancel watch run until then, through the stop's grace.
   */
  readonly #alive = new AbortController();
  readonly #executions = new Map<string, Execution>();
  /** Called when the last execution ends. */
  #onEmpty: (() => void) | undefined;
  /** Called when an execution starts (the cancel watch waits for one). */
  #onExecution: (() => void) | undefined;
  /** Resumes waiting for a slot; they get freed slots before new work. */
  readonly #resumeQueue: (() => void)[] = [];
  #free: number;
  /** Pick-ups under way for slots about to be given back (see #passAhead). */
  readonly #aheads = new Set<Promise<void>>();
  /** The pick-up loop's own pick-up, while under way (the orphan sweep waits for it). */
  #looping: Promise<unknown> | undefined;
  /** The upkeep paced by heartbeatMs, while under way beside the pick-ups (see #upkeep). */
  #upkeeping: Promise<void> | undefined;
  /** The slots passed ahead in this turn, for one pick-up at its end. */
  #gathering: SlotsAhead | undefined;
  /**
   * The last pick-up took all it could and saw more queued: a slot about to be given back is
   * passed ahead (where nothing waits, a pick-up ahead would come back empty).
   */
  #saturated = false;
  #loop: Promise<void> | undefined;
  #beats: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #woken = false;
  #nextRecoveryMs = -Infinity;
  /** Where the next page of the orphan sweep starts: after this id (`undefined`: from the first). */
  #orphanCursor: string | undefined;
  #nextPurgeMs = -Infinity;
  /** The schedules of the tasks this runner defines, by name, as last read (every heartbeat). */
  #schedules = new Map<string, ScheduleWatch>();
  /** When the next tick of those schedules is due, epoch ms (`Infinity`: none). */
  #nextTickMs = Infinity;
  #stopped: Promise<void> | undefined;
  /** Called when a claim finds nothing and nothing runs: what `drain()` waits for. */
  #onIdle: (() => void) | undefined;
  #finished = 0;
  /** Why the runner stopped by itself (newer data, another group limit): `drain()` rejects with it. */
  #fatal: unknown;
  /** The time of the last heartbeat that landed. */
  #lastBeatMs = -Infinity;
  /** Its heartbeat did not land in time: it picks up nothing until one does. */
  #fenced = false;
  /**
   * A heartbeat write is under way, or the last one failed: only then can a late heartbeat fence
   * the runner (a clock that jumps ahead alone must not).
   */
  #beatInTrouble = false;
  /** What its metrics read (see core/_telemetry.ts). */
  readonly #gauges: RunnerGauges;

  /** Use `app.runner()`. */
  constructor(host: RunnerHost, options: RunnerOptions = {}) {
    for (const name of Object.keys(options)) {
      if (!RUNNER_OPTIONS.has(name)) {
        throw new TypeError(`Cannot create a runner: unknown option "${name}"`);
      }
    }
    const positive = (
      name: "concurrency" | "pollMs" | "heartbeatMs" | "purgeIntervalMs",
      fallback: number,
    ): number => {
      const value = options[name] ?? fallback;
      if (!Number.isInteger(value) || value < 1) {
        throw new RangeError(
          `Cannot create a runner: ${name} must be an integer ≥ 1, got ${value}`,
        );
      }
      return value;
    };
    this.#host = host;
    this.#reporter = reporterOf(host.orchestrator);
    this.id = options.runnerId ?? `runner-${crypto.randomUUID()}`;
    this.#gauges = {
      runnerId: this.id,
      queueDepth: () => this.#resumeQueue.length,
      slotsInUse: () => {
        let held = 0;
        for (const execution of this.#executions.values()) if (execution.holdsSlot) held++;
        return held;
      },
    };
    this.concurrency = positive("concurrency", 1);
    this.#pollMs = positive("pollMs", 100);
    this.#heartbeatMs = positive("heartbeatMs", 1000);
    this.#purgeIntervalMs = positive("purgeIntervalMs", 60_000);
    this.graceMs = graceOf(options.graceMs, 10_000, "create a runner");
    const timeoutMs = host.orchestrator.options.runnerTimeoutSeconds * 1000;
    if (this.#heartbeatMs * 2 > timeoutMs) {
      throw new RangeError(
        `Cannot create a runner: heartbeatMs (${this.#heartbeatMs}) must be at most half the orchestrator's runnerTimeoutSeconds (${timeoutMs} ms), or other runners take this live one for dead`,
      );
    }
    this.#free = this.concurrency;
    if (options.signal?.aborted) this.#stop.abort();
    options.signal?.addEventListener("abort", () => void this.stop(), { once: true });
  }

  /** How often an idle runner, or a resume refused by running concurrency, looks again. */
  get pollMs(): number {
    return this.#pollMs;
  }

  /** Whether the runner was started and not stopped. */
  get running(): boolean {
    return this.#loop !== undefined && !this.#stop.signal.aborted;
  }

  /**
   * Invocations this runner finished so far (succeeded, failed or re-queued for retry); what it
   * handed back, or what was canceled, does not count. The CLI's worker shows it as progress.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const ping = app.task("ping", () => "pong");
   * await ping.call();
   * const runner = app.runner();
   * await runner.drain({ maxMs: 10_000 });
   * console.log(runner.finished); // 1
   * ```
   */
  get finished(): number {
    return this.#finished;
  }

  /**
   * Runs invocations until none is left to pick up (a retry in back-off counts as left), nothing
   * runs, or `maxMs` passed; then stops as {@linkcode Runner.stop} does, with `graceMs`. For
   * platforms whose isolates live only while they serve something — Deno Deploy: drain from
   * `Deno.cron` or from a request, in bounded slices that leave nothing half-done.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
   * const invocation = await add.call({ x: 1, y: 2 });
   * const report = await app.runner({ concurrency: 4 }).drain({ maxMs: 10_000, graceMs: 2_000 });
   * console.log(report.invocations, await invocation.result()); // 1 3
   * ```
   */
  async drain(options: DrainOptions = {}): Promise<DrainReport> {
    const maxMs = options.maxMs ?? 50_000;
    if (!Number.isFinite(maxMs) || maxMs <= 0) {
      throw new RangeError(`Cannot drain: maxMs must be a positive number, got ${maxMs}`);
    }
    const graceMs = graceOf(options.graceMs, this.graceMs, "drain");
    // Idle, or stopped by itself (a closed store, another group limit in the store).
    const idle = new Promise<void>((resolve) => this.#onIdle = resolve);
    const deadline = new AbortController();
    if (this.#loop === undefined) this.start();
    let timedOut = false;
    await Promise.race([
      idle,
      // A sleep also ends when aborted: only one that ran its course is a time-out.
      this.#host.clock.sleep(maxMs, deadline.signal).then(() => {
        timedOut = !deadline.signal.aborted;
      }),
    ]);
    deadline.abort();
    this.#onIdle = undefined;
    await this.stop({ graceMs });
    if (this.#fatal !== undefined) throw this.#fatal;
    return { invocations: this.#finished, timedOut };
  }

  /** Starts picking up and running invocations. */
  start(): void {
    if (this.#loop !== undefined) {
      throw new Error(`Cannot start runner ${this.id}: it was already started`);
    }
    this.#lastBeatMs = this.#host.clock.now();
    this.#log("debug", `runner ${this.id} started`, { concurrency: this.concurrency });
    if (this.#reporter.listens("runner")) {
      this.#reporter.emit("runner", { runnerId: this.id, event: "started" });
    }
    runnerStarted(this.#gauges);
    this.#loop = this.#run();
    this.#beats = Promise.all([this.#beat(), this.#watchHeartbeat(), this.#watchCancels()])
      .then(() => {});
  }

  /**
   * Stops: picks up nothing more and waits up to `graceMs` for what runs (its outcomes are
   * recorded as usual). Then it aborts the signals of the functions still running, discards what
   * they return, and hands each back (KILLED → REROUTED, re-queued for another runner) once its
   * function has returned — or `graceMs` after the abort if it has not, with a warning naming it.
   * A second call returns the first one's promise.
   *
   * @example Letting a long task wind down through its signal
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const poll = app.task("poll", async (_args: undefined, ctx) => {
   *   while (!ctx.signal.aborted) await new Promise((resolve) => setTimeout(resolve, 5));
   *   return "stopped";
   * });
   * const invocation = await poll.call();
   * const runner = app.runner();
   * runner.start();
   * while (await invocation.status() !== "running") await new Promise((r) => setTimeout(r, 5));
   * await runner.stop({ graceMs: 50 });
   * console.log(await invocation.status()); // "rerouted"
   * ```
   */
  stop(options: StopOptions = {}): Promise<void> {
    this.#stopped ??= this.#shutDown(graceOf(options.graceMs, this.graceMs, "stop"));
    return this.#stopped;
  }

  async #shutDown(graceMs: number): Promise<void> {
    const { orchestrator } = this.#host;
    this.#stop.abort();
    this.#wakeUp();
    await this.#loop;
    await this.#upkeeping;
    // What a pick-up beside it claims is run, and handed back below like the rest (one for slots
    // about to be given back claims nothing once the stop began).
    await Promise.all(this.#aheads);
    // No more upkeep here: another runner takes the lease at its next heartbeat.
    try {
      await orchestrator.store.releaseUpkeepLease(this.id);
    } catch (error) {
      if (!(error instanceof StoreClosedError)) {
        this.#log("error", `runner ${this.id} could not give up the upkeep lease`, {}, error);
      }
    }
    // What runs may finish on its own for graceMs; then its signal aborts and it is handed back
    // once its function returned (or graceMs later): each execution keeps its own grace.
    await this.#untilEmpty(graceMs);
    for (const execution of this.#executions.values()) {
      execution.abort(
        new NencError(`Cannot go on: runner ${this.id} is stopping`),
        "stop",
        graceMs,
      );
    }
    // Hand-backs are writes: tried through store faults for a while, then given up (recovery
    // takes over once this runner's heartbeat is gone).
    await this.#untilEmpty(graceMs + Math.max(graceMs, 5_000));
    this.#abandon.abort();
    for (const resume of this.#resumeQueue.splice(0)) resume();
    await this.#untilEmpty(Infinity);
    this.#alive.abort();
    runnerStopped(this.#gauges);
    await this.#beats; // no heartbeat lands after the entry is removed below
    try {
      await orchestrator.store.removeRunner(this.id);
    } catch (error) {
      if (!(error instanceof StoreClosedError)) {
        this.#log("error", `runner ${this.id} could not remove its heartbeat`, {}, error);
      }
    }
    this.#log("debug", `runner ${this.id} stopped`, { finished: this.#finished });
    if (this.#reporter.listens("runner")) {
      this.#reporter.emit("runner", { runnerId: this.id, event: "stopped" });
    }
  }

  /** Logs through the app's logger, with this runner's id and the error's name and message. */
  #log(
    level: "debug" | "info" | "warn" | "error",
    message: string,
    fields: LogFields,
    error?: unknown,
  ): void {
    this.#reporter.logger[level](
      error === undefined ? message : `${message}: ${describeError(error)}`,
      {
        runnerId: this.id,
        ...fields,
        ...(error === undefined ? {} : { error: errorFields(error) }),
      },
    );
  }

  /** Stops on its own account (the store refused it for good): a drain waiting ends too. */
  #stopItself(): void {
    void this.stop({ graceMs: 0 });
    this.#onIdle?.();
  }

  /** Resolves when no execution is left, or after `ms` (never, for Infinity). */
  async #untilEmpty(ms: number): Promise<void> {
    if (this.#executions.size === 0 || ms <= 0) return;
    const done = new AbortController();
    await Promise.race([
      new Promise<void>((resolve) => this.#onEmpty = resolve),
      ...(Number.isFinite(ms) ? [this.#host.clock.sleep(ms, done.signal)] : []),
    ]);
    done.abort();
    this.#onEmpty = undefined;
  }

  /** Same as {@linkcode Runner.stop} with the runner's `graceMs`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /** Whether the runner runs a task: the pick-up leaves other deploys' tasks queued. */
  readonly #accepts = (taskId: string): boolean => this.#host.getTask(taskId) !== undefined;

  /** Starts an execution of each invocation a pick-up claimed, in one of the free slots. */
  #startExecutions(claimed: Claimed): void {
    for (const { invocation, running, ...claim } of claimed) {
      this.#free--;
      // Registered before any await, so a stop() from now on sees it.
      const execution: Execution = new Execution(this, this.#host, invocation, {
        ...claim,
        persist: (steps, write): Promise<WriteVerdict> => this.#persist(execution, steps, write),
      });
      this.#executions.set(invocation.id, execution);
      this.#onExecution?.();
      void this.#execute(execution, running);
    }
  }

  /**
   * The slot of an execution whose function returned goes, once its end is committed, to a
   * pick-up that starts now (with the others of this turn): it reads the queue and its candidates
   * while the end is written, and claims once the slots are given back — so a slot is refilled a
   * commit after it frees, not a whole pick-up after. Only while work is waiting (see
   * #saturated), and not while a resume waits for a slot, which comes first.
   */
  #passAhead(execution: Execution): void {
    if (
      !this.#saturated || this.#stop.signal.aborted || this.#fenced ||
      this.#resumeQueue.length > 0
    ) return;
    let ahead = this.#gathering;
    if (ahead === undefined) {
      const slots = ahead = this.#gathering = new SlotsAhead(this.#stop.signal);
      queueMicrotask(() => {
        this.#gathering = undefined;
        const pickUp: Promise<void> = this.#pickUp(slots.count, slots).then(
          (claimed) => slots.close(claimed),
          () => slots.close(0),
        ).then((unused) => this.#giveBack(unused)).finally(() => {
          this.#aheads.delete(pickUp);
          // The loop looks again when it has slots to fill (some this pick-up left) or drain() may
          // be waiting for this to end; else waking it would only start another wait (a timer, a
          // controller: a fifth of a node's pick-ups in the tree of nested waits).
          if (this.#free > 0 || this.#onIdle !== undefined) this.#wakeUp();
        });
        this.#aheads.add(pickUp);
      });
    }
    ahead.count++;
    ahead.freedBy.push(execution.invocation.id);
    const slots = ahead;
    execution.passSlot(() => {
      // Given back after its pick-up ended: a slot freed as any other.
      if (!slots.handOff()) this.releaseSlot();
    });
  }

  /**
   * A pick-up for `max` slots set aside for it: what it claims starts in them. Resolves to how
   * many it claimed.
   */
  async #pickUp(
    max: number,
    ahead?: SlotsAhead,
    widen?: () => number,
  ): Promise<number> {
    const claimed = await this.#host.orchestrator.startInvocations(max, {
      runnerId: this.id,
      accepts: this.#accepts,
      ...(ahead !== undefined ? { ready: ahead.ready, freedBy: ahead.freedBy } : {}),
      ...(widen !== undefined ? { widen } : {}),
    });
    this.#saturated = claimed.more;
    this.#free += claimed.length;
    this.#startExecutions(claimed);
    return claimed.length;
  }

  /**
   * A pick-up for the slots free now, set aside while it runs: what it claims starts in them. The
   * slots freed while it reads (executions that pause or end) join it when it has read what it
   * may claim (`widen`), rather than waiting idle for the next pick-up: on a remote store a
   * pick-up lasts several round trips, and half the slots sat free meanwhile in the tree of
   * nested waits (issue #12). A resume waiting takes a freed slot first (see releaseSlot).
   */
  async #pickUpFree(): Promise<number> {
    let max = this.#free;
    this.#free = 0;
    let claimed = 0;
    const widen = (): number => {
      const more = this.#free;
      this.#free = 0;
      max += more;
      return more;
    };
    try {
      return claimed = await this.#pickUp(max, undefined, widen);
    } finally {
      this.#giveBack(max - claimed);
    }
  }

  /** Slots set aside for a pick-up that left them: to a resume waiting first, else free. */
  #giveBack(slots: number): void {
    for (; slots > 0; slots--) {
      const resume = this.#resumeQueue.shift();
      if (resume !== undefined) resume();
      else this.#free++;
    }
  }

  async #run(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const signal = this.#stop.signal;
    if (!await this.#defineGroups()) return;
    let nextDueMs: number | undefined;
    for (let failures = 0; !signal.aborted;) {
      try {
        this.#upkeep();
        if (!this.#fenced && clock.now() >= this.#nextTickMs) await this.#fireTicks();
        if (!this.#fenced && this.#free > 0 && this.#resumeQueue.length === 0) {
          // Read before the claim: a retry not yet due then is still "later" for drain() below,
          // however far the clock moves during the claim.
          const beforeClaimMs = clock.now();
          const pickUp = this.#looping = this.#pickUpFree();
          const claimed = await pickUp.finally(() => this.#looping = undefined);
          failures = 0;
          if (claimed > 0) continue;
          // The next delayed call or retry that falls due: the wait ends then, not a poll later.
          nextDueMs = await orchestrator.store.nextAvailableMs(beforeClaimMs);
          // Not idle if a slot was freed since the last wait (#woken): an execution that ended
          // after this pick-up looked may have given its key's room to parked work it did not see
          // (a wake marker on KV, a woken entry queued again in memory). The loop looks again at
          // once; stopping here would leave that work parked. Nor while the upkeep runs: what it
          // recovers is queued again, and the loop looks once it ends.
          if (
            this.#onIdle !== undefined && !this.#woken && this.#executions.size === 0 &&
            this.#resumeQueue.length === 0 && nextDueMs === undefined &&
            this.#aheads.size === 0 && this.#gathering === undefined &&
            this.#upkeeping === undefined
          ) this.#onIdle();
        }
        await this.#idle(nextDueMs);
        nextDueMs = undefined;
      } catch (error) {
        if (error instanceof StoreClosedError) {
          this.#log("error", `runner ${this.id} stops: its store is closed`, {});
          this.#stopItself();
          return;
        }
        // A failing store (a network error, a locked database) must not crash the process:
        // report it and try again after a growing pause.
        this.#log("error", `runner ${this.id} loop failed, retrying`, {}, error);
        await clock.sleep(faultPauseMs(this.#pollMs, failures++), signal);
      }
    }
  }

  /**
   * Stores the limits of the app's concurrency groups before the first pick-up; `false` (and the
   * runner stops) when the store holds another limit for one of them: a process with another
   * definition must not take slots under it.
   */
  async #defineGroups(): Promise<boolean> {
    const { orchestrator, clock } = this.#host;
    const limits = new Map<string, number>();
    for (const task of this.#host.tasks?.() ?? []) {
      for (const group of task.options.concurrencyGroups) limits.set(group.name, group.limit);
    }
    if (limits.size === 0) return true;
    for (let failures = 0; !this.#stop.signal.aborted; failures++) {
      try {
        await orchestrator.store.defineGroups(limits);
        return true;
      } catch (error) {
        if (isGroupLimitMismatch(error) || error instanceof StoreClosedError) {
          this.#fatal = error;
          this.#log("error", `runner ${this.id} stops`, {}, error);
          this.#stopItself();
          return false;
        }
        this.#log("error", `runner ${this.id} could not store its groups, retrying`, {}, error);
        await clock.sleep(faultPauseMs(this.#pollMs, failures), this.#stop.signal);
      }
    }
    return false;
  }

  /**
   * Waits for new work, a freed slot, the poll interval, the time `nextDueMs` when something
   * delayed falls due, or the next tick of a schedule, whichever comes first; while the upkeep
   * runs, for new work, a freed slot or the upkeep's end (the loop looks again then).
   */
  async #idle(nextDueMs: number | undefined): Promise<void> {
    if (this.#woken) {
      this.#woken = false;
      return;
    }
    const { orchestrator, clock } = this.#host;
    // A tick that fell due while the loop ran is fired now, not a sleep later.
    if (!this.#fenced && this.#nextTickMs <= clock.now()) return;
    // A stop ends the wait too: it wakes the loop (#wakeUp).
    const idle = new AbortController();
    const wakeAtMs = Math.min(nextDueMs ?? Infinity, this.#nextTickMs);
    await Promise.race([
      // New work matters only with a free slot; a freed slot wakes the loop itself.
      ...(this.#free > 0 ? [orchestrator.store.waitWork(idle.signal)] : []),
      // No timer while the upkeep runs: its end wakes the loop, and a runner asleep is idle
      // (what a test clock waits for) only once its upkeep is done.
      ...(this.#upkeeping === undefined
        ? [clock.sleep(Math.min(this.#pollMs, Math.max(1, wakeAtMs - clock.now())), idle.signal)]
        : []),
      new Promise<void>((resolve) => this.#wake = resolve),
    ]);
    idle.abort(IDLE_OVER);
    this.#wake = undefined;
    this.#woken = false;
  }

  #wakeUp(): void {
    this.#woken = true;
    this.#wake?.();
  }

  /**
   * Writes the heartbeat every `heartbeatMs`, apart from the pick-up loop: a slow claim pass or
   * recovery scan (a loaded machine, a remote KV) must not make a live runner look dead to the
   * others, who would recover its running invocations and run them a second time.
   */
  async #beat(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const signal = this.#alive.signal;
    const taskIds = this.#host.tasks?.().map((task) => task.id);
    while (!signal.aborted) {
      const nowMs = clock.now();
      // Until a heartbeat lands, a late one may fence: whichever call of this round hangs.
      this.#beatInTrouble = true;
      try {
        // Data of a newer layout (another process upgraded nenc): this code must not touch it.
        await orchestrator.store.checkSchema();
      } catch (error) {
        if (!isStoreFault(error)) {
          this.#fatal ??= error;
          this.#log("error", `runner ${this.id} stops`, {}, error);
          this.#stopItself();
          return;
        }
      }
      try {
        await orchestrator.store.heartbeat(this.id, nowMs, taskIds);
        this.#lastBeatMs = Math.max(this.#lastBeatMs, nowMs);
        this.#beatInTrouble = false;
        this.#fenced = false;
      } catch (error) {
        if (error instanceof StoreClosedError) return;
        this.#log("error", `runner ${this.id} could not write its heartbeat, retrying`, {}, error);
      }
      await clock.sleep(this.#heartbeatMs, signal);
    }
  }

  /**
   * Fences the runner when its heartbeat has not landed for most of `runnerTimeoutSeconds`: the
   * others are about to take it for dead and run its invocations again, so it aborts their
   * functions and writes nothing more for them (SPEC §7.1), and picks up nothing until a
   * heartbeat lands. A timer of its own: a heartbeat write that hangs must not delay it.
   */
  async #watchHeartbeat(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const signal = this.#alive.signal;
    const fenceAfterMs = orchestrator.options.runnerTimeoutSeconds * 1000 * FENCE_SHARE;
    while (!signal.aborted) {
      const dueMs = this.#lastBeatMs + fenceAfterMs;
      if (clock.now() >= dueMs && this.#beatInTrouble && !this.#fenced) this.#fence();
      await clock.sleep(Math.max(this.#heartbeatMs / 4, dueMs - clock.now()), signal);
    }
  }

  #fence(): void {
    this.#fenced = true;
    if (this.#executions.size === 0) return;
    this.#log(
      "error",
      `runner ${this.id} fences itself: its heartbeat has not landed for ${
        this.#host.clock.now() - this.#lastBeatMs
      } ms; it aborts and gives up ${this.#executions.size} invocation(s), which recovery re-runs`,
      { invocationIds: [...this.#executions.keys()] },
    );
    for (const execution of this.#executions.values()) {
      execution.abort(
        new NencError(`Cannot go on: runner ${this.id} lost its heartbeat`),
        "fence",
      );
    }
  }

  /**
   * Starts the upkeep when it is due (every heartbeatMs), beside the pick-ups, one at a time: on a
   * remote store it is a dozen round trips in sequence (the lease, recovery, purge, orphans,
   * schedules), and a pick-up must not wait for them — the first one of a runner least of all.
   * The loop looks again once it ends: what it recovered is queued.
   */
  #upkeep(): void {
    // A fenced runner may be the one whose clock or link is wrong: it writes nothing until a
    // heartbeat lands again (then its dropped executions are orphans it recovers itself).
    if (this.#fenced || this.#upkeeping !== undefined) return;
    const nowMs = this.#host.clock.now();
    if (nowMs < this.#nextRecoveryMs) return;
    this.#nextRecoveryMs = nowMs + this.#heartbeatMs;
    this.#upkeeping = this.#maintain(nowMs).catch((error) => {
      if (error instanceof StoreClosedError) {
        this.#log("error", `runner ${this.id} stops: its store is closed`, {});
        this.#stopItself();
        return;
      }
      // A failing store: the next heartbeat's upkeep tries again.
      this.#log("error", `runner ${this.id} upkeep failed, retrying`, {}, error);
    }).finally(() => {
      this.#upkeeping = undefined;
      this.#wakeUp();
    });
  }

  /** The upkeep of a heartbeat (see #upkeep), as of `nowMs`. */
  async #maintain(nowMs: number): Promise<void> {
    const { orchestrator } = this.#host;
    // One runner at a time recovers and purges for every runner: the holder of the upkeep
    // lease, which it renews here every heartbeat, up to runnerTimeoutSeconds after its last
    // heartbeat that landed — when the others would take it for dead. So a holder that dies
    // (or whose heartbeats stop landing) keeps it no longer than its work waits for recovery:
    // another runner takes it at its first heartbeat after that. (After a jump of the clock
    // past that time, before its next heartbeat lands, a runner takes it for this round only.)
    const untilMs = this.#lastBeatMs + orchestrator.options.runnerTimeoutSeconds * 1000;
    // A fence may come while the upkeep runs (it began just before): from then on it writes
    // nothing, as the fence says.
    if (await orchestrator.store.takeUpkeepLease(this.id, { nowMs, untilMs }) && !this.#fenced) {
      await orchestrator.recoverInvocations({ runnerId: this.id });
      if (nowMs >= this.#nextPurgeMs) {
        this.#nextPurgeMs = nowMs + this.#purgeIntervalMs;
        await orchestrator.autoPurge();
      }
    }
    // Its own orphans every runner takes back itself: they are in its own range of the index,
    // which it reads one page at a time.
    await this.#recoverOrphans();
    await this.#readSchedules();
  }

  /**
   * Reads the schedules of the tasks this runner defines (those another process stored too), and
   * when their next tick is due. A schedule it knew in the same version keeps how far its ticks
   * were handled; a new or changed one starts from its cursor.
   */
  async #readSchedules(): Promise<void> {
    const known = this.#schedules;
    this.#schedules = new Map();
    for (const schedule of await this.#host.orchestrator.store.schedules()) {
      if (this.#host.getTask(schedule.taskId) === undefined) continue;
      const watch = known.get(schedule.name);
      this.#schedules.set(schedule.name, {
        schedule,
        checkedMs: watch !== undefined && isSameSchedule(watch.schedule, schedule)
          ? watch.checkedMs
          : -Infinity,
      });
    }
    this.#planTicks();
  }

  #planTicks(): void {
    this.#nextTickMs = Math.min(
      Infinity,
      ...[...this.#schedules.values()].map(({ schedule, checkedMs }) =>
        nextTickMs(schedule, checkedMs)
      ),
    );
  }

  /**
   * Fires the due ticks of the schedules whose next tick has come, oldest first, each in the
   * atomic step that claims it. A tick it could not fire — fired already (by another runner, or
   * before its schedule was stored anew), or its schedule changed — is handled: it goes on past
   * it, from the schedules as they are now.
   */
  async #fireTicks(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    for (;;) {
      const nowMs = clock.now();
      let lost = false;
      for (const watch of this.#schedules.values()) {
        if (nextTickMs(watch.schedule, watch.checkedMs) > nowMs) continue;
        for (const tickMs of dueTicks(watch.schedule, nowMs, watch.checkedMs)) {
          const fired = await orchestrator.fireTick(watch.schedule, tickMs, {
            runnerId: this.id,
            signal: this.#stop.signal,
          });
          if (fired === undefined) {
            watch.checkedMs = tickMs;
            lost = true;
            break;
          }
          watch.schedule = fired.schedule;
        }
        if (lost) break;
        watch.checkedMs = nowMs;
      }
      if (!lost) break;
      await this.#readSchedules();
    }
    this.#planTicks();
  }

  /**
   * Invocations the store says this runner executes but it does not (a claim applied whose
   * answer was lost, an execution that ended without its last write): recovered soon, not when
   * they look stale. One page of its range a heartbeat, from where the last one ended, back to
   * the first after the last page: with `n` executions, each id is looked at once every
   * ⌊n / ORPHAN_PAGE⌋ + 1 heartbeats, in one range read per heartbeat however large `n` is.
   *
   * It runs in the upkeep, beside the pick-ups: those under way once the page is read (the
   * loop's and those beside it) are waited for before the page is compared with what runs here (a
   * claim of theirs the page holds is an execution here once they end): an id this runner claims
   * is never taken for an orphan.
   */
  async #recoverOrphans(): Promise<void> {
    const { orchestrator } = this.#host;
    const page = await orchestrator.store.executions(this.id, {
      ...(this.#orphanCursor !== undefined ? { after: this.#orphanCursor } : {}),
      limit: ORPHAN_PAGE,
    });
    await Promise.all([...this.#aheads, this.#looping?.catch(() => {})]);
    const orphans = page.filter((id) => !this.#executions.has(id));
    // Fenced meanwhile (the upkeep began before the fence): the executions it aborted are gone
    // from this runner, not orphans, and a fenced runner writes nothing.
    if (this.#fenced) return;
    if (orphans.length > 0) {
      await orchestrator.recoverInvocations({ runnerId: this.id, ids: orphans });
    }
    // Moved on once the page is handled: a page whose recovery failed is read again.
    this.#orphanCursor = page.length < ORPHAN_PAGE ? undefined : page.at(-1);
  }

  /**
   * Looks for cancels every `pollMs` while something runs, for the runner's whole life (a stop's
   * grace included): a cancel made in any process aborts the function within one poll. Its
   * cadence is I/O pacing, not app time, so it sleeps on the system clock, like the KV poller.
   */
  async #watchCancels(): Promise<void> {
    const signal = this.#alive.signal;
    for (let failures = 0; !signal.aborted;) {
      try {
        if (this.#executions.size === 0) {
          // Nothing to cancel: no read, no timer, until something runs.
          await new Promise<void>((resolve) => {
            const done = (): void => {
              signal.removeEventListener("abort", done);
              this.#onExecution = undefined;
              resolve();
            };
            this.#onExecution = done;
            signal.addEventListener("abort", done, { once: true });
          });
          continue;
        }
        if (!this.#fenced) await this.#takeCancels();
        failures = 0;
        await systemClock.sleep(this.#pollMs, signal);
      } catch (error) {
        if (error instanceof StoreClosedError) return;
        this.#log("error", `runner ${this.id} could not read its cancel requests`, {}, error);
        await systemClock.sleep(faultPauseMs(this.#pollMs, failures++), signal);
      }
    }
  }

  /** Aborts the executions canceled since the last look (in any process). */
  async #takeCancels(): Promise<void> {
    const { orchestrator } = this.#host;
    for (const id of await orchestrator.store.cancelRequests(this.id)) {
      const execution = this.#executions.get(id);
      if (execution !== undefined) {
        if (execution.aborted) continue;
        const record = await orchestrator.store.get(id);
        execution.abort(
          record?.error === undefined
            ? new CanceledError(id)
            : deserializeError(record.error, BUILT_IN_ERRORS),
          "cancel",
        );
      }
      // Not (yet) an execution here: a claim still in flight registers it, and the next look
      // aborts it; one whose claim answer was lost is ended by the orphan recovery of the
      // pick-up loop, in step with the claims.
    }
  }

  /** Takes a slot for a resuming invocation: before any new work. */
  acquireSlot(): Promise<void> {
    if (this.#stop.signal.aborted) {
      // Stopping: what still runs winds down at once, its slot counted all the same.
      this.#free--;
      return Promise.resolve();
    }
    if (this.#free > 0 && this.#resumeQueue.length === 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#resumeQueue.push(resolve));
  }

  /** Frees a slot: to a waiting resume first, else to new work. */
  releaseSlot(): void {
    const resume = this.#resumeQueue.shift();
    if (resume !== undefined) return resume();
    this.#free++;
    this.#wakeUp();
  }

  /**
   * Makes one of the runner's own writes for `execution` (a status change named by the sequence
   * number it expects), trying a store fault again after a growing pause until it lands or the
   * runner gives up at the end of a stop. A write that answers `false` was refused by running
   * concurrency (`"busy"`). A refusal by the state machine is explained by a fresh read: the
   * invocation was canceled, or it is not this execution's any more (recovered, claimed
   * elsewhere, gone). Any other error is the write's own (a result over a value limit): thrown.
   */
  async #persist(
    execution: Execution,
    steps: number,
    write: (actor: ActorOptions) => Promise<boolean | void>,
  ): Promise<WriteVerdict> {
    const { orchestrator, clock } = this.#host;
    const abandon = this.#abandon.signal;
    for (let failures = 0;; failures++) {
      if (execution.fenced || abandon.aborted) return "gone";
      try {
        const applied = await write({
          runnerId: this.id,
          claimSeq: execution.claimSeq,
          expectSeq: execution.seq,
        });
        if (applied === false) return "busy";
        execution.seq += steps;
        return "done";
      } catch (error) {
        if (error instanceof StoreClosedError) return "gone";
        if (isStoreFault(error)) {
          this.#log(
            "error",
            `runner ${this.id} could not write invocation ${execution.invocationId}, retrying`,
            { invocationId: execution.invocationId },
            error,
          );
          await clock.sleep(faultPauseMs(this.#pollMs, failures), abandon);
          continue;
        }
        let record;
        try {
          record = await retryFaults(() => orchestrator.store.get(execution.invocationId), {
            clock,
            signal: abandon,
          });
        } catch {
          return "gone";
        }
        if (record === undefined || record.claimSeq !== execution.claimSeq) return "gone";
        if (record.status === InvocationStatus.CANCELED) return "canceled";
        if (record.ownerId !== this.id || isFinalStatus(record.status)) return "gone";
        throw error;
      }
    }
  }

  async #execute(execution: Execution, running: boolean): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const invocation = execution.invocation;
    let end: WriteVerdict = "gone";
    try {
      const task = this.#host.getTask(invocation.taskId);
      if (task === undefined) {
        // Claimed through the public pick-up by a runner that lacks the task: back to the queue.
        end = await this.#persist(
          execution,
          1,
          (actor) => orchestrator.rerouteInvocations([invocation], actor),
        );
        return;
      }
      if (!running) {
        const parent = invocation.parentId === null ? undefined : { id: invocation.parentId };
        end = await this.#persist(
          execution,
          1,
          (actor) => orchestrator.setInvocationRun(parent, invocation, actor),
        ).catch(() => "gone" as const); // a cycle failed the invocation
        if (end !== "done") return;
      }
      const timeoutMs = task.options.timeoutMs;
      if (timeoutMs !== undefined) {
        void clock.sleep(timeoutMs, execution.ended).then(() => {
          if (execution.ended.aborted) return;
          execution.abort(
            new TaskTimeoutError(task.id, invocation.id, timeoutMs),
            "timeout",
          );
        });
      }
      const outcome = await execution.run(task);
      if (outcome === "ignored" && execution.graceMs > 0) {
        this.#log(
          "warn",
          `invocation ${invocation.id} (task ${task.id}) ignored its aborted signal (${
            String((execution.abortReason as Error)?.message ?? execution.abortReason)
          }) for ${execution.graceMs} ms; the runner records its end without waiting for it`,
          invocationFields(invocation, this.id),
        );
      }
      end = await this.#record(execution, task, outcome);
    } catch (error) {
      this.#log(
        "error",
        `runner ${this.id} could not finish invocation ${invocation.id}`,
        invocationFields(invocation, this.id, {
          stack: error instanceof Error ? error.stack : undefined,
        }),
        error,
      );
    } finally {
      execution.end();
      if (end === "canceled") {
        execution.telemetry?.recorded(InvocationStatus.CANCELED);
        // Not named by a sequence number: the cancel moved it past the one this execution saw.
        // Ending is idempotent (a second end gives nothing back), and the claim still fences it.
        await this.#persist(
          execution,
          0,
          ({ runnerId, claimSeq }) =>
            orchestrator.endExecution(invocation, {
              runnerId: runnerId ?? this.id,
              ...(claimSeq !== undefined ? { claimSeq } : {}),
            }),
        ).catch((error) => {
          this.#log(
            "error",
            `runner ${this.id} could not end invocation ${invocation.id}`,
            invocationFields(invocation, this.id),
            error,
          );
        });
        const reason = execution.abortReason;
        this.#log(
          "info",
          `invocation ${invocation.id} (task ${invocation.taskId}) canceled while it ran here: ${
            describeError(reason)
          }; its function has returned`,
          invocationFields(invocation, this.id, { error: errorFields(reason) }),
        );
      }
      execution.telemetry?.end();
      if (this.#executions.get(invocation.id) === execution) this.#executions.delete(invocation.id);
      // Given back already (its end was committed before the clean-ups ended): the loop, which
      // may have found nothing to pick up meanwhile, looks again now that nothing runs.
      if (!execution.releaseSlot() && this.#executions.size === 0) this.#wakeUp();
      if (this.#executions.size === 0) this.#onEmpty?.();
    }
  }

  /** Records how an execution ended; returns how that went. */
  async #record(
    execution: Execution,
    task: Task<never, unknown>,
    outcome: ExecutionOutcome,
  ): Promise<WriteVerdict> {
    const { orchestrator } = this.#host;
    const invocation = execution.invocation;
    const kind = execution.abortKind;
    if (kind === "fence") return "gone";
    if (kind === "cancel") return "canceled";
    if (kind === "stop") {
      // Discarded: handed back for another runner, from wherever it is (PAUSED included), after
      // any pause or resume of its still in flight.
      const verdict = await execution.inOrder(() =>
        this.#persist(execution, 2, (actor) => orchestrator.handBackInvocation(invocation, actor))
      );
      if (verdict === "done") execution.telemetry?.recorded(InvocationStatus.REROUTED);
      return verdict;
    }
    // A timeout fails the attempt whatever the function returned.
    const result: ExecutionOutcome = kind === "timeout"
      ? { ok: false, error: execution.abortReason }
      : outcome;
    if (result === "ignored") throw new Error("unreachable: an ignored abort has a kind");
    // A final status is written from RUNNING or RESUMED: a paused invocation takes a slot again.
    const settled = await execution.settle();
    if (settled !== "done") return settled;
    this.#passAhead(execution);
    // The slot goes back once the write that ends the execution is committed, before the
    // clean-ups of a final status (its waiters, its calls): the next pick-up need not wait for them.
    const ending = (actor: ActorOptions): ActorOptions => ({
      ...actor,
      onCommitted: () => void execution.releaseSlot(),
    });
    let verdict: WriteVerdict;
    // What the invocation failed with, if it did, and whether it is retried.
    let failure: { readonly error: unknown; readonly retried: boolean } | undefined;
    try {
      if (result.ok) {
        verdict = await this.#persist(
          execution,
          1,
          (actor) => orchestrator.setInvocationResult(invocation, result.value, ending(actor)),
        );
      } else if (
        task.isRetriable(result.error) && execution.attempt < task.options.maxRetries &&
        retryDelayIsValid(task, execution.attempt)
      ) {
        failure = { error: result.error, retried: true };
        verdict = await this.#persist(
          execution,
          1,
          (actor) => orchestrator.setInvocationRetry(invocation, result.error, ending(actor)),
        );
      } else {
        failure = { error: result.error, retried: false };
        verdict = await this.#persist(
          execution,
          1,
          (actor) => orchestrator.setInvocationException(invocation, result.error, ending(actor)),
        );
      }
    } catch (error) {
      failure = { error, retried: false };
      // The write itself failed (a result over a store's value limit, …): fail the invocation
      // with that error rather than leave it RUNNING on a live runner.
      verdict = await this.#persist(
        execution,
        1,
        (actor) => orchestrator.setInvocationException(invocation, error, ending(actor)),
      );
    }
    if (verdict === "done") {
      this.#finished++;
      const status = failure === undefined
        ? InvocationStatus.SUCCESS
        : failure.retried
        ? InvocationStatus.RETRY
        : InvocationStatus.FAILED;
      execution.telemetry?.recorded(status, failure?.error);
    }
    if (verdict === "done" && failure !== undefined) {
      const { error, retried } = failure;
      const attempt = execution.attempt + 1;
      this.#log(
        retried ? "warn" : "error",
        `invocation ${invocation.id} (task ${task.id}) failed${
          retried ? ` (attempt ${attempt}, retried)` : ""
        }`,
        invocationFields(invocation, this.id, { attempt, retried }),
        error,
      );
    }
    return verdict;
  }
}

/** A task's back-off function may throw: then the attempt fails instead of retrying. */
function retryDelayIsValid(task: Task<never, unknown>, attempt: number): boolean {
  try {
    task.retryDelayMs(attempt + 1);
    return true;
  } catch {
    return false;
  }
}

function graceOf(value: number | undefined, fallback: number, what: string): number {
  const graceMs = value ?? fallback;
  if (typeof graceMs !== "number" || !Number.isFinite(graceMs) || graceMs < 0) {
    throw new RangeError(`Cannot ${what}: graceMs must be a number ≥ 0, got ${graceMs}`);
  }
  return graceMs;
}

/**
 * How one of the runner's writes went: landed, refused by running concurrency (a resume), the
 * invocation was canceled, or it is not this execution's any more.
 */
type WriteVerdict = "done" | "busy" | "canceled" | "gone";

/** One of the runner's writes for an execution: how many statuses it enters, and the write. */
type Persist = (
  steps: number,
  write: (actor: ActorOptions) => Promise<boolean | void>,
) => Promise<WriteVerdict>;

/**
 * A schedule a runner fires, and up to when it handled the schedule's ticks (fired them, saw them
 * fired, or skipped them as missed), epoch ms.
 */
interface ScheduleWatch {
  schedule: Schedule;
  checkedMs: number;
}

/** How a task function ended: a value, an error, or still running past its grace. */
type ExecutionOutcome = { ok: true; value: unknown } | { ok: false; error: unknown } | "ignored";

/** Why an execution's signal was aborted. */
type AbortKind = "cancel" | "timeout" | "stop" | "fence";

/** Where a task's context keeps its execution: a key the task does not see (not enumerable). */
const EXECUTION = Symbol("execution");

/**
 * The `signal` of every task context: its execution's, made when the function asks for it (most
 * never do). One accessor for all contexts keeps each a small object: an object literal with a
 * getter of its own is a dictionary of ~600 bytes, which every paused function held.
 */
const SIGNAL: PropertyDescriptor = {
  get(this: { readonly [EXECUTION]: Execution }): AbortSignal {
    return this[EXECUTION].signal;
  },
  enumerable: true,
  configurable: true,
};

/** The second argument of a task's function: its fields in the order they always had. */
function taskContext(execution: Execution): TaskContext {
  const { invocation } = execution;
  const ctx: Record<string, unknown> = {
    invocationId: invocation.id,
    taskId: invocation.taskId,
    parentId: invocation.parentId,
    runnerId: execution.runnerId,
    attempt: execution.attempt,
  };
  Object.defineProperty(ctx, "signal", SIGNAL);
  ctx.scheduledAt = execution.scheduledAt;
  Object.defineProperty(ctx, EXECUTION, { value: execution });
  return ctx as unknown as TaskContext;
}

/** One invocation running on a runner: its context, its signal, its side of `result()`. */
class Execution implements ExecutionContext {
  readonly invocation: Invocation;
  readonly invocationId: string;
  /** The claim this execution holds: its writes are refused once another claim supersedes it. */
  readonly claimSeq: number;
  /** The retries before this attempt. */
  readonly attempt: number;
  /** The tick of the schedule that fired the invocation (epoch ms), or `null`. */
  readonly scheduledAt: number | null;
  readonly runnerId: string;
  /** Its run's span and trace context, from the start of its function. */
  telemetry: RunTelemetry | undefined;
  /** The sequence number of the record as this execution last wrote it. */
  seq: number;
  /** The grace its function got after its abort. */
  graceMs = 0;
  readonly #runner: Runner;
  readonly #host: RunnerHost;
  /** The runner's fault-tolerant write for this execution (see the runner's `#persist`). */
  readonly #persist: Persist;
  /**
   * The function's signal, made when something asks for it (most tasks never do: an
   * AbortController per run is a measurable share of a no-op's cost).
   */
  #abort: AbortController | undefined;
  #aborted = false;
  #abortReason: unknown;
  /** Aborted when the execution ends; made only for what waits on it (a timeout, a grace). */
  #ended: AbortController | undefined;
  #isOver = false;
  /** Called when the grace after an abort is over (the function ignored its signal). */
  #onGraceOver: (() => void) | undefined;
  #abortKind: AbortKind | undefined;
  #waits = 0;
  /** What the pause not yet written will record (waits that begin meanwhile join it). */
  #joining: InvocationRef[] | undefined;
  /** The pause of the first wait, awaited by those that join it. */
  #pausing: Promise<void> | undefined;
  #paused = false;
  /** Whether it holds one of its runner's slots: it starts with the one its pick-up took. */
  #holdsSlot = true;
  /** Where its slot goes when given back, if not to the runner (see `passSlot`). */
  #passTo: (() => void) | undefined;
  /** Its invocation is not its own any more (recovered, fenced): it writes nothing. */
  #gone = false;
  #settled = false;
  /** Pause and resume run one after the other, in call order. */
  #serial: Promise<unknown> = Promise.resolve();
  /** Since when its invocation could be picked up, epoch ms. */
  readonly #availableAtMs: number;
  /** The trace context stored with its invocation. */
  readonly #storedTrace: string | undefined;

  constructor(
    runner: Runner,
    host: RunnerHost,
    invocation: Invocation,
    claim: {
      claimSeq: number;
      seq: number;
      attempt: number;
      scheduledAt: number | null;
      availableAtMs: number;
      trace: string | undefined;
      persist: Persist;
    },
  ) {
    this.claimSeq = claim.claimSeq;
    this.#persist = claim.persist;
    this.seq = claim.seq;
    this.attempt = claim.attempt;
    this.scheduledAt = claim.scheduledAt;
    this.#availableAtMs = claim.availableAtMs;
    this.#storedTrace = claim.trace;
    this.#runner = runner;
    this.#host = host;
    this.invocation = invocation;
    this.invocationId = invocation.id;
    this.runnerId = runner.id;
  }

  /** Aborted on cancel, timeout, stop and fence, with the cause as its reason. */
  get signal(): AbortSignal {
    if (this.#abort === undefined) {
      // The waits of its result()s take it without an event listener each (it is rarely aborted).
      this.#abort = quietController();
      // Other listeners (the task's, AbortSignal.any of a result() given a signal): many is ordinary.
      setMaxListeners(0, this.#abort.signal);
      if (this.#aborted) abortQuietly(this.#abort, this.#abortReason);
    }
    return this.#abort.signal;
  }

  /** Whether the signal was aborted (without making it). */
  get aborted(): boolean {
    return this.#aborted;
  }

  /** Why the signal was aborted. */
  get abortReason(): unknown {
    return this.#abortReason;
  }

  /** Aborted when the execution has ended (its end recorded or given up). */
  get ended(): AbortSignal {
    this.#ended ??= new AbortController();
    if (this.#isOver) this.#ended.abort();
    return this.#ended.signal;
  }

  /** Why the signal was aborted, if it was. */
  get abortKind(): AbortKind | undefined {
    return this.#abortKind;
  }

  /** Whether it holds one of its runner's slots. */
  get holdsSlot(): boolean {
    return this.#holdsSlot;
  }

  /** Fenced: the runner lost its heartbeat; nothing more is written for this execution. */
  get fenced(): boolean {
    return this.#abortKind === "fence" || this.#gone;
  }

  /**
   * Aborts the function's signal (the first reason wins) and starts its grace [the runner's
   * `graceMs`].
   */
  abort(reason: unknown, kind: AbortKind, graceMs: number = this.#runner.graceMs): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#abortReason = reason;
    this.#abortKind = kind;
    this.graceMs = graceMs;
    // Before the abort: its listeners run at once and wait for the grace. No grace is no sleep
    // at all (a test clock may never move).
    const graceOver = graceMs === 0
      ? Promise.resolve()
      : this.#host.clock.sleep(graceMs, this.ended);
    void graceOver.then(() => this.#onGraceOver?.());
    if (this.#abort !== undefined) abortQuietly(this.#abort, reason);
  }

  /** The execution is over: timers stop. */
  end(): void {
    this.#isOver = true;
    this.#ended?.abort();
  }

  /** The trace context of its run: what the calls made from it store. */
  get trace(): string | undefined {
    return this.telemetry?.trace;
  }

  /** Runs the task's function in this execution's context, until it returns or its grace ends. */
  run(task: Task<never, unknown>): Promise<ExecutionOutcome> {
    const { invocation } = this;
    runStarted(invocation.taskId, this.#host.clock.now() - this.#availableAtMs);
    const telemetry = this.telemetry = RunTelemetry.start(this, this.#storedTrace);
    const fn = () => task.fn(invocation.args as never, taskContext(this));
    let returned: unknown;
    try {
      returned = runInExecution(this, telemetry === undefined ? fn : () => telemetry.run(fn));
    } catch (error) {
      return Promise.resolve({ ok: false, error });
    }
    return this.#outcome(returned);
  }

  /**
   * One promise for the function's end and the grace's, no frame, and nothing of `run()`: a paused
   * function holds it for long, and the garbage collector copies what it holds.
   */
  #outcome(returned: unknown): Promise<ExecutionOutcome> {
    return new Promise((resolve) => {
      // "ignored" only if an abort's grace runs out before the function returns.
      this.#onGraceOver = () => resolve("ignored");
      Promise.resolve(returned).then(
        (value) => resolve({ ok: true, value }),
        (error) => resolve({ ok: false, error }),
      );
    });
  }

  /**
   * No async frame: a paused function holds its waits for long (see {@linkcode Execution.run}).
   * Resolves, once resumed, with the final record the wait of one invocation saw (its result()
   * need not read it again) — or, not paused, with the record its first read found final.
   */
  waitFor(
    ids: readonly string[],
    mode: "all" | "any",
    signal?: AbortSignal,
  ): Promise<InvocationRecord | void> {
    const stop = signal === undefined ? this.signal : AbortSignal.any([this.signal, signal]);
    const { orchestrator, clock } = this.#host;
    // The wait is entered in the step of its read: no async frame, which every wait of a paused
    // invocation made (the largest share of what entering a wait allocates). What it waits for is
    // chained once the pause is written: the pause's promise is not held through the wait.
    return retryFaults<InvocationRecord[], readonly InvocationRecord[] | true>(
      () => orchestrator.store.getMany(ids),
      { clock, signal: stop },
      (records) => this.#enterWait(records, ids, mode, stop),
    ).then((entered) =>
      entered === true
        ? this.#waitPaused(ids, mode, stop)
        : ids.length === 1
        ? entered[0]
        : undefined
    );
  }

  /**
   * The rest of a wait that paused: the finals, then the last wait resumes the execution. The
   * final of one invocation (a result()) is the store's wait itself, its faults tried again as
   * `orchestrator.waitForFinals` tries them: no step of its own held through the wait (each is a
   * promise, a reaction and closures that the garbage collector copies, for every paused wait).
   */
  #waitPaused(
    ids: readonly string[],
    mode: "all" | "any",
    stop: AbortSignal,
  ): Promise<InvocationRecord | void> {
    const { orchestrator, clock } = this.#host;
    const one = ids.length === 1 ? ids[0]! : undefined;
    type Seen = InvocationRecord | void;
    const ended = (error: unknown): Promise<Seen> => {
      if (one !== undefined && isStoreFault(error) && !stop.aborted) {
        const step = () => orchestrator.store.waitFinal(one, stop);
        return retryFaultsAfter(error, step, { clock, signal: stop }).then(seen, ended);
      }
      const resumed = this.#waitEnded();
      if (resumed === undefined) throw error;
      return resumed.then(() => Promise.reject(error));
    };
    const seen = (record: Seen): Seen | Promise<Seen> => {
      // Woken by the abort of `stop`: the wait ends with its reason.
      if (stop.aborted) return ended(stop.reason);
      const resumed = this.#waitEnded();
      return resumed === undefined ? record : resumed.then(() => record);
    };
    let waiting: Promise<Seen | undefined>;
    try {
      waiting = one !== undefined
        ? orchestrator.store.waitFinal(one, stop)
        : orchestrator.waitForFinals(ids, mode, stop);
    } catch (error) {
      waiting = Promise.reject(error);
    }
    return waiting.then(seen, ended);
  }

  /** After one of its waits, however it ended: the last one resumes the execution. */
  #waitEnded(): Promise<void> | undefined {
    // An aborted execution does not resume for its waits: settle() decides what it needs.
    if (--this.#waits === 0 && !this.#settled && !this.#aborted) {
      return this.inOrder(() => this.#resume());
    }
    return undefined;
  }

  /**
   * Once the records of a wait are read: those records when what it waits on is final already;
   * otherwise records the wait for blocking control and, for the first of the execution's waits,
   * pauses (`true`). Its reads end with it: the wait that follows may last long, and holds only
   * what it needs.
   */
  #enterWait(
    records: readonly InvocationRecord[],
    ids: readonly string[],
    mode: "all" | "any",
    stop: AbortSignal,
  ): readonly InvocationRecord[] | Promise<true> {
    // Only what is still pending (getMany keeps the order asked, and leaves the missing out): an
    // edge to a final invocation would never be released.
    const waited: InvocationRef[] = [];
    for (const record of records) if (!isFinalStatus(record.status)) waited.push({ id: record.id });
    if (mode === "all" ? waited.length === 0 : waited.length < ids.length) return records;
    stop.throwIfAborted();
    this.#assertAlive();
    let entered: Promise<unknown>;
    if (++this.#waits === 1) {
      // PAUSED and the wait edges in one step; waits that begin before it is written (the
      // results of a `Promise.all`) join it.
      this.#joining = waited;
      entered = this.#pausing = this.inOrder(() => {
        this.#joining = undefined;
        return this.#pause(waited);
      });
    } else if (this.#joining !== undefined) {
      this.#joining.push(...waited);
      entered = this.#pausing!;
    } else {
      // Paused already: the edges alone.
      const { orchestrator, clock } = this.#host;
      entered = retryFaults(() => orchestrator.waitingForResults(this.invocation, waited), {
        clock,
        signal: stop,
      });
    }
    return entered.then(() => true, (error) => {
      this.#waits--;
      throw error;
    });
  }

  /**
   * The task function returned and its outcome is to be written: outstanding waits no longer
   * resume it; if PAUSED, resume now (a final status is written from RUNNING or RESUMED).
   */
  settle(): Promise<WriteVerdict> {
    this.#settled = true;
    return this.inOrder(async () => {
      if (this.#gone) return "gone";
      if (!this.#paused) return "done";
      try {
        await this.#resume();
        return "done";
      } catch (error) {
        if (error instanceof CanceledError) return "canceled";
        return "gone";
      }
    });
  }

  /**
   * Gives its slot back to the runner, if it holds one (whether it did): the one place an
   * execution does.
   */
  releaseSlot(): boolean {
    if (!this.#holdsSlot) return false;
    this.#holdsSlot = false;
    if (this.#passTo !== undefined) this.#passTo();
    else this.#runner.releaseSlot();
    return true;
  }

  /** Its slot, when it gives it back, goes to `to` (a pick-up ahead) instead of the runner. */
  passSlot(to: () => void): void {
    this.#passTo = to;
  }

  /** Runs `step` after the pauses and resumes already under way, in call order. */
  inOrder<T>(step: () => Promise<T>): Promise<T> {
    const next = this.#serial.then(step);
    this.#serial = next.catch(() => {});
    return next;
  }

  #pause(waited: readonly InvocationRef[]): Promise<void> {
    // The slot is free once PAUSED is committed, not after the read that follows it (of what
    // ended before its edge was written); the pause is on the span before anything runs in it.
    const paused = (): void => {
      if (this.#paused) return;
      this.telemetry?.paused(waited);
      this.#paused = true;
      this.releaseSlot();
    };
    return this.#write((actor) =>
      this.#host.orchestrator.pauseForResults(this.invocation, waited, {
        ...actor,
        onCommitted: paused,
      })
    ).then(paused);
  }

  /** RESUMED; `false` when running concurrency refused the slot. */
  #resumed(): Promise<boolean> {
    return this.#write((actor) =>
      this.#host.orchestrator.setInvocationStatus(
        this.invocation,
        InvocationStatus.RESUMED,
        actor,
      )
    );
  }

  /**
   * A pause or a resume through the runner's fault-tolerant write; `false` when running
   * concurrency refused the slot (RESUMED). A cancel or a lost claim aborts and throws.
   */
  #write(write: (actor: ActorOptions) => Promise<boolean | void>): Promise<boolean> {
    // No async frame of its own: a pause and a resume of each paused invocation pass here.
    return this.#persist(1, write).then((verdict) => this.#written(verdict));
  }

  /** What `#write` makes of its write's verdict. */
  #written(verdict: WriteVerdict): boolean {
    if (verdict === "busy") return false;
    if (verdict === "canceled") {
      const reason = new CanceledError(this.invocationId);
      this.abort(reason, "cancel");
      throw reason;
    }
    if (verdict === "gone") {
      this.#gone = true;
      throw new NencError(
        `Cannot go on with invocation ${this.invocationId}: it is not runner ${this.runnerId}'s any more`,
      );
    }
    return true;
  }

  /** A gone execution (recovered elsewhere, fenced) must not act: the invocation is not its own. */
  #assertAlive(): void {
    if (this.fenced) {
      throw new NencError(
        `Cannot wait in invocation ${this.invocationId}: it is not runner ${this.runnerId}'s any more`,
      );
    }
  }

  async #resume(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    for (;;) {
      this.#assertAlive();
      await this.#runner.acquireSlot();
      this.#holdsSlot = true;
      let resumed = false;
      try {
        this.#assertAlive();
        resumed = await this.#resumed();
      } finally {
        // Only RESUMED keeps the slot: a refused or failed resume gives it back.
        if (!resumed) this.releaseSlot();
      }
      if (resumed) {
        this.telemetry?.resumed();
        this.#paused = false;
        return;
      }
      // Running concurrency: other invocations of the same key hold its slots (the store has
      // reserved the next free one for this one meanwhile). The runner slot went back above; try
      // again when a holder finishes, or after a poll interval (a holder may pause instead).
      const record = await retryFaults(() => orchestrator.store.get(this.invocationId), { clock });
      const holders = record === undefined ? [] : (await Promise.all(
        slotsOf(record).map(({ key }) =>
          retryFaults(() => orchestrator.store.slotHolders(key), { clock })
        ),
      )).flat();
      const wait = new AbortController();
      await Promise.race([
        ...(holders.length === 0
          ? [Promise.resolve()]
          : holders.map((id) => orchestrator.waitForFinal({ id }, wait.signal).catch(() => {}))),
        clock.sleep(this.#runner.pollMs, wait.signal),
      ]);
      wait.abort();
    }
  }
}
