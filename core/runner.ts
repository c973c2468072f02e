/**
 * The runner: runs an app's invocations in async slots, pauses those that wait on results so
 * their slots serve what they wait on, and keeps the system alive (heartbeats, recovery,
 * auto-purge).
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import { type ExecutionContext, runInExecution } from "./context.ts";
import {
  InvocationStatusOwnershipError,
  InvocationStatusTransitionError,
  NencError,
  TaskNotFoundError,
} from "./errors.ts";
import type { Invocation } from "./invocation.ts";
import type { Orchestrator } from "./orchestrator.ts";
import { InvocationStatus, isFinalStatus } from "./status.ts";
import type { Task } from "./task.ts";

/**
 * Options of `app.runner()`; defaults in brackets.
 *
 * @example
 * ```ts
 * import { Nenc, type RunnerOptions } from "@nenc/nenc";
 *
 * const options: RunnerOptions = { concurrency: 16, heartbeatMs: 500 };
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
  /** How often an idle runner looks for work that was not announced to it [`100`]. */
  pollMs?: number;
  /** How often the runner writes its heartbeat and recovers stale invocations [`1000`]. */
  heartbeatMs?: number;
  /** How often the runner purges final invocations that are due [`60000`]. */
  purgeIntervalMs?: number;
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
}

const RUNNER_OPTIONS = new Set([
  "concurrency",
  "runnerId",
  "signal",
  "pollMs",
  "heartbeatMs",
  "purgeIntervalMs",
]);

