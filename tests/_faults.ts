/**
 * The fault-injection contract (issues #9, #10, #11): every write a runner makes — PENDING,
 * RUNNING, PAUSED, RESUMED, SUCCESS, FAILED, RETRY, the KILLED → REROUTED hand-back, the park of a
 * refused pick-up and the wake of a parked invocation, and of a rate-limited task the pick-up, the
 * park over its limit and the wake when its window opens — meets each of three
 * faults: refused and not applied; applied, then reported failed; the store down for 2 s. In every
 * case, with a deadline on every wait: the invocation ends in the final status its function
 * earned, `result()` never rejects with a store error, nothing hangs, no key ever runs above
 * its limit, and no rate limit window holds more pick-ups than its limit.
 *
 * A backend test file calls {@linkcode faultContract} once per backend, with a factory that builds
 * an app whose store injects the faults a {@linkcode FaultPlan} describes: memory through
 * {@linkcode faultyStore} (a `Proxy`, so methods added to the port later are covered too), Deno KV
 * through {@linkcode kvFaultHooks} on `interceptKv`.
 *
 * The scenarios of one backend run concurrently (each on its own app and store), on the real clock
 * (the outage is 2 s of wall time): the first test of a backend starts them all, and each test
 * awaits and judges its own.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import type { Nenc, NencOptions } from "../core/app.ts";
import { RetryError } from "../core/errors.ts";
import type { Invocation } from "../core/invocation.ts";
import type { Runner } from "../core/runner.ts";
import { AVAILABLE_FOR_RUN_STATUSES, isValidHistory } from "../core/status.ts";
import type { ClaimRequest, InvocationRecord, Store } from "../core/store.ts";
import type { Task, TaskContext } from "../core/task.ts";
import { waitUntil, within } from "./_deadline.ts";
import type { KvHooks } from "./_kv.ts";
import type { KvKey } from "../kv/kv_like.ts";
import { windowsOverLimit } from "./_pickups.ts";

// --- deadlines ---------------------------------------------------------------------------------

/** Whether `error` is a deadline of `tests/_deadline.ts` that passed. */
function isDeadline(error: unknown): error is Error {
  return error instanceof Error && /^Timed out after \d+ ms waiting for /.test(error.message);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// --- faults --------------------------------------------------------------------------------------

/** The error a faulty store throws: a store error, never the task's. */
export class InjectedStoreFault extends Error {
  constructor(what: string) {
    super(`injected store fault (${what})`);
    this.name = "InjectedStoreFault";
  }
}

/**
 * The runner writes under test; `killed` is the KILLED → REROUTED hand-back of a stop, `parked`
 * a refused pick-up parked (CONCURRENCY_CONTROLLED), `woken` a parked invocation re-queued
 * (REROUTED) when its key has room. The `rate-` writes are the same writes of a rate-limited
 * task: its pick-up, its park over the limit, and its wake when the window opens.
 */
export type RunnerWrite =
  | "pending"
  | "running"
  | "paused"
  | "resumed"
  | "success"
  | "failed"
  | "retry"
  | "killed"
  | "parked"
  | "woken"
  | "rate-pending"
  | "rate-parked"
  | "rate-woken";

/** The write a write is, whatever its task: a `rate-` write is its plain one. */
function baseWrite(write: AnyWrite): AnyWrite {
  return write.startsWith("rate-") ? write.slice("rate-".length) as RunnerWrite : write;
}

/**
 * The schedule writes under test (see `tests/_faults_schedules.ts`): `tick` a tick fired (its
 * claim, the schedule's last tick and its invocation, one step), `schedule` a schedule stored.
 */
export type ScheduleWrite = "tick" | "schedule";

/** The upkeep write under test (see `tests/_faults_upkeep.ts`): the upkeep lease taken or renewed. */
export type UpkeepWrite = "lease";

/** The inspection write under test (see `tests/_faults_cycles.ts`): a refused cycle recorded. */
export type CycleWrite = "cycle";

/** Every write a fault plan can hit. */
export type AnyWrite = RunnerWrite | ScheduleWrite | UpkeepWrite | CycleWrite;

/**
 * `refuse`: the write throws and is not applied. `applied`: the write is applied, then throws.
 * `down`: from the matching write on, every store call throws for {@linkcode OUTAGE_MS}. `none`:
 * no fault (the control run of a scenario).
 */
export type FaultKind = "refuse" | "applied" | "down" | "none";

/** How long the store stays down. */
export const OUTAGE_MS = 2_000;

/**
 * One fault for one write, fired at most once: on the first matching write after
 * {@linkcode FaultPlan.arm} (for `applied`: the first that was actually applied).
 */
export class FaultPlan {
  readonly write: AnyWrite;
  readonly kind: FaultKind;
  /**
   * `rate-woken` in memory: when the parked one's window opens. The memory store wakes it in the
   * pick-up at or after that time, whose fault is the wake's.
   */
  windowOpensAtMs = Infinity;
  #armed = false;
  /** When the fault fired (epoch ms), or `undefined`. */
  firedAtMs: number | undefined;
  /** What the fault hit, for the report. */
  firedOn: string | undefined;
  #downUntilMs = 0;

  constructor(write: AnyWrite, kind: FaultKind) {
    this.write = write;
    this.kind = kind;
  }

  /** From now on the fault fires on the first matching write. */
  arm(): void {
    this.#armed = true;
  }

  /** Whether the store is down right now. */
  get down(): boolean {
    return Date.now() < this.#downUntilMs;
  }

  /** Resolves once the outage (if any) is over. */
  async outageOver(): Promise<void> {
    const left = this.#downUntilMs - Date.now();
    if (left > 0) await sleep(left + 10);
  }

  /** Throws if the store is down: every call, reads included. */
  throwIfDown(what: string): void {
    if (this.down) throw new InjectedStoreFault(`store down: ${what}`);
  }

  /** Whether a write matching this plan should fault now (armed, not fired yet). */
  #pending(matches: boolean): boolean {
    return this.kind !== "none" && this.#armed && this.firedAtMs === undefined && matches;
  }

  /**
   * Before a write is applied: `refuse` and `down` fire here (and throw); `applied` only says
   * whether to check again after the write.
   */
  before(matches: boolean, what: string): boolean {
    if (!this.#pending(matches)) return false;
    if (this.kind === "applied") return true;
    this.#fire(what);
    if (this.kind === "down") this.#downUntilMs = Date.now() + OUTAGE_MS;
    throw new InjectedStoreFault(`${this.kind} ${what}`);
  }

  /** After a write was applied: `applied` fires here (and throws). */
  after(applied: boolean, what: string): void {
    if (this.kind !== "applied" || !applied || !this.#pending(true)) return;
    this.#fire(what);
    throw new InjectedStoreFault(`applied, then reported failed: ${what}`);
  }

  #fire(what: string): void {
    this.firedAtMs = Date.now();
    this.firedOn = what;
  }
}

/**
 * A store that delegates every call to `inner` and injects the fault of `plan`: PENDING and the
 * park of a refused pick-up on `claim()` (a claim may also go straight on to RUNNING), and a
 * child's RUNNING on the claim that picks the child up (the memory store adds its call edge and
 * moves it on to RUNNING in that step: see `ClaimRequest.runWithCall`), a tick on
 * `fireTick()`, a schedule on `putSchedule()`, the upkeep lease on `takeUpkeepLease()`, a refused
 * cycle on `recordCycle()`, every other
 * write on `change()` by the last status
 * of its path (the hand-back by its first, KILLED). The
 * memory store wakes parked invocations in the step that gives their key room: a wake's fault is
 * that step's; a rate limit key gets room with time, and the first pick-up once its window opens
 * wakes its parked: a rate wake's fault is that pick-up's. Built with a `Proxy`, so methods the
 * port gains later are delegated, and faulted while the store is down, without a change here.
 */
export function faultyStore(inner: Store, plan: FaultPlan): Store {
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(inner, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== "function" || typeof property !== "string") return value;
      if (property === "constructor") return value;
      let wrapper = wrapped.get(property);
      if (wrapper === undefined) {
        const method = value as (...args: unknown[]) => unknown;
        wrapper = property === "find"
          ? (...args: unknown[]) =>
            faultyIterable(plan, () => method.apply(target, args) as AsyncIterable<unknown>)
          : async (...args: unknown[]) => {
            plan.throwIfDown(property);
            if (property === "claim") {
              const write = baseWrite(plan.write);
              const parks = write === "parked";
              const wakes = plan.write === "rate-woken" &&
                (args[0] as ClaimRequest).nowMs >= plan.windowOpensAtMs;
              const startsChild = write === "running" && await childWaits(target);
              const check = plan.before(
                parks || write === "pending" || wakes || startsChild,
                "claim",
              );
              const outcome = await method.apply(target, args) as {
                claimed: readonly InvocationRecord[];
                parked: readonly unknown[];
              };
              if (check) {
                plan.after(
                  write === "running"
                    ? outcome.claimed.some((record) =>
                      record.status === "running" && record.parentId !== null
                    )
                    : (parks ? outcome.parked : outcome.claimed).length > 0,
                  "claim",
                );
              }
              return outcome;
            }
            if (property === "fireTick" || property === "putSchedule") {
              const write = property === "fireTick" ? "tick" : "schedule";
              const check = plan.before(plan.write === write, property);
              const outcome = await method.apply(target, args);
              if (check) plan.after(outcome !== undefined, property);
              return outcome;
            }
            if (property === "takeUpkeepLease") {
              const check = plan.before(plan.write === "lease", property);
              const outcome = await method.apply(target, args);
              if (check) plan.after(outcome === true, property);
              return outcome;
            }
            if (property === "recordCycle") {
              const check = plan.before(plan.write === "cycle", property);
              const outcome = await method.apply(target, args);
              if (check) plan.after(true, property);
              return outcome;
            }
            if (property === "change") {
              const change = args[1] as { path: readonly string[] };
              const what = `change [${change.path.join(", ")}]`;
              const write = baseWrite(plan.write);
              const matches = plan.write === "woken"
                ? GIVES_ROOM.has(change.path[change.path.length - 1]!)
                : !["pending", "parked", "woken"].includes(write) &&
                  pathMatches(plan.write, change.path);
              const check = plan.before(matches, what);
              const outcome = await method.apply(target, args) as { ok: boolean };
              if (check) plan.after(outcome.ok, what);
              return outcome;
            }
            return await method.apply(target, args);
          };
        wrapped.set(property, wrapper);
      }
      return wrapper;
    },
  });
}

