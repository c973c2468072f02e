/**
 * The app: tasks, the orchestrator over a storage backend, and runners.
 *
 * @module
 */

import { type Clock, systemClock } from "./clock.ts";
import { MemoryStore } from "./memory_store.ts";
import { Orchestrator, type OrchestratorOptions } from "./orchestrator.ts";
import { Runner, type RunnerOptions } from "./runner.ts";
import { DEFAULT_ERROR_CLASSES, type ErrorClass, errorClassMap } from "./serializer.ts";
import type { Store } from "./store.ts";
import type { KvLike } from "../kv/kv_like.ts";
import { KvStore } from "../kv/store.ts";
import { Task, type TaskFunction, type TaskOptions } from "./task.ts";
import type { Schedule, ScheduleOptions } from "./schedules.ts";
import type { NencEvents, NencListener } from "./events.ts";
import type { Logger } from "./log.ts";
import { defaultLogger, reporterOf } from "./_report.ts";

/**
 * Options of `new Nenc()`; defaults in brackets.
 *
 * @example
 * ```ts
 * import { Nenc, type NencOptions } from "@nenc/nenc";
 *
 * class PaymentDeclined extends Error {}
 * const options: NencOptions = {
 *   appId: "shop",
 *   orchestrator: { autoFinalInvocationPurgeHours: 1 },
 *   errorClasses: [PaymentDeclined],
 * };
 * const app = new Nenc(options);
 * console.log(app.appId); // "shop"
 * ```
 */
export interface NencOptions {
  /** The app id: every stored key is under it [`"nenc"`]. */
  appId?: string;
  /** Orchestrator options. */
  orchestrator?: OrchestratorOptions;
  /** Where time comes from [the system clock]. */
  clock?: Clock;
  /**
   * Error classes whose errors come back from `result()` as the same class, matched by class
   * name [`[]`; built-in and nenc errors always do].
   */
  errorClasses?: readonly ErrorClass[];
  /**
   * A Deno KV store (`Deno.openKv()`, or `openKv()` of the `@deno/kv` npm package on Bun and
   * Node): the app keeps its data there, under `["nenc", appId]`, shared by every process and
   * machine that opens the same KV.
   */
  kv?: KvLike;
  /**
   * The storage backend [an in-memory store of this process, on the app's `clock`; a KV store
   * with `kv`].
   */
  store?: Store;
  /**
   * Where the app logs: every failed invocation, recovery, refused cycle and cancel, and its
   * runners' troubles [the console, at the level of `NENC_LOG_LEVEL`, else `info`: see
   * {@linkcode createLogger}].
   */
  logger?: Logger;
}

const APP_OPTIONS = new Set([
  "appId",
  "orchestrator",
  "clock",
  "errorClasses",
  "kv",
  "store",
  "logger",
]);

/** `logger`, if it is one. @throws {TypeError} otherwise. */
function checkedLogger(logger: Logger, what: string): Logger {
  for (const method of ["debug", "info", "warn", "error"] as const) {
    if (typeof logger?.[method] !== "function") {
      throw new TypeError(
        `Cannot ${what}: the logger must have debug, info, warn and error methods (${method} is missing)`,
      );
    }
  }
  return logger;
}

/** Which app id each store serves: a store holds one app's data, so apps may not share one. */
const storeOwners = new WeakMap<Store, string>();

/**
 * A nenc app: define tasks, call them, run them.
 *
 * @example The quick start: fib with one slot
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc({ appId: "shop" });
 * const fib = app.task("fib", async ({ n }: { n: number }): Promise<number> => {
 *   if (n < 2) return n;
 *   const [a, b] = await Promise.all([fib.call({ n: n - 1 }), fib.call({ n: n - 2 })]);
 *   return (await a.result()) + (await b.result());
 * }, { registrationConcurrency: "arguments" });
 *
 * await using runner = app.runner({ concurrency: 1 });
 * runner.start();
 * const invocation = await fib.call({ n: 10 });
 * console.log(await invocation.result()); // 55
 * ```
 */
