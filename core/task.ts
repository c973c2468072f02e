/**
 * Tasks: a named function of one argument object, with its concurrency and retry options.
 *
 * @module
 */

import { checkPriority } from "./_call_options.ts";
import { laneOf, RATE_KEY_PREFIX, type RateLimitKey } from "./store.ts";
import { isRehydrated } from "./_rehydrated.ts";
import { RetryError } from "./errors.ts";
import {
  assertTaskId,
  callId,
  KEY_SEPARATOR,
  serializeArguments,
  type SerializedArguments,
} from "./ids.ts";
import type { InvocationGroup } from "./invocation.ts";
import type { Invocation } from "./invocation.ts";
import type { ErrorClass } from "./serializer.ts";

/**
 * How concurrency control groups invocations: not at all, per task, per arguments, per key
 * arguments.
 *
 * @example Equal arguments share one registered invocation
 * ```ts
 * import { type ConcurrencyMode, Nenc } from "@nenc/nenc";
 *
 * const mode: ConcurrencyMode = "arguments";
 * const app = new Nenc();
 * const fib = app.task("fib", ({ n }: { n: number }) => n, { registrationConcurrency: mode });
 * const first = await fib.call({ n: 5 });
 * const second = await fib.call({ n: 5 });
 * const third = await fib.call({ n: 6 });
 * console.log(second.id === first.id, third.id === first.id); // true false
 * ```
 */
export type ConcurrencyMode = "disabled" | "task" | "arguments" | "keys";

const MODES: readonly ConcurrencyMode[] = ["disabled", "task", "arguments", "keys"];

/** The largest `limit` of {@linkcode RunningConcurrency}. */
const MAX_RUNNING_LIMIT = 1_000;

/**
 * Running concurrency with a limit: at most `limit` executions of one task / arguments / key
 * value hold its slot at once (the string modes mean `limit: 1`).
 *
 * @example Two deploys per environment at once
 * ```ts
 * import { Nenc, type RunningConcurrency } from "@nenc/nenc";
 *
 * const perEnvironment: RunningConcurrency = { by: "keys", limit: 2 };
 * const app = new Nenc();
 * const deploy = app.task("deploy", ({ env }: { env: string }) => env, {
 *   runningConcurrency: perEnvironment,
 *   keyArguments: ["env"],
 * });
 * console.log(deploy.options.runningConcurrency, deploy.options.runningLimit); // "keys" 2
 * ```
 */
export interface RunningConcurrency {
  /** What shares one limit: the task, equal arguments, or equal key arguments. */
  readonly by: Exclude<ConcurrencyMode, "disabled">;
  /** How many executions of one key may hold its slots at once (1 to 1,000). */
  readonly limit: number;
}

/** The largest `limit` of {@linkcode RateLimit}: its log of starts is one KV value. */
const MAX_RATE_LIMIT = 1_000;

/**
 * A rate limit: at most `limit` pick-ups of one key in **any** window of `intervalMs` — a sliding
 * window, exact across runners and processes. A pick-up is the move to PENDING; a resume is not
 * one. The key is the task, the arguments, or the key arguments, as `by` says (as for
 * `runningConcurrency`) [`"task"`]. An invocation over the limit is parked until the window opens
 * (whatever `rerouteOnConcurrencyControl` says: it never fails for the limit).
 *
 * @example At most 2 calls of the API per 100 ms, whatever the runners
 * ```ts
 * import { Nenc, type RateLimit } from "@nenc/nenc";
 *
 * const twoPer100Ms: RateLimit = { limit: 2, intervalMs: 100 };
 * const app = new Nenc();
 * const fetchPage = app.task("fetchPage", ({ page }: { page: number }) => page, {
 *   rateLimit: twoPer100Ms,
 * });
 * console.log(fetchPage.options.rateLimit); // { by: "task", limit: 2, intervalMs: 100 }
 * ```
 */
export interface RateLimit {
  /** How many pick-ups of one key any window of `intervalMs` may hold (1 to 1,000). */
  readonly limit: number;
  /** The window, in ms: a positive integer. */
  readonly intervalMs: number;
  /** What shares one limit: the task, equal arguments, or equal key arguments [`"task"`]. */
  readonly by?: Exclude<ConcurrencyMode, "disabled">;
}

/**
 * What a running task knows about its own run: the second argument of its function.
 *
 * @example A task that reads its context and honours its abort signal
 * ```ts
 * import { Nenc, type TaskContext } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const crawl = app.task("crawl", async ({ url }: { url: string }, ctx: TaskContext) => {
 *   // Pass the signal on: a cancel, a timeout or a runner stop aborts the fetch too.
 *   // const page = await fetch(url, { signal: ctx.signal });
 *   ctx.signal.throwIfAborted();
 *   return `${url} on attempt ${ctx.attempt}, invocation ${ctx.invocationId} of ${ctx.taskId}`;
 * });
 * const invocation = await crawl.call({ url: "https://example.com" });
 * await app.runner().drain();
 * console.log(await invocation.result()); // "https://example.com on attempt 0, invocation 01… of crawl"
 * ```
 */
