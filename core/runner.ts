/**
 * The runner: runs an app's invocations in async slots, pauses those that wait on results so
 * their slots serve what they wait on, and keeps the system alive (heartbeats, recovery,
 * auto-purge).
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import { type ExecutionContext, runInExecution } from "./context.ts";
import { NencError, TaskNotFoundError } from "./errors.ts";
import type { Invocation } from "./invocation.ts";
import type { Orchestrator } from "./orchestrator.ts";
import { InvocationStatus, isFinalStatus } from "./status.ts";
import type { InvocationRecord } from "./store.ts";
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

/** What a runner needs from its app. */
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
  #wake: (() => void) | undefined;
  #woken = false;
  #nextHeartbeatMs = -Infinity;
  #nextPurgeMs = -Infinity;

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
    this.#free = this.concurrency;
    options.signal?.addEventListener("abort", () => void this.stop(), { once: true });
  }

  /** Whether the runner was started and not stopped. */
  get running(): boolean {
    return this.#loop !== undefined && !this.#stop.signal.aborted;
  }

  /** Starts picking up and running invocations. */
  start(): void {
    if (this.#loop !== undefined) {
      throw new Error(`Cannot start runner ${this.id}: it was already started`);
    }
    this.#loop = this.#run();
  }

  /**
   * Stops picking up work and hands back what it still runs: RUNNING (or PENDING, PAUSED,
   * RESUMED) → KILLED → REROUTED, re-queued for another runner.
   */
  async stop(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    this.#stop.abort();
    this.#wakeUp();
    await this.#loop;
    const { orchestrator, clock } = this.#host;
    for (const execution of this.#executions.values()) {
      execution.killed = true;
      try {
        await orchestrator.store.change(execution.record.id, {
          path: [InvocationStatus.KILLED, InvocationStatus.REROUTED],
          runnerId: this.id,
          nowMs: clock.now(),
        });
      } catch {
        // Already finished, or recovered by another runner: nothing to hand back.
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
    while (!signal.aborted) {
      await this.#maintain();
      if (this.#free > 0 && this.#resumeQueue.length === 0) {
        const invocations = await orchestrator.getInvocationsToRun(this.#free, {
          runnerId: this.id,
        });
        if (signal.aborted) {
          await this.#handBack(invocations);
          break;
        }
        for (const invocation of invocations) {
          this.#free--;
          void this.#execute(invocation);
        }
        if (invocations.length > 0) continue;
      }
      await this.#idle();
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
      orchestrator.store.waitWork(idle.signal),
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

  async #maintain(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    const nowMs = clock.now();
    if (nowMs >= this.#nextHeartbeatMs) {
      this.#nextHeartbeatMs = nowMs + this.#heartbeatMs;
      await orchestrator.store.heartbeat(this.id, nowMs);
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

  async #handBack(invocations: readonly Invocation[]): Promise<void> {
    const { orchestrator, clock } = this.#host;
    for (const invocation of invocations) {
      await orchestrator.store.change(invocation.id, {
        path: [InvocationStatus.KILLED, InvocationStatus.REROUTED],
        runnerId: this.id,
        nowMs: clock.now(),
      });
    }
  }

  async #execute(invocation: Invocation): Promise<void> {
    const { orchestrator } = this.#host;
    const record = await orchestrator.store.get(invocation.id);
    if (record === undefined) return this.releaseSlot();
    const execution = new Execution(this, this.#host, record);
    this.#executions.set(record.id, execution);
    const actor = { runnerId: this.id };
    try {
      const task = this.#host.getTask(record.taskId);
      if (task === undefined) {
        await orchestrator.setInvocationException(
          invocation,
          new TaskNotFoundError(record.taskId),
          actor,
        );
        return;
      }
      try {
        const parent = record.parentId === null ? undefined : { id: record.parentId };
        await orchestrator.setInvocationRun(parent, invocation, actor);
      } catch {
        return; // A cycle failed the invocation, or it was taken from this runner.
      }
      let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
      try {
        const value = await runInExecution(execution, () => task.fn(invocation.args as never));
        outcome = { ok: true, value };
      } catch (error) {
        outcome = { ok: false, error };
      }
      if (execution.killed) return;
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
      // The final write was refused: the invocation was recovered or killed meanwhile. The
      // state machine fenced this runner out; its result is dropped on purpose.
      if (!execution.killed) {
        console.warn(`nenc: runner ${this.id} could not finish invocation ${record.id}:`, error);
      }
    } finally {
      if (this.#executions.get(record.id) === execution) this.#executions.delete(record.id);
      if (!execution.killed) this.releaseSlot();
    }
  }
}

/** One invocation running on a runner: its side of `result()` (pause, wait, resume). */
class Execution implements ExecutionContext {
  readonly record: InvocationRecord;
  readonly runnerId: string;
  killed = false;
  readonly #runner: Runner;
  readonly #host: RunnerHost;
  #waits = 0;
  /** Pause and resume run one after the other, in call order. */
  #serial: Promise<void> = Promise.resolve();

  constructor(runner: Runner, host: RunnerHost, record: InvocationRecord) {
    this.#runner = runner;
    this.#host = host;
    this.record = record;
    this.runnerId = runner.id;
  }

  async waitFor(ids: readonly string[], mode: "all" | "any"): Promise<void> {
    const { orchestrator } = this.#host;
    const records = new Map((await orchestrator.store.getMany(ids)).map((r) => [r.id, r]));
    const done = ids.filter((id) => {
      const record = records.get(id);
      return record === undefined || isFinalStatus(record.status);
    }).length;
    if (mode === "all" ? done === ids.length : done > 0) return;
    this.#assertAlive();
    await orchestrator.waitingForResults(this.record, ids.map((id) => ({ id })));
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
      if (--this.#waits === 0) await this.#inOrder(() => this.#resume());
    }
  }

  #inOrder(step: () => Promise<void>): Promise<void> {
    const next = this.#serial.then(step);
    this.#serial = next.catch(() => {});
    return next;
  }

  async #pause(): Promise<void> {
    await this.#host.orchestrator.setInvocationStatus(this.record, InvocationStatus.PAUSED, {
      runnerId: this.runnerId,
    });
    this.#runner.releaseSlot();
  }

  /** A killed execution (its runner stopped) must not act: its invocation was handed back. */
  #assertAlive(): void {
    if (this.killed) {
      throw new NencError(
        `Cannot wait in invocation ${this.record.id}: runner ${this.runnerId} stopped and handed it back`,
      );
    }
  }

  async #resume(): Promise<void> {
    const { orchestrator, clock } = this.#host;
    for (;;) {
      this.#assertAlive();
      await this.#runner.acquireSlot();
      this.#assertAlive();
      const resumed = await orchestrator.setInvocationStatus(
        this.record,
        InvocationStatus.RESUMED,
        {
          runnerId: this.runnerId,
        },
      );
      if (resumed) return;
      // Running concurrency: another invocation of the same key holds the slot. Give the runner
      // slot back and try again when the holder finishes, or after a poll interval.
      this.#runner.releaseSlot();
      const holder = await orchestrator.store.slotHolder(this.record.runningKey!);
      const wait = new AbortController();
      await Promise.race([
        holder === undefined
          ? Promise.resolve()
          : orchestrator.waitForFinal({ id: holder }, wait.signal),
        clock.sleep(100, wait.signal),
      ]);
      wait.abort();
    }
  }
}
