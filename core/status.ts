/**
 * The invocation status state machine (SPEC §3) as data plus one pure function,
 * {@linkcode transition}, that every backend calls inside its atomic step.
 *
 * @module
 */

import { InvocationStatusOwnershipError, InvocationStatusTransitionError } from "./errors.ts";

/**
 * The statuses of an invocation; the string values are the lowercase names.
 *
 * @example
 * ```ts
 * import { InvocationStatus } from "@nenc/nenc";
 *
 * console.log(InvocationStatus.RUNNING); // "running"
 * ```
 */
export const InvocationStatus = {
  REGISTERED: "registered",
  PENDING: "pending",
  RUNNING: "running",
  PAUSED: "paused",
  RESUMED: "resumed",
  SUCCESS: "success",
  FAILED: "failed",
  RETRY: "retry",
  REROUTED: "rerouted",
  KILLED: "killed",
  CONCURRENCY_CONTROLLED: "concurrency_controlled",
  CONCURRENCY_CONTROLLED_FINAL: "concurrency_controlled_final",
  PENDING_RECOVERY: "pending_recovery",
  RUNNING_RECOVERY: "running_recovery",
  CANCELED: "canceled",
} as const;

/**
 * One status of an invocation: `"registered"`, `"pending"`, `"running"`, …
 *
 * @example
 * ```ts
 * import { type InvocationStatus, isFinalStatus, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * const status: InvocationStatus = await invocation.status();
 * console.log(status, isFinalStatus(status)); // "registered" false
 * ```
 */
export type InvocationStatus = typeof InvocationStatus[keyof typeof InvocationStatus];

const S = InvocationStatus;

/**
 * Ownership of an invocation on entering a status:
 * - `enter`: who may set the status while a runner owns the invocation — only that `owner`, or
 *   `anyone` (recovery of a dead runner's work). An unowned invocation may be moved by anyone.
 * - `owner`: who owns it afterwards — the runner that `sets` it (PENDING), the same owner
 *   (`kept`), or `none` (anyone may move it on).
 */
interface StatusDefinition {
  readonly next: readonly InvocationStatus[];
  readonly enter: "owner" | "anyone";
  readonly owner: "sets" | "kept" | "none";
}

const released = { enter: "owner", owner: "none" } as const;
const owned = { enter: "owner", owner: "kept" } as const;
const recovered = { enter: "anyone", owner: "none" } as const;
/** Final; anyone cancels; the runner executing it stays its owner until its function returned. */
const canceled = { enter: "anyone", owner: "kept" } as const;

// The table of SPEC §3 and §7.1. KILLED is entered only by the owner (a runner kills its own
// work) but, like the recovery statuses, leaves the invocation unowned, so any runner may
// re-route it. Every non-final status may go to CANCELED, by anyone (added below).
const BASE_TABLE: Readonly<Record<InvocationStatus, StatusDefinition>> = {
  [S.REGISTERED]: {
    next: [S.PENDING, S.CONCURRENCY_CONTROLLED, S.CONCURRENCY_CONTROLLED_FINAL],
    ...released,
  },
  [S.CONCURRENCY_CONTROLLED]: { next: [S.REROUTED], ...released },
  [S.REROUTED]: {
    next: [S.PENDING, S.CONCURRENCY_CONTROLLED, S.CONCURRENCY_CONTROLLED_FINAL],
    ...released,
  },
  [S.RETRY]: {
    next: [S.PENDING, S.CONCURRENCY_CONTROLLED, S.CONCURRENCY_CONTROLLED_FINAL],
    ...released,
  },
  [S.PENDING]: {
    next: [S.RUNNING, S.KILLED, S.REROUTED, S.PENDING_RECOVERY, S.FAILED],
    enter: "owner",
    owner: "sets",
  },
  [S.RUNNING]: {
    next: [S.PAUSED, S.KILLED, S.RETRY, S.SUCCESS, S.FAILED, S.RUNNING_RECOVERY],
    ...owned,
  },
  [S.PAUSED]: { next: [S.RESUMED, S.KILLED, S.RUNNING_RECOVERY], ...owned },
  [S.RESUMED]: {
    next: [S.PAUSED, S.KILLED, S.RETRY, S.SUCCESS, S.FAILED, S.RUNNING_RECOVERY],
    ...owned,
  },
  [S.KILLED]: { next: [S.REROUTED], ...released },
  [S.PENDING_RECOVERY]: { next: [S.REROUTED], ...recovered },
  [S.RUNNING_RECOVERY]: { next: [S.REROUTED], ...recovered },
  [S.SUCCESS]: { next: [], ...released },
  [S.FAILED]: { next: [], ...released },
  [S.CONCURRENCY_CONTROLLED_FINAL]: { next: [], ...released },
  [S.CANCELED]: { next: [], ...canceled },
};

const TABLE: Readonly<Record<InvocationStatus, StatusDefinition>> = Object.fromEntries(
  Object.entries(BASE_TABLE).map(([status, definition]) => [
    status,
    definition.next.length === 0
      ? definition
      : { ...definition, next: [...definition.next, S.CANCELED] },
  ]),
) as Record<InvocationStatus, StatusDefinition>;