export interface TaskContext {
  /** The invocation being run. */
  readonly invocationId: string;
  /** Its task. */
  readonly taskId: string;
  /** The invocation that called it, or `null`. */
  readonly parentId: string | null;
  /** The runner running it. */
  readonly runnerId: string;
  /** The retries so far: 0 on the first run. */
  readonly attempt: number;
  /**
   * Aborted on cancel ({@linkcode CanceledError}), timeout ({@linkcode TaskTimeoutError}) and
   * runner stop, with the cause as its `reason`; what the function returns afterwards is
   * discarded.
   */
  readonly signal: AbortSignal;
  /** The tick time (epoch ms) for an invocation a schedule fired, else `null`. */
  readonly scheduledAt: number | null;
}

/**
 * The function of a task: one plain object of named arguments in, a value or promise out; its
 * second argument is the run's {@linkcode TaskContext}.
 *
 * @example A task function defined apart from its app
 * ```ts
 * import { Nenc, type TaskFunction } from "@nenc/nenc";
 *
 * const greet: TaskFunction<{ name: string }, string> = async ({ name }) => `hello ${name}`;
 * const app = new Nenc();
 * const invocation = await app.task("greet", greet).call({ name: "ada" });
 * await app.runner().drain();
 * console.log(await invocation.result()); // "hello ada"
 * ```
 */
export type TaskFunction<Args, Result> = (
  args: Args,
  ctx: TaskContext,
) => Result | Promise<Result>;

/** At most this many concurrency groups per task: their slots are checked in one KV atomic step. */
const MAX_GROUPS = 4;

/**
 * A concurrency group: a limit shared by every invocation whose group key is equal, across every
 * task of the app that names the group. The group key is `key(args)` when given (so tasks whose
 * arguments are named differently share one key space), else the values of `keyArguments`, else
 * the whole group.
 *
 * @example One deploy per environment and five in all, shared by two tasks
 * ```ts
 * import { type ConcurrencyGroup, Nenc } from "@nenc/nenc";
 *
 * const perEnvironment: ConcurrencyGroup<{ env: string }> = {
 *   name: "deploys-per-env",
 *   limit: 1,
 *   keyArguments: ["env"],
 * };
 * const app = new Nenc();
 * app.task("deploy", ({ env }: { env: string }) => env, {
 *   concurrencyGroups: [perEnvironment, { name: "deploys", limit: 5 }],
 * });
 * app.task("rollback", ({ target }: { target: string }) => target, {
 *   concurrencyGroups: [
 *     { name: "deploys-per-env", limit: 1, key: ({ target }) => target },
 *     { name: "deploys", limit: 5 },
 *   ],
 * });
 * ```
 */
export interface ConcurrencyGroup<Args = unknown> {
  /** The group's name: one limit per name in an app. */
  readonly name: string;
  /** How many invocations of one group key may hold its slot at once (1 to 1,000). */
  readonly limit: number;
  /** The arguments whose values form the group key (not with `key`). */
  readonly keyArguments?: readonly (keyof Args & string)[];
  /** The group key of a call's arguments (not with `keyArguments`). */
  readonly key?: (args: Args) => string | number;
}

/**
 * Options of a task; every option has a default (in brackets).
 *
 * @example
 * ```ts
 * import { Nenc, type TaskOptions } from "@nenc/nenc";
 *
 * const options: TaskOptions<{ userId: string; body: string }> = {
 *   registrationConcurrency: "keys",
 *   keyArguments: ["userId"],
 *   maxRetries: 3,
 * };
 * const app = new Nenc({ appId: "mail" });
 * app.task("notify", ({ userId, body }: { userId: string; body: string }) => `${userId}: ${body}`, options);
 * ```
 */
