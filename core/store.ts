/**
 * The storage port: what the orchestrator needs from a backend, as atomic state transitions and
 * bounded reads. The rules of a transition — the status table, ownership, which running slot,
 * registration key and queue entry it takes or frees — are computed once, here, by
 * {@linkcode planChange}; a backend applies the plan in one atomic step.
 *
 * @module
 */

import type { CallGraphSnapshot, CallRef } from "./call_graph.ts";
import { InvocationStatusOwnershipError } from "./errors.ts";
import { callLabel, newInvocationId, type SerializedArguments } from "./ids.ts";
import type { FiredTick, Schedule } from "./schedules.ts";
import {
  AVAILABLE_FOR_RUN_STATUSES,
  FINAL_STATUSES,
  type HistoryEntry,
  InvocationStatus,
  SLOT_HOLDING_STATUSES,
  type StatusRecord,
  transition,
} from "./status.ts";

/**
 * An error as stored: plain data, rehydrated by the app's serializer.
 *
 * @example
 * ```ts
 * import { Nenc, type SerializedError } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const fail = app.task("fail", (): number => {
 *   throw new RangeError("Cannot go: too far", { cause: "gps" });
 * });
 * const invocation = await fail.call();
 * await app.runner().drain();
 * const stored: SerializedError | undefined = (await app.orchestrator.store.get(invocation.id))?.error;
 * console.log(stored?.name, stored?.message, stored?.cause); // "RangeError" "Cannot go: too far" { value: '"gps"' }
 * ```
 */
export interface SerializedError {
  /** The error's `name`. */
  readonly name: string;
  /** The name of its class (`constructor.name`), which picks the class to rehydrate. */
  readonly className?: string;
  /** The error's message. */
  readonly message: string;
  /** The stack, when there was one. */
  readonly stack?: string;
  /** Own enumerable data fields of the error, each as canonical JSON. */
  readonly data: Readonly<Record<string, string>>;
  /** The serialized `cause`: an error, or any other value as canonical JSON. */
  readonly cause?: SerializedError | { readonly value: string };
}

/**
 * One invocation as stored.
 *
 * @example
 * ```ts
 * import { type InvocationRecord, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc({ appId: "shop" });
 * const charge = app.task("charge", ({ cents }: { cents: number }) => cents);
 * const invocation = await charge.call({ cents: 250 });
 * const record: InvocationRecord | undefined = await app.orchestrator.store.get(invocation.id);
 * console.log(record?.status, record?.args, record?.retries); // "registered" { cents: "250" } 0
 * ```
 */
export interface InvocationRecord {
  /** The invocation id: a ULID. */
  readonly id: string;
  /** The task id. */
  readonly taskId: string;
  /** The call id: task id + hash of the arguments. */
  readonly callId: string;
  /** The arguments, each as canonical JSON. */
  readonly args: SerializedArguments;
  /** The invocation that made the call, or `null` for a call from outside any task. */
  readonly parentId: string | null;
  /**
   * The registration-concurrency key, held until the invocation first runs: from its
   * registration, through REROUTED, CONCURRENCY_CONTROLLED and PENDING, to the step that enters
   * RUNNING or a final status, which releases it and sets this to `null`. `null` without one.
   */
  readonly registrationKey: string | null;
  /** The running-concurrency slot key taken while PENDING / RUNNING / RESUMED, or `null`. */
  readonly runningKey: string | null;
  /**
   * How many executions may hold `runningKey` at once (the task's `runningConcurrency` limit);
   * records written before 0.2 lack it: 1.
   */
  readonly runningLimit?: number;
  /**
   * The slots of its concurrency groups, taken and freed with the running slot (in the same
   * atomic step, all or none); absent: none.
   */
  readonly groupSlots?: readonly GroupSlot[];
  /** The current status. */
  readonly status: InvocationStatus;
  /** The runner that owns the invocation, or `null`. */
  readonly ownerId: string | null;
  /** The sequence number of the last history entry. */
  readonly seq: number;
  /**
   * The sequence number of the PENDING entry of the current claim, or `null` before the first:
   * a runner's writes name it, so a superseded claim (recovered, then claimed again, even by the
   * same runner) cannot write any more.
   */
  readonly claimSeq: number | null;
  /** When the status was last set, epoch ms. */
  readonly updatedAtMs: number;
  /** When the invocation was registered, epoch ms. */
  readonly createdAtMs: number;
  /** Retries so far. */
  readonly retries: number;
  /** Not picked up before this time (retry back-off), epoch ms. */
  readonly availableAtMs: number;
  /** The serialized result, once SUCCESS. */
  readonly result?: string;
  /** The serialized error, once FAILED (or the last error before a retry). */
  readonly error?: SerializedError;
  /** When the invocation reached a final status, or `null`. */
  readonly finishedAtMs: number | null;
  /** When a final invocation is purged, or `null`. */
  readonly purgeAtMs: number | null;
  /**
   * An idempotency key names this invocation until then, epoch ms: it is not purged before (its
   * `purgeAtMs` is at least this). Absent or `null`: no key names it.
   */
  readonly keepUntilMs?: number | null;
  /**
   * Whether an execution holds the invocation's slots (its running key): from its pick-up to the
   * commit that records the execution's end, except while PAUSED (SPEC §7.1). A CANCELED
   * invocation keeps them until its function returned. Read it through {@linkcode holdsSlots}:
   * records written before 0.2 lack it.
   */
  readonly holdsSlots?: boolean;
  /**
   * The slot key it is parked on: refused a slot at pick-up because that key was full (or had
   * others parked), it waits CONCURRENCY_CONTROLLED, out of the queue, until the key has room
   * (SPEC §7.2). Absent or `null`: not parked.
   */
  readonly parkedOn?: string | null;
  /**
   * The slot key it was woken from: back in the queue (REROUTED) because that key had room, until
   * its next change (its pick-up, mostly). While woken it counts against the key's room, so a
   * newcomer cannot take the slot it was woken for. Absent or `null`: not woken.
   */
  readonly wokenOn?: string | null;
  /**
   * Its fairness lane: the first keyed slot key of its task (a `"keys"` running key, else the key
   * of its first group with `keyArguments` or `key`). While queued and not in back-off it waits in
   * that lane, and the lanes of a key space take turns (SPEC §7.2). Absent: no lane.
   */
  readonly lane?: string;
  /**
   * Its priority (SPEC §7.3): queued invocations of higher priority are picked up first. Absent:
   * `0`.
   */
  readonly priority?: number;
  /**
   * The tick (epoch ms) of the schedule that fired this invocation: its task sees it as
   * `ctx.scheduledAt`. Absent: not fired by a schedule.
   */
  readonly scheduledAtMs?: number;
  /**
   * Its rate limit key (the task's `rateLimit`): each pick-up counts against it, and a pick-up
   * over the limit parks on it (SPEC §7.3). Absent: no rate limit.
   */
  readonly rate?: RateLimitKey;
  /**
   * The W3C `traceparent` of the span its call was made in (the run of its parent, or a span of
   * the caller's): the spans of its runs are children of that span, in any process. Absent: none.
   */
  readonly trace?: string;
}

/**
 * One slot of a concurrency group an invocation needs: the group's key for its arguments, and how
 * many invocations may hold it at once.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type GroupSlot } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const deploy = app.task("deploy", ({ env }: { env: string }) => env, {
 *   concurrencyGroups: [{ name: "deploys", limit: 5 }],
 * });
 * const record = await app.orchestrator.store.get((await deploy.call({ env: "prod" })).id);
 * const slots: readonly GroupSlot[] = record?.groupSlots ?? [];
 * console.log(slots.map((slot) => slot.limit)); // [5]
 * ```
 */
export interface GroupSlot {
  /** The slot key: the group's name and group key, hashed (it starts with `#`). */
  readonly key: string;
  /** How many invocations may hold it at once. */
  readonly limit: number;
}

/**
 * The slot keys of an invocation with their limits: its running key (if any), then its groups'.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { slotsOf } from "@nenc/nenc/core";
 *
 * const record: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t", runningLimit: 2, groupSlots: [{ key: "#group#g", limit: 5 }],
 *   status: "registered", ownerId: null, seq: 1, updatedAtMs: 0, createdAtMs: 0, retries: 0,
 *   availableAtMs: 0, finishedAtMs: null, purgeAtMs: null, claimSeq: null,
 * };
 * console.log(slotsOf(record)); // [{ key: "t", limit: 2 }, { key: "#group#g", limit: 5 }]
 * ```
 */
export function slotsOf(record: InvocationRecord): GroupSlot[] {
  return [
    ...(record.runningKey === null
      ? []
      : [{ key: record.runningKey, limit: record.runningLimit ?? 1 }]),
    ...record.groupSlots ?? [],
  ];
}

/**
 * The rate limit an invocation's pick-ups count against (SPEC §7.3): its key, and how many
 * pick-ups of that key any window of `intervalMs` may hold. Nobody holds a rate limit key: its
 * state logs the times of its last `limit` pick-ups instead ({@linkcode SlotState.starts}).
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type RateLimitKey } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const fetchPage = app.task("fetchPage", ({ page }: { page: number }) => page, {
 *   rateLimit: { limit: 5, intervalMs: 1_000 },
 * });
 * const record = await app.orchestrator.store.get((await fetchPage.call({ page: 1 })).id);
 * const rate: RateLimitKey | undefined = record?.rate;
 * console.log(rate); // { key: "#rate#fetchPage", limit: 5, intervalMs: 1000 }
 * ```
 */
export interface RateLimitKey {
  /** The key: the task's `rateLimit.by` for the invocation's arguments (it starts with `#`). */
  readonly key: string;
  /** How many pick-ups of the key any window of `intervalMs` may hold. */
  readonly limit: number;
  /** The window, in ms. */
  readonly intervalMs: number;
}

/**
 * Whether an execution of the invocation holds its slots; see
 * {@linkcode InvocationRecord.holdsSlots}.
 *
 * @example A running invocation holds its slots, a paused one gave them back
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { holdsSlots } from "@nenc/nenc/core";
 *
 * const base: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t", status: "running", ownerId: "r1", seq: 3, updatedAtMs: 0, createdAtMs: 0,
 *   retries: 0, availableAtMs: 0, finishedAtMs: null, purgeAtMs: null, claimSeq: 2,
 * };
 * console.log(holdsSlots(base), holdsSlots({ ...base, status: "paused" })); // true false
 * ```
 */
export function holdsSlots(record: InvocationRecord): boolean {
  return record.holdsSlots ?? SLOT_HOLDING_STATUSES.has(record.status);
}

/**
 * What {@linkcode Store.register} needs to create an invocation: its identity and keys.
 *
 * @example Registering on a store directly, as a backend test does
 * ```ts
 * import { callId, newInvocationId } from "@nenc/nenc";
 * import { MemoryStore, type NewInvocation, serializeArguments } from "@nenc/nenc/core";
 *
 * const args = serializeArguments({ n: 3 });
 * const invocation: NewInvocation = {
 *   id: newInvocationId(), taskId: "fib", callId: callId("fib", args), args, parentId: null,
 *   registrationKey: null, runningKey: null, nowMs: Date.now(), runnerId: null,
 * };
 * const { created } = await new MemoryStore().register(invocation);
 * console.log(created?.status, created?.seq); // "registered" 1
 * ```
 */