/** Whether a child of the "parent" scenario waits to be picked up: the next claim takes it. */
async function childWaits(store: Store): Promise<boolean> {
  for await (
    const _ of store.find({ taskId: "child", statuses: AVAILABLE_FOR_RUN_STATUSES })
  ) return true;
  return false;
}

/** `find()` is an async iterable, not a promise: it throws when first read while down. */
function faultyIterable<T>(plan: FaultPlan, open: () => AsyncIterable<T>): AsyncIterable<T> {
  return {
    async *[Symbol.asyncIterator]() {
      plan.throwIfDown("find");
      yield* open();
    },
  };
}

/** Parses one of nenc's KV values (JSON bytes), or `undefined`. */
function decodeValue(value: unknown): unknown {
  if (!(value instanceof Uint8Array)) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(value));
  } catch {
    return undefined;
  }
}

/**
 * One invocation's transition in a KV commit: its new record, the statuses it entered, and whether
 * the invocation has a caller.
 */
interface CommittedTransition {
  readonly id: string;
  readonly seq: number;
  readonly path: readonly string[];
  readonly child: boolean;
}

/**
 * The transitions a KV commit writes, one per invocation record it sets (`[…, "inv", id]`). Its
 * path is the history entries it writes — in the record's value while the history is short,
 * else as keys (`[…, "hist", id, seq]`) — past the last sequence number seen committed for that
 * invocation (`lastSeq`): the older entries it carries, or re-sets with their expiry at a final
 * commit, are not part of its transition.
 */