export interface TaskOptions<Args = unknown> {
  /**
   * Reuse an invocation of the same task / arguments / key that has not started running
   * (REGISTERED, REROUTED, CONCURRENCY_CONTROLLED, PENDING) [`"disabled"`].
   */
  registrationConcurrency?: ConcurrencyMode;
  /**
   * At most one execution per task / arguments / key at once (PENDING, RUNNING, RESUMED; a
   * PAUSED one gives its slot back), or at most `limit` of them with `{ by, limit }`
   * [`"disabled"`].
   */
  runningConcurrency?: ConcurrencyMode | RunningConcurrency;
  /** The arguments that form the key of the `"keys"` modes [`[]`]. */
  keyArguments?: readonly (keyof Args & string)[];
  /** Registration reuse with different non-key arguments throws instead of reusing [`false`]. */
  onDiffNonKeyArgsRaise?: boolean;
  /**
   * A pick-up refused by a full key (running concurrency or a group) parks the invocation until
   * the key has room (`true`), or finalises it as CONCURRENCY_CONTROLLED_FINAL [`true`].
   */
  rerouteOnConcurrencyControl?: boolean;
  /** Retry while `retries < maxRetries` [`0`]. */
  maxRetries?: number;
  /**
   * Error classes that are retriable; {@linkcode RetryError} always is [`[RetryError]`]. An error
   * that reached the task through a child's `result()` is retriable only when its class is listed
   * here: a child's exhausted `RetryError` retries the parent only if it lists `RetryError`.
   */
  retryFor?: readonly ErrorClass[];
  /** Delay before a retry is picked up: fixed, or a function of the attempt (1, 2, …) [`0`]. */
  retryBackoffMs?: number | ((attempt: number) => number);
  /** Batch size of `parallelize` [`100`]. */
  parallelBatchSize?: number;
  /**
   * Wall time an attempt may take, paused time included [none]. At the deadline `ctx.signal`
   * aborts with {@linkcode TaskTimeoutError}; the invocation fails with it when the function
   * returns, or the runner's `graceMs` later if it has not (retried when `retryFor` lists it).
   */
  timeoutMs?: number;
  /**
   * Up to 4 {@linkcode ConcurrencyGroup}s: an invocation starts only when every group of its task
   * has a free slot for its key, all taken in one atomic step [`[]`].
   */
  concurrencyGroups?: readonly ConcurrencyGroup<Args>[];
  /**
   * The priority of its calls, an integer from -1,000 to 1,000, higher first; a call's own
   * `priority` wins [`0`]. What others wait on still goes first (blocking control).
   */
  priority?: number;
  /**
   * At most `limit` pick-ups per key in any window of `intervalMs` (a {@linkcode RateLimit});
   * an invocation over it is parked until the window opens [none].
   */
  rateLimit?: RateLimit;
}

/**
 * Task options with every default filled in.
 *
 * @example
 * ```ts
 * import { Nenc, type ResolvedTaskOptions } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const fetchRates = app.task("fetchRates", () => ({ eur: 1 }), { maxRetries: 3 });
 * const options: ResolvedTaskOptions = fetchRates.options;
 * console.log(options.maxRetries, options.runningConcurrency, options.retryFor.map((c) => c.name));
 * // 3 "disabled" ["RetryError"]
 * ```
 */
export interface ResolvedTaskOptions {
  /** See {@linkcode TaskOptions.registrationConcurrency}. */
  readonly registrationConcurrency: ConcurrencyMode;
  /** See {@linkcode TaskOptions.runningConcurrency}: the mode (`by` for the object form). */
  readonly runningConcurrency: ConcurrencyMode;
  /** See {@linkcode RunningConcurrency.limit}: 1 for the string modes. */
  readonly runningLimit: number;
  /** See {@linkcode TaskOptions.keyArguments}. */
  readonly keyArguments: readonly string[];
  /** See {@linkcode TaskOptions.onDiffNonKeyArgsRaise}. */
  readonly onDiffNonKeyArgsRaise: boolean;
  /** See {@linkcode TaskOptions.rerouteOnConcurrencyControl}. */
  readonly rerouteOnConcurrencyControl: boolean;
  /** See {@linkcode TaskOptions.maxRetries}. */
  readonly maxRetries: number;
  /** See {@linkcode TaskOptions.retryFor}; always includes {@linkcode RetryError}. */
  readonly retryFor: readonly ErrorClass[];
  /** See {@linkcode TaskOptions.retryBackoffMs}. */
  readonly retryBackoffMs: number | ((attempt: number) => number);
  /** See {@linkcode TaskOptions.parallelBatchSize}. */
  readonly parallelBatchSize: number;
  /** See {@linkcode TaskOptions.timeoutMs}; `undefined`: none. */
  readonly timeoutMs: number | undefined;
  /** See {@linkcode TaskOptions.concurrencyGroups}. */
  readonly concurrencyGroups: readonly ConcurrencyGroup<never>[];
  /** See {@linkcode TaskOptions.priority}. */
  readonly priority: number;
  /** See {@linkcode TaskOptions.rateLimit}, with `by` filled in; `undefined`: none. */
  readonly rateLimit: Required<RateLimit> | undefined;
}

const OPTION_NAMES = new Set([
  "registrationConcurrency",
  "runningConcurrency",
  "keyArguments",
  "onDiffNonKeyArgsRaise",
  "rerouteOnConcurrencyControl",
  "maxRetries",
  "retryFor",
  "retryBackoffMs",
  "parallelBatchSize",
  "timeoutMs",
  "concurrencyGroups",
  "priority",
  "rateLimit",
]);