export interface NewInvocation extends
  Pick<
    InvocationRecord,
    "id" | "taskId" | "callId" | "args" | "parentId" | "registrationKey" | "runningKey"
  > {
  /** How many executions may hold `runningKey` at once [`1`]. */
  readonly runningLimit?: number;
  /** The slots of its concurrency groups [none]. */
  readonly groupSlots?: readonly GroupSlot[];
  /** Its fairness lane, one of its slot keys ({@linkcode InvocationRecord.lane}) [none]. */
  readonly lane?: string | null;
  /** Its rate limit key ({@linkcode InvocationRecord.rate}) [none]. */
  readonly rate?: RateLimitKey | null;
  /** Registration time, epoch ms. */
  readonly nowMs: number;
  /** Not picked up before this time (a delayed call), epoch ms [`nowMs`]. */
  readonly availableAtMs?: number;
  /** Its priority, higher first [`0`]. */
  readonly priority?: number;
  /** The runner registering it (a task calling a task), or `null`. */
  readonly runnerId: string | null;
  /**
   * The call's idempotency key and when it expires (epoch ms): a live key of the task names the
   * invocation to return; otherwise the key is written, in the same atomic step, for the
   * invocation this registration returns (new, or reused by registration concurrency).
   */
  readonly idempotency?: { readonly key: string; readonly expiresAtMs: number };
  /** The tick of the schedule firing it, epoch ms ({@linkcode Store.fireTick}) [none]. */
  readonly scheduledAtMs?: number;
  /** The trace context of its call ({@linkcode InvocationRecord.trace}) [none]. */
  readonly trace?: string;
}

/**
 * The outcome of {@linkcode Store.register}: a new invocation, the one holding the key, or none
 * because the caller (`parentId`) is CANCELED (`refused`: its record).
 *
 * @example The second registration of a key finds the first
 * ```ts
 * import { MemoryStore, type NewInvocation, type RegisterOutcome } from "@nenc/nenc/core";
 *
 * const store = new MemoryStore();
 * const sync = (id: string): NewInvocation => ({
 *   id, taskId: "sync", callId: "sync#0", args: {}, parentId: null, registrationKey: "sync",
 *   runningKey: null, nowMs: 0, runnerId: null,
 * });
 * await store.register(sync("i1"));
 * const outcome: RegisterOutcome = await store.register(sync("i2"));
 * console.log(outcome.created, outcome.existing?.id); // undefined "i1"
 * ```
 */
export type RegisterOutcome =
  | {
    readonly created: InvocationRecord;
    readonly existing?: undefined;
    readonly refused?: undefined;
  }
  | {
    readonly existing: InvocationRecord;
    readonly created?: undefined;
    readonly refused?: undefined;
  }
  | {
    readonly refused: InvocationRecord;
    readonly created?: undefined;
    readonly existing?: undefined;
  };

/**
 * A status change: one or more statuses entered in one atomic step.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type StatusChange } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const invocation = await app.task("ping", () => "pong").call();
 * const change: StatusChange = {
 *   path: ["concurrency_controlled", "rerouted"], runnerId: null, nowMs: Date.now(),
 * };
 * const outcome = await app.orchestrator.store.change(invocation.id, change);
 * if (outcome.ok) console.log(outcome.entries.map((entry) => entry.seq)); // [2, 3]
 * ```
 */
export interface StatusChange {
  /** The statuses to enter, in order (REGISTERED → CONCURRENCY_CONTROLLED → REROUTED is one step). */
  readonly path: readonly InvocationStatus[];
  /** The runner making the change, or `null`. */
  readonly runnerId: string | null;
  /** The time of the change, epoch ms. */
  readonly nowMs: number;
  /** Apply only if the record is still at this sequence number (a fence against races). */
  readonly expectSeq?: number;
  /** The claim the writer holds: refused unless it is still the current claim. */
  readonly claimSeq?: number;
  /** The serialized result to store (SUCCESS). */
  readonly result?: string;
  /** The serialized error to store (FAILED, RETRY). */
  readonly error?: SerializedError;
  /** Count one more retry in the same step. */
  readonly incrementRetries?: boolean;
  /** When a re-queued invocation becomes available (default: now). */
  readonly availableAtMs?: number;
  /** When a final invocation is purged. */
  readonly purgeAtMs?: number;
  /**
   * Ends the execution of a CANCELED invocation whose function has returned (or whose runner
   * died): gives its slots back, with an empty `path`.
   */
  readonly endExecution?: boolean;
  /**
   * Parks the invocation on this slot key (one of its own): with a `path` that ends at
   * CONCURRENCY_CONTROLLED, it leaves the queue and waits for the key to have room.
   */
  readonly parkOn?: string;
  /**
   * Records, in the same atomic step, that the invocation waits on these (blocking control's
   * edges): a running invocation that pauses for results frees its slot and names what it waits
   * on in one step. A backend may write a very long list in chunks ahead of the step (edges alone
   * are harmless: they are removed when either end is final).
   */
  readonly waitFor?: readonly string[];
}

/**
 * The outcome of a {@linkcode StatusChange}.
 *
 * @example A fenced change loses to a concurrent one
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ChangeOutcome } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const invocation = await app.task("ping", () => "pong").call();
 * const outcome: ChangeOutcome = await app.orchestrator.store.change(invocation.id, {
 *   path: ["pending"], runnerId: "r1", nowMs: Date.now(), expectSeq: 7,
 * });
 * console.log(outcome.ok ? outcome.record.status : outcome.reason); // "conflict"
 * ```
 */
export type ChangeOutcome =
  | {
    readonly ok: true;
    readonly record: InvocationRecord;
    readonly entries: readonly HistoryEntry[];
    /**
     * The status the record had before this change (a replayed change, which wrote nothing: its
     * status now).
     */
    readonly previous: InvocationStatus;
    /**
     * The change had already been applied (by an earlier try whose answer was lost): nothing
     * was written now, see {@linkcode isAppliedChange}.
     */
    readonly replayed?: true;
    /**
     * The change to a final status proved the invocation holds no call in its own step (a
     * backend may): {@linkcode Store.removeCall} would release nothing, and is not called.
     */
    readonly holdsNoCall?: true;
    /**
     * The change's wait edges (`waitFor`) to invocations already final or gone were released in
     * its own step (a backend may): nothing is left for the caller to release after it.
     */
    readonly endedReleased?: true;
  }
  | {
    readonly ok: false;
    /**
     * `missing`: no such invocation; `conflict`: `expectSeq` did not match; `slot-busy`: a slot
     * key of the invocation has no room for it (`busyKey`).
     */
    readonly reason: "missing" | "conflict" | "slot-busy";
    readonly record?: InvocationRecord;
    /** The slot key that refused a `slot-busy` change: where a refused pick-up parks. */
    readonly busyKey?: string;
  };

/**
 * A pick-up request: claim up to `max` invocations for `runnerId`.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ClaimRequest } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * await app.task("ping", () => "pong").call();
 * const request: ClaimRequest = {
 *   runnerId: "r1", nowMs: Date.now(), max: 10,
 *   rerouteOnConcurrencyControl: () => true, purgeAtMs: Date.now() + 3_600_000,
 * };
 * const { claimed } = await app.orchestrator.store.claim(request);
 * console.log(claimed.map((record) => [record.status, record.ownerId])); // [["pending", "r1"]]
 * ```
 */
export interface ClaimRequest {
  /** The claiming runner: it becomes the owner of what it claims. */
  readonly runnerId: string;
  /** The time of the claim, epoch ms. */
  readonly nowMs: number;
  /** At most this many invocations are claimed. */
  readonly max: number;
  /**
   * Whether the blocking invocations ({@linkcode Store.blocking}: waited on, waiting on nothing,
   * available) are tried first, oldest first, before the queue. A backend reads them together
   * with its other reads of the pick-up.
   */
  readonly blocking?: boolean;
  /**
   * When given, the pick-up reads at once but claims (its commits) only once this resolves: a
   * runner picks up for slots that are about to be given back. If it rejects, nothing is claimed.
   */
  readonly ready?: Promise<void>;
  /**
   * With `ready`: the invocations whose ends give those slots back (their executions returned,
   * their end writes under way). A backend may commit a claim in the same atomic step as one of
   * those ends instead of after it: the commit that records an execution's end gives its slot
   * back, and may take it again for the next invocation (§7.1's slots), one commit instead of two.
   */
  readonly freedBy?: readonly string[];
  /**
   * Slots freed since the pick-up began: called when it has read what it may claim, it hands the
   * pick-up those slots too and says how many (`0`: none). A backend whose pick-up takes a while
   * (round trips) may ask; what it claims is then at most `max` plus what this gave.
   */
  readonly widen?: () => number;
  /**
   * Whether a candidate refused by a full key is parked (`true`) or finalised; one refused by its
   * rate limit key is always parked.
   */
  readonly rerouteOnConcurrencyControl: (taskId: string) => boolean;
  /** Purge time for candidates finalised by concurrency control. */
  readonly purgeAtMs: number;
  /**
   * Whether a candidate goes straight through PENDING to RUNNING in the same atomic step (it has
   * nothing to check before running); otherwise it stops at PENDING.
   */
  readonly runAtOnce?: (record: InvocationRecord) => boolean;
  /**
   * Whether a candidate with a caller (`parentId`) that stops at PENDING may go on to RUNNING in
   * the same atomic step, its call edge caller → candidate added there ({@linkcode callRefOf};
   * none for a caller that is gone or final, as `addCallAndCheckCycles`). A backend may leave it
   * at PENDING instead — always, when it adds call edges in steps of their own, when the edge
   * would close a cycle, or when its cycle check does not fit the step (on Deno KV: a callee whose
   * calls reach more calls than a commit can check beside the claim's own checks) — and the
   * runner then adds the edge, or fails it with the cycle (`setInvocationRun`).
   */
  readonly runWithCall?: (record: InvocationRecord) => boolean;
  /**
   * Whether the runner runs this task [all]: invocations of other tasks stay queued, untouched,
   * for a runner that defines them (a rolling deploy loses nothing).
   */
  readonly accepts?: (taskId: string) => boolean;
}

/**
 * The outcome of a {@linkcode ClaimRequest}.
 *
 * @example One running slot per task: the second candidate is parked
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ClaimOutcome } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
 * await sync.parallelize([{ n: 1 }, { n: 2 }]);
 * const outcome: ClaimOutcome = await app.orchestrator.store.claim({
 *   runnerId: "r1", nowMs: Date.now(), max: 2,
 *   rerouteOnConcurrencyControl: () => true, purgeAtMs: 0,
 * });
 * console.log(outcome.claimed.length, outcome.parked.length, outcome.finalised.length); // 1 1 0
 * ```
 */
export interface ClaimOutcome {
  /** Moved to PENDING (or on to RUNNING, see `runAtOnce`), owned by the runner, with their running slots. */
  readonly claimed: readonly InvocationRecord[];
  /** Refused a slot and parked on its key (CONCURRENCY_CONTROLLED), out of the queue until woken. */
  readonly parked: readonly InvocationRecord[];
  /** Refused a slot and finalised (CONCURRENCY_CONTROLLED_FINAL). */
  readonly finalised: readonly InvocationRecord[];
  /**
   * The status each invocation of `claimed`, `parked` and `finalised` had before this claim (one
   * of {@linkcode AVAILABLE_FOR_RUN_STATUSES}), by id.
   */
  readonly previous: ReadonlyMap<string, InvocationStatus>;
  /**
   * The pick-up claimed all it could take and saw more queued behind: a runner that frees a slot
   * soon finds work (it may start its next pick-up ahead, see `ClaimRequest.ready`).
   */
  readonly more?: boolean;
}