/**
 * Every status, in the order of {@linkcode InvocationStatus}.
 *
 * @example
 * ```ts
 * import { ALL_STATUSES, isFinalStatus } from "@nenc/nenc";
 *
 * console.log(ALL_STATUSES.length, ALL_STATUSES.filter(isFinalStatus));
 * // 15 ["success", "failed", "concurrency_controlled_final", "canceled"]
 * ```
 */
export const ALL_STATUSES: readonly InvocationStatus[] = Object.freeze(
  Object.values(InvocationStatus),
);

/**
 * The final statuses: SUCCESS, FAILED, CONCURRENCY_CONTROLLED_FINAL, CANCELED.
 *
 * @example
 * ```ts
 * import { FINAL_STATUSES, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * await app.runner().drain();
 * console.log(FINAL_STATUSES.has(await invocation.status())); // true
 * ```
 */
export const FINAL_STATUSES: ReadonlySet<InvocationStatus> = new Set([
  S.SUCCESS,
  S.FAILED,
  S.CONCURRENCY_CONTROLLED_FINAL,
  S.CANCELED,
]);

/**
 * The statuses from which an invocation may be picked up: REGISTERED, REROUTED, RETRY.
 *
 * @example
 * ```ts
 * import { AVAILABLE_FOR_RUN_STATUSES, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * console.log(AVAILABLE_FOR_RUN_STATUSES.has(await invocation.status())); // true
 * ```
 */
export const AVAILABLE_FOR_RUN_STATUSES: ReadonlySet<InvocationStatus> = new Set([
  S.REGISTERED,
  S.REROUTED,
  S.RETRY,
]);

/**
 * The statuses that hold a running-concurrency slot: PENDING, RUNNING, RESUMED.
 *
 * @example A paused invocation frees its slot
 * ```ts
 * import { SLOT_HOLDING_STATUSES } from "@nenc/nenc";
 *
 * console.log(SLOT_HOLDING_STATUSES.has("running"), SLOT_HOLDING_STATUSES.has("paused")); // true false
 * ```
 */
export const SLOT_HOLDING_STATUSES: ReadonlySet<InvocationStatus> = new Set([
  S.PENDING,
  S.RUNNING,
  S.RESUMED,
]);

/**
 * Whether `status` is final (SUCCESS, FAILED, CONCURRENCY_CONTROLLED_FINAL or CANCELED).
 *
 * @example
 * ```ts
 * import { isFinalStatus } from "@nenc/nenc";
 *
 * console.log(isFinalStatus("success"), isFinalStatus("paused")); // true false
 * ```
 */
export function isFinalStatus(status: InvocationStatus): boolean {
  return FINAL_STATUSES.has(status);
}

/**
 * Whether `status` is one of the values of {@linkcode InvocationStatus}; use it on data read
 * back from storage.
 *
 * @example
 * ```ts
 * import { isInvocationStatus } from "@nenc/nenc";
 *
 * console.log(isInvocationStatus("running"), isInvocationStatus("RUNNING")); // true false
 * ```
 */
export function isInvocationStatus(status: unknown): status is InvocationStatus {
  return typeof status === "string" && Object.hasOwn(TABLE, status);
}

/**
 * The statuses reachable from `from` in one step (`undefined`: a new invocation).
 *
 * @example
 * ```ts
 * import { allowedTransitions } from "@nenc/nenc";
 *
 * console.log(allowedTransitions("paused")); // ["resumed", "killed", "running_recovery", "canceled"]
 * ```
 */
export function allowedTransitions(
  from: InvocationStatus | undefined,
): readonly InvocationStatus[] {
  return from === undefined ? [S.REGISTERED] : TABLE[from].next;
}

/**
 * The stored status of an invocation: what {@linkcode transition} reads and returns.
 *
 * @example A stored invocation record is a status record
 * ```ts
 * import { Nenc, type StatusRecord, transition } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * const current: StatusRecord | undefined = await app.orchestrator.store.get(invocation.id);
 * const next = transition(current, "pending", { runnerId: "r1", nowMs: Date.now() }).record;
 * console.log(current?.seq, next.seq, next.ownerId); // 1 2 "r1"
 * ```
 */
export interface StatusRecord {
  /** The current status. */
  readonly status: InvocationStatus;
  /** The runner that owns the invocation, or `null`. */
  readonly ownerId: string | null;
  /** The sequence number of the last history entry: 1 for REGISTERED, +1 per transition. */
  readonly seq: number;
  /** When the status was set, in epoch milliseconds. */
  readonly updatedAtMs: number;
}

/**
 * One entry of an invocation's history: one per transition.
 *
 * @example
 * ```ts
 * import { type HistoryEntry, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const invocation = await ping.call();
 * await app.runner({ runnerId: "r1" }).drain();
 * const history: HistoryEntry[] = await app.orchestrator.getInvocationHistory(invocation);
 * console.log(history.map((entry) => `${entry.seq} ${entry.status} ${entry.runnerId}`));
 * // ["1 registered null", "2 pending r1", "3 running r1", "4 success r1"]
 * ```
 */