/**
 * Validates task options and fills in the defaults.
 *
 * @throws {TypeError | RangeError} naming the task and the option.
 *
 * @example Checking options before defining a task
 * ```ts
 * import { resolveTaskOptions } from "@nenc/nenc";
 *
 * console.log(resolveTaskOptions("resize", { maxRetries: 2 }).parallelBatchSize); // 100
 * try {
 *   resolveTaskOptions("resize", { runningConcurrency: "keys" });
 * } catch (error) {
 *   if (!(error instanceof TypeError)) throw error;
 *   console.log(error.message); // Cannot define task resize: a "keys" concurrency mode needs keyArguments
 * }
 * ```
 */
export function resolveTaskOptions(
  taskId: string,
  options: TaskOptions<never> = {},
): ResolvedTaskOptions {
  const fail = (message: string): never => {
    throw new TypeError(`Cannot define task ${taskId}: ${message}`);
  };
  if (typeof options !== "object" || options === null) fail("options must be an object");
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.has(name)) fail(`unknown option "${name}"`);
  }
  const mode = (name: "registrationConcurrency" | "runningConcurrency"): ConcurrencyMode => {
    const value = (options[name] ?? "disabled") as ConcurrencyMode;
    if (!MODES.includes(value)) {
      fail(`${name} must be one of ${MODES.join(", ")}, got ${String(value)}`);
    }
    return value;
  };
  const registrationConcurrency = mode("registrationConcurrency");
  const running = options.runningConcurrency;
  let runningLimit = 1;
  let runningConcurrency: ConcurrencyMode;
  if (typeof running === "object" && running !== null) {
    for (const name of Object.keys(running)) {
      if (name !== "by" && name !== "limit") {
        fail(`runningConcurrency has an unknown field "${name}"`);
      }
    }
    if (!(["task", "arguments", "keys"] as string[]).includes(running.by)) {
      fail(`runningConcurrency.by must be one of task, arguments, keys, got ${String(running.by)}`);
    }
    if (
      !Number.isInteger(running.limit) || running.limit < 1 || running.limit > MAX_RUNNING_LIMIT
    ) {
      throw new RangeError(
        `Cannot define task ${taskId}: runningConcurrency.limit must be an integer from 1 to ${MAX_RUNNING_LIMIT}, got ${running.limit}`,
      );
    }
    runningConcurrency = running.by;
    runningLimit = running.limit;
  } else {
    runningConcurrency = mode("runningConcurrency");
  }
  const keyArguments: readonly string[] = options.keyArguments ?? [];
  if (
    !Array.isArray(keyArguments) ||
    keyArguments.some((key) => typeof key !== "string" || key === "")
  ) {
    fail("keyArguments must be an array of argument names");
  }
  if (new Set(keyArguments).size !== keyArguments.length) fail("keyArguments has duplicates");
  const rateLimit = resolveRateLimit(taskId, options.rateLimit);
  if (
    (registrationConcurrency === "keys" || runningConcurrency === "keys" ||
      rateLimit?.by === "keys") &&
    keyArguments.length === 0
  ) {
    fail('a "keys" concurrency mode needs keyArguments');
  }
  const flag = (
    name: "onDiffNonKeyArgsRaise" | "rerouteOnConcurrencyControl",
    fallback: boolean,
  ): boolean => {
    const value = options[name] ?? fallback;
    if (typeof value !== "boolean") fail(`${name} must be a boolean`);
    return value;
  };
  const count = (
    name: "maxRetries" | "parallelBatchSize",
    fallback: number,
    min: number,
  ): number => {
    const value = options[name] ?? fallback;
    if (!Number.isInteger(value) || value < min) {
      throw new RangeError(
        `Cannot define task ${taskId}: ${name} must be an integer ≥ ${min}, got ${value}`,
      );
    }
    return value;
  };
  const retryFor = options.retryFor ?? [];
  if (!Array.isArray(retryFor) || retryFor.some((errorClass) => typeof errorClass !== "function")) {
    fail("retryFor must be an array of error classes");
  }
  const retryBackoffMs = options.retryBackoffMs ?? 0;
  if (
    typeof retryBackoffMs !== "function" &&
    (typeof retryBackoffMs !== "number" || !Number.isFinite(retryBackoffMs) || retryBackoffMs < 0)
  ) {
    fail("retryBackoffMs must be a number ≥ 0 or a function of the attempt");
  }
  const timeoutMs = options.timeoutMs;
  if (
    timeoutMs !== undefined &&
    (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs <= 0)
  ) {
    throw new RangeError(
      `Cannot define task ${taskId}: timeoutMs must be a number > 0, got ${timeoutMs}`,
    );
  }
  return {
    registrationConcurrency,
    runningConcurrency,
    runningLimit,
    keyArguments,
    onDiffNonKeyArgsRaise: flag("onDiffNonKeyArgsRaise", false),
    rerouteOnConcurrencyControl: flag("rerouteOnConcurrencyControl", true),
    maxRetries: count("maxRetries", 0, 0),
    retryFor: retryFor.includes(RetryError) ? retryFor : [RetryError, ...retryFor],
    retryBackoffMs,
    parallelBatchSize: count("parallelBatchSize", 100, 1),
    timeoutMs,
    concurrencyGroups: resolveGroups(taskId, options.concurrencyGroups ?? []),
    priority: checkPriority(options.priority ?? 0, `define task ${taskId}`),
    rateLimit,
  };
}