/**
 * At most this many queued invocations are controlled (parked or finalised) per claim.
 *
 * @example A backlog behind one running slot is parked, at most this many per claim
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { CONTROL_LIMIT } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
 * await sync.parallelize(Array.from({ length: 150 }, (_, n) => ({ n })));
 * await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" }); // takes the task's one slot
 * await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" }); // 149 are blocked
 * console.log(CONTROL_LIMIT, (await app.orchestrator.store.counts()).get("sync"));
 * // 100 Map(3) { "pending" => 1, "concurrency_controlled" => 100, "registered" => 49 }
 * ```
 */
export const CONTROL_LIMIT = 100;

/**
 * The change for a candidate that a full key (`busyKey`) refused during `request`: parked on that
 * key (CONCURRENCY_CONTROLLED, one history entry, out of the queue until the key has room), or
 * finalised (CONCURRENCY_CONTROLLED_FINAL), as its task says — except that a refusal by its rate
 * limit key always parks: the window opens by itself (SPEC §7.3).
 *
 * @example
 * ```ts
 * import { controlChange } from "@nenc/nenc/core";
 *
 * const request = {
 *   runnerId: "r1", nowMs: 0, max: 1, purgeAtMs: 0,
 *   rerouteOnConcurrencyControl: (taskId: string) => taskId !== "strict",
 * };
 * const rate = { key: "#rate#strict", limit: 1, intervalMs: 1_000 };
 * console.log(controlChange(request, { taskId: "task" }, "task").path); // ["concurrency_controlled"]
 * console.log(controlChange(request, { taskId: "strict" }, "strict").path); // ["concurrency_controlled_final"]
 * console.log(controlChange(request, { taskId: "strict", rate }, rate.key).path); // ["concurrency_controlled"]
 * ```
 */
export function controlChange(
  request: ClaimRequest,
  record: Pick<InvocationRecord, "taskId" | "rate">,
  busyKey: string,
): StatusChange {
  const base = { runnerId: request.runnerId, nowMs: request.nowMs };
  return request.rerouteOnConcurrencyControl(record.taskId) || busyKey === record.rate?.key
    ? { ...base, path: [InvocationStatus.CONCURRENCY_CONTROLLED], parkOn: busyKey }
    : {
      ...base,
      path: [InvocationStatus.CONCURRENCY_CONTROLLED_FINAL],
      purgeAtMs: request.purgeAtMs,
    };
}

/**
 * The change that wakes an invocation parked on a key with room: back in the queue (REROUTED) at
 * the place it first became available, so it goes before the key's newcomers.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { wakeChange } from "@nenc/nenc/core";
 *
 * const parked: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t", status: "concurrency_controlled", ownerId: null, seq: 2, updatedAtMs: 9,
 *   createdAtMs: 5, retries: 0, availableAtMs: 5, finishedAtMs: null, purgeAtMs: null,
 *   claimSeq: null, parkedOn: "t",
 * };
 * console.log(wakeChange(parked, "r1", 20)); // { path: ["rerouted"], runnerId: "r1", nowMs: 20, availableAtMs: 5, expectSeq: 2 }
 * ```
 */
export function wakeChange(
  record: InvocationRecord,
  runnerId: string | null,
  nowMs: number,
): StatusChange {
  return {
    path: [InvocationStatus.REROUTED],
    runnerId,
    nowMs,
    availableAtMs: record.availableAtMs,
    expectSeq: record.seq,
  };
}

/**
 * A filter for {@linkcode Store.find}.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type FindQuery } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const send = app.task("send", ({ to }: { to: string }) => to);
 * await send.call({ to: "ada" });
 * await send.call({ to: "bob" });
 * const query: FindQuery = { taskId: "send", args: { to: '"ada"' }, statuses: new Set(["registered"]) };
 * for await (const record of app.orchestrator.store.find(query)) console.log(record.args); // { to: '"ada"' }
 * ```
 */
export interface FindQuery {
  /** The task. */
  readonly taskId: string;
  /** Serialized argument values that must all match. */
  readonly args?: Readonly<Record<string, string>>;
  /** Statuses, any of which matches. */
  readonly statuses?: ReadonlySet<InvocationStatus>;
}

/**
 * Candidates for recovery, see {@linkcode Store.recoverable}.
 *
 * @example A claim that its runner never ran
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type RecoverableQuery } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * await app.task("ping", () => "pong").call();
 * await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
 * const query: RecoverableQuery = { pendingBeforeMs: Date.now() + 1, heartbeatBeforeMs: 0, max: 10 };
 * const stale = await app.orchestrator.store.recoverable(query);
 * console.log(stale.map((record) => [record.status, record.ownerId])); // [["pending", "r1"]]
 * ```
 */
export interface RecoverableQuery {
  /** PENDING invocations that entered PENDING before this time. */
  readonly pendingBeforeMs: number;
  /** Runners whose last heartbeat is older than this time are dead. */
  readonly heartbeatBeforeMs: number;
  /** At most this many invocations. */
  readonly max: number;
}

/**
 * One page of a runner's executions, see {@linkcode Store.executions}: a runner reads its own
 * range a page at a time, from where the last page ended, to find its orphans.
 *
 * @example Two pages of three executions
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ExecutionsPage } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const square = app.task("square", ({ n }: { n: number }) => n * n);
 * await square.parallelize([{ n: 1 }, { n: 2 }, { n: 3 }]);
 * await app.orchestrator.getInvocationsToRun(3, { runnerId: "r1" });
 * const store = app.orchestrator.store;
 * const first: ExecutionsPage = { limit: 2 };
 * const ids = await store.executions("r1", first);
 * const rest = await store.executions("r1", { after: ids.at(-1)!, limit: 2 });
 * console.log(ids.length, rest.length); // 2 1
 * ```
 */
export interface ExecutionsPage {
  /** Only ids that sort after this one (it need not be an execution any more) [from the first]. */
  readonly after?: string;
  /** At most this many ids, an integer ≥ 1. */
  readonly limit: number;
}

/**
 * When a take of the upkeep lease happens and until when it asks for it, see
 * {@linkcode Store.takeUpkeepLease}.
 *
 * @example A runner takes the upkeep lease for 10 s
 * ```ts
 * import { MemoryStore, type UpkeepLease } from "@nenc/nenc/core";
 *
 * const store = new MemoryStore();
 * const lease: UpkeepLease = { nowMs: 1_000, untilMs: 11_000 };
 * console.log(await store.takeUpkeepLease("r1", lease)); // true
 * ```
 */
export interface UpkeepLease {
  /** The taker's time, epoch ms: a lease held until then or earlier has run out. */
  readonly nowMs: number;
  /**
   * Until when the taker holds it if it gets it, epoch ms. A runner asks for its last heartbeat
   * that landed plus `runnerTimeoutSeconds`: the time the others would take it for dead.
   */
  readonly untilMs: number;
}

/**
 * A runner's last heartbeat.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type RunnerInfo } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * await app.orchestrator.store.heartbeat("r1", 1_700_000_000_000, ["ping"]);
 * const runners: RunnerInfo[] = await app.orchestrator.store.runners();
 * console.log(runners); // [{ runnerId: "r1", lastSeenMs: 1700000000000, taskIds: ["ping"] }]
 * ```
 */
export interface RunnerInfo {
  /** The runner id. */
  readonly runnerId: string;
  /** Its last heartbeat, epoch ms. */
  readonly lastSeenMs: number;
  /** The tasks it defines, when its heartbeat said. */
  readonly taskIds?: readonly string[];
}

/**
 * The invocations of one task that wait for their time, see {@linkcode Store.delayedCounts}.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type DelayedCount } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const remind = app.task("remind", ({ to }: { to: string }) => to);
 * const nowMs = Date.now();
 * await remind.call({ to: "ada" }, { runAt: nowMs + 60_000 });
 * const counts: Map<string, DelayedCount> = await app.orchestrator.store.delayedCounts(nowMs);
 * console.log(counts.get("remind")?.count, counts.get("remind")!.nextMs - nowMs); // 1 60000
 * ```
 */
export interface DelayedCount {
  /** How many wait. */
  readonly count: number;
  /** The earliest time one of them becomes available, epoch ms. */
  readonly nextMs: number;
}

/**
 * Every rate limit key starts with this: the key separator, which task ids cannot hold, so no slot
 * key does.
 *
 * @example
 * ```ts
 * import { RATE_KEY_PREFIX } from "@nenc/nenc/core";
 *
 * console.log(RATE_KEY_PREFIX); // "#rate#"
 * ```
 */
export const RATE_KEY_PREFIX = "#rate#";

/**
 * Whether `key` is a rate limit key, and then the task it limits.
 *
 * @example
 * ```ts
 * import { rateKeyTask } from "@nenc/nenc/core";
 *
 * console.log(rateKeyTask("#rate#announce"), rateKeyTask("#rate#send#3f2a#keys"), rateKeyTask("send"));
 * // "announce" "send" undefined
 * ```
 */
export function rateKeyTask(key: string): string | undefined {
  return key.startsWith(RATE_KEY_PREFIX)
    ? key.slice(RATE_KEY_PREFIX.length).split("#", 1)[0]
    : undefined;
}

/**
 * The state of one rate limit key, see {@linkcode Store.rateWindows}: its last pick-up times and
 * the invocations waiting on it.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type RateWindow } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong", { rateLimit: { limit: 1, intervalMs: 60_000 } });
 * await ping.parallelize([undefined, undefined]);
 * await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" }); // one runs, one parks
 * const [window]: RateWindow[] = await app.orchestrator.store.rateWindows();
 * console.log(window!.key, window!.starts.length, window!.parked); // "#rate#ping" 1 1
 * ```
 */
export interface RateWindow {
  /** The rate limit key ({@linkcode RateLimitKey.key}). */
  readonly key: string;
  /** Its last pick-up times, ascending, epoch ms (at most its limit). */
  readonly starts: readonly number[];
  /** Invocations parked on it, waiting for its window to open. */
  readonly parked: number;
  /** Invocations woken for it and not picked up yet. */
  readonly woken: number;
}

/**
 * A filter for {@linkcode Store.list}: the newest invocations first, of any of `taskIds`, in any
 * of `statuses`, registered at or after `sinceMs`, at most `limit` of them.
 *
 * @example The two newest invocations of a task
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ListQuery } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const send = app.task("send", ({ to }: { to: string }) => to);
 * for (const to of ["ada", "bob", "cy"]) await send.call({ to });
 * const query: ListQuery = { taskIds: ["send"], statuses: new Set(["registered"]), limit: 2 };
 * const records = await app.orchestrator.store.list(query);
 * console.log(records.map((record) => record.args.to)); // ['"cy"', '"bob"']
 * ```
 */
export interface ListQuery {
  /** Tasks, any of which matches [every task]. */
  readonly taskIds?: readonly string[];
  /** Statuses, any of which matches [every status]. */
  readonly statuses?: ReadonlySet<InvocationStatus>;
  /** Only invocations registered at or after this time, epoch ms [all]. */
  readonly sinceMs?: number;
  /** At most this many invocations, an integer ≥ 1. */
  readonly limit: number;
}

/**
 * The use of one concurrency slot key, read by {@linkcode Store.concurrency}: a running key (a
 * task's `runningConcurrency`) or a concurrency group's key, with the invocations holding its
 * slots and those parked on it, waiting for room (SPEC §7.2).
 *
 * @example A key of limit 1: one holder, one parked
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type KeyUsage } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const sync = app.task("sync", ({ n }: { n: number }) => n, { runningConcurrency: "task" });
 * const [first, second] = (await sync.parallelize([{ n: 1 }, { n: 2 }])).invocations;
 * await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" }); // one runs, one parks
 * const [usage]: KeyUsage[] = await app.orchestrator.store.concurrency(10);
 * console.log(usage!.key, usage!.limit, usage!.holders[0] === first!.id, usage!.parked[0] === second!.id);
 * // "sync" 1 true true
 * ```
 */