function committedTransitions(
  keys: readonly (readonly unknown[])[],
  values: readonly unknown[],
  lastSeq: ReadonlyMap<string, number>,
): CommittedTransition[] {
  const records = new Map<string, { seq: number; child: boolean }>();
  const entries = new Map<string, { seq: number; status: string }[]>();
  keys.forEach((key, i) => {
    const decoded = decodeValue(values[i]) as
      | {
        record?: { seq?: unknown; parentId?: unknown };
        history?: { seq: number; status: string }[];
        status?: unknown;
      }
      | undefined;
    if (key[key.length - 2] === "inv" && typeof decoded?.record?.seq === "number") {
      const id = String(key[key.length - 1]);
      const child = typeof decoded.record.parentId === "string";
      records.set(id, { seq: decoded.record.seq, child });
      if (decoded.history !== undefined) {
        entries.set(id, [...entries.get(id) ?? [], ...decoded.history]);
      }
    } else if (key[key.length - 3] === "hist" && typeof decoded?.status === "string") {
      const id = String(key[key.length - 2]);
      const list = entries.get(id) ?? [];
      list.push({ seq: Number(key[key.length - 1]), status: decoded.status });
      entries.set(id, list);
    }
  });
  return [...records].map(([id, { seq, child }]) => ({
    id,
    seq,
    child,
    path: (entries.get(id) ?? [])
      .filter((entry) => entry.seq > (lastSeq.get(id) ?? 0))
      .sort((x, y) => x.seq - y.seq)
      .map((entry) => entry.status),
  }));
}

/**
 * Whether a transition is the runner write `runnerWrite` (a `rate-` write as its plain one):
 * PENDING is a claim (which may go straight on to RUNNING), RUNNING a change to RUNNING alone or
 * the pick-up of a `child` (one with a caller) that goes on to RUNNING, its call edge added in the
 * same step (see `ClaimRequest.runWithCall`), the hand-back starts with KILLED, and every other
 * write ends in its status.
 */
function pathMatches(runnerWrite: AnyWrite, path: readonly string[], child = false): boolean {
  const write = baseWrite(runnerWrite);
  if (write === "tick" || write === "schedule" || write === "lease" || write === "cycle") {
    return false; // by their keys
  }
  if (write === "pending") return path.includes("pending");
  if (write === "killed") return path[0] === "killed";
  if (write === "running") {
    return path[path.length - 1] === "running" && (path.length === 1 || child);
  }
  if (write === "parked") return path[path.length - 1] === "concurrency_controlled";
  if (write === "woken") return path.length === 1 && path[0] === "rerouted";
  return path[path.length - 1] === write;
}