/**
 * Options of one call: `task.call(args, options)`.
 *
 * - `idempotencyKey`: within `idempotencyTtlMs` [24 h] of the first call with a key, every call
 *   of the same task with the same key returns that call's invocation, final or not, as a
 *   `ReusedInvocation` (with `diffArgs` when its arguments differ, or an
 *   `InvocationConcurrencyWithDifferentArgumentsError` when the task sets
 *   `onDiffNonKeyArgsRaise`). The lookup and the registration are one atomic step of the store,
 *   so concurrent calls from any number of processes get one invocation. The key is consulted
 *   before registration concurrency; while it lives, its invocation is not purged.
 * - `idempotencyTtlMs`: how long the key lives, in ms [`86_400_000`]; needs `idempotencyKey`.
 *
 * An unknown option, an empty key or a TTL that is not a positive finite number is a `TypeError`
 * at call time, and nothing is routed. `parallelize()` refuses idempotency keys.
 *
 * @example A client's retry of one request gets the same invocation, even after it ran
 * ```ts
 * import { type CallOptions, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const charge = app.task("charge", ({ cents }: { cents: number }) => `charged ${cents}`);
 * const options: CallOptions = { idempotencyKey: "order-42", idempotencyTtlMs: 3_600_000 };
 * const first = await charge.call({ cents: 250 }, options);
 * await app.runner().drain();
 * const retry = await charge.call({ cents: 250 }, options);
 * console.log(retry.id === first.id, await retry.result()); // true "charged 250"
 * ```
 */
export interface CallOptions {
  /** Calls of this task with the same key within its time to live share one invocation [none]. */
  readonly idempotencyKey?: string;
  /** How long the idempotency key lives, in ms [`86_400_000`: 24 h]. */
  readonly idempotencyTtlMs?: number;
  /** Not picked up before this many ms from the call [`0`]; not with `runAt`. */
  readonly delayMs?: number;
  /** Not picked up before this time: a `Date` or epoch ms (a past one: at once); not with `delayMs`. */
  readonly runAt?: Date | number;
  /**
   * Picked up before queued invocations of lower priority: an integer from -1,000 to 1,000,
   * higher first [the task's `priority`, `0`]. What others wait on still goes first.
   */
  readonly priority?: number;
}

/**
 * Options of `task.parallelize(argsList, options)`: the arguments every call shares, and the
 * {@linkcode CallOptions} of every call but an idempotency key (which names one call).
 *
 * @example Twelve reminders, all due in an hour
 * ```ts
 * import { Nenc, type ParallelizeOptions } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const remind = app.task("remind", ({ to, text }: { to: string; text: string }) => `${to}: ${text}`);
 * const options: ParallelizeOptions<{ to: string; text: string }> = {
 *   commonArgs: { text: "standup" },
 *   delayMs: 3_600_000,
 * };
 * const group = await remind.parallelize([{ to: "ada" }, { to: "bob" }], options);
 * const record = await app.orchestrator.store.get(group.invocations[0]!.id);
 * console.log(record!.availableAtMs - record!.createdAtMs); // 3600000
 * ```
 */
export interface ParallelizeOptions<Args>
  extends Omit<CallOptions, "idempotencyKey" | "idempotencyTtlMs"> {
  /** Arguments merged into every call's (a call's own win). */
  readonly commonArgs?: Partial<Args>;
}

/** Validates a task's `rateLimit` and fills in `by`: every bad value is a `TypeError`. */
function resolveRateLimit(
  taskId: string,
  rateLimit: RateLimit | undefined,
): Required<RateLimit> | undefined {
  if (rateLimit === undefined) return undefined;
  const fail = (message: string): never => {
    throw new TypeError(`Cannot define task ${taskId}: rateLimit${message}`);
  };
  if (typeof rateLimit !== "object" || rateLimit === null) {
    fail(" must be an object { limit, intervalMs, by? }");
  }
  for (const name of Object.keys(rateLimit)) {
    if (!["limit", "intervalMs", "by"].includes(name)) fail(` has an unknown field "${name}"`);
  }
  const { limit, intervalMs, by = "task" } = rateLimit;
  if (!(["task", "arguments", "keys"] as unknown[]).includes(by)) {
    fail(`.by must be one of task, arguments, keys, got ${String(by)}`);
  }
  // The log of one key's last `limit` starts is one KV value.
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_RATE_LIMIT) {
    fail(`.limit must be an integer from 1 to ${MAX_RATE_LIMIT}, got ${String(limit)}`);
  }
  if (!Number.isSafeInteger(intervalMs) || intervalMs < 1) {
    fail(`.intervalMs must be a positive integer (ms), got ${String(intervalMs)}`);
  }
  return { by, limit, intervalMs };
}

