/**
 * The in-memory backend, nenc's embedded default: everything in this process, pure TypeScript.
 * Each method runs to completion without awaiting, so every transition is atomic with respect to
 * any other async caller in the process.
 *
 * @module
 */

import { groupLimitMismatch } from "./_group_limits.ts";
import { IndexedHeap } from "./_indexed_heap.ts";
import { listen, type Listener, listenFor, notify } from "./_listeners.ts";
import { CallGraph, type CallRef } from "./call_graph.ts";
import { type Clock, systemClock } from "./clock.ts";
import {
  AVAILABLE_FOR_RUN_STATUSES,
  type HistoryEntry,
  InvocationStatus,
  isFinalStatus,
} from "./status.ts";
import { CycleDetectedError } from "./errors.ts";
import {
  callRefOf,
  type ChangeOutcome,
  type ClaimOutcome,
  type ClaimRequest,
  CONTROL_LIMIT,
  controlChange,
  CYCLE_RETENTION_MS,
  CYCLES_KEPT,
  decideSlots,
  type DelayedCount,
  type ExecutionsPage,
  type FindQuery,
  inLane,
  type InvocationRecord,
  isAppliedChange,
  joinLane,
  keptPurgeAtMs,
  type KeyUsage,
  type LaneTurn,
  type ListQuery,
  type LiveGraphs,
  type NewInvocation,
  planChange,
  planRegistration,
  rateKeyTask,
  type RateWindow,
  type RecoverableQuery,
  type RefusedCycle,
  type RegisterOutcome,
  type RunnerInfo,
  sameTurn,
  type SlotEffect,
  slotsOf,
  type SlotState,
  stateKeysOf,
  type StatusChange,
  type Store,
  turnOf,
  type UpkeepLease,
  wakeChange,
} from "./store.ts";
import { WaitGraph } from "./wait_graph.ts";
import {
  type FiredTick,
  planTick,
  type Schedule,
  tickClaimMs,
  upsertSchedule,
} from "./schedules.ts";

const { PENDING, RUNNING } = InvocationStatus;

/**
 * Options of {@linkcode MemoryStore}.
 *
 * @example A memory store on the app's clock, as `new Nenc()` builds it
 * ```ts
 * import { Nenc, systemClock } from "@nenc/nenc";
 * import { MemoryStore, type MemoryStoreOptions } from "@nenc/nenc/core";
 *
 * const options: MemoryStoreOptions = { clock: systemClock };
 * const app = new Nenc({ clock: systemClock, store: new MemoryStore(options) });
 * console.log(await app.orchestrator.store.counts()); // Map(0) {}
 * ```
 */
export interface MemoryStoreOptions {
  /**
   * Where the store reads the time: a final invocation past its purge time reads as gone
   * [the system clock]. Give it the app's clock.
   */
  readonly clock?: Clock;
}

/**
 * The in-memory {@linkcode Store}. Used by `new Nenc()` when no `kv` is given, on the app's
 * clock. A final invocation whose purge time has passed reads as gone at once, as on Deno KV; the
 * purge sweep (`purgeDue`) frees its memory.
 *
 * @example
 * ```ts
 * import { MemoryStore } from "@nenc/nenc/core";
 *
 * const store = new MemoryStore();
 * console.log(await store.get("missing")); // undefined
 * ```
 */
export class MemoryStore implements Store {
  readonly #clock: Clock;
  readonly #records = new Map<string, InvocationRecord>();
  readonly #history = new Map<string, HistoryEntry[]>();
  readonly #byTask = new Map<string, Set<string>>();
  readonly #byParent = new Map<string, Set<string>>();
  /** PENDING invocations by the time they entered PENDING: recovery reads the stale ones. */
  readonly #pending = new IndexedHeap();
  readonly #registrationKeys = new Map<string, string>();
  /** Idempotency keys (see {@linkcode idempotencySlot}): the invocation named, until when. */
  readonly #idempotencyKeys = new Map<string, { id: string; expiresAtMs: number }>();
  /** Idempotency keys by expiry, for the sweep. */
  readonly #idempotencyDue = new IndexedHeap();
  /** The schedules, by name. */
  readonly #schedules = new Map<string, Schedule>();
  /** Claimed ticks (see {@linkcode tickSlot}): the invocation each fired. */
  readonly #ticks = new Map<string, string>();
  /** Tick claims by expiry, for the sweep. */
  readonly #ticksDue = new IndexedHeap();
  /** The limit of each concurrency group, as the runners defined it. */
  readonly #groupLimits = new Map<string, number>();
  /** The holders of each slot key's slots (at most its limit). */
  readonly #slots = new Map<string, Set<string>>();
  /** The invocations parked on each slot key, first available first. */
  readonly #parked = new Map<string, IndexedHeap>();
  /** How many invocations were woken from each slot key and not picked up yet. */
  readonly #woken = new Map<string, number>();
  /** The log of each rate limit key: its last pick-up times, ascending. */
  readonly #starts = new Map<string, readonly number[]>();
  /** Rate limit keys with parked invocations, by when their window opens. */
  readonly #rateOpens = new IndexedHeap();
  /** Rate limit keys' logs by when they stop counting (see `SlotEffect.expiresAtMs`). */
  readonly #startsExpire = new IndexedHeap();
  /** Running slots reserved by a paused invocation waiting to resume. */
  readonly #reservations = new Map<string, string>();
  /**
   * Available now, by the time each became available (then id) — and one token per non-empty
   * fairness lane, at its turn (see {@linkcode laneToken}).
   */
  readonly #queue = new IndexedHeap();
  /** The invocations waiting in each fairness lane, first available first. */
  readonly #lanes = new Map<string, IndexedHeap>();
  /** The turn of each non-empty lane: where its token is in the queue. */
  readonly #turns = new Map<string, LaneTurn>();
  /** Re-queued for later (retry back-off), by available time. */
  readonly #delayed = new IndexedHeap();
  readonly #purgeDue = new IndexedHeap();
  readonly #calls = new CallGraph();
  readonly #waits = new WaitGraph();
  readonly #runners = new Map<string, { lastSeenMs: number; taskIds?: readonly string[] }>();
  /**
   * The invocations each runner executes (owns). Sorted only when a page is read (a heartbeat's):
   * kept sorted, each change moved the ids after it — thousands for the paused invocations of a
   * tree of nested waits, at every final.
   */
  readonly #byRunner = new Map<string, Set<string>>();
  /** The upkeep lease: its holder, and until when. */
  #upkeep: { readonly runnerId: string; readonly untilMs: number } | undefined;
  /** The refused cycles, by invocation, oldest recorded first: at most CYCLES_KEPT. */
  readonly #cycles = new Map<string, RefusedCycle>();
  /** Canceled invocations whose execution on a runner has not ended yet, per runner. */
  readonly #cancelRequests = new Map<string, Set<string>>();
  readonly #finalWaiters = new Map<string, Set<Listener<InvocationRecord>>>();
  readonly #workWaiters = new Set<() => void>();
  /**
   * Work arrived since the last claim: a runner that found nothing and is about to wait does not
   * miss it. Re-queues made by a claim itself (concurrency control) are not new work, or runners
   * would hand a blocked invocation back and forth without pause.
   */
  #newWork = false;
  #claiming = false;