/** The runner writes that give a running slot back: in memory, they wake the key's parked. */
const GIVES_ROOM: ReadonlySet<string> = new Set(["success", "failed", "retry", "paused"]);

/**
 * `interceptKv` hooks that inject the fault of `plan`: a throw in `beforeCommit` refuses a commit
 * (not applied), a throw in `afterCommit` reports an applied one failed, and while down every
 * `get`, `getMany`, `list` and commit throws. A commit matches when one of the transitions it
 * carries is the write (a group commit may carry other drafts too); a tick when it sets a tick's
 * claim, a schedule when it sets a schedule without one, the lease when it sets the lease, a
 * cycle when it sets a refused cycle.
 */
export function kvFaultHooks(plan: FaultPlan): KvHooks {
  const lastSeq = new Map<string, number>();
  // Keys are ["nenc", appId, kind, …].
  const setsOf = (keys: readonly KvKey[], kind: string): boolean =>
    keys.some((key) => key[2] === kind);
  const matches = (keys: readonly KvKey[], transitions: readonly CommittedTransition[]): boolean =>
    plan.write === "tick"
      ? setsOf(keys, "tick")
      : plan.write === "lease"
      ? setsOf(keys, "lease")
      : plan.write === "cycle"
      ? setsOf(keys, "cycle")
      : plan.write === "schedule"
      ? setsOf(keys, "sched") && !setsOf(keys, "tick")
      : transitions.some(({ path, child }) => pathMatches(plan.write, path, child));
  const describe = (transitions: readonly CommittedTransition[]): string =>
    transitions.length === 0
      ? `commit of a ${plan.write === "lease" || plan.write === "cycle" ? plan.write : "schedule"}`
      : `commit of ${transitions.map((t) => `[${t.path.join(", ")}]`).join(" ")}`;
  return {
    beforeGet: () => plan.throwIfDown("get"),
    beforeGetMany: () => plan.throwIfDown("getMany"),
    beforeList: () => plan.throwIfDown("list"),
    beforeCommit: (values, keys) => {
      plan.throwIfDown("commit");
      const transitions = committedTransitions(keys, values, lastSeq);
      plan.before(matches(keys, transitions), describe(transitions));
    },
    afterCommit: (ok, sets, values) => {
      const keys = sets.map(({ key }) => key);
      const transitions = committedTransitions(keys, values, lastSeq);
      if (!ok) return;
      for (const { id, seq } of transitions) lastSeq.set(id, seq);
      if (matches(keys, transitions)) plan.after(ok, describe(transitions));
    },
  };
}

// --- scenarios -----------------------------------------------------------------------------------

/**
 * Makes a fresh app whose store injects `plan`'s fault (`options` never holds `store` or `kv`).
 */
export type FaultyAppFactory = (
  plan: FaultPlan,
  options: Omit<NencOptions, "store" | "kv">,
) => Nenc | Promise<Nenc>;

/**
 * Counts executions per key as the functions see them: entered at start, left in `finally`, and
 * left while paused (see {@linkcode Overlap.paused}).
 */
class Overlap {
  readonly #now = new Map<string, number>();
  readonly max = new Map<string, number>();

  enter(key: string): void {
    const now = (this.#now.get(key) ?? 0) + 1;
    this.#now.set(key, now);
    this.max.set(key, Math.max(this.max.get(key) ?? 0, now));
  }

  leave(key: string): void {
    this.#now.set(key, (this.#now.get(key) ?? 1) - 1);
  }

  /**
   * While an execution waits on results it is PAUSED and gives its slot back: it leaves its key
   * for the wait, and enters it again when the wait returns (after RESUMED took the slot).
   */
  async paused<T>(key: string, wait: Promise<T>): Promise<T> {
    this.leave(key);
    try {
      return await wait;
    } finally {
      this.enter(key);
    }
  }

  async run<T>(key: string, body: () => Promise<T>): Promise<T> {
    this.enter(key);
    try {
      return await body();
    } finally {
      this.leave(key);
    }
  }
}

/** The error every invocation of the throwing task fails with. */
export class Boom extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Boom";
  }
}

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** Never rejects: a handler is attached at once, so no rejection goes unhandled meanwhile. */
function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then((value) => ({ ok: true, value }), (error) => ({ ok: false, error }));
}

/** What one invocation earned, and what it got. */
interface Observed {
  readonly label: string;
  readonly expect: { status: "success"; value: unknown; retries?: number } | {
    status: "failed";
    errorName: string;
    message: string;
  };
  readonly result: Settled<unknown>;
  readonly status: string;
  readonly retries: number;
  readonly historyValid: boolean;
  readonly history: string[];
  /** The times of its PENDING entries: its pick-ups. */
  readonly pickUpsAtMs: number[];
}