function resolveGroups(
  taskId: string,
  groups: readonly ConcurrencyGroup<never>[],
): readonly ConcurrencyGroup<never>[] {
  const fail = (message: string): never => {
    throw new TypeError(`Cannot define task ${taskId}: ${message}`);
  };
  if (!Array.isArray(groups)) fail("concurrencyGroups must be an array");
  if (groups.length > MAX_GROUPS) fail(`concurrencyGroups has more than ${MAX_GROUPS} groups`);
  const names = new Set<string>();
  for (const group of groups) {
    if (typeof group !== "object" || group === null) fail("a concurrency group must be an object");
    for (const field of Object.keys(group)) {
      if (!["name", "limit", "keyArguments", "key"].includes(field)) {
        fail(`concurrency group ${String(group.name)} has an unknown field "${field}"`);
      }
    }
    if (typeof group.name !== "string" || group.name === "") {
      fail("a concurrency group needs a non-empty name");
    }
    if (names.has(group.name)) fail(`concurrency group ${group.name} is named twice`);
    names.add(group.name);
    if (group.name.includes(KEY_SEPARATOR)) {
      fail(`concurrency group ${group.name}: a name cannot contain "${KEY_SEPARATOR}"`);
    }
    // The holders of a slot are one KV value (64 KiB): a thousand ids fit.
    if (!Number.isInteger(group.limit) || group.limit < 1 || group.limit > MAX_RUNNING_LIMIT) {
      throw new RangeError(
        `Cannot define task ${taskId}: concurrency group ${group.name} needs a limit from 1 to ${MAX_RUNNING_LIMIT}, got ${group.limit}`,
      );
    }
    if (group.key !== undefined && group.keyArguments !== undefined) {
      fail(`concurrency group ${group.name} takes key or keyArguments, not both`);
    }
    if (group.key !== undefined && typeof group.key !== "function") {
      fail(`concurrency group ${group.name}: key must be a function of the arguments`);
    }
    const keyArguments: readonly unknown[] = group.keyArguments ?? [];
    if (
      !Array.isArray(keyArguments) ||
      keyArguments.some((name) => typeof name !== "string" || name === "")
    ) {
      fail(`concurrency group ${group.name}: keyArguments must be an array of argument names`);
    }
  }
  return groups;
}

/**
 * The arguments of `call()`: the task's arguments (optional when they may be `undefined`), then
 * the {@linkcode CallOptions}.
 *
 * @example A helper that calls any task and waits for its result
 * ```ts
 * import { type CallArguments, Nenc, type Task } from "@nenc/nenc";
 *
 * const run = async <Args, Result>(task: Task<Args, Result>, ...args: CallArguments<Args>) =>
 *   await (await task.call(...args)).result();
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
 * await using runner = app.runner();
 * runner.start();
 * console.log(await run(ping), await run(add, { x: 1, y: 2 })); // "pong" 3
 * ```
 */
export type CallArguments<Args> = undefined extends Args ? [args?: Args, options?: CallOptions]
  : [args: Args, options?: CallOptions];

/**
 * What a {@linkcode Task} needs from its app: routing calls. The app's orchestrator is one; a
 * test can put a router of its own in front of it, here to record the calls.
 *
 * @example
 * ```ts
 * import { Nenc, Task, type TaskRouter } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const routed: unknown[] = [];
 * const router: TaskRouter = {
 *   routeCall: (call) => (routed.push(call.args), app.orchestrator.routeCall(call)),
 *   parallelize: (task, argsList, options) => app.orchestrator.parallelize(task, argsList, options),
 * };
 * const send = new Task(router, "send", ({ to }: { to: string }) => to);
 * await send.call({ to: "ada" });
 * console.log(routed); // [{ to: "ada" }]
 * ```
 */
export interface TaskRouter {
  /** Routes one call (see `Orchestrator.routeCall`). */
  routeCall<Args, Result>(call: Call<Args, Result>): Promise<Invocation<Result>>;
  /** Routes many calls in batches (see `Orchestrator.routeCalls`). */
  parallelize<Args, Result>(
    task: Task<Args, Result>,
    argsList: readonly Args[],
    options?: CallOptions,
  ): Promise<InvocationGroup<Result>>;
}