export class Nenc {
  /** The app id. */
  readonly appId: string;
  /** The orchestrator: pynenc's `BaseOrchestrator` interface. */
  readonly orchestrator: Orchestrator;
  /** The app's clock. */
  readonly clock: Clock;
  /** Error classes rehydrated by name. */
  readonly errorClasses: ReadonlyMap<string, ErrorClass>;
  readonly #tasks = new Map<string, Task<never, unknown>>();
  /** The limit of each concurrency group its tasks name. */
  readonly #groupLimits = new Map<string, number>();
  #logger: Logger;

  /** Creates an app; without a `store`, on the in-memory backend. */
  constructor(options: NencOptions = {}) {
    for (const name of Object.keys(options)) {
      if (!APP_OPTIONS.has(name)) {
        throw new TypeError(`Cannot create the app: unknown option "${name}"`);
      }
    }
    this.appId = options.appId ?? "nenc";
    if (typeof this.appId !== "string" || this.appId === "") {
      throw new TypeError("Cannot create the app: appId must be a non-empty string");
    }
    this.clock = options.clock ?? systemClock;
    this.#logger = options.logger === undefined
      ? defaultLogger()
      : checkedLogger(options.logger, "create the app");
    this.errorClasses = errorClassMap([...DEFAULT_ERROR_CLASSES, ...options.errorClasses ?? []]);
    if (options.kv !== undefined && options.store !== undefined) {
      throw new TypeError("Cannot create the app: give either kv or store, not both");
    }
    const store = options.store ??
      (options.kv !== undefined
        ? new KvStore(options.kv, { appId: this.appId, clock: this.clock })
        : new MemoryStore({ clock: this.clock }));
    this.orchestrator = new Orchestrator(this, this.#own(store), options.orchestrator);
  }

  /**
   * The app's logger (the `logger` option); set it to log elsewhere from now on — as the CLI's
   * `worker --log-format json` does.
   *
   * @example
   * ```ts
   * import { createLogger, Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * app.logger = createLogger({ level: "error" });
   * app.logger.warn("not shown");
   * ```
   */
  get logger(): Logger {
    return this.#logger;
  }

  set logger(logger: Logger) {
    this.#logger = checkedLogger(logger, "set the logger");
  }

  /**
   * Calls `listener` on every event `event` of this process (see {@linkcode NencEvents}):
   * `"invocation"` for each status transition this process makes, `"runner"` when a runner of
   * it starts or stops, or its upkeep finds a runner dead. Events are local: transitions made by
   * other processes are in the store, not here. A listener runs synchronously after the
   * transition is written; what it throws is logged at error and changes nothing else. Nothing
   * is built for an event nobody listens to.
   *
   * @throws {TypeError} for an unknown event.
   *
   * @example Failures as they happen
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const pay = app.task("pay", (): string => {
   *   throw new RangeError("declined");
   * });
   * app.on("invocation", (event) => {
   *   if (event.status === "failed") console.log(`${event.taskId} failed, was ${event.previous}`);
   * });
   * await pay.call();
   * await app.runner().drain(); // pay failed, was running
   * ```
   */
  on<E extends keyof NencEvents>(event: E, listener: NencListener<E>): void {
    reporterOf(this.orchestrator).on(event, listener);
  }

  /**
   * Stops calling `listener` on event `event` (added with {@linkcode Nenc.on}).
   *
   * @throws {TypeError} for an unknown event.
   *
   * @example
   * ```ts
   * import { Nenc, type RunnerEvent } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const listener = (event: RunnerEvent): void => console.log(event.event);
   * app.on("runner", listener);
   * app.off("runner", listener);
   * await app.runner().drain(); // prints nothing
   * ```
   */
  off<E extends keyof NencEvents>(event: E, listener: NencListener<E>): void {
    reporterOf(this.orchestrator).off(event, listener);
  }

  /**
   * Moves the app onto a Deno KV store before it is used — what the CLI's `--kv` does to an app
   * module that creates its app without one. Tasks stay as defined.
   *
   * @throws {Error} once the app has used its store (called a task, ran a runner).
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc({ appId: "shop" });
   * const kv = await Deno.openKv(":memory:");
   * app.useKv(kv);
   * kv.close();
   * ```
   */
  useKv(kv: KvLike): void {
    this.orchestrator.useStore(
      this.#own(new KvStore(kv, { appId: this.appId, clock: this.clock })),
    );
  }

  #own(store: Store): Store {
    // A KV store built by hand names its app id; its keys are under that id, whatever this app's.
    const owner = storeOwners.get(store) ?? (store instanceof KvStore ? store.appId : undefined);
    if (owner !== undefined && owner !== this.appId) {
      throw new TypeError(
        `Cannot create app ${this.appId}: its store already holds app ${owner}; give each app id its own store`,
      );
    }
    storeOwners.set(store, this.appId);
    return store;
  }