/** The facts a scenario gathered, judged by its test. */
interface Facts {
  readonly observed: readonly Observed[];
  readonly maxPerKey: ReadonlyMap<string, number>;
  readonly plan: FaultPlan;
  readonly stopProblems: readonly string[];
  /** The rate limit of the task under test, if any. */
  readonly rateLimit?: { readonly limit: number; readonly intervalMs: number };
}

/** The scenario each runner write is reached by. */
type ScenarioKind = "plain" | "throwing" | "retry" | "parent" | "killed" | "rated";

/**
 * The rate limit of the `rated` scenario: one pick-up per 2 s, so the sibling parks on it while
 * the subject runs, and is woken by time. The window is long enough that the sibling is tried
 * within it on a loaded machine too (all scenarios run at once): with 500 ms, a pick-up slowed
 * past the window claimed the sibling instead of parking it.
 */
const RATE_LIMIT = { limit: 1, intervalMs: 2_000 } as const;

const SCENARIO_OF: Record<RunnerWrite, ScenarioKind> = {
  pending: "plain",
  success: "plain",
  failed: "throwing",
  retry: "retry",
  parked: "plain",
  woken: "plain",
  running: "parent",
  paused: "parent",
  resumed: "parent",
  killed: "killed",
  "rate-pending": "rated",
  "rate-parked": "rated",
  "rate-woken": "rated",
};

const RESULT_DEADLINE_MS = 20_000;
const STEP_DEADLINE_MS = 8_000;

/** Runner options: fast polls and heartbeats, so recovery paths finish within seconds. */
export const RUNNER = { concurrency: 2, pollMs: 20, heartbeatMs: 200 } as const;
/**
 * Orchestrator options: PENDING recovered after 1 s; a silent runner dead after 6 s — well above
 * the 2 s outage, so a runner whose heartbeat the outage held up is not fenced (§7.1) nor taken
 * for dead: the down cases test writes retried until they land, not recovery.
 */
export const ORCHESTRATOR = { maxPendingSeconds: 1, runnerTimeoutSeconds: 6 } as const;

/**
 * Runs one scenario against one fault. Two invocations of the task under test share one key
 * (`"k"`, limit 1 — of running concurrency, or in the `rated` scenario of its rate limit): the
 * subject (`n: 0`) and a sibling (`n: 1`).
 */