/**
 * One call of a task: the task, its arguments and its options.
 *
 * @example Routing a batch of calls
 * ```ts
 * import { type Call, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const square = app.task("square", ({ n }: { n: number }) => n * n);
 * const calls: Call<{ n: number }, number>[] = [1, 2, 3].map((n) => ({ task: square, args: { n } }));
 * const invocations = await app.orchestrator.routeCalls(calls);
 * console.log(invocations.map((invocation) => invocation.args)); // [{ n: 1 }, { n: 2 }, { n: 3 }]
 * ```
 */
export interface Call<Args = unknown, Result = unknown> {
  /** The task called. */
  readonly task: Task<Args, Result>;
  /** The arguments. */
  readonly args: Args;
  /** The options of the call (see {@linkcode CallOptions}). */
  readonly options?: CallOptions;
}

/**
 * A task of an app: `call()` routes an invocation and returns its handle at once; a runner runs
 * it. Create tasks with `app.task()`.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc({ appId: "math" });
 * const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
 * await using runner = app.runner({ concurrency: 4 });
 * runner.start();
 * const invocation = await add.call({ x: 1, y: 2 });
 * console.log(await invocation.result()); // 3
 * ```
 */
export class Task<Args = unknown, Result = unknown> {
  /** The task id: its name, unique within the app. */
  readonly id: string;
  /** The options, with defaults filled in. */
  readonly options: ResolvedTaskOptions;
  /** The task's function. */
  readonly fn: TaskFunction<Args, Result>;
  readonly #router: TaskRouter;
  /** The classes `retryFor` lists itself (without the implicit {@linkcode RetryError}). */
  readonly #listedRetryFor: readonly ErrorClass[];

  /** Use `app.task()` instead. */
  constructor(
    router: TaskRouter,
    id: string,
    fn: TaskFunction<Args, Result>,
    options?: TaskOptions<Args>,
  ) {
    assertTaskId(id);
    if (typeof fn !== "function") {
      throw new TypeError(`Cannot define task ${id}: fn must be a function`);
    }
    this.#router = router;
    this.id = id;
    this.fn = fn;
    this.options = resolveTaskOptions(id, options as TaskOptions<never>);
    this.#listedRetryFor = [...options?.retryFor ?? []];
  }