export interface KeyUsage {
  /** The slot key: a task id, a call id, a key-arguments key, or a group key (`#group#…`). */
  readonly key: string;
  /** How many invocations may hold it at once. */
  readonly limit: number;
  /** The invocations holding its slots (at most `limit`). */
  readonly holders: readonly string[];
  /** The invocations parked on it, the next to be woken first: at most the number asked. */
  readonly parked: readonly string[];
  /** How many invocations are parked on it in all. */
  readonly parkedCount: number;
}

/**
 * The live graphs of an app, read by {@linkcode Store.graphs}: what cycle control and blocking
 * control hold right now.
 *
 * @example
 * ```ts
 * import { MemoryStore } from "@nenc/nenc/core";
 *
 * const store = new MemoryStore();
 * await store.waitFor("parent", ["child"], 0);
 * console.log(await store.graphs()); // { calls: { calls: [], edges: [] }, waits: [["parent", "child"]] }
 * ```
 */
export interface LiveGraphs {
  /** The call graph: calls held by live invocations, and caller → callee edges of call ids. */
  readonly calls: CallGraphSnapshot;
  /** The wait graph: `[waiterId, waitedId]` for each invocation waiting on another. */
  readonly waits: readonly (readonly [string, string])[];
}

/**
 * A call cycle that cycle control refused (SPEC §4.2), kept for inspection by
 * {@linkcode Store.recordCycle}: the invocation whose start would have closed it failed with the
 * {@linkcode CycleDetectedError} — even when its caller caught that error and went on, the cycle
 * stays listed by {@linkcode Store.cycles} for {@linkcode CYCLE_RETENTION_MS}.
 *
 * @example A task that calls itself, and catches the refusal
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import type { RefusedCycle } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const countdown = app.task("countdown", async ({ n }: { n: number }): Promise<string> => {
 *   try {
 *     return await (await countdown.call({ n })).result(); // the same call again: refused
 *   } catch (error) {
 *     return (error as Error).name;
 *   }
 * });
 * const invocation = await countdown.call({ n: 3 });
 * await app.runner().drain();
 * console.log(await invocation.result()); // "CycleDetectedError"
 * const [cycle]: RefusedCycle[] = await app.orchestrator.store.cycles();
 * console.log(cycle?.labels); // ['countdown({"n":3})']
 * ```
 */
export interface RefusedCycle {
  /** The invocation whose start would have closed the cycle: it failed with the cycle's error. */
  readonly invocationId: string;
  /**
   * The calls of the cycle, starting at the caller of the closing edge
   * ({@linkcode CycleDetectedError.callIds}).
   */
  readonly callIds: readonly string[];
  /** How each call is rendered, task name and arguments, in the same order. */
  readonly labels: readonly string[];
  /** When it was refused, epoch ms. */
  readonly atMs: number;
}

/**
 * How long a refused cycle stays listed by {@linkcode Store.cycles}: one hour (on Deno KV its key
 * is written with this `expireIn`).
 *
 * @example
 * ```ts
 * import { CYCLE_RETENTION_MS } from "@nenc/nenc/core";
 *
 * console.log(CYCLE_RETENTION_MS / 60_000); // 60
 * ```
 */
export const CYCLE_RETENTION_MS = 3_600_000;

/**
 * How many refused cycles {@linkcode Store.cycles} lists at most: the most recent ones.
 *
 * @example
 * ```ts
 * import { CYCLES_KEPT } from "@nenc/nenc/core";
 *
 * console.log(CYCLES_KEPT); // 20
 * ```
 */
export const CYCLES_KEPT = 20;

/**
 * The storage port. Every method that changes state is one atomic step; reads are bounded.
 * Transition errors ({@linkcode InvocationStatusTransitionError},
 * {@linkcode InvocationStatusOwnershipError}) are thrown by the plan, before anything is written.
 *
 * @example An app on a store of your choice
 * ```ts
 * import { Nenc, type Store } from "@nenc/nenc";
 * import { MemoryStore } from "@nenc/nenc/core";
 *
 * const store: Store = new MemoryStore();
 * const app = new Nenc({ appId: "shop", store });
 * const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
 * await add.call({ x: 1, y: 2 });
 * console.log(await store.counts()); // Map(1) { "add" => Map(1) { "registered" => 1 } }
 * ```
 */
export interface Store {
  /**
   * Creates an invocation (REGISTERED, queued, one history entry), in one atomic step, unless a
   * live idempotency key of the task names one (returned as it is, final or not), or another
   * invocation holds its registration key (it has not run yet). With an idempotency key, the key
   * is written for the invocation returned, in the same step, and keeps it from being purged.
   * A call from a CANCELED invocation's context (`parentId`) is refused, nothing registered
   * (`refused`): a canceled invocation calls nothing more (SPEC §7.1).
   */
  register(invocation: NewInvocation): Promise<RegisterOutcome>;
  /** Creates many invocations without registration or idempotency keys. */
  registerMany(invocations: readonly NewInvocation[]): Promise<InvocationRecord[]>;
  /**
   * Applies a status change planned by {@linkcode planChange}. A change to a final status also
   * releases the invocation's wait edges (its waiters, and what it waited on) in the same step.
   */
  change(id: string, change: StatusChange): Promise<ChangeOutcome>;
  /** Counts one more retry outside a status change; returns the new count. */
  incrementRetries(id: string): Promise<number>;
  /** The pick-up: preferred ids first, then the queue, each claimed with its running slot or controlled. */
  claim(request: ClaimRequest): Promise<ClaimOutcome>;

  /** One invocation, or `undefined`. */
  get(id: string): Promise<InvocationRecord | undefined>;
  /** Many invocations, in the order asked; missing ones are left out. */
  getMany(ids: readonly string[]): Promise<InvocationRecord[]>;
  /** The history of an invocation, oldest first. */
  history(id: string): Promise<HistoryEntry[]>;
  /** Invocations of a task matching a filter. */
  find(query: FindQuery): AsyncIterable<InvocationRecord>;
  /** The invocations called by `parentId` that still exist, oldest first (an index read). */
  children(parentId: string): Promise<InvocationRecord[]>;
  /** The invocations holding a running key's slots (at most its limit). */
  slotHolders(runningKey: string): Promise<string[]>;
  /**
   * Invocations due for recovery: PENDING ones that entered PENDING before `pendingBeforeMs`, and
   * those owned by dead runners — PENDING, RUNNING, PAUSED, RESUMED, and CANCELED ones whose
   * execution still holds its slots. A runner is dead when its heartbeat is older than
   * `heartbeatBeforeMs`; an owner without a heartbeat (never sent, or removed) is judged by the
   * invocation's last change instead. It reads what can be stale, not what is live: the
   * heartbeats, the owners of executions, the executions of dead owners, and the PENDING ones by
   * age — its cost does not grow with the invocations live runners execute.
   */
  recoverable(query: RecoverableQuery): Promise<InvocationRecord[]>;
  /**
   * The invocations a runner executes (owns), from the per-runner index, in id order: all of
   * them, or with `page` at most `page.limit` of those after `page.after` (one range read).
   */
  executions(runnerId: string, page?: ExecutionsPage): Promise<string[]>;
  /** Canceled invocations whose execution on this runner has not ended yet. */
  cancelRequests(runnerId: string): Promise<string[]>;
  /** The earliest time after `nowMs` at which a queued invocation becomes available, if any. */
  nextAvailableMs(nowMs: number): Promise<number | undefined>;
  /**
   * Per task, the queued invocations not available before a time after `nowMs` (delayed calls,
   * retries in back-off), and the earliest of those times (the CLI's `status`).
   */
  delayedCounts(nowMs: number): Promise<Map<string, DelayedCount>>;
  /** The state of every rate limit key with a log, parked or woken invocations (the CLI's `status`). */
  rateWindows(): Promise<RateWindow[]>;
  /** Counts per task and status. */
  counts(): Promise<Map<string, Map<InvocationStatus, number>>>;
  /**
   * The invocations matching `query`, newest first (ids are ULIDs: by registration time), at
   * most `query.limit` (the CLI's `list`). A read: it writes nothing.
   */
  list(query: ListQuery): Promise<InvocationRecord[]>;
  /**
   * Every concurrency slot key (running keys and group keys, not rate limit keys) that has
   * holders or parked invocations: its limit, its holders, and the first `maxParked` parked
   * (the CLI's `status`). A read: it writes nothing.
   */
  concurrency(maxParked: number): Promise<KeyUsage[]>;

  /** Adds a call edge; throws {@linkcode CycleDetectedError} without adding it. */
  addCall(caller: CallRef, callee: CallRef): Promise<void>;
  /** Releases an invocation's hold on its call. */
  removeCall(ref: Pick<CallRef, "callId" | "invocationId">): Promise<void>;
  /** Records that `waiterId` waits on `waitedIds`. */
  waitFor(waiterId: string, waitedIds: readonly string[], nowMs: number): Promise<void>;
  /**
   * Removes the wait edges of a final invocation: those written after its final step (a wait
   * that raced its end), or left by a backend that writes many after that step.
   */
  releaseWaiters(id: string): Promise<void>;
  /** The invocations waiting on `id`. */
  waiters(id: string): Promise<string[]>;
  /** Waited-on invocations that wait on nothing and are available to run, oldest first wait first. */
  blocking(max: number, nowMs: number): Promise<string[]>;
  /** The whole live call graph and wait graph, for inspection (the CLI's `graph`). */
  graphs(): Promise<LiveGraphs>;
  /**
   * Keeps a refused cycle for inspection, in one atomic step, for {@linkcode CYCLE_RETENTION_MS}:
   * one per invocation (another for the same invocation replaces it); a bounded number is kept.
   */
  recordCycle(cycle: RefusedCycle): Promise<void>;
  /**
   * The refused cycles recorded in the last {@linkcode CYCLE_RETENTION_MS}, most recent first, at
   * most {@linkcode CYCLES_KEPT} (the CLI's `graph`, the monitor's graph page).
   */
  cycles(): Promise<RefusedCycle[]>;

  /** Records a runner's heartbeat, with the tasks it defines. */
  heartbeat(runnerId: string, nowMs: number, taskIds?: readonly string[]): Promise<void>;
  /**
   * Forgets a runner: one that stopped cleanly, or, with `seenBeforeMs`, one whose last heartbeat
   * is older than that (a heartbeat written meanwhile keeps it).
   */
  removeRunner(runnerId: string, seenBeforeMs?: number): Promise<void>;
  /** Known runners and their last heartbeats. */
  runners(): Promise<RunnerInfo[]>;
  /**
   * Takes the upkeep lease for `runnerId` until `untilMs`, or renews it when the runner holds it,
   * in one atomic step: resolves to `true` when it took it, `false` while another runner holds it
   * (until its time has run out, on the taker's clock `nowMs`). (A lease taken until `nowMs` or
   * earlier is the taker's for this once: others may take it at once.) The holder does recovery
   * and purge for every runner, so one runner at a time reads for them. A retry of a take whose
   * answer was lost finds the lease its own. The lease saves reads, it guards nothing: every
   * recovery write is fenced by the invocation's sequence number.
   *
   * @example The holder renews; another runner takes over once the lease ran out
   * ```ts
   * import { MemoryStore } from "@nenc/nenc/core";
   *
   * const store = new MemoryStore();
   * console.log(await store.takeUpkeepLease("r1", { nowMs: 0, untilMs: 10_000 })); // true
   * console.log(await store.takeUpkeepLease("r2", { nowMs: 5_000, untilMs: 15_000 })); // false
   * console.log(await store.takeUpkeepLease("r1", { nowMs: 5_000, untilMs: 15_000 })); // true
   * console.log(await store.takeUpkeepLease("r2", { nowMs: 15_000, untilMs: 25_000 })); // true
   * ```
   */
  takeUpkeepLease(runnerId: string, lease: UpkeepLease): Promise<boolean>;
  /**
   * Gives the upkeep lease up, in one atomic step, if `runnerId` holds it (a runner that stops),
   * so that another runner takes it at its next heartbeat instead of once it ran out.
   *
   * @example
   * ```ts
   * import { MemoryStore } from "@nenc/nenc/core";
   *
   * const store = new MemoryStore();
   * await store.takeUpkeepLease("r1", { nowMs: 0, untilMs: 10_000 });
   * await store.releaseUpkeepLease("r2"); // not its lease: nothing
   * console.log(await store.takeUpkeepLease("r2", { nowMs: 1, untilMs: 10_001 })); // false
   * await store.releaseUpkeepLease("r1");
   * console.log(await store.takeUpkeepLease("r2", { nowMs: 2, untilMs: 10_002 })); // true
   * ```
   */
  releaseUpkeepLease(runnerId: string): Promise<void>;