async function runScenario(
  makeApp: FaultyAppFactory,
  appId: string,
  plan: FaultPlan,
  scenario: ScenarioKind,
): Promise<Facts> {
  const app = await makeApp(plan, { appId, orchestrator: ORCHESTRATOR });
  const overlap = new Overlap();
  const runs = new Map<string, number>();
  /** How many times the function ran for these args, this run included. */
  const attempt = (name: string): number => {
    const count = (runs.get(name) ?? 0) + 1;
    runs.set(name, count);
    return count;
  };
  const keyed = { runningConcurrency: "keys", keyArguments: ["key"] } as const;
  type Args = { key: string; n: number };
  const top: {
    label: string;
    invocation: Invocation<number>;
    result: Promise<Settled<number>>;
    expect: Observed["expect"];
  }[] = [];
  const runners: Runner[] = [];
  let child: Task<Args, number> | undefined;
  let markStarted!: () => void;
  const started = new Promise<void>((resolve) => markStarted = resolve);

  let task: Task<Args, number>;
  switch (scenario) {
    case "plain":
      task = app.task(
        "work",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async () => {
            await sleep(30);
            return args.n * 10;
          }),
        keyed,
      );
      break;
    case "rated":
      task = app.task(
        "work",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async () => {
            await sleep(30);
            return args.n * 10;
          }),
        { rateLimit: { ...RATE_LIMIT, by: "keys" }, keyArguments: ["key"] },
      );
      break;
    case "throwing":
      task = app.task(
        "work",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async (): Promise<number> => {
            await sleep(30);
            throw new Boom(`boom ${args.n}`);
          }),
        keyed,
      );
      break;
    case "retry":
      task = app.task(
        "work",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async () => {
            await sleep(30);
            if (attempt(`work ${args.n}`) === 1) throw new RetryError(`once more ${args.n}`);
            return args.n * 10;
          }),
        { ...keyed, maxRetries: 1 },
      );
      break;
    case "parent": {
      const childTask = app.task(
        "child",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`child:${args.key}`, async () => {
            await sleep(30);
            return args.n * 10;
          }),
        keyed,
      );
      child = childTask;
      task = app.task(
        "work",
        (args: Args, _ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async () => {
            const called = await childTask.call({ key: `c${args.n}`, n: args.n });
            return (await overlap.paused(`work:${args.key}`, called.result())) + 1;
          }),
        keyed,
      );
      break;
    }
    case "killed":
      task = app.task(
        "work",
        (args: Args, ctx: TaskContext) =>
          overlap.run(`work:${args.key}`, async () => {
            if (args.n === 0 && attempt("work 0") === 1) {
              markStarted();
              // Runs until its runner stops and aborts it (3 s at most, so nothing is left behind).
              await new Promise<void>((resolve) => {
                const timer = setTimeout(resolve, 3_000);
                ctx.signal.addEventListener("abort", () => {
                  clearTimeout(timer);
                  resolve();
                }, { once: true });
              });
            } else {
              await sleep(30);
            }
            return args.n * 10;
          }),
        keyed,
      );
      break;
  }
  const expectFor = (n: number): Observed["expect"] => {
    switch (scenario) {
      case "throwing":
        return { status: "failed", errorName: "Boom", message: `boom ${n}` };
      case "retry":
        return { status: "success", value: n * 10, retries: 1 };
      case "parent":
        return { status: "success", value: n * 10 + 1, retries: 0 };
      default:
        return { status: "success", value: n * 10, retries: 0 };
    }
  };
  /** Ends the test's own waits at the end, so none outlives the scenario (0.2 API). */
  const waits = new AbortController();
  for (const n of [0, 1]) {
    const invocation = await within(task.call({ key: "k", n }), STEP_DEADLINE_MS, `call n=${n}`);
    top.push({
      label: `${task.id}(n=${n})`,
      invocation,
      result: settle(
        within(
          invocation.result({ signal: waits.signal }),
          RESULT_DEADLINE_MS,
          `result() of n=${n}`,
        ),
      ),
      expect: expectFor(n),
    });
  }
  plan.arm();
  /** What went wrong stopping the runners: a rejection, or a hang. */
  const stopProblems: string[] = [];
  const stopping = async (promise: Promise<unknown>, what: string): Promise<void> => {
    try {
      await within(promise, STEP_DEADLINE_MS, what);
    } catch (error) {
      stopProblems.push(
        `${what} ${isDeadline(error) ? "hung" : "rejected"}: ${describeError(error)}`,
      );
    }
  };
  const observe = async (
    label: string,
    invocation: Invocation<number>,
    result: Settled<unknown>,
    expect: Observed["expect"],
  ): Promise<Observed> => {
    const history = await within(invocation.history(), STEP_DEADLINE_MS, `history() of ${label}`);
    return {
      label,
      expect,
      result,
      status: await within(invocation.status(), STEP_DEADLINE_MS, `status() of ${label}`),
      retries: await within(invocation.retries(), STEP_DEADLINE_MS, `retries() of ${label}`),
      historyValid: isValidHistory(history),
      history: history.map((entry) => entry.status),
      pickUpsAtMs: history.filter((entry) => entry.status === "pending")
        .map((entry) => entry.timestampMs),
    };
  };
  const observed: Observed[] = [];
  try {
    const first = app.runner(RUNNER);
    runners.push(first);
    first.start();
    if (scenario === "killed") {
      await within(started, STEP_DEADLINE_MS, "the first execution's start");
      await stopping(first.stop({ graceMs: 0 }), "runner.stop({ graceMs: 0 })");
      const second = app.runner(RUNNER);
      runners.push(second);
      second.start();
    }
    if (plan.write === "rate-woken") {
      // The sibling parked behind the subject's pick-up: its window opens a limit's interval after
      // that (memory wakes it in the first pick-up from then on).
      const [subject, sibling] = top.map(({ invocation }) => invocation) as [
        Invocation<number>,
        Invocation<number>,
      ];
      await waitUntil(async () => await sibling.status() === "concurrency_controlled", {
        message: "the sibling never parked on the rate limit",
        timeoutMs: STEP_DEADLINE_MS,
      });
      const pickedUp = (await subject.history()).find((entry) => entry.status === "pending");
      plan.windowOpensAtMs = pickedUp!.timestampMs + RATE_LIMIT.intervalMs;
    }
    await Promise.all(top.map(({ result }) => result));
    // Observed while the runners still run: a hung invocation shows the status it hangs in.
    await plan.outageOver();
    for (const { label, invocation, result, expect } of top) {
      observed.push(await observe(label, invocation, await result, expect));
    }
    if (child !== undefined) {
      for await (const invocation of app.orchestrator.getExistingInvocations(child)) {
        const n = invocation.args.n as number;
        const label = `child(n=${n})`;
        // The parents settled: a child that is not final by now hangs.
        const result = await settle(
          within(invocation.result({ signal: waits.signal }), 2_000, `result() of ${label}`),
        );
        observed.push(
          await observe(label, invocation, result, {
            status: "success",
            value: n * 10,
            retries: 0,
          }),
        );
      }
    }
  } finally {
    waits.abort();
    // The first runner of the stop scenario was stopped (and judged) already.
    const live = scenario === "killed" ? runners.slice(1) : runners;
    await stopping(Promise.all(live.map((runner) => runner.stop())), "runner.stop() at the end");
  }
  return {
    observed,
    maxPerKey: overlap.max,
    plan,
    stopProblems,
    ...(scenario === "rated" ? { rateLimit: RATE_LIMIT } : {}),
  };
}