  /**
   * Defines a task. `name` is its id, unique within the app; `fn` takes one object of named
   * arguments.
   *
   * @throws {TypeError | RangeError} for a duplicate name, a bad name or bad options.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const resize = app.task("resize", ({ url, width }: { url: string; width: number }) => `${url}@${width}`, {
   *   runningConcurrency: "keys",
   *   keyArguments: ["url"],
   * });
   * console.log(resize.id); // "resize"
   * ```
   */
  task<Args = undefined, Result = unknown>(
    name: string,
    fn: TaskFunction<Args, Result>,
    options?: TaskOptions<Args>,
  ): Task<Args, Awaited<Result>> {
    if (this.#tasks.has(name)) {
      throw new TypeError(`Cannot define task ${name}: the app already has a task with that name`);
    }

    const task = new Task<Args, Awaited<Result>>(
      this.orchestrator,
      name,
      fn as TaskFunction<Args, Awaited<Result>>,
      options,
    );
    // One limit per group name in an app: a second task naming it must agree.
    for (const group of task.options.concurrencyGroups) {
      const limit = this.#groupLimits.get(group.name);
      if (limit !== undefined && limit !== group.limit) {
        throw new TypeError(
          `Cannot define task ${name}: concurrency group ${group.name} has limit ${limit} in this app, not ${group.limit}`,
        );
      }
    }
    this.#tasks.set(name, task as Task<never, unknown>);
    for (const group of task.options.concurrencyGroups) {
      this.#groupLimits.set(group.name, group.limit);
    }
    return task;
  }

  /** The task with this id, or `undefined`. */
  getTask(taskId: string): Task<never, unknown> | undefined {
    return this.#tasks.get(taskId);
  }

  /** Every task of the app. */
  tasks(): Task<never, unknown>[] {
    return [...this.#tasks.values()];
  }

  /**
   * Stores a cron schedule (SPEC §7.3): every tick of `options.cron` calls `options.task` with
   * `options.args` — exactly once, however many runners and processes run, fired by a runner that
   * defines the task and sees the tick within `misfireMs` of its time (missed ticks follow
   * `catchUp`). The task sees the tick as `ctx.scheduledAt`. An idempotent upsert: every process
   * may call it at start-up; the same definition again changes nothing, another one replaces it
   * and holds from now on (no tick before it fires). Resolves to the schedule as stored.
   *
   * @throws {TypeError} naming the schedule, for a bad name or option, a cron expression or
   * timezone croner refuses, a task the app does not define, or arguments its task refuses;
   * nothing is stored.
   *
   * @example Every second; the task sees its tick
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const ticks: number[] = [];
   * const beat = app.task("beat", (_args: undefined, ctx) => ticks.push(ctx.scheduledAt!));
   * await app.schedule("every-second", { cron: "* * * * * *", task: beat });
   * await using runner = app.runner();
   * runner.start();
   * while (ticks.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
   * console.log(ticks[0]! % 1_000); // 0: a whole second
   * ```
   */
  schedule<Args>(name: string, options: ScheduleOptions<Args>): Promise<Schedule> {
    return this.orchestrator.schedule(name, options);
  }

  /**
   * Deletes a schedule: none of its ticks fires afterwards. Resolves to whether there was one.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * await app.schedule("nightly", { cron: "0 3 * * *", task: app.task("report", () => "pdf") });
   * console.log(await app.unschedule("nightly"), await app.unschedule("nightly")); // true false
   * ```
   */
  unschedule(name: string): Promise<boolean> {
    return this.orchestrator.unschedule(name);
  }

  /**
   * A runner for this app's invocations; call `start()` on it.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * await using runner = app.runner({ concurrency: 4 });
   * runner.start();
   * ```
   */
  runner(options?: RunnerOptions): Runner {
    return new Runner(this, options);
  }
}