  /**
   * Resolves when the invocation is final (or gone), or when `signal` aborts; rejects with
   * {@linkcode StoreClosedError} once the store is found closed. Resolves with the final record
   * the wait saw, when it saw one: `undefined` when the invocation is gone, on abort, and when
   * woken without the record (the caller reads it then).
   */
  waitFinal(id: string, signal?: AbortSignal): Promise<InvocationRecord | undefined>;
  /**
   * Resolves when new work may be available, or when `signal` aborts; rejects with
   * {@linkcode StoreClosedError} once the store is found closed.
   */
  waitWork(signal?: AbortSignal): Promise<void>;

  /** Sets the purge time of a final invocation. */
  schedulePurge(id: string, purgeAtMs: number): Promise<void>;
  /** Deletes final invocations whose purge time has passed; returns how many. */
  purgeDue(nowMs: number): Promise<number>;
  /** Deletes everything of this app. */
  purgeAll(): Promise<void>;

  /**
   * Throws a {@linkcode NencError} naming both versions when the stored data has a newer layout
   * than this code; reads, never creates. Always reads anew: a runner calls it at start and on
   * every heartbeat, and stops on its error.
   */
  checkSchema(): Promise<void>;
  /**
   * Stores the limit of each concurrency group with the app's data, or throws a `TypeError`
   * naming a group whose stored limit differs (a process defines the group otherwise). A runner
   * calls it when it starts.
   */
  defineGroups(limits: ReadonlyMap<string, number>): Promise<void>;

  /**
   * Stores a schedule, in one atomic step: an upsert decided by {@linkcode upsertSchedule} — the
   * same definition as the stored one writes nothing and returns the stored schedule (a retry of
   * an upsert whose answer was lost finds its own write so); another definition replaces it.
   * Resolves to the schedule as stored.
   *
   * @example
   * ```ts
   * import { MemoryStore, type Schedule } from "@nenc/nenc/core";
   *
   * const store = new MemoryStore();
   * const schedule: Schedule = {
   *   name: "nightly", cron: "0 3 * * *", taskId: "report", args: {}, timezone: "UTC",
   *   catchUp: "none", misfireMs: 60_000, sinceMs: 1_000, lastTickMs: null, lastInvocationId: null,
   * };
   * await store.putSchedule(schedule);
   * console.log((await store.putSchedule({ ...schedule, sinceMs: 9_000 })).sinceMs); // 1000
   * ```
   */
  putSchedule(schedule: Schedule): Promise<Schedule>;
  /**
   * Deletes a schedule, in one atomic step: no tick of it fires afterwards. Resolves to whether
   * there was one.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const ping = app.task("ping", () => "pong");
   * await app.schedule("heartbeat", { cron: "* * * * *", task: ping });
   * const store = app.orchestrator.store;
   * console.log(await store.deleteSchedule("heartbeat"), await store.deleteSchedule("heartbeat")); // true false
   * ```
   */
  deleteSchedule(name: string): Promise<boolean>;
  /**
   * Every schedule of the app, by name.
   *
   * @example
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const ping = app.task("ping", () => "pong");
   * await app.schedule("b", { cron: "0 * * * *", task: ping });
   * await app.schedule("a", { cron: "30 * * * *", task: "ping" });
   * console.log((await app.orchestrator.store.schedules()).map((schedule) => schedule.name)); // ["a", "b"]
   * ```
   */
  schedules(): Promise<Schedule[]>;
  /**
   * Fires the tick `invocation.scheduledAtMs` of `schedule`, in one atomic step: claims the tick
   * (a tick is claimed once, and the claim lives {@linkcode tickClaimMs}), stores the schedule with
   * it as its last tick ({@linkcode planTick}), and registers the invocation — bypassing
   * registration reuse (its `registrationKey` is `null`) and idempotency keys. Resolves to
   * `undefined` when the tick was claimed already, or the schedule is gone or another version of
   * it is stored. A retry with the same invocation finds its own applied write and resolves to it.
   *
   * @example Two runners race for one tick: one invocation
   * ```ts
   * import { Nenc } from "@nenc/nenc";
   *
   * const app = new Nenc();
   * const ping = app.task("ping", () => "pong");
   * const schedule = await app.schedule("heartbeat", { cron: "* * * * * *", task: ping });
   * const tickMs = Math.ceil((Date.now() + 1) / 1000) * 1000;
   * const [first, second] = await Promise.all([
   *   app.orchestrator.fireTick(schedule, tickMs, { runnerId: "r1" }),
   *   app.orchestrator.fireTick(schedule, tickMs, { runnerId: "r2" }),
   * ]);
   * console.log(first?.invocation.scheduledAtMs === tickMs, second); // true undefined
   * ```
   */
  fireTick(
    schedule: Schedule,
    invocation: NewInvocation & { readonly scheduledAtMs: number },
  ): Promise<FiredTick | undefined>;
}

/**
 * The record and first history entry of a new invocation: REGISTERED, available now, no retries.
 * Backends store both, with the queue entry, in one atomic step.
 *
 * @example
 * ```ts
 * import { planRegistration } from "@nenc/nenc/core";
 *
 * const { record, entry } = planRegistration({
 *   id: "01J", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: null, nowMs: 5, runnerId: null,
 * });
 * console.log(record.status, entry.seq); // "registered" 1
 * ```
 */
export function planRegistration(
  invocation: NewInvocation,
): { readonly record: InvocationRecord; readonly entry: HistoryEntry } {
  const { record: status, entry } = transition(undefined, InvocationStatus.REGISTERED, {
    runnerId: invocation.runnerId,
    nowMs: invocation.nowMs,
    invocationId: invocation.id,
  });
  const record: InvocationRecord = {
    id: invocation.id,
    taskId: invocation.taskId,
    callId: invocation.callId,
    args: invocation.args,
    parentId: invocation.parentId,
    registrationKey: invocation.registrationKey,
    runningKey: invocation.runningKey,
    runningLimit: invocation.runningLimit ?? 1,
    ...(invocation.groupSlots?.length ? { groupSlots: invocation.groupSlots } : {}),
    ...(invocation.lane ? { lane: invocation.lane } : {}),
    ...(invocation.priority ? { priority: invocation.priority } : {}),
    ...(invocation.rate ? { rate: invocation.rate } : {}),
    ...status,
    createdAtMs: invocation.nowMs,
    retries: 0,
    availableAtMs: Math.max(invocation.nowMs, invocation.availableAtMs ?? invocation.nowMs),
    finishedAtMs: null,
    purgeAtMs: null,
    claimSeq: null,
    holdsSlots: false,
    ...(invocation.idempotency !== undefined
      ? { keepUntilMs: invocation.idempotency.expiresAtMs }
      : {}),
    ...(invocation.scheduledAtMs !== undefined ? { scheduledAtMs: invocation.scheduledAtMs } : {}),
    ...(invocation.trace !== undefined ? { trace: invocation.trace } : {}),
  };
  return { record, entry };
}

/**
 * What applying a {@linkcode StatusChange} to a record does, computed by {@linkcode planChange}.
 *
 * @example What a backend does when a runner claims an invocation
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type ChangePlan, planChange } from "@nenc/nenc/core";
 *
 * const app = new Nenc();
 * const sync = app.task("sync", () => "ok", { runningConcurrency: "task" });
 * const record = (await app.orchestrator.store.get((await sync.call()).id))!;
 * const plan: ChangePlan = planChange(record, { path: ["pending"], runnerId: "r1", nowMs: Date.now() });
 * console.log(plan.slot, plan.queue, plan.final); // "acquire" "dequeue" false
 * ```
 */
export interface ChangePlan {
  /** The record after the change. */
  readonly record: InvocationRecord;
  /** The history entries to append, one per status entered. */
  readonly entries: readonly HistoryEntry[];
  /** The running slot: take it, free it, or leave it. */
  readonly slot: "acquire" | "release" | "none";
  /**
   * Free the registration key: the invocation first enters RUNNING, or a final status, while it
   * holds one (`record.registrationKey` is `null` afterwards).
   */
  readonly releaseRegistrationKey: boolean;
  /**
   * Drop the invocation's reservation of its running slot, if it holds one: it leaves PAUSED
   * other than by resuming (killed, recovered).
   */
  readonly releaseReservation: boolean;
  /** The queue: (re-)enqueue at the back, remove, or leave it. */
  readonly queue: "enqueue" | "dequeue" | "none";
  /** The invocation reached a final status. */
  readonly final: boolean;
  /**
   * Its purge clock starts now: a final invocation whose execution holds no slot any more got its
   * purge time (at its final status, or when a canceled execution ended).
   */
  readonly startsPurge: boolean;
  /**
   * The per-runner index of executions ({@linkcode Store.executions}): the runner whose entry
   * goes, and the one whose entry comes (`null`: none).
   */
  readonly executions: { readonly remove: string | null; readonly add: string | null };
  /**
   * The cancel request of a running execution ({@linkcode Store.cancelRequests}): set for the
   * runner that executes an invocation being canceled, cleared when that execution ends.
   */
  readonly cancelRequest: { readonly set: string | null; readonly clear: string | null };
  /**
   * Parking ({@linkcode InvocationRecord.parkedOn}): the key the invocation leaves (any change
   * of a parked invocation), and the key it parks on.
   */
  readonly parking: { readonly leave: string | null; readonly enter: string | null };
  /**
   * Its fairness lane ({@linkcode InvocationRecord.lane}): the invocation joins it (queued), leaves
   * it (canceled, parked, delayed), or starts from it (picked up); `null`: no lane change.
   */
  readonly lane: { readonly key: string; readonly move: "join" | "leave" | "start" } | null;
  /**
   * A pick-up (the move to PENDING) of an invocation with a rate limit key: it counts against the
   * key's window, or is refused (SPEC §7.3). A resume is not a pick-up.
   */
  readonly ratePickUp: boolean;
  /**
   * The change reads its slot keys' states ({@linkcode decideSlots}): it takes or frees slots,
   * drops a reservation, parks, wakes, ends a parked or woken state, or is a rate-limited pick-up.
   */
  readonly touchesSlots: boolean;
  /**
   * Waking ({@linkcode InvocationRecord.wokenOn}): the key it stops counting against (any change
   * of a woken invocation), and the key it is woken from (a parked invocation re-queued).
   */
  readonly waking: { readonly leave: string | null; readonly enter: string | null };
}