/** Whether `error`, or any error in its `cause` chain, is a store fault rather than the task's. */
function isStoreFault(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 10; depth++) {
    if (e.name === "InjectedStoreFault" || /injected store fault/.test(e.message)) return true;
    e = e.cause;
  }
  return false;
}

/** A history as text, a run of repeated pick-up refusals written once with its count. */
function compactHistory(history: readonly string[]): string {
  const parts: string[] = [];
  for (let i = 0; i < history.length;) {
    const pair = history.slice(i, i + 2).join(" → ");
    let repeats = 0;
    while (
      history[i + 2 * repeats] === "concurrency_controlled" &&
      history[i + 2 * repeats + 1] === "rerouted"
    ) repeats++;
    if (repeats > 1) {
      parts.push(`(${pair}) ×${repeats}`);
      i += 2 * repeats;
    } else {
      parts.push(history[i]!);
      i++;
    }
  }
  return parts.join(" → ");
}

const describeError = (error: unknown): string =>
  error instanceof Error ? `${error.name}: ${error.message}` : String(error);

/**
 * Judges the facts of one scenario: every broken promise is listed (one line each, per
 * invocation), so a failure tells the whole story, not only its first symptom.
 */
function judge(facts: Facts): void {
  const { plan } = facts;
  assert.ok(
    plan.kind === "none" || plan.firedAtMs !== undefined,
    `the fault was never injected: no ${plan.write} write reached the store after arming`,
  );
  const problems: string[] = [];
  for (const seen of facts.observed) {
    const where = `${seen.label} [${compactHistory(seen.history)}]`;
    const { result, expect } = seen;
    if (!result.ok && isStoreFault(result.error)) {
      problems.push(
        `${where}: result() rejected with a store error: ${describeError(result.error)}`,
      );
    } else if (!result.ok && isDeadline(result.error)) {
      problems.push(`${where}: hangs ${seen.status}: ${result.error.message}`);
    } else if (expect.status === "success") {
      if (!result.ok) {
        problems.push(`${where}: result() rejected: ${describeError(result.error)}`);
      } else if (!isDeepStrictEqual(result.value, expect.value)) {
        problems.push(
          `${where}: result() is ${JSON.stringify(result.value)}, earned ${expect.value}`,
        );
      }
    } else if (result.ok) {
      problems.push(`${where}: result() resolved, earned a rejection with ${expect.errorName}`);
    } else {
      const error = result.error as Error;
      if (error.name !== expect.errorName || error.message !== expect.message) {
        problems.push(
          `${where}: rejected with ${
            describeError(error)
          }, earned ${expect.errorName}: ${expect.message}`,
        );
      }
    }
    if (seen.status !== expect.status) {
      problems.push(`${where}: status ${seen.status}, earned ${expect.status}`);
    }
    if (expect.status === "success" && expect.retries !== undefined) {
      // A recovery re-runs an attempt whose outcome never landed: it may count one retry less.
      const recovered = seen.history.some((status) => status.endsWith("_recovery"));
      if (
        recovered ? seen.retries > expect.retries : seen.retries !== expect.retries
      ) problems.push(`${where}: ${seen.retries} retries, earned ${expect.retries}`);
    }
    if (!seen.historyValid) problems.push(`${where}: the history is not a valid path`);
  }
  for (const problem of facts.stopProblems) problems.push(problem);
  // A rate limit bounds the starts in a window, not the executions at once (a start may outlast
  // its window on a loaded machine): the rated scenario is judged by its windows below.
  for (const [key, max] of facts.rateLimit === undefined ? facts.maxPerKey : []) {
    if (max > 1) problems.push(`key ${key} ran ${max} executions at once (limit 1)`);
  }
  if (facts.rateLimit !== undefined) {
    // Every pick-up counts, a recovered one's too: no window may hold more than the limit.
    const { limit, intervalMs } = facts.rateLimit;
    const times = facts.observed.flatMap((seen) => seen.pickUpsAtMs);
    const over = windowsOverLimit(times, limit, intervalMs);
    if (over > 0) {
      problems.push(
        `${over} windows of ${intervalMs} ms over the rate limit of ${limit}: pick-ups at ${times}`,
      );
    }
  }
  assertNoProblems(plan, problems);
}