  /** Creates an empty store. */
  constructor(options: MemoryStoreOptions = {}) {
    this.#clock = options.clock ?? systemClock;
  }

  // One synchronous step: the idempotency key first, then the registration key, then creation;
  // an idempotency key is written for the invocation returned.
  register(invocation: NewInvocation): Promise<RegisterOutcome> {
    const caller = invocation.parentId === null ? undefined : this.#visible(invocation.parentId);
    if (caller?.status === InvocationStatus.CANCELED) return Promise.resolve({ refused: caller });
    const idempotency = invocation.idempotency;
    const slot = idempotency && idempotencySlot(invocation.taskId, idempotency.key);
    if (slot !== undefined) {
      const named = this.#idempotencyKeys.get(slot);
      const existing = named !== undefined && named.expiresAtMs > invocation.nowMs
        ? this.#visible(named.id)
        : undefined;
      if (existing !== undefined) return Promise.resolve({ existing });
    }
    const key = invocation.registrationKey;
    const holder = key === null ? undefined : this.#registrationKeys.get(key);
    let outcome: RegisterOutcome;
    if (holder !== undefined) {
      let existing = this.#records.get(holder)!;
      if (idempotency !== undefined) {
        existing = { ...existing, keepUntilMs: keptPurgeAtMs(existing, idempotency.expiresAtMs) };
        this.#records.set(holder, existing);
      }
      outcome = { existing };
    } else {
      outcome = { created: this.#create(invocation) };
    }
    if (slot !== undefined) {
      const expiresAtMs = idempotency!.expiresAtMs;
      this.#idempotencyKeys.set(slot, {
        id: (outcome.created ?? outcome.existing).id,
        expiresAtMs,
      });
      this.#idempotencyDue.remove(slot);
      this.#idempotencyDue.insert(slot, expiresAtMs);
    }
    return Promise.resolve(outcome);
  }

  registerMany(invocations: readonly NewInvocation[]): Promise<InvocationRecord[]> {
    if (
      invocations.some((invocation) =>
        invocation.registrationKey !== null || invocation.idempotency !== undefined
      )
    ) {
      return Promise.reject(
        new RangeError(
          "Cannot register in batch: registration and idempotency keys need register()",
        ),
      );
    }
    return Promise.resolve(invocations.map((invocation) => this.#create(invocation)));
  }

  change(id: string, change: StatusChange): Promise<ChangeOutcome> {
    try {
      return Promise.resolve(this.#apply(id, change));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  incrementRetries(id: string): Promise<number> {
    const record = this.#visible(id);
    if (record === undefined) {
      return Promise.reject(
        new RangeError(`Cannot count a retry: invocation ${id} does not exist`),
      );
    }
    this.#records.set(id, { ...record, retries: record.retries + 1 });
    return Promise.resolve(record.retries + 1);
  }

  async claim(request: ClaimRequest): Promise<ClaimOutcome> {
    if (request.ready !== undefined) {
      try {
        await request.ready;
      } catch {
        return { claimed: [], parked: [], finalised: [], previous: new Map() };
      }
    }
    this.#newWork = false;
    this.#claiming = true;
    try {
      return this.#claim(request);
    } finally {
      this.#claiming = false;
    }
  }

  #claim(request: ClaimRequest): ClaimOutcome {
    const { runnerId, nowMs, max } = request;
    this.#promoteDelayed(nowMs);
    this.#wakeRateOpened(runnerId, nowMs);
    const claimed: InvocationRecord[] = [];
    const parked: InvocationRecord[] = [];
    const finalised: InvocationRecord[] = [];
    const previous = new Map<string, InvocationStatus>();
    const tryClaim = (id: string): void => {
      const record = this.#records.get(id);
      // Still delayed after the promotion above: a retry whose back-off has not passed. (An entry
      // of the ready queue is available even if it was registered after `nowMs` was read.)
      if (
        record === undefined || !AVAILABLE_FOR_RUN_STATUSES.has(record.status) ||
        this.#delayed.has(id) || request.accepts?.(record.taskId) === false
      ) return;
      // On to RUNNING in this step: with nothing to check first, or with its call edge.
      const atOnce = request.runAtOnce?.(record) === true;
      const withCall = !atOnce && request.runWithCall?.(record) === true;
      const outcome = this.#apply(
        id,
        { path: atOnce || withCall ? [PENDING, RUNNING] : [PENDING], runnerId, nowMs },
        true,
        withCall ? () => this.#addCallOf(record) : undefined,
      );
      if (outcome.ok) {
        claimed.push(outcome.record);
        previous.set(id, outcome.previous);
        return;
      }
      if (outcome.reason !== "slot-busy") return;
      // Refused a slot: park on the key that refused it, or finalise.
      const controlled = this.#apply(id, controlChange(request, record, outcome.busyKey!));
      if (!controlled.ok) return;
      previous.set(id, controlled.previous);
      (isFinalStatus(controlled.record.status) ? finalised : parked).push(controlled.record);
    };
    for (const id of request.blocking ? this.#blocking(max, nowMs) : []) {
      if (claimed.length >= max) break;
      tryClaim(id);
    }
    // The queue in order. Each queued invocation is examined at most once per claim, and at most
    // CONTROL_LIMIT of them are parked or finalised, so a backlog refused by one full key costs
    // bounded work per claim (and, parked, nothing afterwards).
    const controlledBefore = parked.length + finalised.length;
    const examined = new Set<string>();
    // A lane's token stands for the lane's first invocation. A pick-up from a lane moves its
    // token behind the other lanes, so the next round of this loop finds the next lane first.
    const invocationOf = (entry: string): string | undefined => {
      const lane = laneOfToken(entry);
      return lane === undefined ? entry : this.#lanes.get(lane)?.peek();
    };
    const candidate = (entry: string): boolean => {
      const id = invocationOf(entry);
      return id !== undefined && !examined.has(id) &&
        request.accepts?.(this.#records.get(id)!.taskId) !== false;
    };
    const full = (): boolean =>
      claimed.length >= max ||
      parked.length + finalised.length - controlledBefore >= CONTROL_LIMIT;
    while (!full()) {
      const batch = this.#queue.smallest(max - claimed.length, candidate);
      if (batch.length === 0) break;
      for (const entry of batch) {
        if (full()) break;
        const id = invocationOf(entry);
        if (id === undefined || examined.has(id)) continue;
        examined.add(id);
        tryClaim(id);
      }
    }
    // Parked or finalised some with slots left: the runner looks again at once, for what the
    // limit left unread.
    if (claimed.length < max && parked.length + finalised.length > controlledBefore) {
      this.#newWork = true;
    }
    const more = claimed.length >= max && this.#queue.smallest(1, candidate).length > 0;
    return { claimed, parked, finalised, more, previous };
  }

  /**
   * Adds the call edge caller → the invocation a pick-up moves on to RUNNING (see
   * `ClaimRequest.runWithCall`); `false` when it would close a cycle: the pick-up then leaves it
   * PENDING, for the runner's `setInvocationRun` to fail it with the cycle.
   */
  #addCallOf(record: InvocationRecord): boolean {
    const caller = this.#visible(record.parentId!);
    // A caller that is gone or final cannot be part of a live cycle: no edge, and no hold of its.
    if (caller === undefined || isFinalStatus(caller.status)) return true;
    try {
      this.#calls.addCall(this.#callRefOf(caller), this.#callRefOf(record));
      return true;
    } catch (error) {
      if (error instanceof CycleDetectedError) return false;
      throw error;
    }
  }

  /**
   * {@linkcode callRefOf}, without the label of a call already in the graph: the graph keeps the
   * label it got first, and rendering it for every call edge (a nested program makes one per
   * pick-up) is wasted.
   */
  #callRefOf(record: InvocationRecord): CallRef {
    return this.#calls.hasCallId(record.callId)
      ? { callId: record.callId, invocationId: record.id }
      : callRefOf(record);
  }

  get(id: string): Promise<InvocationRecord | undefined> {
    return Promise.resolve(this.#visible(id));
  }

  getMany(ids: readonly string[]): Promise<InvocationRecord[]> {
    const records: InvocationRecord[] = [];
    for (const id of ids) {
      const record = this.#visible(id);
      if (record !== undefined) records.push(record);
    }
    return Promise.resolve(records);
  }

  history(id: string): Promise<HistoryEntry[]> {
    if (this.#visible(id) === undefined) return Promise.resolve([]);
    return Promise.resolve([...this.#history.get(id) ?? []]);
  }

  async *find(query: FindQuery): AsyncIterable<InvocationRecord> {
    const filters = Object.entries(query.args ?? {});
    for (const id of [...this.#byTask.get(query.taskId) ?? []]) {
      const record = this.#visible(id);
      if (record === undefined) continue;
      if (query.statuses !== undefined && !query.statuses.has(record.status)) continue;
      if (filters.every(([name, value]) => record.args[name] === value)) yield record;
    }
  }

  children(parentId: string): Promise<InvocationRecord[]> {
    const ids = [...this.#byParent.get(parentId) ?? []].sort();
    return Promise.resolve(ids.flatMap((id) => this.#visible(id) ?? []));
  }

  slotHolders(runningKey: string): Promise<string[]> {
    return Promise.resolve([...this.#slots.get(runningKey) ?? []]);
  }

  // As on KV: the executions of dead owners, then the PENDING ones by age, never what live
  // runners execute.
  recoverable(query: RecoverableQuery): Promise<InvocationRecord[]> {
    const found = new Map<string, InvocationRecord>();
    for (const [runnerId, ids] of this.#byRunner) {
      const lastSeenMs = this.#runners.get(runnerId)?.lastSeenMs;
      if (lastSeenMs !== undefined && lastSeenMs >= query.heartbeatBeforeMs) continue;
      for (const id of ids) {
        if (found.size >= query.max) return Promise.resolve([...found.values()]);
        const record = this.#records.get(id)!;
        // An owner without a heartbeat (never sent, or removed) is judged by the invocation's
        // last change instead: it gets the same timeout as a runner that went silent then.
        if ((lastSeenMs ?? record.updatedAtMs) < query.heartbeatBeforeMs) found.set(id, record);
      }
    }
    for (const id of this.#pending.smallest(query.max - found.size, (id) => !found.has(id))) {
      const record = this.#records.get(id)!;
      if (record.updatedAtMs >= query.pendingBeforeMs) break;
      found.set(id, record);
    }
    return Promise.resolve([...found.values()]);
  }

  executions(runnerId: string, page?: ExecutionsPage): Promise<string[]> {
    const ids = [...this.#byRunner.get(runnerId) ?? []];
    const after = page?.after;
    const listed = after === undefined ? ids : ids.filter((id) => id > after);
    listed.sort();
    return Promise.resolve(page === undefined ? listed : listed.slice(0, page.limit));
  }

  cancelRequests(runnerId: string): Promise<string[]> {
    return Promise.resolve([...this.#cancelRequests.get(runnerId) ?? []]);
  }

  nextAvailableMs(nowMs: number): Promise<number | undefined> {
    this.#promoteDelayed(nowMs);
    // A delayed invocation falls due, or a rate limit key's window opens for its parked.
    const times = [this.#delayed.peekKey(), this.#rateOpens.peekKey()];
    const due = times.filter((time) => time !== undefined);
    return Promise.resolve(due.length === 0 ? undefined : Math.min(...due));
  }

  delayedCounts(nowMs: number): Promise<Map<string, DelayedCount>> {
    this.#promoteDelayed(nowMs);
    const counts = new Map<string, DelayedCount>();
    // Smallest first: a task's first entry holds its earliest time.
    for (const id of this.#delayed.smallest(this.#delayed.size, undefined)) {
      const { taskId, availableAtMs } = this.#records.get(id)!;
      const { count = 0, nextMs = availableAtMs } = counts.get(taskId) ?? {};
      counts.set(taskId, { count: count + 1, nextMs });
    }
    return Promise.resolve(counts);
  }

  rateWindows(): Promise<RateWindow[]> {
    const keys = new Set([...this.#starts.keys(), ...this.#parked.keys(), ...this.#woken.keys()]);
    return Promise.resolve(
      [...keys].filter((key) => rateKeyTask(key) !== undefined).map((key) => ({
        key,
        starts: this.#starts.get(key) ?? [],
        parked: this.#parked.get(key)?.size ?? 0,
        woken: this.#woken.get(key) ?? 0,
      })),
    );
  }

  list(query: ListQuery): Promise<InvocationRecord[]> {
    const tasks = query.taskIds === undefined ? undefined : new Set(query.taskIds);
    const nowMs = this.#clock.now();
    const found = [...this.#records.values()].filter((record) =>
      !isPastPurge(record, nowMs) && (tasks?.has(record.taskId) ?? true) &&
      (query.statuses?.has(record.status) ?? true) &&
      record.createdAtMs >= (query.sinceMs ?? -Infinity)
    );
    return Promise.resolve(
      found.sort((a, b) => a.id < b.id ? 1 : a.id > b.id ? -1 : 0).slice(0, query.limit),
    );
  }

  concurrency(maxParked: number): Promise<KeyUsage[]> {
    const keys = new Set([...this.#slots.keys(), ...this.#parked.keys()]);
    const usages: KeyUsage[] = [];
    for (const key of keys) {
      if (rateKeyTask(key) !== undefined) continue;
      const holders = [...this.#slots.get(key) ?? []];
      const heap = this.#parked.get(key);
      const parked = heap?.smallest(maxParked, undefined) ?? [];
      // The limit as the invocations using the key know it.
      const user = this.#records.get(holders[0] ?? parked[0]!);
      const limit = user === undefined ? undefined : slotsOf(user).find((slot) => slot.key === key);
      if (limit === undefined || holders.length + parked.length === 0) continue;
      usages.push({ key, limit: limit.limit, holders, parked, parkedCount: heap?.size ?? 0 });
    }
    return Promise.resolve(usages);
  }

  counts(): Promise<Map<string, Map<InvocationStatus, number>>> {
    const counts = new Map<string, Map<InvocationStatus, number>>();
    const nowMs = this.#clock.now();
    for (const record of this.#records.values()) {
      if (isPastPurge(record, nowMs)) continue;
      const perTask = counts.get(record.taskId) ?? new Map<InvocationStatus, number>();
      perTask.set(record.status, (perTask.get(record.status) ?? 0) + 1);
      counts.set(record.taskId, perTask);
    }
    return Promise.resolve(counts);
  }

  addCall(caller: CallRef, callee: CallRef): Promise<void> {
    try {
      this.#calls.addCall(caller, callee);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  removeCall(ref: Pick<CallRef, "callId" | "invocationId">): Promise<void> {
    this.#calls.removeInvocation(ref);
    return Promise.resolve();
  }

  waitFor(waiterId: string, waitedIds: readonly string[], nowMs: number): Promise<void> {
    this.#waits.waitFor(waiterId, waitedIds, nowMs);
    return Promise.resolve();
  }

  releaseWaiters(id: string): Promise<void> {
    this.#waits.release(id);
    return Promise.resolve();
  }

  waiters(id: string): Promise<string[]> {
    return Promise.resolve(this.#waits.waitersOf(id));
  }

  blocking(max: number, nowMs: number): Promise<string[]> {
    return Promise.resolve(this.#blocking(max, nowMs));
  }

  #blocking(max: number, nowMs: number): string[] {
    return this.#waits.blocking(max, {
      isAvailable: (id) => {
        const record = this.#records.get(id);
        return record !== undefined && AVAILABLE_FOR_RUN_STATUSES.has(record.status) &&
          !(this.#delayed.has(id) && record.availableAtMs > nowMs);
      },
    });
  }

  graphs(): Promise<LiveGraphs> {
    return Promise.resolve({ calls: this.#calls.snapshot(), waits: this.#waits.edges() });
  }

  recordCycle(cycle: RefusedCycle): Promise<void> {
    this.#cycles.delete(cycle.invocationId);
    this.#cycles.set(cycle.invocationId, cycle);
    for (const id of this.#cycles.keys()) {
      if (this.#cycles.size <= CYCLES_KEPT) break;
      this.#cycles.delete(id);
    }
    return Promise.resolve();
  }

  cycles(): Promise<RefusedCycle[]> {
    const sinceMs = this.#clock.now() - CYCLE_RETENTION_MS;
    return Promise.resolve(
      [...this.#cycles.values()].filter((cycle) => cycle.atMs > sinceMs)
        .sort((a, b) => b.atMs - a.atMs),
    );
  }

  heartbeat(runnerId: string, nowMs: number, taskIds?: readonly string[]): Promise<void> {
    this.#runners.set(runnerId, { lastSeenMs: nowMs, ...(taskIds ? { taskIds } : {}) });
    return Promise.resolve();
  }

  removeRunner(runnerId: string, seenBeforeMs = Infinity): Promise<void> {
    if ((this.#runners.get(runnerId)?.lastSeenMs ?? Infinity) < seenBeforeMs) {
      this.#runners.delete(runnerId);
    }
    return Promise.resolve();
  }

  runners(): Promise<RunnerInfo[]> {
    return Promise.resolve(
      [...this.#runners].map(([runnerId, seen]) => ({ runnerId, ...seen })),
    );
  }

  takeUpkeepLease(runnerId: string, { nowMs, untilMs }: UpkeepLease): Promise<boolean> {
    const held = this.#upkeep;
    if (held !== undefined && held.runnerId !== runnerId && held.untilMs > nowMs) {
      return Promise.resolve(false);
    }
    this.#upkeep = { runnerId, untilMs };
    return Promise.resolve(true);
  }

  releaseUpkeepLease(runnerId: string): Promise<void> {
    if (this.#upkeep?.runnerId === runnerId) this.#upkeep = undefined;
    return Promise.resolve();
  }

  waitFinal(id: string, signal?: AbortSignal): Promise<InvocationRecord | undefined> {
    const record = this.#visible(id);
    if (record === undefined) return Promise.resolve(undefined);
    if (isFinalStatus(record.status)) return Promise.resolve(record);
    return listenFor(this.#finalWaiters, id, signal);
  }

  waitWork(signal?: AbortSignal): Promise<void> {
    return this.#newWork ? Promise.resolve() : listen(this.#workWaiters, signal);
  }

  schedulePurge(id: string, purgeAtMs: number): Promise<void> {
    const record = this.#visible(id);
    if (record !== undefined && isFinalStatus(record.status)) {
      const kept = keptPurgeAtMs(record, purgeAtMs);
      this.#records.set(id, { ...record, purgeAtMs: kept });
      this.#purgeDue.remove(id);
      this.#purgeDue.insert(id, kept);
    }
    return Promise.resolve();
  }

  purgeDue(nowMs: number): Promise<number> {
    let purged = 0;
    for (let key = this.#purgeDue.peekKey(); key !== undefined && key <= nowMs;) {
      this.#delete(this.#purgeDue.peek()!);
      purged++;
      key = this.#purgeDue.peekKey();
    }
    // Expired idempotency keys go too (a key lives no longer than its invocation: see keepUntilMs),
    // expired tick claims, and rate limit logs that no longer count in any window.
    sweep(this.#idempotencyDue, this.#idempotencyKeys, nowMs);
    sweep(this.#ticksDue, this.#ticks, nowMs);
    sweep(this.#startsExpire, this.#starts, nowMs);
    return Promise.resolve(purged);
  }

  purgeAll(): Promise<void> {
    for (const id of [...this.#records.keys()]) this.#delete(id);
    sweep(this.#idempotencyDue, this.#idempotencyKeys, Infinity);
    sweep(this.#ticksDue, this.#ticks, Infinity);
    this.#schedules.clear();
    this.#starts.clear();
    this.#rateOpens.clear();
    this.#startsExpire.clear();
    this.#runners.clear();
    this.#cycles.clear();
    this.#upkeep = undefined;
    return Promise.resolve();
  }

  /** Nothing to check: memory holds only what this process's code wrote. */
  checkSchema(): Promise<void> {
    return Promise.resolve();
  }

  defineGroups(limits: ReadonlyMap<string, number>): Promise<void> {
    for (const [name, limit] of limits) {
      const stored = this.#groupLimits.get(name);
      if (stored !== undefined && stored !== limit) {
        return Promise.reject(groupLimitMismatch(name, stored, limit));
      }
    }
    for (const [name, limit] of limits) this.#groupLimits.set(name, limit);
    return Promise.resolve();
  }

  putSchedule(schedule: Schedule): Promise<Schedule> {
    const stored = upsertSchedule(this.#schedules.get(schedule.name), schedule);
    this.#schedules.set(schedule.name, stored);
    return Promise.resolve(stored);
  }

  deleteSchedule(name: string): Promise<boolean> {
    return Promise.resolve(this.#schedules.delete(name));
  }

  schedules(): Promise<Schedule[]> {
    return Promise.resolve(
      [...this.#schedules.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    );
  }

  // One synchronous step: the claim of the tick, the schedule's last tick, the registration.
  fireTick(
    schedule: Schedule,
    invocation: NewInvocation & { readonly scheduledAtMs: number },
  ): Promise<FiredTick | undefined> {
    const slot = tickSlot(schedule.name, invocation.scheduledAtMs);
    const stored = this.#schedules.get(schedule.name);
    const claimedBy = this.#ticks.get(slot);
    if (claimedBy !== undefined) {
      // Our own claim, applied by an earlier try whose answer was lost: done.
      const record = claimedBy === invocation.id ? this.#visible(claimedBy) : undefined;
      return Promise.resolve(
        record !== undefined && stored !== undefined
          ? { invocation: record, schedule: stored }
          : undefined,
      );
    }
    const next = planTick(stored, schedule, invocation);
    if (next === undefined) return Promise.resolve(undefined);
    this.#ticks.set(slot, invocation.id);
    this.#ticksDue.insert(slot, invocation.nowMs + tickClaimMs(next));
    this.#schedules.set(next.name, next);
    return Promise.resolve({ invocation: this.#create(invocation), schedule: next });
  }

  #create(invocation: NewInvocation): InvocationRecord {
    const { record, entry } = planRegistration(invocation);
    this.#records.set(record.id, record);
    this.#history.set(record.id, [entry]);
    addTo(this.#byTask, record.taskId, record.id);
    if (record.parentId !== null) addTo(this.#byParent, record.parentId, record.id);
    if (record.registrationKey !== null) {
      this.#registrationKeys.set(record.registrationKey, record.id);
    }
    if (inLane(record)) {
      const turn = turnOf(record, record.availableAtMs, record.id);
      this.#setTurn(record.lane!, joinLane(this.#slotState(record.lane!), turn, 1).turn);
    }
    this.#enqueue(record);
    return record;
  }

  /**
   * Applies a change in one synchronous step; then, unless `wakeParked` is off (a wake itself),
   * wakes the invocations parked on each key the change left with room, first available first.
   * `addCall`, for a pick-up on to RUNNING, adds its call edge once its slots are granted and
   * before anything changed; `false` (a cycle) stops the pick-up at PENDING.
   */
  #apply(
    id: string,
    change: StatusChange,
    wakeParked = true,
    addCall?: () => boolean,
  ): ChangeOutcome {
    const record = this.#visible(id);
    if (record === undefined) return { ok: false, reason: "missing" };
    if (change.expectSeq !== undefined && change.expectSeq !== record.seq) {
      if (isAppliedChange(record, change)) {
        return { ok: true, record, entries: [], previous: record.status, replayed: true };
      }
      return { ok: false, reason: "conflict", record };
    }
    const plan = planChange(record, change);
    // Every slot of the invocation (its running key, its groups'), all taken or none. Only the
    // running key is reserved by a refused resume.
    let effects: readonly SlotEffect[] = [];
    if (plan.touchesSlots) {
      const decision = decideSlots(
        plan,
        id,
        stateKeysOf(record).map((slot) => ({
          ...slot,
          state: this.#slotState(slot.key),
          ...(slot.key === record.runningKey
            ? { reserved: this.#reservations.get(slot.key) ?? null }
            : {}),
        })),
      );
      if (decision.busy !== undefined) {
        if (decision.reserve) this.#reservations.set(record.runningKey!, id);
        return { ok: false, reason: "slot-busy", record, busyKey: decision.busy };
      }
      effects = decision.effects;
    }
    if (addCall !== undefined && !addCall()) {
      return this.#apply(id, { ...change, path: [PENDING] }, wakeParked);
    }
    // The wait edges first: a bad list throws before anything changed. Those to invocations final
    // or gone already are released in this step (endedReleased), not by a read after it.
    if (change.waitFor !== undefined) {
      this.#waits.waitFor(id, change.waitFor, change.nowMs);
      for (const waited of change.waitFor) {
        const status = this.#visible(waited)?.status;
        if (status === undefined || isFinalStatus(status)) this.#waits.release(waited);
      }
    }
    for (const effect of effects) {
      const { key, state, took, released, dropReservation } = effect;
      if (dropReservation) this.#reservations.delete(key);
      if (took) addTo(this.#slots, key, id);
      if (released) {
        removeFrom(this.#slots, key, id);
        this.#announceWork(); // what the slot blocked may run now
      }
      if (state.woken > 0) this.#woken.set(key, state.woken);
      else this.#woken.delete(key);
      this.#setTurn(key, state.turn);
      if (state.starts !== undefined && effect.changed) this.#setStarts(effect);
    }
    if (plan.parking.leave !== null) this.#unpark(plan.parking.leave, id);
    if (plan.parking.enter !== null) {
      let parked = this.#parked.get(plan.parking.enter);
      if (parked === undefined) this.#parked.set(plan.parking.enter, parked = new IndexedHeap());
      parked.insert(id, queueKey(record));
    }
    if (plan.releaseRegistrationKey && this.#registrationKeys.get(record.registrationKey!) === id) {
      this.#registrationKeys.delete(record.registrationKey!);
    }
    const next = plan.record;
    this.#records.set(id, next);
    this.#history.get(id)!.push(...plan.entries);
    if (record.status === PENDING) this.#pending.remove(id);
    if (next.status === PENDING) this.#pending.insert(id, next.updatedAtMs);
    if (plan.executions.remove !== null) {
      removeFrom(this.#byRunner, plan.executions.remove, id);
    }
    if (plan.executions.add !== null) addTo(this.#byRunner, plan.executions.add, id);
    if (plan.cancelRequest.set !== null) addTo(this.#cancelRequests, plan.cancelRequest.set, id);
    if (plan.cancelRequest.clear !== null) {
      removeFrom(this.#cancelRequests, plan.cancelRequest.clear, id);
    }
    if (plan.queue === "dequeue") {
      this.#dequeue(record);
    } else if (plan.queue === "enqueue") {
      this.#enqueue(next);
    }
    if (plan.startsPurge) this.#purgeDue.insert(id, next.purgeAtMs!);
    if (plan.final) this.#waits.release(id);
    if (plan.final) notify(this.#finalWaiters.get(id), undefined, next);
    if (wakeParked) {
      for (const { key, wake } of effects) if (wake) this.#wake(key, change.runnerId, change.nowMs);
    }
    const applied = {
      ok: true,
      record: next,
      entries: plan.entries,
      previous: record.status,
    } as const;
    return change.waitFor === undefined ? applied : { ...applied, endedReleased: true };
  }

  /** The state of a slot key, for {@linkcode decideSlots}. */
  #slotState(key: string): SlotState {
    const starts = this.#starts.get(key);
    return {
      holders: [...this.#slots.get(key) ?? []],
      parked: this.#parked.get(key)?.size ?? 0,
      woken: this.#woken.get(key) ?? 0,
      queued: this.#lanes.get(key)?.size ?? 0,
      turn: this.#turns.get(key) ?? null,
      ...(starts !== undefined ? { starts } : {}),
    };
  }

  /**
   * Keeps a rate limit key's new state: its log, when its window opens for its parked (the state
   * is the truth: a later time replaces an earlier one), and when its log stops counting.
   */
  #setStarts({ key, state, wakeAtMs, expiresAtMs }: SlotEffect): void {
    if (state.starts!.length > 0) this.#starts.set(key, state.starts!);
    else this.#starts.delete(key);
    this.#rateOpens.remove(key);
    if (wakeAtMs !== undefined) this.#rateOpens.insert(key, wakeAtMs);
    this.#startsExpire.remove(key);
    if (expiresAtMs !== undefined) this.#startsExpire.insert(key, expiresAtMs);
  }

  /** Moves a lane's token to its new turn (`null`: the lane is empty, no token). */
  #setTurn(lane: string, turn: LaneTurn | null): void {
    const before = this.#turns.get(lane) ?? null;
    if (sameTurn(before, turn)) return;
    if (before !== null) this.#queue.remove(laneToken(before, lane));
    if (turn === null) {
      this.#turns.delete(lane);
    } else {
      this.#turns.set(lane, turn);
      this.#queue.insert(laneToken(turn, lane), queueKey({ ...turn, availableAtMs: turn.atMs }));
    }
  }

  /** Wakes the invocations parked on `key`, first available first, while it has room. */
  #wake(key: string, runnerId: string | null, nowMs: number): void {
    for (let id = this.#parked.get(key)?.peek(); id !== undefined;) {
      if (!this.#apply(id, wakeChange(this.#records.get(id)!, runnerId, nowMs), false).ok) return;
      id = this.#parked.get(key)?.peek();
    }
  }

  #unpark(key: string, id: string): void {
    const parked = this.#parked.get(key);
    parked?.remove(id);
    if (parked?.size === 0) this.#parked.delete(key);
  }

  /**
   * The record of an invocation, or `undefined` when there is none or it is final and past its
   * purge time: such a record reads as gone until the sweep deletes it, as on Deno KV.
   */
  #visible(id: string): InvocationRecord | undefined {
    const record = this.#records.get(id);
    // Only a final record has a purge time: the clock is read for those alone.
    if (record === undefined || record.purgeAtMs === null) return record;
    return isPastPurge(record, this.#clock.now()) ? undefined : record;
  }

  #enqueue(record: InvocationRecord): void {
    this.#dequeue(record);
    if (inLane(record)) {
      let lane = this.#lanes.get(record.lane!);
      if (lane === undefined) this.#lanes.set(record.lane!, lane = new IndexedHeap());
      lane.insert(record.id, queueKey(record));
    } else if (record.availableAtMs > record.updatedAtMs) {
      this.#delayed.insert(record.id, record.availableAtMs);
    } else {
      this.#queue.insert(record.id, queueKey(record));
    }
    if (!this.#claiming) this.#announceWork();
  }

  /** Takes an invocation out of the queue: ready, delayed or its lane. */
  #dequeue(record: InvocationRecord): void {
    this.#queue.remove(record.id);
    this.#delayed.remove(record.id);
    if (record.lane === undefined) return;
    const lane = this.#lanes.get(record.lane);
    lane?.remove(record.id);
    if (lane?.size === 0) this.#lanes.delete(record.lane);
  }

  #announceWork(): void {
    this.#newWork = true;
    notify(this.#workWaiters);
  }

  /**
   * Wakes the invocations parked on each rate limit key whose window has opened by `nowMs`, first
   * parked first, while it has room (a wake that leaves some parked marks the key's next opening).
   */
  #wakeRateOpened(runnerId: string, nowMs: number): void {
    for (let at = this.#rateOpens.peekKey(); at !== undefined && at <= nowMs;) {
      const key = this.#rateOpens.peek()!;
      this.#rateOpens.remove(key);
      this.#wake(key, runnerId, nowMs);
      at = this.#rateOpens.peekKey();
    }
  }

  #promoteDelayed(nowMs: number): void {
    for (let key = this.#delayed.peekKey(); key !== undefined && key <= nowMs;) {
      const id = this.#delayed.peek()!;
      this.#delayed.remove(id);
      this.#queue.insert(id, queueKey(this.#records.get(id)!));
      key = this.#delayed.peekKey();
    }
  }

  #delete(id: string): void {
    const record = this.#records.get(id);
    if (record === undefined) return;
    this.#records.delete(id);
    this.#history.delete(id);
    this.#byTask.get(record.taskId)?.delete(id);
    if (record.parentId !== null) removeFrom(this.#byParent, record.parentId, id);
    this.#pending.remove(id);
    if (record.ownerId !== null) removeFrom(this.#byRunner, record.ownerId, id);
    for (const runnerId of [...this.#cancelRequests.keys()]) {
      removeFrom(this.#cancelRequests, runnerId, id);
    }
    this.#dequeue(record);
    if (record.lane !== undefined && !this.#lanes.has(record.lane)) {
      this.#setTurn(record.lane, null);
    }
    this.#purgeDue.remove(id);
    if (record.parkedOn) this.#unpark(record.parkedOn, id);
    if (record.wokenOn) {
      const woken = (this.#woken.get(record.wokenOn) ?? 1) - 1;
      if (woken > 0) this.#woken.set(record.wokenOn, woken);
      else this.#woken.delete(record.wokenOn);
    }
    if (
      record.registrationKey !== null && this.#registrationKeys.get(record.registrationKey) === id
    ) {
      this.#registrationKeys.delete(record.registrationKey);
    }
    for (const { key } of slotsOf(record)) removeFrom(this.#slots, key, id);
    if (record.runningKey !== null && this.#reservations.get(record.runningKey) === id) {
      this.#reservations.delete(record.runningKey);
    }
    this.#calls.removeInvocation({ callId: record.callId, invocationId: id });
    this.#waits.release(id);
    notify(this.#finalWaiters.get(id));
  }
}

/**
 * The queue entry of a fairness lane: its token, keyed by its turn's time, and named by its
 * turn's id then the lane, so that it sorts where an invocation of that id would (ids never hold
 * the separator).
 */
const LANE_TOKEN = "\u0000lane:";

function laneToken(turn: LaneTurn, lane: string): string {
  return `${turn.id}${LANE_TOKEN}${lane}`;
}

/**
 * The place of a queued invocation (or a lane's token) in the memory store's heaps: priority
 * first, then the time it became available — one number, the time less the priority times 2^42 ms
 * (about 139 years), exact for priorities within ±PRIORITY_LIMIT (1,000: ±2^52 at most).
 */
function queueKey(entry: { readonly priority?: number; readonly availableAtMs: number }): number {
  return entry.availableAtMs - (entry.priority ?? 0) * 2 ** 42;
}

/** The lane a queue entry is the token of, or `undefined` for an invocation. */
function laneOfToken(entry: string): string | undefined {
  const at = entry.indexOf(LANE_TOKEN);
  return at < 0 ? undefined : entry.slice(at + LANE_TOKEN.length);
}

/** The memory store's key of an idempotency key: task and key, unambiguous. */
function idempotencySlot(taskId: string, key: string): string {
  return JSON.stringify([taskId, key]);
}

/** The memory store's key of a tick's claim: schedule and tick, unambiguous. */
function tickSlot(name: string, tickMs: number): string {
  return JSON.stringify([name, tickMs]);
}

/** Deletes the entries of `map` whose expiry in `due` is at or before `nowMs`. */
function sweep(due: IndexedHeap, map: Map<string, unknown>, nowMs: number): void {
  for (let key = due.peekKey(); key !== undefined && key <= nowMs;) {
    const slot = due.peek()!;
    due.remove(slot);
    map.delete(slot);
    key = due.peekKey();
  }
}

/** Whether a final record's purge time has passed. */
function isPastPurge(record: InvocationRecord, nowMs: number): boolean {
  return record.purgeAtMs !== null && record.purgeAtMs <= nowMs;
}

function addTo<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  let set = index.get(key);
  if (set === undefined) index.set(key, set = new Set());
  set.add(value);
}

function removeFrom<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  const set = index.get(key);
  set?.delete(value);
  if (set?.size === 0) index.delete(key);
}