/**
 * Whether `change` was already applied to `record`: the record is `change.path.length` steps past
 * `change.expectSeq`, at the last status of the path, under the same claim. A runner's write that
 * was applied but answered with an error (a lost reply over the network) is retried with the same
 * `expectSeq`; backends return it as done instead of a conflict. Only the claim's owner moves an
 * owned invocation to the statuses it writes, except that a hand-back and a recovery both end in
 * REROUTED two steps on: either way the invocation is re-queued, the state the write wanted.
 *
 * @example A SUCCESS write whose reply was lost
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { isAppliedChange } from "@nenc/nenc/core";
 *
 * const done: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: null, status: "success", ownerId: null, seq: 4, updatedAtMs: 0, createdAtMs: 0,
 *   retries: 0, availableAtMs: 0, finishedAtMs: 0, purgeAtMs: 9, claimSeq: 2,
 * };
 * const write = { path: ["success" as const], runnerId: "r1", nowMs: 1, expectSeq: 3, claimSeq: 2 };
 * console.log(isAppliedChange(done, write), isAppliedChange(done, { ...write, claimSeq: 7 })); // true false
 * ```
 */
export function isAppliedChange(record: InvocationRecord, change: StatusChange): boolean {
  if (change.expectSeq === undefined) return false;
  if (change.claimSeq !== undefined && change.claimSeq !== record.claimSeq) return false;
  return change.path.length > 0 && record.seq === change.expectSeq + change.path.length &&
    record.status === change.path[change.path.length - 1];
}

/**
 * The state of one slot key: the invocations holding its slots (at most its limit), how many are
 * parked on it, and how many were woken from it and have not been picked up yet.
 *
 * @example
 * ```ts
 * import { type SlotState, slotRoom } from "@nenc/nenc/core";
 *
 * const state: SlotState = { holders: ["a"], parked: 3, woken: 1, queued: 0, turn: null };
 * console.log(slotRoom(state, 2, undefined)); // 0: the free slot is the woken one's
 * ```
 */
export interface SlotState {
  /** The invocations holding the key's slots. */
  readonly holders: readonly string[];
  /** Invocations parked on the key (CONCURRENCY_CONTROLLED), waiting for room. */
  readonly parked: number;
  /** Invocations woken from the key, in the queue, not picked up yet. */
  readonly woken: number;
  /** Invocations waiting in the key's fairness lane ({@linkcode InvocationRecord.lane}). */
  readonly queued: number;
  /**
   * When the lane's turn comes: the place of its token in the queue, set when the lane gets its
   * first invocation (where that one would stand: when it became available, and its id) and moved
   * behind everything available at each pick-up from it; `null` while the lane is empty.
   */
  readonly turn: LaneTurn | null;
  /**
   * A rate limit key's log: the times of its last `limit` pick-ups (epoch ms on the claimers'
   * clocks), ascending ({@linkcode RateLimitKey}). Absent for a slot key, or before a first one.
   */
  readonly starts?: readonly number[];
}

/**
 * The place of a fairness lane's token in the queue: a time (epoch ms), then an invocation id,
 * ordered as the queue orders invocations.
 *
 * @example
 * ```ts
 * import { type LaneTurn, sameTurn } from "@nenc/nenc/core";
 *
 * const turn: LaneTurn = { atMs: 5, id: "01J" };
 * console.log(sameTurn(turn, { atMs: 5, id: "01J" }), sameTurn(turn, null)); // true false
 * ```
 */
export interface LaneTurn {
  /** The time, epoch ms. */
  readonly atMs: number;
  /** The invocation id that breaks ties at that time. */
  readonly id: string;
  /** The lane's priority, before the time in queue order ({@linkcode laneOf}); absent: `0`. */
  readonly priority?: number;
}

/**
 * Whether two lane turns are the same place (`null`: no token).
 *
 * @example
 * ```ts
 * import { sameTurn } from "@nenc/nenc/core";
 *
 * console.log(sameTurn(null, null), sameTurn({ atMs: 1, id: "a" }, { atMs: 1, id: "b" })); // true false
 * ```
 */
export function sameTurn(a: LaneTurn | null, b: LaneTurn | null): boolean {
  return a === b ||
    (a !== null && b !== null && a.atMs === b.atMs && a.id === b.id &&
      (a.priority ?? 0) === (b.priority ?? 0));
}

/**
 * The fairness lane of slot key `key` for invocations of `priority`: the key itself at priority
 * 0, else a lane of its own. A lane is one priority, so its token stands at that priority in the
 * queue and the lanes of one priority take turns (SPEC §7.3: priority, then fairness).
 *
 * @example
 * ```ts
 * import { laneOf } from "@nenc/nenc/core";
 *
 * console.log(laneOf("send#ada", 0), laneOf("send#ada", 5) === laneOf("send#ada", 0)); // "send#ada" false
 * ```
 */
export function laneOf(key: string, priority: number): string {
  return priority === 0 ? key : `${key}\0p${priority}`;
}

/**
 * A key whose state a change of an invocation reads and writes ({@linkcode decideSlots}): one of
 * its slot keys, or its fairness lane when that is no slot key (`laneOnly`: a lane of a priority
 * other than 0, {@linkcode laneOf}).
 *
 * @example
 * ```ts
 * import { type StateKey } from "@nenc/nenc/core";
 *
 * const lane: StateKey = { key: "send#ada\0p5", limit: 0, laneOnly: true };
 * console.log(lane.laneOnly); // true
 * ```
 */
export interface StateKey extends GroupSlot {
  /** A fairness lane only: nobody holds it, nobody parks on it. */
  readonly laneOnly?: true;
  /**
   * A rate limit key ({@linkcode RateLimitKey}): its window, in ms; `limit` is the pick-ups any
   * window may hold. Nobody holds it.
   */
  readonly intervalMs?: number;
}

/**
 * The keys whose state a change of `record` reads and writes, in {@linkcode decideSlots} order:
 * its slot keys ({@linkcode slotsOf}), its rate limit key, then its lane when that is not one of
 * them.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { stateKeysOf } from "@nenc/nenc/core";
 *
 * const record: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t#k", status: "registered", ownerId: null, seq: 1, updatedAtMs: 0,
 *   createdAtMs: 0, retries: 0, availableAtMs: 0, finishedAtMs: null, purgeAtMs: null,
 *   claimSeq: null, lane: "t#k\0p5", priority: 5,
 * };
 * console.log(stateKeysOf(record).map(({ key, laneOnly }) => [key, laneOnly ?? false]));
 * // [["t#k", false], ["t#k\0p5", true]]
 * ```
 */
export function stateKeysOf(record: InvocationRecord): StateKey[] {
  const keys: StateKey[] = [
    ...slotsOf(record),
    ...(record.rate === undefined ? [] : [record.rate]),
  ];
  const { lane } = record;
  if (lane === undefined || keys.some(({ key }) => key === lane)) return keys;
  return [...keys, { key: lane, limit: 0, laneOnly: true }];
}

/**
 * The state of a key nobody holds, waits on or was woken from.
 *
 * @example
 * ```ts
 * import { EMPTY_SLOT } from "@nenc/nenc/core";
 *
 * console.log(EMPTY_SLOT); // { holders: [], parked: 0, woken: 0, queued: 0, turn: null }
 * ```
 */
export const EMPTY_SLOT: SlotState = Object.freeze({
  holders: Object.freeze([]) as readonly string[],
  parked: 0,
  woken: 0,
  queued: 0,
  turn: null,
});

/**
 * Whether an invocation waits in its fairness lane: it has one, is queued, and is not in retry
 * back-off (a back-off ends in the queue of due retries, which goes first, outside the lanes).
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { inLane } from "@nenc/nenc/core";
 *
 * const queued: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t#k", status: "registered", ownerId: null, seq: 1, updatedAtMs: 5, createdAtMs: 5,
 *   retries: 0, availableAtMs: 5, finishedAtMs: null, purgeAtMs: null, claimSeq: null, lane: "t#k",
 * };
 * console.log(inLane(queued), inLane({ ...queued, availableAtMs: 9 })); // true false
 * ```
 */
export function inLane(record: InvocationRecord): boolean {
  return record.lane !== undefined && AVAILABLE_FOR_RUN_STATUSES.has(record.status) &&
    record.availableAtMs <= record.updatedAtMs;
}

/**
 * The state of a lane key after `count` invocations join its lane (registrations), the first of
 * them `first`: an empty lane gets its turn where that one would stand in the queue.
 *
 * @example
 * ```ts
 * import { EMPTY_SLOT, joinLane } from "@nenc/nenc/core";
 *
 * const first = joinLane(EMPTY_SLOT, { atMs: 100, id: "a" }, 1);
 * console.log(first.queued, first.turn, joinLane(first, { atMs: 200, id: "b" }, 3).turn);
 * // 1 { atMs: 100, id: "a" } { atMs: 100, id: "a" }
 * ```
 */
export function joinLane(state: SlotState, first: LaneTurn, count: number): SlotState {
  return { ...state, queued: state.queued + count, turn: state.turn ?? first };
}

/**
 * The slots of a key a newcomer may take: its limit less its holders, the invocations woken for
 * it, and the slot a paused invocation `reserved` to resume.
 *
 * @example
 * ```ts
 * import { EMPTY_SLOT, slotRoom } from "@nenc/nenc/core";
 *
 * console.log(slotRoom({ ...EMPTY_SLOT, holders: ["a"] }, 3, "p")); // 1
 * ```
 */
export function slotRoom(state: SlotState, limit: number, reserved: string | undefined): number {
  return limit - state.holders.length - state.woken - (reserved !== undefined ? 1 : 0);
}

/**
 * One slot key of an invocation as a backend read it, for {@linkcode decideSlots}.
 *
 * @example
 * ```ts
 * import { EMPTY_SLOT, type SlotInput } from "@nenc/nenc/core";
 *
 * const input: SlotInput = { key: "deploy#prod", limit: 2, state: EMPTY_SLOT, reserved: null };
 * console.log(input.reserved); // null
 * ```
 */
export interface SlotInput {
  /** The slot key. */
  readonly key: string;
  /** How many may hold it at once. */
  readonly limit: number;
  /** Its state. */
  readonly state: SlotState;
  /**
   * The paused invocation that reserved the key's next slot, or `null` for none. Only a running
   * key takes reservations: absent for a group's key.
   */
  readonly reserved?: string | null;
  /** A fairness lane only ({@linkcode StateKey.laneOnly}): only its lane state changes. */
  readonly laneOnly?: boolean;
  /**
   * Present for a rate limit key ({@linkcode RateLimitKey}): its window, in ms. Its `limit` is
   * then the pick-ups any window may hold, counted in its state's `starts`, not holders.
   */
  readonly intervalMs?: number;
}

/**
 * What a change does to one of its slot keys, decided by {@linkcode decideSlots}.
 *
 * @example
 * ```ts
 * import { EMPTY_SLOT, type SlotEffect } from "@nenc/nenc/core";
 *
 * const effect: SlotEffect = {
 *   key: "t", state: { ...EMPTY_SLOT, holders: ["i"] }, changed: true, took: true,
 *   released: false, dropReservation: false, wake: false,
 * };
 * console.log(effect.state.holders); // ["i"]
 * ```
 */