const WRITES: readonly { write: RunnerWrite; label: string; earned: string }[] = [
  { write: "pending", label: "PENDING (claim)", earned: "ends success" },
  { write: "running", label: "RUNNING (child)", earned: "parent and child end success" },
  { write: "paused", label: "PAUSED (parent)", earned: "parent and child end success" },
  { write: "resumed", label: "RESUMED (parent)", earned: "parent and child end success" },
  { write: "success", label: "SUCCESS", earned: "ends success" },
  { write: "failed", label: "FAILED", earned: "ends failed with the task's error" },
  { write: "retry", label: "RETRY", earned: "retries once, then ends success" },
  {
    write: "parked",
    label: "CONCURRENCY_CONTROLLED park of a refused pick-up",
    earned: "ends success",
  },
  { write: "woken", label: "REROUTED wake of a parked invocation", earned: "ends success" },
  { write: "rate-pending", label: "PENDING of a rate-limited task", earned: "ends success" },
  {
    write: "rate-parked",
    label: "CONCURRENCY_CONTROLLED park of a pick-up over its rate limit",
    earned: "ends success",
  },
  {
    write: "rate-woken",
    label: "REROUTED wake of an invocation parked on a rate limit when its window opens",
    earned: "ends success",
  },
  {
    write: "killed",
    label: "KILLED/REROUTED hand-back on stop({ graceMs: 0 })",
    earned: "a second runner finishes it: success",
  },
];

/** The three faults every atomic step is tried with, each with its words for a test's name. */
export const FAULT_KINDS: readonly { kind: FaultKind; fault: string }[] = [
  { kind: "refuse", fault: "refused and not applied" },
  { kind: "applied", fault: "applied then reported failed" },
  { kind: "down", fault: "with the store down for 2 s" },
];

/** A control run without a fault, then the three faults. */
export const CONTROL_AND_FAULT_KINDS: readonly { kind: FaultKind; fault: string }[] = [
  { kind: "none", fault: "without a fault (control)" },
  ...FAULT_KINDS,
];

/**
 * Registers the scenario of one write against a control run and each fault, one test each named
 * by `name(fault)`: the first test starts every scenario at once (each on its own app), and each
 * test awaits and judges its own.
 */
export function faultScenarios<T>(
  name: (fault: string) => string,
  run: (kind: FaultKind) => Promise<T>,
  judge: (facts: T) => void,
): void {
  let all: Map<FaultKind, Promise<Settled<T>>> | undefined;
  const start = (): Map<FaultKind, Promise<Settled<T>>> =>
    new Map(CONTROL_AND_FAULT_KINDS.map(({ kind }) => [kind, settle(run(kind))]));
  for (const { kind, fault } of CONTROL_AND_FAULT_KINDS) {
    test(name(fault), async () => {
      all ??= start();
      const facts = await all.get(kind)!;
      if (!facts.ok) throw facts.error;
      judge(facts.value);
    });
  }
}

/** Fails with every problem a scenario found, naming the fault that fired (or none). */
export function assertNoProblems(plan: FaultPlan, problems: readonly string[]): void {
  if (problems.length === 0) return;
  assert.fail(
    `${plan.kind === "none" ? "without a fault" : `fault fired on ${plan.firedOn}`}:\n  ${
      problems.join("\n  ")
    }`,
  );
}

/**
 * Registers the fault-injection contract for one backend: every runner write × every fault, one
 * test each. The first test starts every scenario of the backend at once.
 */
export function faultContract(backend: string, makeApp: FaultyAppFactory): void {
  const ending = "result() never rejects with a store error, nothing hangs, no key over its limit";
  // Control runs: each scenario without a fault, so a failing fault case can be told from a
  // failing scenario.
  const controls = [
    { write: "success", label: "a task that returns", earned: "ends success" },
    { write: "failed", label: "a task that throws", earned: "ends failed with the task's error" },
    {
      write: "retry",
      label: "a task that throws RetryError once",
      earned: "retries once, then ends success",
    },
    { write: "paused", label: "a parent awaiting a child", earned: "parent and child end success" },
    {
      write: "rate-woken",
      label: "a rate-limited task called twice within its window",
      earned: "ends success",
    },
    {
      write: "killed",
      label: "a task whose runner stops with graceMs 0",
      earned: "a second runner finishes it: success",
    },
  ] as const;
  const cases = [
    ...controls.map(({ write, label, earned }) => ({
      write,
      kind: "none" as FaultKind,
      name: `[${backend}] control without a fault, ${label}: the invocation ${earned}, ${ending}`,
    })),
    ...WRITES.flatMap(({ write, label, earned }) =>
      FAULT_KINDS.map(({ kind, fault }) => ({
        write,
        kind,
        name: `[${backend}] ${label} write ${fault}: the invocation ${earned}, ${ending}`,
      }))
    ),
  ];
  let all: Map<string, Promise<Settled<Facts>>> | undefined;
  const start = (): Map<string, Promise<Settled<Facts>>> =>
    new Map(cases.map(({ write, kind }, i) => [
      `${write}/${kind}`,
      settle(
        runScenario(
          makeApp,
          `faults-${i}-${write}-${kind}`,
          new FaultPlan(write, kind),
          SCENARIO_OF[write],
        ),
      ),
    ]));
  for (const { write, kind, name } of cases) {
    test(name, async () => {
      all ??= start();
      const facts = await all.get(`${write}/${kind}`)!;
      if (!facts.ok) throw facts.error;
      judge(facts.value);
    });
  }
}