  /**
   * Routes a call of this task and resolves to its invocation as soon as it is registered. The
   * task never runs in the caller. `options` are the {@linkcode CallOptions}, e.g. an
   * idempotency key.
   *
   * @throws {TypeError} when an argument is not serializable, naming the task and the argument,
   * or for a bad option; nothing is routed.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const hello = app.task("hello", ({ name }: { name: string }) => `hello ${name}`);
   * const invocation = await hello.call({ name: "ada" });
   * console.log(await invocation.status()); // "registered"
   * const again = await hello.call({ name: "ada" }, { idempotencyKey: "greet-ada" });
   * console.log((await hello.call({ name: "ada" }, { idempotencyKey: "greet-ada" })).id === again.id); // true
   * ```
   */
  call(...args: CallArguments<Args>): Promise<Invocation<Result>> {
    const options = args[1];
    return this.#router.routeCall({
      task: this,
      args: args[0] as Args,
      ...(options !== undefined ? { options } : {}),
    });
  }

  /**
   * Routes many calls in batches of `parallelBatchSize` and returns them as a group;
   * `commonArgs` are merged into every call's arguments, and the other {@linkcode
   * ParallelizeOptions} apply to every call. An idempotency key names one call: `parallelize`
   * refuses `idempotencyKey` (and any other unknown option) with a `TypeError`.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const square = app.task("square", ({ n }: { n: number }) => n * n);
   * await using runner = app.runner({ concurrency: 8 });
   * runner.start();
   * const group = await square.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }]);
   * console.log(await group.results()); // [1, 4, 9]
   * ```
   */
  parallelize(
    argsList: readonly Partial<Args>[],
    options: ParallelizeOptions<Args> = {},
  ): Promise<InvocationGroup<Result>> {
    const { commonArgs, ...callOptions } = options;
    const list = commonArgs === undefined
      ? argsList as readonly Args[]
      : argsList.map((args) => ({ ...commonArgs, ...args }) as Args);
    return this.#router.parallelize(this, list, callOptions);
  }

  /**
   * Serializes arguments for this task.
   *
   * @throws {TypeError} naming the task and the argument that is not plain JSON.
   */
  serializeArgs(args: Args): SerializedArguments {
    try {
      return serializeArguments(args);
    } catch (error) {
      throw new TypeError(
        `Cannot call task ${this.id}: ${error instanceof Error ? error.message : String(error)}`,
        { cause: error },
      );
    }
  }

  /** The registration-concurrency key of a call, or `null` when disabled. */
  registrationKey(args: SerializedArguments, callIdOfArgs: string): string | null {
    return this.#concurrencyKey(this.options.registrationConcurrency, args, callIdOfArgs);
  }

  /**
   * The slots of a call in the task's concurrency groups: one key per group (its name and the
   * group key of these arguments) with the group's limit. Keys start with the key separator, which
   * task ids cannot contain: they never meet a running-concurrency key.
   *
   * @throws {TypeError} when a group's key argument is missing, or its `key` fails.
   */
  groupSlots(args: Args, serialized: SerializedArguments): { key: string; limit: number }[] {
    return this.options.concurrencyGroups.map((group) => {
      let keyValue: Record<string, string> = {};
      if (group.key !== undefined) {
        let value: unknown;
        try {
          value = (group.key as (args: Args) => unknown)(args);
        } catch (error) {
          throw new TypeError(
            `Cannot call task ${this.id}: the key of concurrency group ${group.name} failed`,
            { cause: error },
          );
        }
        if (value === undefined) {
          throw new TypeError(
            `Cannot call task ${this.id}: the key of concurrency group ${group.name} returned undefined`,
          );
        }
        keyValue = serializeArguments({ key: value });
      } else if ((group.keyArguments ?? []).length > 0) {
        // The same form as key(): one value as itself, several as the list of their values, so
        // a task with keyArguments and one with key() share a key space.
        const values = (group.keyArguments ?? []).map((name) => {
          const value = serialized[name];
          if (value === undefined) {
            throw new TypeError(
              `Cannot call task ${this.id}: the key argument "${name}" of concurrency group ${group.name} is missing from the call`,
            );
          }
          return value;
        });
        keyValue = { key: values.length === 1 ? values[0]! : `[${values.join(",")}]` };
      }
      return {
        key: `${KEY_SEPARATOR}group${KEY_SEPARATOR}${callId(group.name, keyValue)}`,
        limit: group.limit,
      };
    });
  }

  /**
   * The fairness lane of a call (SPEC §7.2) at `priority`: its first keyed slot key — the running
   * key of a `"keys"` mode, else the key of the first group with `keyArguments` or `key` — or
   * `null`; one lane per key and priority ({@linkcode laneOf}). (A lane per argument set, for
   * `"arguments"`, would cost two writes per invocation for nothing: argument sets seldom queue
   * behind each other.)
   */
  lane(
    runningKey: string | null,
    groupSlots: readonly { key: string }[],
    priority: number,
  ): string | null {
    const keyed = this.options.concurrencyGroups.findIndex((group) =>
      group.key !== undefined || (group.keyArguments ?? []).length > 0
    );
    const key = this.options.runningConcurrency === "keys"
      ? runningKey
      : keyed < 0
      ? null
      : groupSlots[keyed]!.key;
    return key === null ? null : laneOf(key, priority);
  }

  /** The running-concurrency slot key of a call, or `null` when disabled. */
  runningKey(args: SerializedArguments, callIdOfArgs: string): string | null {
    return this.#concurrencyKey(this.options.runningConcurrency, args, callIdOfArgs);
  }

  /**
   * The rate limit key of a call with its limit and window, or `null` without a `rateLimit`. The
   * key starts with the key separator, which task ids cannot contain: it never meets a slot key.
   */
  rateLimitKey(args: SerializedArguments, callIdOfArgs: string): RateLimitKey | null {
    const rate = this.options.rateLimit;
    if (rate === undefined) return null;
    const key = this.#concurrencyKey(rate.by, args, callIdOfArgs)!;
    return {
      key: `${RATE_KEY_PREFIX}${key}`,
      limit: rate.limit,
      intervalMs: rate.intervalMs,
    };
  }

  /**
   * Whether `error` may be retried under `retryFor`. An error that reached the task through a
   * child's `result()` counts only against the classes `retryFor` lists itself, not the implicit
   * {@linkcode RetryError}: the child's retries are spent, they do not retry the parent.
   */
  isRetriable(error: unknown): boolean {
    const classes = isRehydrated(error) ? this.#listedRetryFor : this.options.retryFor;
    return classes.some((errorClass) => error instanceof errorClass);
  }

  /** The back-off before retry number `attempt` (1, 2, …), in ms. */
  retryDelayMs(attempt: number): number {
    const backoff = this.options.retryBackoffMs;
    const delay = typeof backoff === "function" ? backoff(attempt) : backoff;
    return Number.isFinite(delay) && delay > 0 ? delay : 0;
  }

  #concurrencyKey(
    mode: ConcurrencyMode,
    args: SerializedArguments,
    callIdOfArgs: string,
  ): string | null {
    switch (mode) {
      case "disabled":
        return null;
      case "task":
        return this.id;
      case "arguments":
        return callIdOfArgs;
      case "keys": {
        const key: Record<string, string> = {};
        for (const name of this.options.keyArguments) {
          const value = args[name];
          if (value === undefined) {
            throw new TypeError(
              `Cannot call task ${this.id}: its key argument "${name}" is missing from the call`,
            );
          }
          key[name] = value;
        }
        return `${callId(this.id, key)}#keys`;
      }
    }
  }
}