export interface SlotEffect {
  /** The slot key. */
  readonly key: string;
  /** Its state after the change. */
  readonly state: SlotState;
  /** The state differs from the one read: write it (checked against the read). */
  readonly changed: boolean;
  /** The invocation took one of its slots. */
  readonly took: boolean;
  /** The invocation gave its slot back. */
  readonly released: boolean;
  /** Drop the key's reservation: its reserver resumes, or leaves PAUSED otherwise. */
  readonly dropReservation: boolean;
  /**
   * Invocations are parked on the key and it has room after the change: wake the first parked
   * (on Deno KV, a wake marker for the next pick-up; in memory, at once).
   */
  readonly wake: boolean;
  /**
   * A rate limit key left with invocations parked on it and no room: when its window opens by
   * time alone (epoch ms), to wake them then (on Deno KV, a time-ordered wake marker; in memory,
   * a heap). Absent otherwise.
   */
  readonly wakeAtMs?: number;
  /**
   * A rate limit key's state may be forgotten from this time on (epoch ms): its log no longer
   * counts in any window, and nothing is parked on it or woken from it. Absent otherwise.
   */
  readonly expiresAtMs?: number;
}

/**
 * What a change does to the slot keys of its invocation, decided by {@linkcode decideSlots}: it
 * is refused on `busy` (nothing of it is written), or applies `effects` in its atomic step.
 *
 * @example
 * ```ts
 * import { type SlotsDecision } from "@nenc/nenc/core";
 *
 * const refused: SlotsDecision = { busy: "t", reserve: false };
 * console.log(refused.busy); // "t"
 * ```
 */
export type SlotsDecision =
  | {
    /** The key without room for the invocation. */
    readonly busy: string;
    /** Reserve the running key's next slot: a resume refused because the key is full. */
    readonly reserve: boolean;
    readonly effects?: undefined;
  }
  | { readonly busy?: undefined; readonly effects: readonly SlotEffect[] };

/**
 * Decides what a planned change does to the keys of invocation `id` (its running key, its groups',
 * its rate limit key and its lane, in {@linkcode stateKeysOf} order), given their states: all
 * taken, or refused on the first key without room. The rules of SPEC §7.1–§7.3, once for every
 * backend:
 *
 * - A resume takes a slot whenever one is free (it goes before any pick-up); refused, it reserves
 *   the running key's next free slot, and a pick-up never takes the last free slot of a reserved
 *   key, so a stream of new work cannot hold it off.
 * - A pick-up woken from a key takes a slot there whenever one is free, and needs
 *   {@linkcode slotRoom} on its other keys.
 * - Any other pick-up (a newcomer) needs {@linkcode slotRoom} and nobody parked on the key: it
 *   parks behind them, and cannot take a slot an invocation was woken for.
 * - A wake needs room: never more woken than the key can start.
 * - A key with parked invocations and room after the change is flagged `wake`.
 * - A rate limit key (an input with `intervalMs`) counts pick-ups in a sliding window instead of
 *   holders, with the same room rules ({@linkcode rateRoom}); left with parked invocations and no
 *   room, it is flagged `wakeAtMs`, the time its window opens.
 *
 * @example A newcomer parks behind the invocations parked on its key
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { decideSlots, EMPTY_SLOT, planChange } from "@nenc/nenc/core";
 *
 * const record: InvocationRecord = {
 *   id: "n", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "t", runningLimit: 2, status: "registered", ownerId: null, seq: 1,
 *   updatedAtMs: 0, createdAtMs: 0, retries: 0, availableAtMs: 0, finishedAtMs: null,
 *   purgeAtMs: null, claimSeq: null,
 * };
 * const plan = planChange(record, { path: ["pending"], runnerId: "r1", nowMs: 1 });
 * const free = { key: "t", limit: 2, state: EMPTY_SLOT };
 * console.log(decideSlots(plan, "n", [free]).effects?.[0]?.state.holders); // ["n"]
 * console.log(decideSlots(plan, "n", [{ ...free, state: { ...EMPTY_SLOT, parked: 1 } }]));
 * // { busy: "t", reserve: false }
 * ```
 */
export function decideSlots(
  plan: ChangePlan,
  id: string,
  slots: readonly SlotInput[],
): SlotsDecision {
  const resuming = plan.record.status === InvocationStatus.RESUMED;
  let busy: string | undefined;
  let reserve = false;
  const effects: SlotEffect[] = [];
  for (const input of slots) {
    const { key, limit, state, reserved: reservedBy, laneOnly } = input;
    if (laneOnly) {
      const next = { ...state, ...laneAfter(plan, key, state) };
      effects.push({
        key,
        state: next,
        changed: next.queued !== state.queued || !sameTurn(next.turn, state.turn),
        took: false,
        released: false,
        dropReservation: false,
        wake: false,
      });
      continue;
    }
    if (input.intervalMs !== undefined) {
      const effect = decideRate(plan, input, input.intervalMs);
      if (effect === undefined) busy ??= key;
      else effects.push(effect);
      continue;
    }
    const reserved = reservedBy ?? undefined;
    const holds = state.holders.includes(id);
    const free = limit - state.holders.length;
    // The last free slot of a key reserved by another paused invocation is the reserver's.
    const freeForOthers = reserved !== undefined && reserved !== id ? free - 1 : free;
    let took = false;
    const released = plan.slot === "release" && holds;
    let holders = state.holders;
    if (plan.slot === "acquire" && !holds) {
      // Woken from this key: its room was kept for it. Woken from another key: any room will do,
      // however many are parked here — it waited its turn once; were it to queue behind this
      // key's parked too, two keys' woken could each wait on the other's parked for ever.
      const fits = resuming || plan.waking.leave === key
        ? freeForOthers > 0
        : slotRoom(state, limit, reserved) > 0 &&
          (state.parked === 0 || plan.waking.leave !== null);
      if (!fits) {
        busy ??= key;
        reserve ||= resuming && free <= 0 && reservedBy === null;
        continue;
      }
      took = true;
      holders = [...holders, id];
    } else if (released) {
      holders = holders.filter((holder) => holder !== id);
    }
    if (plan.waking.enter === key && slotRoom(state, limit, reserved) <= 0) {
      busy ??= key;
      continue;
    }
    const next: SlotState = {
      holders,
      ...parkingAfter(plan, key, state),
      ...laneAfter(plan, key, state),
    };
    const dropReservation = reserved === id && (took || plan.releaseReservation);
    effects.push({
      key,
      state: next,
      changed: holders !== state.holders || next.parked !== state.parked ||
        next.woken !== state.woken || next.queued !== state.queued ||
        !sameTurn(next.turn, state.turn),
      took,
      released,
      dropReservation,
      wake: next.parked > 0 && slotRoom(next, limit, dropReservation ? undefined : reserved) > 0,
    });
  }
  return busy !== undefined ? { busy, reserve } : { effects };
}

/**
 * What a change does to its rate limit key (SPEC §7.3), or `undefined` when the key refuses it. A
 * pick-up at `now` (the change's time, on the claimer's clock) is allowed while fewer than `limit`
 * logged starts are newer than `now - intervalMs` — windows are half-open, so a start leaves the
 * window `intervalMs` after it — and logs `now`, keeping the `limit` newest (older ones cannot
 * count in a window that holds `now` or a later start). The room is shared with the invocations
 * woken from the key, as a slot's ({@linkcode decideSlots}), so no more are woken than can start.
 * A resume is no pick-up: neither counted nor refused. A sliding log, not fixed buckets (twice the
 * limit across a boundary) nor a token bucket (bursts over the limit): any window of `intervalMs`
 * holds at most `limit` pick-ups.
 */
function decideRate(
  plan: ChangePlan,
  { key, limit, state }: SlotInput,
  intervalMs: number,
): SlotEffect | undefined {
  const nowMs = plan.record.updatedAtMs;
  let starts = state.starts ?? [];
  if (plan.ratePickUp) {
    // Woken from this key: its room was kept for it. Woken from another: any room will do (see
    // decideSlots). A newcomer needs room and nobody parked here.
    const fits = plan.waking.leave === key
      ? countInWindow(starts, intervalMs, nowMs) < limit
      : rateRoom(state, limit, intervalMs, nowMs) > 0 &&
        (state.parked === 0 || plan.waking.leave !== null);
    if (!fits) return undefined;
    starts = [...starts, nowMs].sort((a, b) => a - b).slice(-limit);
  }
  if (plan.waking.enter === key && rateRoom(state, limit, intervalMs, nowMs) <= 0) return undefined;
  const next: SlotState = { ...state, ...parkingAfter(plan, key, state), starts };
  const changed = plan.ratePickUp || next.parked !== state.parked || next.woken !== state.woken;
  const room = rateRoom(next, limit, intervalMs, nowMs);
  // Only a change of the state marks it: the commit that made the state wrote the marker it needs.
  const wakeAtMs = changed && next.parked > 0 && room <= 0
    ? rateOpensAtMs(next, limit, intervalMs)
    : undefined;
  const newest = starts[starts.length - 1];
  return {
    key,
    state: next,
    changed,
    took: false,
    released: false,
    dropReservation: false,
    wake: changed && next.parked > 0 && room > 0,
    ...(wakeAtMs !== undefined ? { wakeAtMs } : {}),
    ...(changed && next.parked === 0 && next.woken === 0 && newest !== undefined
      ? { expiresAtMs: newest + intervalMs }
      : {}),
  };
}

/** How many of a rate limit key's logged starts are in the window that ends at `nowMs`. */
function countInWindow(starts: readonly number[], intervalMs: number, nowMs: number): number {
  return starts.filter((startMs) => startMs > nowMs - intervalMs).length;
}

/**
 * The pick-ups a rate limit key admits at `nowMs` to a newcomer: its limit less the starts in the
 * window that ends then and the invocations woken for it.
 *
 * @example Five per second, four started in the last second, one woken: no room
 * ```ts
 * import { EMPTY_SLOT, rateRoom } from "@nenc/nenc/core";
 *
 * const state = { ...EMPTY_SLOT, woken: 1, starts: [0, 100, 200, 300, 400] };
 * console.log(rateRoom(state, 5, 1_000, 1_050), rateRoom(state, 5, 1_000, 1_100)); // 0 1
 * ```
 */
export function rateRoom(
  state: SlotState,
  limit: number,
  intervalMs: number,
  nowMs: number,
): number {
  return limit - countInWindow(state.starts ?? [], intervalMs, nowMs) - state.woken;
}

/**
 * When a rate limit key without room gets room by time alone: once enough of its logged starts
 * left the window for one more beyond those woken for it; `undefined` when the woken fill its
 * limit (their pick-ups change the state, and mark it anew).
 */
function rateOpensAtMs(state: SlotState, limit: number, intervalMs: number): number | undefined {
  const stay = limit - state.woken - 1; // starts that may still be in the window then
  const starts = state.starts ?? [];
  const leaving = starts[starts.length - 1 - stay];
  return stay < 0 || leaving === undefined ? undefined : leaving + intervalMs;
}

/** The parked and woken counts of a key after a change (see {@linkcode SlotState}). */
function parkingAfter(
  plan: ChangePlan,
  key: string,
  state: SlotState,
): Pick<SlotState, "parked" | "woken"> {
  const count = (before: number, moves: { leave: string | null; enter: string | null }) =>
    Math.max(0, before + (moves.enter === key ? 1 : 0) - (moves.leave === key ? 1 : 0));
  return { parked: count(state.parked, plan.parking), woken: count(state.woken, plan.waking) };
}

/**
 * The lane part of a slot key's state after a change: an invocation joining the lane counts in
 * (an empty lane gets its turn at the time it became available); one leaving counts out (the last
 * ends the turn); a pick-up from the lane moves the lane's turn to its time, behind every other
 * lane that waits — so the lanes of a key space take turns, least recently started first.
 */