/**
 * A runner of an app's invocations. `start()` begins picking up work; `stop()` (or
 * `await using`) stops, moving what it still runs RUNNING → KILLED → REROUTED so that another
 * runner picks it up: nothing is lost.
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
  readonly #host: RunnerHost;
  readonly #pollMs: number;
  readonly #heartbeatMs: number;
  readonly #purgeIntervalMs: number;
  readonly #stop = new AbortController();
  readonly #executions = new Map<string, Execution>();
  /** Resumes waiting for a slot; they get freed slots before new work. */
  readonly #resumeQueue: (() => void)[] = [];
  #free: number;
  #loop: Promise<void> | undefined;
  #beats: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #woken = false;
  #nextRecoveryMs = -Infinity;
  #nextPurgeMs = -Infinity;
  #stopped: Promise<void> | undefined;
  /** Called when a claim finds nothing and nothing runs: what `drain()` waits for. */
  #onIdle: (() => void) | undefined;
  #finished = 0;

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
    this.id = options.runnerId ?? `runner-${crypto.randomUUID()}`;
    this.concurrency = positive("concurrency", 1);
    this.#pollMs = positive("pollMs", 100);
    this.#heartbeatMs = positive("heartbeatMs", 1000);
    this.#purgeIntervalMs = positive("purgeIntervalMs", 60_000);
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
   * handed back when stopped does not count. The CLI's worker shows it as progress.
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
   * Runs invocations until none is left to pick up and nothing runs, or for at most `maxMs`,
   * then stops (what still runs then is handed back, as by {@linkcode Runner.stop}). For
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
   * const report = await app.runner({ concurrency: 4 }).drain({ maxMs: 10_000 });
   * console.log(report.invocations, await invocation.result()); // 1 3
   * ```
   */
  async drain(options: { maxMs?: number } = {}): Promise<DrainReport> {
    const maxMs = options.maxMs ?? 50_000;
    if (!Number.isFinite(maxMs) || maxMs <= 0) {
      throw new RangeError(`Cannot drain: maxMs must be a positive number, got ${maxMs}`);
    }
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
    await this.stop();
    return { invocations: this.#finished, timedOut };
  }

  /** Starts picking up and running invocations. */
  start(): void {
    if (this.#loop !== undefined) {
      throw new Error(`Cannot start runner ${this.id}: it was already started`);
    }
    this.#loop = this.#run();
    this.#beats = this.#beat();
  }

  /**
   * Stops picking up work and hands back what it still runs: RUNNING (or PENDING, PAUSED,
   * RESUMED) → KILLED → REROUTED, re-queued for another runner.
   */
  stop(): Promise<void> {
    this.#stopped ??= this.#shutDown();
    return this.#stopped;
  }

  async #shutDown(): Promise<void> {
    this.#stop.abort();
    this.#wakeUp();
    await this.#loop;
    await this.#beats; // no heartbeat lands after the entry is removed below
    const { orchestrator, clock } = this.#host;
    for (const execution of this.#executions.values()) {
      execution.killed = true;
      try {
        await orchestrator.store.change(execution.invocationId, {
          path: [InvocationStatus.KILLED, InvocationStatus.REROUTED],
          runnerId: this.id,
          nowMs: clock.now(),
          claimSeq: execution.claimSeq,
        });
      } catch {
        // Already finished, or recovered (and maybe claimed again): nothing to hand back.
      }
    }
    for (const resume of this.#resumeQueue.splice(0)) resume();
    this.#executions.clear();
    await orchestrator.store.removeRunner(this.id);
  }

  /** Same as {@linkcode Runner.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #run(): Promise<void> {
    const { orchestrator } = this.#host;
    const signal = this.#stop.signal;
    for (let failures = 0; !signal.aborted;) {
      try {
        await this.#maintain();
        if (this.#free > 0 && this.#resumeQueue.length === 0) {
          const invocations = await orchestrator.startInvocations(this.#free, {
            runnerId: this.id,
          });
          for (const { invocation, running, claimSeq } of invocations) {
            this.#free--;
            // Registered before any await, so a stop() from now on hands it back.
            const execution = new Execution(this, this.#host, invocation, claimSeq);
            this.#executions.set(invocation.id, execution);
            void this.#execute(execution, running);
          }
          failures = 0;
          if (invocations.length > 0) continue;
          if (this.#executions.size === 0 && this.#resumeQueue.length === 0) this.#onIdle?.();
        }
        await this.#idle();
      } catch (error) {
        // A failing store (a network error, a locked database) must not crash the process:
        // report it and try again after a growing pause.
        console.error(`nenc: runner ${this.id} loop failed, retrying:`, error);
        await this.#host.clock.sleep(errorPauseMs(this.#pollMs, failures++), signal);
      }
    }
  }

  /** Waits for new work, a freed slot, or the poll interval, whichever comes first. */
  async #idle(): Promise<void> {
    if (this.#woken) {
      this.#woken = false;
      return;
    }
    const { orchestrator, clock } = this.#host;
    const idle = new AbortController();
    const stop = (): void => idle.abort();
    this.#stop.signal.addEventListener("abort", stop, { once: true });
    await Promise.race([
      // New work matters only with a free slot; a freed slot wakes the loop itself.
      ...(this.#free > 0 ? [orchestrator.store.waitWork(idle.signal)] : []),
      clock.sleep(this.#pollMs, idle.signal),
      new Promise<void>((resolve) => this.#wake = resolve),
    ]);
    this.#stop.signal.removeEventListener("abort", stop);
    idle.abort();
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
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      try {
        await orchestrator.store.heartbeat(this.id, clock.now());
      } catch (error) {
        console.error(`nenc: runner ${this.id} could not write its heartbeat, retrying:`, error);
      }
      await clock.sleep(this.#heartbeatMs, signal);
    }
  }

  async #maintain(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const nowMs = clock.now();
    if (nowMs >= this.#nextRecoveryMs) {
      this.#nextRecoveryMs = nowMs + this.#heartbeatMs;
      await orchestrator.recoverInvocations({ runnerId: this.id });
    }
    if (nowMs >= this.#nextPurgeMs) {
      this.#nextPurgeMs = nowMs + this.#purgeIntervalMs;
      await orchestrator.autoPurge();
    }
  }

  /** Takes a slot for a resuming invocation: before any new work. */
  acquireSlot(): Promise<void> {
    if (this.#stop.signal.aborted) return Promise.resolve();
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

  async #execute(execution: Execution, running: boolean): Promise<void> {
    const { orchestrator } = this.#host;
    const invocation = execution.invocation;
    const actor = { runnerId: this.id, claimSeq: execution.claimSeq };
    try {
      const task = this.#host.getTask(invocation.taskId);
      if (task === undefined) {
        await orchestrator.setInvocationException(
          invocation,
          new TaskNotFoundError(invocation.taskId),
          actor,
        );
        return;
      }
      if (!running) {
        try {
          const parent = invocation.parentId === null ? undefined : { id: invocation.parentId };
          await orchestrator.setInvocationRun(parent, invocation, actor);
        } catch {
          return; // A cycle failed the invocation, or it was taken from this runner.
        }
      }
      let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
      try {
        const value = await runInExecution(execution, () => task.fn(invocation.args as never));
        outcome = { ok: true, value };
      } catch (error) {
        outcome = { ok: false, error };
      }
      // Waits the task left behind (a result() it did not await) no longer matter; if it is
      // PAUSED it takes a slot again, since a final status is written from RUNNING or RESUMED.
      await execution.settle();
      if (execution.killed) return;
      try {
        if (outcome.ok) {
          await orchestrator.setInvocationResult(invocation, outcome.value, actor);
        } else if (
          task.isRetriable(outcome.error) &&
          await orchestrator.getInvocationRetries(invocation) < task.options.maxRetries
        ) {
          await orchestrator.setInvocationRetry(invocation, outcome.error, actor);
        } else {
          await orchestrator.setInvocationException(invocation, outcome.error, actor);
        }
      } catch (error) {
        if (isFencedOut(error)) throw error;
        // Finishing itself failed (a back-off function that throws, …): fail the invocation
        // with that error rather than leave it RUNNING on a live runner.
        await orchestrator.setInvocationException(invocation, error, actor);
      }
    } catch (error) {
      // The write was refused: the invocation was recovered or killed meanwhile. The state
      // machine fenced this runner out; its result is dropped on purpose.
      if (!execution.killed) {
        console.warn(
          `nenc: runner ${this.id} could not finish invocation ${invocation.id}:`,
          error,
        );
      }
    } finally {
      if (this.#executions.get(invocation.id) === execution) this.#executions.delete(invocation.id);
      if (!execution.killed) this.#finished++;
      execution.releaseSlot();
    }
  }
}

/** Whether a refused write means another runner (or recovery) owns the invocation now. */
/** The pause before trying a failed store step again: doubling from `pollMs`, at most 5 s. */
function errorPauseMs(pollMs: number, failures: number): number {
  return Math.min(5_000, pollMs * 2 ** failures);
}

function isFencedOut(error: unknown): boolean {
  return error instanceof InvocationStatusOwnershipError ||
    error instanceof InvocationStatusTransitionError;
}

/** One invocation running on a runner: its side of `result()` (pause, wait, resume). */
class Execution implements ExecutionContext {
  readonly invocation: Invocation;
  readonly invocationId: string;
  /** The claim this execution holds: its writes are refused once another claim supersedes it. */
  readonly claimSeq: number;
  readonly runnerId: string;
  killed = false;
  readonly #runner: Runner;
  readonly #host: RunnerHost;
  #waits = 0;
  #paused = false;
  /** Whether it holds one of its runner's slots: it starts with the one its pick-up took. */
  #holdsSlot = true;
  /** A PAUSED or RESUMED write was refused: the invocation was recovered and is not its any more. */
  #fencedOut = false;
  #settled = false;
  /** Pause and resume run one after the other, in call order. */
  #serial: Promise<void> = Promise.resolve();

  constructor(runner: Runner, host: RunnerHost, invocation: Invocation, claimSeq: number) {
    this.claimSeq = claimSeq;
    this.#runner = runner;
    this.#host = host;
    this.invocation = invocation;
    this.invocationId = invocation.id;
    this.runnerId = runner.id;
  }

  async waitFor(ids: readonly string[], mode: "all" | "any"): Promise<void> {
    const { orchestrator } = this.#host;
    const records = new Map((await orchestrator.store.getMany(ids)).map((r) => [r.id, r]));
    const pending = ids.filter((id) => {
      const record = records.get(id);
      return record !== undefined && !isFinalStatus(record.status);
    });
    if (mode === "all" ? pending.length === 0 : pending.length < ids.length) return;
    this.#assertAlive();
    // Only what is still pending: an edge to a final invocation would never be released.
    await orchestrator.waitingForResults(this.invocation, pending.map((id) => ({ id })));
    if (++this.#waits === 1) {
      try {
        await this.#inOrder(() => this.#pause());
      } catch (error) {
        this.#waits--;
        throw error;
      }
    }
    try {
      await orchestrator.waitForFinals(ids, mode);
    } finally {
      if (--this.#waits === 0 && !this.#settled) await this.#inOrder(() => this.#resume());
    }
  }

  /**
   * The task function returned: outstanding waits no longer resume it; if PAUSED, resume now
   * (unless it was fenced out: then its finishing write is refused by the claim fence anyway).
   */
  async settle(): Promise<void> {
    this.#settled = true;
    await this.#inOrder(async () => {
      if (this.#paused && !this.killed && !this.#fencedOut) await this.#resume();
    });
  }

  /** Gives its slot back to the runner, if it holds one: the one place an execution does. */
  releaseSlot(): void {
    if (!this.#holdsSlot) return;
    this.#holdsSlot = false;
    this.#runner.releaseSlot();
  }

  #inOrder(step: () => Promise<void>): Promise<void> {
    const next = this.#serial.then(step);
    this.#serial = next.catch(() => {});
    return next;
  }

  async #pause(): Promise<void> {
    await this.#setStatus(InvocationStatus.PAUSED);
    this.#paused = true;
    this.releaseSlot();
  }

  /** PAUSED or RESUMED; a write refused by the ownership/claim fence fences this execution out. */
  async #setStatus(status: InvocationStatus): Promise<boolean> {
    try {
      return await this.#host.orchestrator.setInvocationStatus(this.invocation, status, {
        runnerId: this.runnerId,
        claimSeq: this.claimSeq,
      });
    } catch (error) {
      if (isFencedOut(error)) this.#fencedOut = true;
      throw error;
    }
  }

  /**
   * A killed execution (its runner stopped) or a fenced-out one (its invocation was recovered)
   * must not act: the invocation is not its own any more.
   */
  #assertAlive(): void {
    if (this.killed) {
      throw new NencError(
        `Cannot wait in invocation ${this.invocationId}: runner ${this.runnerId} stopped and handed it back`,
      );
    }
    if (this.#fencedOut) {
      throw new NencError(
        `Cannot wait in invocation ${this.invocationId}: it was recovered from runner ${this.runnerId}`,
      );
    }
  }

  async #resume(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    for (let failures = 0;;) {
      this.#assertAlive();
      await this.#runner.acquireSlot();
      this.#holdsSlot = true;
      let resumed = false;
      try {
        this.#assertAlive();
        resumed = await this.#setStatus(InvocationStatus.RESUMED);
      } catch (error) {
        if (this.killed || this.#fencedOut) throw error;
        // A store error (the network, a locked file): given up, the invocation would stay PAUSED
        // on a live runner, which recovery leaves alone. Try again after a growing pause.
        console.error(`nenc: could not resume invocation ${this.invocationId}, retrying:`, error);
        this.releaseSlot();
        await clock.sleep(errorPauseMs(this.#runner.pollMs, failures++));
        continue;
      } finally {
        // Only RESUMED keeps the slot: killed meanwhile, fenced out, or any failed write gives
        // it back (a fenced-out execution never resumes; settle() does not try again).
        if (!resumed) this.releaseSlot();
      }
      if (resumed) {
        this.#paused = false;
        return;
      }
      // Running concurrency: another invocation of the same key holds the slot (the store has
      // reserved it for this one meanwhile). The runner slot went back above; try again when the
      // holder finishes, or after a poll interval (the holder may pause instead).
      const record = await orchestrator.store.get(this.invocationId);
      const holder = record === undefined || record.runningKey === null
        ? undefined
        : await orchestrator.store.slotHolder(record.runningKey);
      const wait = new AbortController();
      await Promise.race([
        holder === undefined
          ? Promise.resolve()
          : orchestrator.waitForFinal({ id: holder }, wait.signal),
        clock.sleep(this.#runner.pollMs, wait.signal),
      ]);
      wait.abort();
    }
  }
}