export interface HistoryEntry {
  /** The status entered. */
  readonly status: InvocationStatus;
  /** The runner that made the change, or `null` (a caller without a runner). */
  readonly runnerId: string | null;
  /** When, in epoch milliseconds. */
  readonly timestampMs: number;
  /** Monotonic per invocation: 1, 2, 3, … */
  readonly seq: number;
}

/**
 * Who makes a status change, and when.
 *
 * @example
 * ```ts
 * import { InvocationStatusTransitionError, transition, type TransitionOptions } from "@nenc/nenc";
 *
 * const options: TransitionOptions = { runnerId: "r1", nowMs: 0, invocationId: "inv-1" };
 * try {
 *   transition(undefined, "running", options);
 * } catch (error) {
 *   if (!(error instanceof InvocationStatusTransitionError)) throw error;
 *   console.log(error.message);
 *   // Cannot change the status of invocation inv-1: (new) → running is not allowed
 * }
 * ```
 */
export interface TransitionOptions {
  /** The runner making the change, or `null` for a caller without a runner. */
  readonly runnerId: string | null;
  /** The time of the change, in epoch milliseconds. */
  readonly nowMs: number;
  /** Names the invocation in errors. */
  readonly invocationId?: string;
}

/**
 * The outcome of a valid {@linkcode transition}: the record to store and its history entry.
 *
 * @example
 * ```ts
 * import { transition, type TransitionResult } from "@nenc/nenc";
 *
 * const { record, entry }: TransitionResult = transition(undefined, "registered", {
 *   runnerId: null,
 *   nowMs: 5,
 * });
 * console.log(record); // { status: "registered", ownerId: null, seq: 1, updatedAtMs: 5 }
 * console.log(entry); // { status: "registered", runnerId: null, timestampMs: 5, seq: 1 }
 * ```
 */
export interface TransitionResult {
  /** The new status record. */
  readonly record: StatusRecord;
  /** The history entry to append. */
  readonly entry: HistoryEntry;
}

/**
 * Validates the change of `current` (`undefined`: a new invocation) to `to` by
 * `options.runnerId`, and returns the next record and its history entry. Pure: backends call it
 * between their read and their conditional write.
 *
 * @throws {InvocationStatusTransitionError} when the table does not allow `current → to`.
 * @throws {InvocationStatusOwnershipError} when another runner owns the invocation.
 *
 * @example
 * ```ts
 * import { transition } from "@nenc/nenc";
 *
 * const registered = transition(undefined, "registered", { runnerId: null, nowMs: 0 }).record;
 * const pending = transition(registered, "pending", { runnerId: "r1", nowMs: 1 }).record;
 * console.log(pending.ownerId, pending.seq); // "r1" 2
 * ```
 */
export function transition(
  current: StatusRecord | undefined,
  to: InvocationStatus,
  options: TransitionOptions,
): TransitionResult {
  const { runnerId, nowMs, invocationId } = options;
  if (!allowedTransitions(current?.status).includes(to)) {
    throw new InvocationStatusTransitionError(current?.status, to, invocationId);
  }
  const definition = TABLE[to];
  // PENDING makes its setter the owner: a change without a runner cannot own anything.
  if (definition.owner === "sets" && runnerId === null) {
    throw new InvocationStatusOwnershipError(
      current?.status ?? "(new)",
      to,
      current?.ownerId ?? "(none)",
      runnerId,
      invocationId,
      { cause: `${to} needs the runner that takes the invocation` },
    );
  }
  if (
    current !== undefined && current.ownerId !== null && definition.enter === "owner" &&
    current.ownerId !== runnerId
  ) {
    throw new InvocationStatusOwnershipError(
      current.status,
      to,
      current.ownerId,
      runnerId,
      invocationId,
    );
  }
  const ownerId = definition.owner === "sets"
    ? runnerId
    : definition.owner === "kept"
    ? current?.ownerId ?? null
    : null;
  const seq = (current?.seq ?? 0) + 1;
  return {
    record: { status: to, ownerId, seq, updatedAtMs: nowMs },
    entry: { status: to, runnerId, timestampMs: nowMs, seq },
  };
}

/**
 * Whether `history` is a valid path through the state machine: starts at REGISTERED, every
 * step allowed, sequence numbers 1, 2, 3, … Ownership is not re-checked (entries of a runner
 * that lost its invocation to recovery are valid history).
 *
 * @example
 * ```ts
 * import { isValidHistory } from "@nenc/nenc";
 *
 * const at = (status: "registered" | "pending", seq: number) => ({ status, runnerId: null, timestampMs: 0, seq });
 * console.log(isValidHistory([at("registered", 1), at("pending", 2)])); // true
 * ```
 */
export function isValidHistory(history: readonly HistoryEntry[]): boolean {
  let previous: InvocationStatus | undefined;
  for (const [index, entry] of history.entries()) {
    if (entry.seq !== index + 1 || !allowedTransitions(previous).includes(entry.status)) {
      return false;
    }
    previous = entry.status;
  }
  return history.length > 0;
}