function laneAfter(
  plan: ChangePlan,
  key: string,
  state: SlotState,
): Pick<SlotState, "queued" | "turn"> {
  if (plan.lane?.key !== key) return { queued: state.queued, turn: state.turn };
  const { record } = plan;
  if (plan.lane.move === "join") {
    const { queued, turn } = joinLane(state, turnOf(record, record.availableAtMs, record.id), 1);
    return { queued, turn };
  }
  const queued = Math.max(0, state.queued - 1);
  if (queued === 0) return { queued, turn: null };
  return {
    queued,
    turn: plan.lane.move === "start" ? startTurn(record, record.updatedAtMs) : state.turn,
  };
}

/**
 * A lane turn at `atMs` and `id` for the lane of `record`, at its priority.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { turnOf } from "@nenc/nenc/core";
 *
 * const record = { priority: 5 } as InvocationRecord;
 * console.log(turnOf(record, 100, "a"), turnOf({ ...record, priority: 0 }, 100, "a"));
 * // { atMs: 100, id: "a", priority: 5 } { atMs: 100, id: "a" }
 * ```
 */
export function turnOf(
  record: Pick<InvocationRecord, "priority">,
  atMs: number,
  id: string,
): LaneTurn {
  return record.priority ? { atMs, id, priority: record.priority } : { atMs, id };
}

/**
 * The turn of a lane after a pick-up at `nowMs`: behind everything that became available up to
 * that millisecond (`~` sorts after every character of a ULID), and behind the lanes that started
 * earlier in it — a fresh monotonic ULID orders pick-ups within one millisecond of one process
 * (the one impure step of the slot rules: two pick-ups in one millisecond need an order).
 */
function startTurn(record: InvocationRecord, nowMs: number): LaneTurn {
  return turnOf(record, nowMs, `~${newInvocationId(nowMs)}`);
}

/**
 * Plans a status change: validates every step with {@linkcode transition} and derives the
 * side effects a backend must apply in the same atomic step.
 *
 * @throws {InvocationStatusTransitionError | InvocationStatusOwnershipError} for a refused step.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { planChange } from "@nenc/nenc/core";
 *
 * const registered: InvocationRecord = {
 *   id: "01J", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: "run:t", status: "registered", ownerId: null, seq: 1, updatedAtMs: 0,
 *   createdAtMs: 0, retries: 0, availableAtMs: 0, finishedAtMs: null, purgeAtMs: null, claimSeq: null,
 * };
 * const plan = planChange(registered, { path: ["pending"], runnerId: "r1", nowMs: 1 });
 * console.log(plan.slot, plan.queue); // "acquire" "dequeue"
 * ```
 */
export function planChange(record: InvocationRecord, change: StatusChange): ChangePlan {
  if ((change.path.length === 0) !== (change.endExecution === true)) {
    throw new RangeError(
      `Cannot change invocation ${record.id}: ${
        change.endExecution ? "ending an execution enters no status" : "the status path is empty"
      }`,
    );
  }
  if (change.endExecution && record.status !== InvocationStatus.CANCELED) {
    throw new RangeError(
      `Cannot end the execution of invocation ${record.id}: it is ${record.status}, not canceled`,
    );
  }
  if (
    change.parkOn !== undefined &&
    (change.path.at(-1) !== InvocationStatus.CONCURRENCY_CONTROLLED ||
      !stateKeysOf(record).some(({ key, laneOnly }) => key === change.parkOn && !laneOnly))
  ) {
    throw new RangeError(
      `Cannot park invocation ${record.id} on ${change.parkOn}: it parks on a slot key of its own, entering concurrency_controlled`,
    );
  }
  if (change.claimSeq !== undefined && change.claimSeq !== record.claimSeq) {
    throw new InvocationStatusOwnershipError(
      record.status,
      change.path[0] ?? "(end of execution)",
      record.ownerId ?? "(none)",
      change.runnerId,
      record.id,
      { cause: `claim ${change.claimSeq} was superseded by claim ${record.claimSeq}` },
    );
  }
  // The status fields step by step; the record is copied once, below.
  let status: StatusRecord = record;
  let claimSeq = record.claimSeq;
  const entries: HistoryEntry[] = [];
  for (const to of change.path) {
    const next = transition(status, to, {
      runnerId: change.runnerId,
      nowMs: change.nowMs,
      invocationId: record.id,
    });
    entries.push(next.entry);
    if (to === InvocationStatus.PENDING) claimSeq = next.entry.seq;
    status = next.record;
  }
  const from = record.status;
  const to = status.status;
  const held = holdsSlots(record);
  // A canceled execution keeps its slots until its function returned (endExecution).
  const holds = change.endExecution
    ? false
    : to === InvocationStatus.CANCELED
    ? held
    : SLOT_HOLDING_STATUSES.has(to);
  const wasQueued = AVAILABLE_FOR_RUN_STATUSES.has(from);
  const queued = AVAILABLE_FOR_RUN_STATUSES.has(to);
  const final = FINAL_STATUSES.has(to);
  // A canceled invocation stays owned only while its execution holds slots: the owner is the
  // runner that must still end it (or, dead, whose work recovery ends).
  const ownerId = to === InvocationStatus.CANCELED && !holds ? null : status.ownerId;
  // Registration concurrency reuses an invocation until it first runs (SPEC §7.2): its key is
  // held through REROUTED, CONCURRENCY_CONTROLLED and PENDING, and freed by the step that enters
  // RUNNING or a final status.
  const releaseRegistrationKey = record.registrationKey !== null &&
    (final || change.path.includes(InvocationStatus.RUNNING));
  const parkedOn = change.parkOn ?? null;
  // A parked invocation re-queued is woken from its key (it never leaves CONCURRENCY_CONTROLLED
  // otherwise, but for CANCELED).
  const wokenOn = record.parkedOn && to === InvocationStatus.REROUTED ? record.parkedOn : null;
  // One copy of the record (a parked or woken one without those keys first), then what changes.
  const next: Writable<InvocationRecord> = {
    ...(record.parkedOn === undefined && record.wokenOn === undefined
      ? record
      : withoutParking(record)),
    status: to,
    seq: status.seq,
    updatedAtMs: status.updatedAtMs,
    registrationKey: releaseRegistrationKey ? null : record.registrationKey,
    ownerId,
    holdsSlots: holds,
    claimSeq,
    retries: record.retries + (change.incrementRetries ? 1 : 0),
    availableAtMs: queued ? change.availableAtMs ?? change.nowMs : record.availableAtMs,
    finishedAtMs: change.endExecution ? record.finishedAtMs : final ? change.nowMs : null,
    // A canceled invocation whose execution still holds its slots is not purged before its end
    // is recorded (endExecution starts its purge clock): a purge would free its slots early. A
    // purge time once set stays (ending a paused canceled one only clears its cancel request). A
    // live idempotency key keeps it longer (keptPurgeAtMs).
    purgeAtMs: !final || holds ? null : record.purgeAtMs ??
      (change.purgeAtMs !== undefined ? keptPurgeAtMs(record, change.purgeAtMs) : null),
  };
  if (parkedOn !== null) next.parkedOn = parkedOn;
  if (wokenOn !== null) next.wokenOn = wokenOn;
  if (change.result !== undefined) next.result = change.result;
  if (change.error !== undefined) next.error = change.error;
  const slot = slotsOf(record).length === 0 || held === holds
    ? "none"
    : holds
    ? "acquire"
    : "release";
  const parking = { leave: record.parkedOn ?? null, enter: parkedOn };
  const waking = { leave: record.wokenOn ?? null, enter: wokenOn };
  const releaseReservation = from === InvocationStatus.PAUSED &&
    to !== InvocationStatus.RESUMED && record.runningKey !== null;
  const ratePickUp = record.rate !== undefined &&
    change.path.includes(InvocationStatus.PENDING);
  const wasInLane = inLane(record);
  const isInLane = inLane(next);
  const lane = wasInLane === isInLane ? null : {
    key: record.lane!,
    move: isInLane
      ? "join" as const
      : change.path.includes(InvocationStatus.PENDING)
      ? "start" as const
      : "leave" as const,
  };
  return {
    record: next,
    entries,
    slot,
    releaseRegistrationKey,
    releaseReservation,
    queue: queued ? "enqueue" : wasQueued ? "dequeue" : "none",
    // The final status of a path already entered: only endExecution changes nothing else.
    final: final && !change.endExecution,
    startsPurge: final && !holds && record.purgeAtMs === null &&
      (change.purgeAtMs ?? null) !== null,
    executions: {
      remove: record.ownerId !== null && record.ownerId !== ownerId ? record.ownerId : null,
      add: ownerId !== null && ownerId !== record.ownerId ? ownerId : null,
    },
    cancelRequest: {
      set: to === InvocationStatus.CANCELED && from !== to && record.ownerId !== null
        ? record.ownerId
        : null,
      clear: change.endExecution ? record.ownerId ?? change.runnerId : null,
    },
    parking,
    lane,
    ratePickUp,
    touchesSlots: slot !== "none" || releaseReservation || lane !== null || ratePickUp ||
      [parking.leave, parking.enter, waking.leave, waking.enter].some((key) => key !== null),
    waking,
  };
}

/** A record without its parking keys (a parked or woken invocation's, before a change). */
function withoutParking(record: InvocationRecord): InvocationRecord {
  const { parkedOn: _parked, wokenOn: _woken, ...rest } = record;
  return rest;
}

/** `T` with its fields writable: a record built up in place before it is returned. */
type Writable<T> = { -readonly [K in keyof T]: T[K] };

/**
 * An invocation's side of a call edge, for cycle control: its call, itself, and how the call is
 * rendered in a {@linkcode CycleDetectedError}.
 *
 * @example
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { callRefOf } from "@nenc/nenc/core";
 *
 * const record: InvocationRecord = {
 *   id: "01J", taskId: "fib", callId: "fib#0", args: { n: "3" }, parentId: null,
 *   registrationKey: null, runningKey: null, status: "running", ownerId: "r1", seq: 3,
 *   updatedAtMs: 0, createdAtMs: 0, retries: 0, availableAtMs: 0, finishedAtMs: null,
 *   purgeAtMs: null, claimSeq: 2,
 * };
 * console.log(callRefOf(record)); // { callId: "fib#0", invocationId: "01J", label: 'fib({"n":3})' }
 * ```
 */
export function callRefOf(record: InvocationRecord): CallRef {
  return {
    callId: record.callId,
    invocationId: record.id,
    label: callLabel(record.taskId, record.args),
  };
}

/**
 * The purge time of a final invocation asked to be purged at `purgeAtMs`: no earlier than its
 * {@linkcode InvocationRecord.keepUntilMs} (an idempotency key still names it). Backends use it
 * wherever they set a purge time.
 *
 * @example A key that lives 48 h keeps its invocation past the 24 h purge horizon
 * ```ts
 * import { type InvocationRecord } from "@nenc/nenc";
 * import { keptPurgeAtMs } from "@nenc/nenc/core";
 *
 * const done: InvocationRecord = {
 *   id: "i", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: null, status: "success", ownerId: null, seq: 4, updatedAtMs: 0, createdAtMs: 0,
 *   retries: 0, availableAtMs: 0, finishedAtMs: 0, purgeAtMs: null, claimSeq: 2,
 *   keepUntilMs: 48 * 3_600_000,
 * };
 * console.log(keptPurgeAtMs(done, 24 * 3_600_000) / 3_600_000); // 48
 * console.log(keptPurgeAtMs({ ...done, keepUntilMs: null }, 24 * 3_600_000) / 3_600_000); // 24
 * ```
 */
export function keptPurgeAtMs(record: InvocationRecord, purgeAtMs: number): number {
  const keep = record.keepUntilMs;
  return keep === undefined || keep === null ? purgeAtMs : Math.max(purgeAtMs, keep);
}
