/**
 * The Deno KV backend: the storage port on a `Deno.Kv` (a local SQLite file, Deno Deploy KV or a
 * denokv server) or on the `@deno/kv` npm package (Bun, Node). Every state transition is one
 * `kv.atomic()` whose checks are the versionstamps it read; a failed check (another process moved
 * first) re-reads and re-plans. Under load, transitions on disjoint keys share one commit and
 * point reads share one `getMany` (`_batching.ts`): commits bound throughput, not logic. Values are nenc's own JSON bytes in `Uint8Array`, the one value
 * type every runtime reads back, so Deno, Bun and Node processes share one store.
 *
 * @module
 */

import { decodeTime, encodeTime } from "ulid";
import { PRIORITY_LIMIT } from "../core/_call_options.ts";
import { groupLimitMismatch } from "../core/_group_limits.ts";
import { listen, type Listener, listenFor, notify } from "../core/_listeners.ts";
import type { CallRef } from "../core/call_graph.ts";
import type { Clock } from "../core/clock.ts";
import {
  CycleDetectedError,
  NencError,
  SerializationError,
  StoreClosedError,
} from "../core/errors.ts";
import {
  AVAILABLE_FOR_RUN_STATUSES,
  type HistoryEntry,
  InvocationStatus,
  isFinalStatus,
  isInvocationStatus,
} from "../core/status.ts";
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
  EMPTY_SLOT,
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
  RATE_KEY_PREFIX,
  rateKeyTask,
  type RateWindow,
  type RecoverableQuery,
  type RefusedCycle,
  type RegisterOutcome,
  type RunnerInfo,
  sameTurn,
  slotsOf,
  type SlotState,
  stateKeysOf,
  type StatusChange,
  type Store,
  turnOf,
  type UpkeepLease,
  wakeChange,
} from "../core/store.ts";
import {
  type FiredTick,
  planTick,
  type Schedule,
  tickClaimMs,
  upsertSchedule,
} from "../core/schedules.ts";
import {
  AtomicDraft,
  backoff,
  chunked,
  GroupCommitter,
  isLocked,
  ReadCoalescer,
} from "./_batching.ts";
import { closeAware } from "./_closed.ts";
import { HINT_KINDS, type HintKind, SideHints } from "./_hints.ts";
import { Ride, type Seat } from "./_ride.ts";
import { Keys } from "./keys.ts";
import type { KvAtomicLike, KvEntryLike, KvEntryMaybeLike, KvKey, KvLike } from "./kv_like.ts";

/** The side index hints' versionstamps (`null`: not written yet). */
type HintStamps = ReadonlyMap<HintKind, string | null>;

/**
 * The layout version of the data this code writes; it refuses to run on a newer one. 2: slot
 * states and parked entries (0.1 wrote 1). 3: no status index — recovery reads the executions of
 * dead runners and the PENDING index by age, and one runner at a time holds the upkeep lease; the
 * first purge sweep moves the status index of data written before into the executions index.
 *
 * @example The version an app stamps on its data
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { Keys, KV_SCHEMA_VERSION } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * await new Nenc({ appId: "shop", kv }).task("ping", () => "pong").call();
 * const stored = await kv.get<Uint8Array>(new Keys("shop").schema());
 * console.log(Number(new TextDecoder().decode(stored.value!)) === KV_SCHEMA_VERSION); // true
 * kv.close();
 * ```
 */
export const KV_SCHEMA_VERSION = 3;

/**
 * The largest value Deno KV stores (64 KiB).
 *
 * @example A result that does not fit fails its invocation
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { KV_MAX_VALUE_BYTES } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const app = new Nenc({ appId: "shop", kv });
 * const invocation = await app.task("big", () => "x".repeat(KV_MAX_VALUE_BYTES)).call();
 * await app.runner().drain();
 * console.log(await invocation.result().catch((error: Error) => error.name)); // "SerializationError"
 * kv.close();
 * ```
 */
export const KV_MAX_VALUE_BYTES = 65_536;

const { PENDING, RUNNING } = InvocationStatus;

/**
 * The broker entry of a queued invocation: in the ready queue (taken in position order), in the
 * delayed queue (retry back-off, taken once its time has come), or parked on a slot key (woken in
 * position order). Positions are the time it became available, then its id.
 */
interface QueueEntry {
  readonly delayed: boolean;
  readonly position: string;
  /** Parked on this slot key. */
  readonly parkedOn?: string;
  /** Waiting in this fairness lane. */
  readonly lane?: string;
}

/** A wait edge seen from one end: the other end, and when it was added (`null`: before 0.2). */
interface WaitEdge {
  readonly id: string;
  readonly atMs: number | null;
}

/** An invocation as stored: the record, its queue entry (or `null`), and a short history. */
interface StoredInvocation {
  readonly record: InvocationRecord;
  readonly queue: QueueEntry | null;
  /**
   * The whole history, while it has at most {@linkcode HISTORY_IN_RECORD} entries: in the
   * record's own value, it costs no key to write, to read back or to re-expire at the final
   * transition — which set its expiry on `inv/<id>` anyway. Absent once a transition takes it
   * past that (that transition writes every entry as `hist/<id>/<seq>`, and later ones theirs),
   * and in data written before (its entries are keys).
   */
  readonly history?: readonly HistoryEntry[];
}

/**
 * The calls reachable from a callee, R (see KvStore's cycle control): each one's edges version as
 * read (`null`: absent), and a shortest path from the callee to the call before the caller, when
 * the caller is among them.
 */
interface CallRegion {
  readonly versions: ReadonlyMap<string, string | null>;
  readonly path?: readonly string[];
}

/** What adding wait edges is planned from (see KvStore's #readWaits). */
interface PlannedWaits {
  /** The ends waited on that have no edge from the waiter yet. */
  readonly added: readonly string[];
  /** For each of `added`, when it was first waited on (`null`: never, until now). */
  readonly firstWaits: readonly (number | null)[];
  /** The waiter's own ready entries: the edges into it, each with its time (if known). */
  readonly waiters: readonly WaitEdge[];
  /** The wait graph markers of the waiter and of each end waited on, as read. */
  readonly markers: ReadonlyMap<string, KvEntryMaybeLike>;
}

/**
 * The wait edges of an invocation (`waiters`: into it; `waited`: out of it) as a change made here
 * left them, when its wait graph marker had `marker` for versionstamp (see LocalSignals.edges).
 */
interface KnownEdges {
  readonly marker: string;
  readonly waiters: readonly WaitEdge[];
  readonly waited: readonly WaitEdge[];
}

/**
 * How a claim's pick-up of a child goes on (see KvStore's claim): to RUNNING (`running`), with its
 * call edge staged in the claim's commit (`edge`: the insertion as planned from its reads), or
 * without one (its caller gone or final); or it stops at PENDING, for the runner.
 */
interface ClaimCall {
  readonly running: boolean;
  readonly edge?: {
    readonly caller: CallRef;
    readonly callee: CallRef;
    readonly existing: KvEntryMaybeLike;
    readonly checked: ReadonlyMap<string, string | null>;
  };
}

/**
 * In-process accelerators, shared by every store of one app on one KV handle in this process: a
 * change made here wakes the waiters here at once; other processes' changes are found by polling
 * with back-off (`kv.watch` sees only its own process's writes on a local file, and nothing on
 * `@deno/kv`).
 */
interface LocalSignals {
  /** Waiters for an invocation to be final. */
  readonly finals: Map<string, Set<Listener<InvocationRecord>>>;
  /** Idle runners waiting for work. */
  readonly work: Set<Listener>;
  /** Work was announced since the last claim: a runner about to wait does not miss it. */
  newWork: boolean;
  /** The running poller of awaited invocations, if any. */
  poller?: Promise<void> | undefined;
  /** Ends the poller's pause at once (set while it pauses). */
  wakePoller?: (() => void) | undefined;
  /** Set once a call found the KV handle closed: it never opens again. */
  closed?: StoreClosedError | undefined;
  /**
   * Invocations that a change made here left with an owner (claimed, running, paused): no
   * candidates of a pick-up, so `blocking()` reads past their ready entries instead of reading
   * their records at every pick-up (in a tree of nested waits, the running children others wait
   * on: most of the ready index). A change here that gives one up, or that finds it changed by
   * another process, takes it out. One ended elsewhere (this process was taken for dead) stays
   * until then: it is run all the same, from the queue, without blocking control's preference.
   * Each with its call's id: its final change reads its call hold with its record (see #apply).
   */
  readonly ownedHere: Map<string, string>;
  /**
   * The call ids of invocations registered here with a caller, until a pick-up here takes them on
   * (at most CALLS_KNOWN, the oldest forgotten first): with the caller's from `ownedHere`, a
   * pick-up reads a child's call edge and region with its record instead of after it (see
   * #callReadAhead). A hint: a call id never changes, and one not known is read after.
   */
  readonly registeredCalls: Map<string, string>;
  /**
   * Invocations whose wait edges (as waiter or waited) a change made here wrote: the final change
   * of one lists its edges together with its record's read, not after it (a round trip less for
   * each end in a tree of nested waits). A hint: others list them once the marker is read.
   */
  readonly waitNodes: Set<string>;
  /**
   * The record entries of invocations held here (not final), as a change made here last committed
   * them, with that commit's versionstamp. The next change of one plans its first attempt from it
   * instead of a read: a resume after a pause made here then waits for its commit alone, not for
   * a read first (a round trip a level on the way up a tree of nested waits over a remote store).
   * Its commit checks the versionstamp, so an entry a change elsewhere made stale (a cancel, a
   * recovery) is refused, and the change reads and plans again. Taken by the change that uses it,
   * dropped with the hold.
   */
  readonly entries: Map<string, KvEntryMaybeLike>;
  /**
   * The wait edges of invocations as a pause made here left them: every edge into or out of one
   * when that pause wrote its marker (wnode/<id>, which every insertion of an edge at either end
   * writes), when the pause found the marker absent or at the versionstamp known here before. Its
   * final change releases them without listing them (a round trip less at every end in a tree of
   * nested waits), checking the marker unchanged: an edge inserted since fails the commit, and the
   * change lists them. One deleted since (by a waiter that ended) is deleted again, which changes
   * nothing. Taken by the final change, dropped with a wait written without a known versionstamp.
   */
  readonly edges: Map<string, KnownEdges>;
  /**
   * The invocations held here whose call hold (holder/<call>/<id>) their claim here wrote: it
   * stays until their clean-up after their end, so their final change does not read it (see
   * holdsNoCall in #apply).
   */
  readonly holds: Set<string>;
}

const localSignals = new WeakMap<KvLike, Map<string, LocalSignals>>();

/** This process holds `id` no more: what its hold let it skip reading goes with it. */
function letGo(local: LocalSignals, id: string): void {
  local.ownedHere.delete(id);
  local.holds.delete(id);
}

/** `id` ended elsewhere, or is deleted: no hint about it holds here any more. */
function forget(local: LocalSignals, id: string): void {
  letGo(local, id);
  local.entries.delete(id);
  local.edges.delete(id);
  local.waitNodes.delete(id);
}

/**
 * A call found `kv` closed: every waiter of every app on it in this process rejects with a
 * {@linkcode StoreClosedError}, and the pollers stop instead of keeping the process alive.
 */
function closeSignals(kv: KvLike, error: StoreClosedError): void {
  const cause = { cause: error.cause };
  for (const local of localSignals.get(kv)?.values() ?? []) {
    local.closed ??= error;
    for (const [id, waiters] of [...local.finals]) {
      notify(
        waiters,
        new StoreClosedError(`Cannot wait for invocation ${id}: the KV store is closed`, cause),
      );
    }
    notify(local.work, new StoreClosedError("Cannot wait for work: the KV store is closed", cause));
    local.wakePoller?.();
  }
}

/**
 * Options of {@linkcode KvStore}.
 *
 * @example A KV store built by hand, as a backend test does
 * ```ts
 * import { Nenc, systemClock } from "@nenc/nenc";
 * import { KvStore, type KvStoreOptions } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const options: KvStoreOptions = { appId: "shop", clock: systemClock };
 * const app = new Nenc({ appId: "shop", store: new KvStore(kv, options) });
 * await app.task("ping", () => "pong").call();
 * console.log(await app.orchestrator.store.counts()); // Map(1) { "ping" => Map(1) { "registered" => 1 } }
 * kv.close();
 * ```
 */
export interface KvStoreOptions {
  /** The app id: every key is under `["nenc", appId]`. */
  readonly appId: string;
  /** Where the store reads time for polling back-off and purge deadlines. */
  readonly clock: Clock;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * The Deno KV {@linkcode Store}. `new Nenc({ appId, kv })` creates one.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { KvStore } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:"); // or a file: Deno.openKv("./nenc.db")
 * const app = new Nenc({ appId: "shop", kv });
 * console.log(app.orchestrator.store instanceof KvStore); // true
 * kv.close();
 * ```
 */
export class KvStore implements Store {
  /** The app whose data this store keeps: an app with another id refuses it. */
  readonly appId: string;
  readonly #kv: KvLike;
  readonly #keys: Keys;
  readonly #clock: Clock;
  /** When the schema key was last read (store clock), and whether it was there (or written). */
  #schemaCheckedAtMs = -Infinity;
  #schemaPresent = false;
  /** The schema read in flight, shared by the entry points that need one meanwhile. */
  #schemaRead: { readonly create: boolean; readonly done: Promise<void> } | undefined;
  readonly #local: LocalSignals;
  readonly #group: GroupCommitter;
  readonly #reads: ReadCoalescer;
  /** What this store's pick-ups last read of the side indexes (see kv/_hints.ts). */
  readonly #hints = new SideHints();
  /**
   * The hints read with the final write of an invocation run here, for the pick-up that refills
   * its slot (see #sideReads), with this process's signal mark when the read was issued.
   */
  #hintsAhead:
    | { readonly read: Promise<HintStamps>; readonly mark: number | undefined }
    | undefined;
  #idlePolls = 0;
  /** Wake markers this store wrote: a pick-up that wrote one wakes at once (see `claim`). */
  #wakesWritten = 0;
  /**
   * The candidates the pick-ups of this store are claiming: a pick-up beside another (a runner's
   * refill, a second runner of the app) reads past them instead of racing it for them.
   */
  readonly #claiming = new Set<string>();
  /** The rides of this store's pick-ups, by the invocation whose end may take their claims. */
  readonly #rides = new Map<string, Ride>();
  /** The slots the pick-ups of this store under way claim for, in all. */
  #claimingMax = 0;
  /**
   * The claims of this store inserting a call edge (by its key), each until it settles: with the
   * versionstamp of the edge it committed, if it did.
   */
  readonly #edgeClaims = new Map<string, Promise<string | undefined>>();
  /** Reads of a call edge and its region made ahead, by their call ids, while in flight. */
  readonly #callReads = new Map<string, CallReadAhead["read"]>();
  /** The versionstamps of the drafts committed on their own (see #commitDraft). */
  readonly #committedAt = new WeakMap<AtomicDraft, string>();
  /**
   * The removals of a call's holds (by call id) that have not listed its holders yet: another
   * removal of the call joins one (see removeCall).
   */
  readonly #removals = new Map<
    string,
    { readonly released: Set<string>; readonly done: Promise<void> }
  >();

  /** Wraps a KV store for one app. */
  constructor(kv: KvLike, options: KvStoreOptions) {
    this.appId = options.appId;
    // Every KV call goes through this view: a closed handle rejects with StoreClosedError.
    this.#kv = closeAware(kv, (error) => closeSignals(kv, error));
    this.#keys = new Keys(options.appId);
    this.#clock = options.clock;
    this.#group = new GroupCommitter(this.#kv);
    this.#reads = new ReadCoalescer(this.#kv);
    let perApp = localSignals.get(kv);
    if (perApp === undefined) localSignals.set(kv, perApp = new Map());
    let local = perApp.get(options.appId);
    if (local === undefined) {
      perApp.set(
        options.appId,
        local = {
          finals: new Map(),
          work: new Set(),
          newWork: false,
          ownedHere: new Map(),
          registeredCalls: new Map(),
          waitNodes: new Set(),
          entries: new Map(),
          edges: new Map(),
          holds: new Set(),
        },
      );
    }
    this.#local = local;
  }

  // --- registration ------------------------------------------------------------------------------

  // reads: idem/<task>/<key>, reg/<key>, inv/<existing>; checks: idem/<task>/<key>, reg/<key>,
  // and inv/<existing> when an idempotency key is written for a reused invocation (≤ 3);
  // writes: inv/<id> (with its first history entry), task/<task>/<id>, parent index, q/<pos>, reg/<key>,
  // idem/<task>/<key> (expireIn = its TTL) — or, for a reused invocation, inv/<existing> (its
  // keepUntilMs) and idem/<task>/<key>.
  async register(invocation: NewInvocation): Promise<RegisterOutcome> {
    await this.#ensureSchema(true);
    const keys = this.#keys;
    const key = invocation.registrationKey;
    const idempotency = invocation.idempotency;
    const idemKey = idempotency && keys.idempotency(invocation.taskId, idempotency.key);
    // A call from a canceled context is refused. Its caller runs on the calling runner, so a
    // cancel wrote the caller's cancel request for that runner (cleared when the execution ends):
    // its absence is checked in the commit, instead of the caller's record read before it (a
    // round trip in turn with the commit, for every child a task calls). The record is read only
    // after a refused commit, or with the reads of a call that reads first (a key).
    const { parentId, runnerId } = invocation;
    const canceled = parentId !== null && runnerId !== null
      ? keys.cancelRequest(runnerId, parentId)
      : undefined;
    for (let attempt = 0;; attempt++) {
      const caller = parentId !== null &&
          (canceled === undefined || attempt > 0 || idemKey !== undefined || key !== null)
        ? this.#read(parentId)
        : undefined;
      caller?.catch(() => {}); // awaited below, if the registration gets that far
      const refused = async (): Promise<RegisterOutcome | undefined> => {
        const stored = await caller;
        return stored?.record.status === InvocationStatus.CANCELED
          ? { refused: stored.record }
          : undefined;
      };
      // The idempotency key first: a live one names the invocation to return, final or not.
      let named: KvEntryMaybeLike | undefined;
      if (idemKey !== undefined) {
        named = await this.#reads.get(idemKey);
        const value = decodeIdempotency(named);
        if (value !== undefined && value.expiresAtMs > invocation.nowMs) {
          const existing = await this.#read(value.id);
          // Our own write, committed by an earlier try whose answer was lost.
          if (value.id === invocation.id && existing !== undefined) {
            return { created: existing.record };
          }
          if (existing !== undefined) return await refused() ?? { existing: existing.record };
          // Named invocation gone (a purge() reset): the key is free again.
        }
      }
      let holder: KvEntryMaybeLike | undefined;
      let reused:
        | { readonly entry: KvEntryMaybeLike; readonly stored: StoredInvocation }
        | undefined;
      if (key !== null) {
        holder = await this.#reads.get(keys.registration(key));
        const holderId = idOf(holder);
        if (holderId !== undefined) {
          const entry = await this.#reads.get(keys.invocation(holderId));
          const stored = this.#decodeInvocation(entry);
          // The key is released in the step that first enters RUNNING or a final status; a
          // holder found otherwise (data of an older version) no longer holds it.
          if (
            stored !== undefined && stored.record.registrationKey === key &&
            !isFinalStatus(stored.record.status)
          ) {
            if (idemKey === undefined) return await refused() ?? { existing: stored.record };
            reused = { entry, stored };
          }
        }
      }
      const refusal = await refused();
      if (refusal !== undefined) return refusal;
      const op = new AtomicDraft();
      if (canceled !== undefined) op.check({ key: canceled, versionstamp: null });
      if (idemKey !== undefined) {
        const { expiresAtMs } = idempotency!;
        op.check({ key: idemKey, versionstamp: named!.versionstamp });
        op.set(idemKey, encode({ id: reused?.stored.record.id ?? invocation.id, expiresAtMs }), {
          expireIn: Math.max(1, Math.ceil(expiresAtMs - invocation.nowMs)),
        });
      }
      if (reused !== undefined) {
        // The registration key still held, the record unchanged: the reuse and the idempotency
        // key are one step, and the record keeps the key's deadline (no purge before it).
        const { entry, stored } = reused;
        const record: InvocationRecord = {
          ...stored.record,
          keepUntilMs: keptPurgeAtMs(stored.record, idempotency!.expiresAtMs),
        };
        op.check({ key: keys.registration(key!), versionstamp: holder!.versionstamp });
        op.check({ key: keys.invocation(record.id), versionstamp: entry.versionstamp });
        op.set(keys.invocation(record.id), this.#encode({ ...stored, record }, record.id));
        if (await this.#group.commit(op)) return { existing: record };
      } else {
        if (holder !== undefined && key !== null) {
          op.check({ key: keys.registration(key), versionstamp: holder.versionstamp });
          op.set(keys.registration(key), encode(invocation.id));
        }
        if (joinsLane(invocation)) {
          const slot = await this.#reads.get(keys.slot(invocation.lane));
          this.#stageLaneJoin(op, invocation.lane, slot, invocation, 1);
        }
        const record = this.#stage(op, invocation);
        if (await this.#group.commit(op)) {
          this.#announceWork();
          return { created: record };
        }
      }
      await backoff(attempt);
    }
  }

  // writes per invocation: as register(), without a registration key. Every record is encoded
  // (and a record over the value limit refused) before the first commit; the group committer
  // packs the drafts into commits by count and by bytes, so large arguments split into more.
  async registerMany(invocations: readonly NewInvocation[]): Promise<InvocationRecord[]> {
    await this.#ensureSchema(true);
    if (
      invocations.some((invocation) =>
        invocation.registrationKey !== null || invocation.idempotency !== undefined
      )
    ) {
      throw new RangeError(
        "Cannot register in batch: registration and idempotency keys need register()",
      );
    }
    // Every record is staged (so encoded, and checked against the value limit) before any commit.
    const staged = invocations.map((invocation) => {
      const op = new AtomicDraft();
      return { op, record: this.#stage(op, invocation) };
    });
    // The invocations of one lane join it in chunks (by count and by bytes), each one commit
    // checked against the lane's state: its count and its token move with them.
    const lanes = new Map<string, { members: NewInvocation[]; bytes: number }[]>();
    invocations.forEach((invocation, i) => {
      if (!joinsLane(invocation)) return;
      const chunks = lanes.get(invocation.lane) ?? [];
      const bytes = staged[i]!.op.bytes;
      const last = chunks[chunks.length - 1];
      if (
        last === undefined || last.members.length >= LANE_JOIN_CHUNK ||
        last.bytes + bytes > LANE_JOIN_BYTES
      ) {
        chunks.push({ members: [invocation], bytes });
      } else {
        last.members.push(invocation);
        last.bytes += bytes;
      }
      lanes.set(invocation.lane, chunks);
    });
    // Every draft settles before this returns, even when one fails: a caller that retries what
    // is missing must not race a chunk still in flight (its lane would count it twice).
    const settled = await Promise.allSettled([
      ...staged.filter(({ record }) => !inLane(record)).map(async ({ op }) => {
        // No checks: only a file locked past every try fails it.
        for (let attempt = 0; !await this.#group.commit(op); attempt++) await backoff(attempt);
      }),
      ...[...lanes].map(async ([lane, chunks]) => {
        for (const { members: chunk } of chunks) {
          for (let attempt = 0;; attempt++) {
            const op = new AtomicDraft();
            const slot = await this.#reads.get(this.#keys.slot(lane));
            this.#stageLaneJoin(op, lane, slot, chunk[0]!, chunk.length);
            for (const invocation of chunk) this.#stage(op, invocation);
            if (await this.#group.commit(op)) break;
            await backoff(attempt);
          }
        }
      }),
    ]);
    const failed = settled.find((result) => result.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    this.#announceWork();
    return staged.map(({ record }) => record);
  }

  /**
   * Stages `count` registrations joining fairness lane `lane` on `op`: its state (read as
   * `slot`), checked and rewritten, and its token when the lane was empty.
   */
  #stageLaneJoin(
    op: AtomicDraft,
    lane: string,
    slot: KvEntryMaybeLike,
    first: NewInvocation,
    count: number,
  ): void {
    const before = decodeSlot(slot);
    const after = joinLane(before, turnOf(first, first.nowMs, first.id), count);
    op.check({ key: this.#keys.slot(lane), versionstamp: slot.versionstamp });
    op.set(this.#keys.slot(lane), encodeSlot(after)!);
    this.#stageTurn(op, lane, before.turn, after.turn);
  }

  /** Moves a lane's token from one turn to another on `op` (`null`: no token). */
  #stageTurn(op: AtomicDraft, lane: string, from: LaneTurn | null, to: LaneTurn | null): void {
    if (sameTurn(from, to)) return;
    if (from !== null) {
      op.delete(this.#keys.queue({ delayed: false, position: laneTokenPosition(from, lane) }));
    }
    if (to !== null) {
      op.set(
        this.#keys.queue({ delayed: false, position: laneTokenPosition(to, lane) }),
        encode({ lane }),
      );
    }
  }

  /** Stages the creation of an invocation on `op` and returns its record. */
  #stage(op: AtomicDraft, invocation: NewInvocation): InvocationRecord {
    const { record, entry } = planRegistration(invocation);
    // A delayed call waits in the delayed queue, by its time; else in its lane, or the queue.
    const delayed = record.availableAtMs > invocation.nowMs;
    const queue: QueueEntry = {
      delayed,
      position: delayed ? timePosition(record.availableAtMs, record.id) : queuePosition(record),
      ...(inLane(record) ? { lane: record.lane! } : {}),
    };
    const keys = this.#keys;
    // No check that the id is free: ULIDs are unique, and a batch may hold only 10 checks.
    op.set(
      keys.invocation(record.id),
      this.#encode({ record, queue, history: [entry] }, record.id),
    );
    op.set(keys.byTask(record.taskId, record.id), encode(null));
    if (record.parentId !== null) {
      op.set(keys.byParent(record.parentId, record.id), encode(null));
      const known = this.#local.registeredCalls;
      known.set(record.id, record.callId);
      if (known.size > CALLS_KNOWN) known.delete(known.keys().next().value!);
    }
    op.set(keys.queue(queue), encode(queueValue(record)));
    if (delayed) op.signal(keys.hint("time"), encode(null));
    return record;
  }

  // --- transitions -------------------------------------------------------------------------------

  async change(id: string, change: StatusChange): Promise<ChangeOutcome> {
    const waits = change.waitFor ?? [];
    checkWaits(id, waits);
    if (waits.length <= WAIT_EDGES_PER_COMMIT) return await this.#apply(id, change);
    // A long list: all but its last chunk ahead, edges alone (see StatusChange.waitFor).
    const cut = waits.length - WAIT_EDGES_PER_COMMIT;
    await this.waitFor(id, waits.slice(0, cut), change.nowMs);
    return await this.#apply(id, { ...change, waitFor: waits.slice(cut) });
  }

  // reads: inv/<id> (with it, for a change with `waitFor`, what its edges are planned from: see
  // #readWaits), slot/<key>… (running key, groups, rate limit key, a lane-only key) +
  // reserve/<key>, reg/<key>; checks: inv/<id>, and the slots, the rate limit key, the lane, reserve
  // and reg when touched (never more than 10 at once: inv 1 + running key and 4 groups 5 + rate
  // limit key 1 + lane 1 + reserve 1 + reg 1, Deno KV's limit); writes: inv/<id> (its history in it
  // while short, else hist/<id>/<seq>…),
  // exec/<runner>/<id> when the owner changes, pend/<pos> when PENDING is entered or left, q/<pos> or
  // park/<key>/<pos>, slot (a rate limit key's with expireIn once its log stops counting), reserve,
  // reg, wake/<key> or wakeat/<time>/<key>, and on a final status expireIn on every key of the
  // invocation plus purge/<pos> (a history over INLINE_EXPIRY entries is re-expired after it).
  // `stage` adds a caller's own checks and writes to the step (a claim's call edge, see claim),
  // and says whether it commits on its own rather than in a group commit. `first`: the record's
  // entry as the caller read it just before, for the first attempt instead of a read of its own.
  async #apply(
    id: string,
    changeOf: StatusChange | ((record: InvocationRecord) => StatusChange | Promise<StatusChange>),
    isWanted: (stored: StoredInvocation) => boolean = () => true,
    onBusy?: (record: InvocationRecord, busyKey: string) => StatusChange,
    ready?: Promise<void>,
    stage?: (op: AtomicDraft, next: InvocationRecord) => boolean,
    first?: KvEntryMaybeLike,
    seat?: Seat,
  ): Promise<ChangeOutcome> {
    const keys = this.#keys;
    // A change to a final status reads the wait graph marker with the record (one read).
    const final = typeof changeOf !== "function" && changeOf.path.some(isFinalStatus);
    // A pause reads its wait edges to be with the record (one round trip, not two in turn).
    const waitFor = typeof changeOf !== "function" ? changeOf.waitFor ?? [] : [];
    for (let attempt = 0;; attempt++) {
      // A final change: the wait edges known here (first attempt), else the marker and the lists.
      const knownEdges = final && attempt === 0 ? this.#local.edges.get(id) : undefined;
      if (final) this.#local.edges.delete(id);
      const marker = !final
        ? undefined
        : knownEdges !== undefined
        ? Promise.resolve({ key: keys.waitNode(id), value: null, versionstamp: knownEdges.marker })
        : this.#reads.get(keys.waitNode(id));
      marker?.catch(() => {}); // awaited below, if the change gets that far
      // The call hold of one running here, read with the record (see holdsNoCall below), unless
      // its claim here wrote it.
      const ownCall = final && this.#group.roomy ? this.#local.ownedHere.get(id) : undefined;
      const callId = this.#local.holds.has(id) ? undefined : ownCall;
      const hold = callId === undefined ? undefined : keys.callHolder(callId, id);
      const held = hold === undefined ? undefined : this.#reads.get(hold);
      held?.catch(() => {}); // the same
      // The slot's next pick-up reads the side index hints: with these reads, not after them
      // (one such read waits at a time: of many ends together, one pick-up follows).
      if (ownCall !== undefined && this.#hintsAhead === undefined) {
        this.#hintsAhead = { read: this.#readHints(), mark: this.#group.signalMark() };
      }
      const edges = knownEdges !== undefined
        ? Promise.resolve<[WaitEdge[], WaitEdge[]]>([[...knownEdges.waiters], [
          ...knownEdges.waited,
        ]])
        : final && this.#local.waitNodes.has(id)
        ? this.#edgeLists(id)
        : undefined;
      edges?.catch(() => {}); // the same
      const waits = waitFor.length > 0 ? this.#readWaits(id, waitFor) : undefined;
      waits?.catch(() => {}); // the same
      // The first attempt may plan from a read made just before (`first`), or from the entry a
      // change here last committed (see LocalSignals.entries): its commit checks it.
      const cached = attempt === 0 && first === undefined ? this.#local.entries.get(id) : undefined;
      const known = attempt === 0 ? first ?? cached : undefined;
      this.#local.entries.delete(id);
      const entry = known ?? await this.#reads.get(keys.invocation(id));
      const stored = this.#decodeInvocation(entry);
      // An entry committed here may be stale (another process, or a write here that went round
      // the entries, changed the record since): only a commit's check may act on it, so what it
      // refuses before planning is read afresh, as a refused check is.
      if (cached !== undefined && (stored === undefined || !isWanted(stored))) continue;
      if (stored === undefined || !isWanted(stored)) {
        letGo(this.#local, id);
        return { ok: false, reason: "missing" };
      }
      // A claim for a slot about to be given back: the record is read, the rest (its slot keys,
      // the commit) waits for the slot — or, on a ride, goes in the commit that gives it back.
      if (attempt > 0 || seat?.wants(stored.record) === false) seat?.leave();
      if (ready !== undefined && seat?.joined !== true) await ready;
      const { record } = stored;
      let change = typeof changeOf === "function" ? await changeOf(record) : changeOf;
      if (change.expectSeq !== undefined && change.expectSeq !== record.seq) {
        // A retried write whose earlier try committed (its answer lost) is done, not a conflict.
        if (isAppliedChange(record, change)) {
          return { ok: true, record, entries: [], previous: record.status, replayed: true };
        }
        if (cached !== undefined) continue;
        letGo(this.#local, id);
        return { ok: false, reason: "conflict", record };
      }
      let plan = planChange(record, change);
      const op = new AtomicDraft().check({
        key: keys.invocation(id),
        versionstamp: entry.versionstamp,
      });
      let planned: PlannedWaits | undefined;
      if (change.waitFor !== undefined && change.waitFor.length > 0) {
        planned = await (change.waitFor === waitFor ? waits! : this.#readWaits(id, change.waitFor));
        this.#stageWaits(op, id, planned, change.nowMs);
      }
      const slots = stateKeysOf(record);
      const runningKey = record.runningKey;
      let wakes = false;
      if (plan.touchesSlots && slots.length > 0) {
        // Every slot key of the invocation (its running key, its groups', at most 5), its rate
        // limit key, its lane when that is no slot key (a priority other than 0), and the running
        // key's reservation in one read; all taken in this commit, or none. Read once the slot is
        // given back: another end of this runner may release one of them.
        if (seat?.joined === true) {
          seat.leave();
          await ready;
        }
        const entries = await this.#kv.getMany([
          ...slots.map(({ key }) => keys.slot(key)),
          ...(runningKey !== null ? [keys.reservation(runningKey)] : []),
        ]);
        const reservation = runningKey !== null ? entries[slots.length]! : undefined;
        const states = slots.map((_, i) => decodeSlot(entries[i]!));
        const inputs = slots.map((slot, i) => ({
          ...slot,
          state: states[i]!,
          ...(slot.key === runningKey ? { reserved: idOf(reservation!) ?? null } : {}),
        }));
        let decision = decideSlots(plan, id, inputs);
        if (decision.busy !== undefined && onBusy !== undefined && !decision.reserve) {
          // Refused, and parked (or finalised) in the same step, from the same reads: the park
          // writes the refusing key's state (and the state of the key it was woken from), checked,
          // so a refusal that a concurrent commit made stale fails and is planned again. Two
          // woken invocations that each saw the other holding the room they need cannot both
          // park on each other's key, round after round.
          change = onBusy(record, decision.busy);
          plan = planChange(record, change);
          decision = decideSlots(plan, id, inputs);
        }
        if (decision.busy !== undefined) {
          // Only a refused resume reserves, and only the running key: checked against the record
          // read, so a cancel or recovery that moved it since leaves no reservation for an
          // invocation that is not PAUSED any more.
          if (decision.reserve) {
            await this.#commit(
              this.#kv.atomic()
                .check({ key: keys.invocation(id), versionstamp: entry.versionstamp })
                .check({ key: keys.reservation(runningKey!), versionstamp: null })
                .set(keys.reservation(runningKey!), encode(id)),
            );
          }
          return { ok: false, reason: "slot-busy", record, busyKey: decision.busy };
        }
        // Checks: inv, at most 5 slot values, the rate limit key's, a lane, reserve, reg — at most
        // 10, Deno KV's limit. Wake markers are written blind: a marker too many costs a pick-up
        // one empty look.
        decision.effects.forEach((effect, i) => {
          const { key } = effect;
          if (effect.changed) {
            // The key's state in one value, checked: a limit of N costs one check, not N.
            op.check({ key: keys.slot(key), versionstamp: entries[i]!.versionstamp });
            const value = encodeSlot(effect.state);
            if (value === undefined) op.delete(keys.slot(key));
            else if (effect.expiresAtMs === undefined) op.set(keys.slot(key), value);
            else {
              // A log that no longer counts goes by itself, kept a while longer for processes
              // whose clocks run behind (expiry is lazy anyway: a late read finds it, still right).
              const expireIn = effect.expiresAtMs - change.nowMs + RATE_LOG_GRACE_MS;
              op.set(keys.slot(key), value, { expireIn: Math.max(1, expireIn) });
            }
          }
          if (effect.wakeAtMs !== undefined) {
            // Never early: a marker read before the window opens would find no room, and go.
            const time = encodeTime(Math.ceil(effect.wakeAtMs), 10);
            op.set(keys.wakeAt(time, key), encode(null)).signal(keys.hint("time"), encode(null));
          }
          // A take decided on "no reservation" checks that none was made since the read: a
          // paused invocation that read the slot held may reserve it after its holder released
          // it, and then resumes first. (Its own reservation is checked below, as it drops it.)
          if (effect.took && key === runningKey && !effect.dropReservation) {
            op.check({ key: keys.reservation(key), versionstamp: reservation!.versionstamp });
          }
          if (effect.dropReservation) {
            op.check({ key: keys.reservation(key), versionstamp: reservation!.versionstamp })
              .delete(keys.reservation(key));
          }
          if (effect.wake) {
            op.set(keys.wake(key), encode(null)).signal(keys.hint("wake"), encode(null));
            wakes = true;
          }
          this.#stageTurn(op, key, states[i]!.turn, effect.state.turn);
        });
      }
      const next = plan.record;
      const alone = stage?.(op, next) === true;
      if (plan.releaseRegistrationKey && record.registrationKey !== null) {
        const holder = await this.#reads.get(keys.registration(record.registrationKey));
        if (idOf(holder) === id) {
          op.check({
            key: keys.registration(record.registrationKey),
            versionstamp: holder.versionstamp,
          });
          op.delete(keys.registration(record.registrationKey));
        }
      }
      let queue = stored.queue;
      if ((plan.queue !== "none" || plan.parking.leave !== null) && queue !== null) {
        op.delete(keys.queue(queue));
        queue = null;
      }
      // Queued and parked by priority, then the time it became available (a woken invocation
      // keeps its place); delayed by that time alone (a range read finds what is due).
      const position = queuePosition(next);
      if (plan.queue === "enqueue") {
        const delayed = !inLane(next) && next.availableAtMs > change.nowMs;
        queue = inLane(next)
          ? { delayed: false, position, lane: next.lane! }
          : delayed
          ? { delayed, position: timePosition(next.availableAtMs, id) }
          : { delayed, position };
        op.set(keys.queue(queue), encode(queueValue(next)));
        if (delayed) op.signal(keys.hint("time"), encode(null));
      } else if (plan.parking.enter !== null) {
        queue = { delayed: false, position, parkedOn: plan.parking.enter };
        op.set(keys.queue(queue), encode(queueValue(next)));
      }
      // A final invocation and all its keys expire at its purge time. Expiry is lazy (an expired
      // key may still be read for a while), so reads also compare the deadline in the record.
      // (Ending a canceled execution rewrites a final record: it keeps its expiry.)
      const options = isFinalStatus(next.status) && next.purgeAtMs !== null
        ? { expireIn: Math.max(1, next.purgeAtMs - change.nowMs) }
        : undefined;
      // The PENDING index, by the time PENDING was entered: recovery reads the stale claims.
      if (record.status === PENDING && next.status !== PENDING) {
        op.delete(keys.pending(timePosition(record.updatedAtMs, id)));
      }
      if (next.status === PENDING && record.status !== PENDING) {
        op.set(keys.pending(timePosition(next.updatedAtMs, id)), encode(null));
      }
      if (plan.executions.remove !== null) op.delete(keys.execution(plan.executions.remove, id));
      if (plan.executions.add !== null) {
        op.set(keys.execution(plan.executions.add, id), encode(null));
      }
      if (plan.cancelRequest.set !== null) {
        // Cleared when the execution ends; it outlives a short purge horizon all the same, so the
        // runner of a paused invocation sees it (a held one has no expiry yet).
        op.set(
          keys.cancelRequest(plan.cancelRequest.set, id),
          encode(null),
          options && { expireIn: Math.max(options.expireIn, PURGE_ENTRY_GRACE_MS) },
        );
      }
      if (plan.cancelRequest.clear !== null) {
        op.delete(keys.cancelRequest(plan.cancelRequest.clear, id));
      }
      // The history stays in the record while it is short; the transition that makes it long
      // writes every entry as a key (with the final expiry, if this is the final transition).
      const history = stored.history !== undefined &&
          stored.history.length + plan.entries.length <= HISTORY_IN_RECORD
        ? [...stored.history, ...plan.entries]
        : undefined;
      if (history === undefined) {
        for (const historyEntry of [...stored.history ?? [], ...plan.entries]) {
          op.set(keys.history(id, historyEntry.seq), encode(historyEntry), options);
        }
      }
      // A final invocation releases its wait edges in its final commit (read together with what
      // the expiry needs); too many for one commit, they go right after it.
      const [expireLater, release] = await Promise.all([
        plan.startsPurge && options !== undefined &&
        this.#stageExpiry(op, next, next.purgeAtMs!, options, historyKeys(stored), marker),
        plan.final ? this.#waitEdgesOf(id, marker, edges) : undefined,
      ]);
      const releaseNow = release !== undefined && release.doomed.length <= RELEASE_INLINE_KEYS;
      if (releaseNow) { for (const key of release.doomed) op.delete(key); }
      const value = this.#encode({ record: next, queue, ...history && { history } }, id);
      op.set(keys.invocation(id), value, options);
      // A final invocation that holds no call — the hold key read absent, and checked absent in
      // this commit — leaves nothing for removeCall to release: a hold written after this commit
      // (a child claimed late) is released by its writer, which re-reads the caller after its
      // commit and finds it final. Only where a check is left within Deno KV's 10, and on a local
      // store: over the protocol the check would halve the final writes a group commit holds, to
      // save a read that is off the slot's path (removeCall runs after the slot is given back).
      const holdsNoCall = plan.final && hold !== undefined && next.callId === callId &&
        this.#group.roomy && (await held!).versionstamp === null && op.checks.length < MAX_CHECKS;
      if (holdsNoCall) op.check({ key: hold!, versionstamp: null });
      if (knownEdges !== undefined) {
        op.check({ key: keys.waitNode(id), versionstamp: knownEdges.marker });
      }
      const checked = planned !== undefined && this.#checkMarkers(op, id, planned);
      let versionstamp: string | undefined;
      const stamped = (stamp: string): void => void (versionstamp = stamp);
      // An end boards its slot's ride unless it gives back slot keys: others may wait for those.
      const ends = slots.length === 0 ? plan.executions.remove : null;
      if (await this.#commitStep(op, alone, ends, id, ready, seat, stamped)) {
        // The end's waiters here wake at once, before the clean-ups that follow (ready entries
        // given back to available waiters read them first): else the finals poller, reading the
        // record meanwhile, takes this end for another process's and polls at its fastest.
        // Waiters of an end with more edges than its commit held wake once those are gone.
        if (plan.final) {
          this.#local.waitNodes.delete(id);
          this.#local.holds.delete(id);
        }
        if (planned !== undefined) {
          if (checked && versionstamp !== undefined) {
            this.#knowEdges(id, planned, change.nowMs, versionstamp);
          } else for (const end of [id, ...planned.added]) this.#local.edges.delete(end);
        }
        if (plan.executions.add !== null) this.#local.ownedHere.set(id, next.callId);
        else if (plan.executions.remove !== null) letGo(this.#local, id);
        if (
          versionstamp !== undefined && !isFinalStatus(next.status) &&
          this.#local.ownedHere.has(id)
        ) this.#local.entries.set(id, { key: keys.invocation(id), value, versionstamp });
        const early = plan.final && (release === undefined || releaseNow);
        if (early) notify(this.#local.finals.get(id), undefined, next);
        if (release !== undefined) {
          await (releaseNow ? this.#restoreWaiters(release.waiterIds) : this.releaseWaiters(id));
        }
        if (expireLater) {
          // The transition is done; what is left is housekeeping that the purge sweep also covers.
          await this.#expireHistory(id, historyKeys(stored), next.purgeAtMs!).catch((error) => {
            console.error(`nenc: could not set the expiry of invocation ${id}'s history:`, error);
          });
        }
        if (plan.final && !early) notify(this.#local.finals.get(id), undefined, next);
        if (wakes) this.#wakesWritten++;
        if (plan.slot === "release" || wakes) this.#announceWork();
        return {
          ok: true,
          record: next,
          entries: plan.entries,
          previous: record.status,
          ...holdsNoCall && { holdsNoCall: true as const },
        };
      }
      await backoff(attempt);
    }
  }

  // reads: inv/<id>; checks: inv/<id>; writes: inv/<id>
  async incrementRetries(id: string): Promise<number> {
    // It writes the record: the entry a change here committed is stale from now on.
    this.#local.entries.delete(id);
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(this.#keys.invocation(id));
      const stored = this.#decodeInvocation(entry);
      if (stored === undefined) {
        throw new RangeError(`Cannot count a retry: invocation ${id} does not exist`);
      }
      const record = { ...stored.record, retries: stored.record.retries + 1 };
      const op = this.#kv.atomic()
        .check({ key: this.#keys.invocation(id), versionstamp: entry.versionstamp })
        .set(this.#keys.invocation(id), this.#encode({ ...stored, record }, id));
      if (await this.#commit(op)) return record.retries;
      await backoff(attempt);
    }
  }

  // Each candidate is claimed by its own atomic transition (see #apply): two runners racing for
  // one invocation both read it, one commit wins, the other's check fails, it re-reads, finds it
  // PENDING and moves on. A runner that dies after a claim leaves a PENDING invocation that
  // recovery re-queues after maxPendingSeconds: nothing dequeued is lost.
  //
  // A child (`runWithCall`) goes on to RUNNING with its call edge caller → child in the same
  // commit (see #claimCall). reads: inv/<caller> with inv/<child> (one getMany: the caller's id
  // is in the queue entry; a blocking candidate's record is read by the blocking index's read,
  // with its oldest waiter's, the caller mostly), then together calls/<caller>/<child> and the
  // child's region (see addCall) — with the records when both call ids are known here (see
  // #callReadAhead); checks: the claim's own (see #apply), the edge, and calls/<x> for x in the
  // region — left at PENDING when they would be more than 10; writes: the claim's, both holders
  // and both hver/<call>, a new edge with its reverse and calls/<caller>. It commits on its own,
  // not in a group commit (see #commitDraft). After the commit, off the pick-up's path,
  // inv/<caller> again (see #releaseIfEnded). Applied though reported failed, the child is the
  // runner's orphan: handed back, and claimed again, it finds its edge (its own, or another
  // holder's) and reuses it, as addCall does: the edge is not written twice.
  async claim(request: ClaimRequest): Promise<ClaimOutcome> {
    // The candidates this pick-up takes on: another pick-up of this store meanwhile reads past
    // them. Given back when it ends, whatever became of them.
    const mine = new Set<string>();
    const others = this.#claimingMax;
    let max = request.max;
    this.#claimingMax += max;
    // Its first batch's claims may go in the commits of the ends that free its slots (see Ride).
    const ride = request.ready !== undefined && (request.freedBy?.length ?? 0) > 0
      ? new Ride(request.runnerId)
      : undefined;
    for (const id of ride === undefined ? [] : request.freedBy!) this.#rides.set(id, ride!);
    // The runner stops: nothing is claimed that no end has taken yet.
    request.ready?.catch(() => ride?.cancel());
    // The slots freed since it began join it (see ClaimRequest.widen): its new `max`.
    const widen = (): number => {
      const more = request.widen?.() ?? 0;
      max += more;
      this.#claimingMax += more;
      return max;
    };
    try {
      await this.#ensureSchema(true);
      return await this.#claim(request, mine, others, widen, ride);
    } finally {
      ride?.seal();
      for (const id of ride === undefined ? [] : request.freedBy!) {
        if (this.#rides.get(id) === ride) this.#rides.delete(id);
      }
      this.#claimingMax -= max;
      for (const id of mine) this.#claiming.delete(id);
    }
  }

  async #claim(
    request: ClaimRequest,
    mine: Set<string>,
    others: number,
    widen: () => number,
    ride: Ride | undefined,
  ): Promise<ClaimOutcome> {
    const { runnerId, nowMs } = request;
    let max = request.max;
    // Once, when it first knows candidates (the blocking index's, else the queue's): widened
    // later, it would claim a second batch after the first, and what it claimed starts only at its
    // end.
    let widened = false;
    const widenOnce = (): number => {
      if (!widened) max = widen();
      widened = true;
      return max;
    };
    const takeOn = (id: string): void => {
      this.#claiming.add(id);
      mine.add(id);
    };
    const othersClaim = (id: string): boolean => this.#claiming.has(id) && !mine.has(id);
    this.#local.newWork = false;
    const claimed: InvocationRecord[] = [];
    const parked: InvocationRecord[] = [];
    const finalised: InvocationRecord[] = [];
    const previous = new Map<string, InvocationStatus>();
    let controlled = 0;
    // Read a few more entries than slots: some may be taken by other runners meanwhile, or
    // blocked by running concurrency.
    const limit = Math.min(max * 2 + 8, max + CONTROL_LIMIT);
    // Entries of tasks this runner does not run are skipped without a read, and read past (up to
    // SKIP_LIMIT of them), so a backlog of another deploy's tasks does not hide this one's.
    // The candidates of other pick-ups of this store under way are read past as well, in the same
    // page: those they took on, and as many as they may still take.
    const listOptions = {
      limit: limit + SKIP_LIMIT,
      batchSize: Math.min(limit + this.#claiming.size + others, 500),
    };
    const delayed = () =>
      this.#kv.list({
        start: this.#keys.queue({ delayed: true, position: "" }),
        end: this.#keys.queue({ delayed: true, position: encodeTime(nowMs + 1, 10) }),
      }, listOptions);
    const ready = () =>
      this.#kv.list({ prefix: this.#keys.queue({ delayed: false }) }, listOptions);
    // The first reads of a pick-up go together: the wake markers, the due delayed entries, the
    // ready queue and the blocking invocations, one round trip rather than five in turn. Markers
    // found (rare: a key with parked invocations got room), the queue is read again after the
    // wakes, which put the woken back in it, in their old places, ahead of newer entries.
    // The side indexes only when their hints say they may hold something (see kv/_hints.ts).
    const side = this.#sideReads(nowMs);
    const firstDue = started((async function* () {
      if (await side.time !== false) yield* delayed();
    })());
    let due: AsyncIterable<KvEntryLike> = firstDue;
    let queued: AsyncIterable<KvEntryLike> = started(ready());
    const preferred = !request.blocking
      ? Promise.resolve([])
      : side.blocking.then(async (stamp) => {
        if (stamp === false) return [];
        const { found, indexed } = await this.#blocking(max, nowMs, widenOnce);
        this.#hints.read("blocking", stamp, indexed ? -Infinity : Infinity, nowMs);
        return found;
      });
    preferred.catch(() => {}); // seen below, after the wakes
    const [wakeStamp, timeStamp] = await Promise.all([side.wake, side.time]);
    // Wakes to commit, one after another, before any claim: the ends this pick-up is for go on
    // their own rather than wait for them.
    const marked = await this.#wakeMarked(runnerId, {
      wake: wakeStamp !== false,
      time: timeStamp !== false,
    }, () => ride?.seal());
    if (wakeStamp !== false) {
      this.#hints.read("wake", wakeStamp, marked.wake > 0 ? -Infinity : Infinity, nowMs);
    }
    // Nothing due and no window open: quiet until the first delayed entry or window to come.
    const timeRead = timeStamp === false || timeStamp === undefined ? undefined : (async () => {
      const quiet = !await firstDue.any && marked.time === 0;
      const untilMs = quiet ? (await this.nextAvailableMs(nowMs)) ?? Infinity : -Infinity;
      this.#hints.read("time", timeStamp, untilMs, nowMs);
    })();
    timeRead?.catch(() => {}); // a failed read leaves the index to be read again
    if (marked.wake + marked.time > 0) {
      due = delayed();
      queued = ready();
    }
    // Claimed, parked or finalised by this pick-up: a queue read that began before (with the
    // blocking invocations') may still list it.
    const taken = new Set<string>();
    // Not available (taken by another runner, back-off not passed), or a task this runner does
    // not run: not wanted, no write.
    const available = (stored: StoredInvocation): boolean =>
      isAvailable(stored, nowMs) && request.accepts?.(stored.record.taskId) !== false;
    // The reads of the blocking candidates (see #blocking): their claims plan from them.
    const readAhead = new Map<string, BlockingCandidate>();
    // `parent`: the candidate's caller, from its queue entry, read with its record.
    const tryClaim = async (id: string, parent?: string, rides = false): Promise<void> => {
      // Once: a later try (a later pass) reads afresh.
      const ahead = readAhead.get(id);
      readAhead.delete(id);
      // A seat on the ride while its first batch begins, for a claim with no slot keys to read
      // and no call edge to plan (that one may wait for a sibling's claim, see #claimCall, which
      // may wait for the slot): its queue entry says so, its record confirms it.
      const seat = rides
        ? ride?.join((record) =>
          request.runAtOnce?.(record) === true || request.runWithCall?.(record) !== true
        )
        : undefined;
      // For the first attempt only: one refused (that read gone stale, say) reads again.
      let callAhead = ahead !== undefined ? ahead.call : this.#callReadAhead(id, parent);
      this.#local.registeredCalls.delete(id);
      // Read once, for every attempt: a caller that ends after this read loses its hold again
      // after the commit (see #releaseIfEnded), and an ended one stays ended.
      let callerRead = parent === undefined
        ? undefined
        : ahead?.waiter?.id === parent
        ? ahead.waiter.read
        : this.#reads.get(this.#keys.invocation(parent));
      callerRead?.catch(() => {}); // awaited below, if the claim gets that far
      // Settles with this claim: another claim inserting the same call edge may wait for it, and
      // takes the edge's versionstamp from it when it committed the edge (`inserted`).
      let settle!: (edge: string | undefined) => void;
      const settled = new Promise<string | undefined>((resolve) => settle = resolve);
      let inserted: AtomicDraft | undefined;
      let call: ClaimCall | undefined;
      let outcome: ChangeOutcome;
      try {
        // Stamped when planned (each attempt), not when the pass began: a pass takes a while.
        // Refused a slot: parked on the key that refused it (or finalised), in the same step.
        outcome = await this.#apply(
          id,
          async (record) => {
            const atOnce = request.runAtOnce?.(record) === true;
            if (atOnce || request.runWithCall?.(record) !== true) call = undefined;
            else {
              callerRead ??= this.#reads.get(this.#keys.invocation(record.parentId!));
              const callRead = callAhead;
              callAhead = undefined;
              call = await this.#claimCall(record, callerRead, settled, callRead);
            }
            return {
              path: atOnce || call?.running ? [PENDING, RUNNING] : [PENDING],
              runnerId,
              nowMs: this.#clock.now(),
            };
          },
          available,
          (record, busyKey) =>
            controlChange({ ...request, nowMs: this.#clock.now() }, record, busyKey),
          request.ready,
          (op, next) => {
            const edge = call?.edge;
            inserted = undefined;
            if (edge === undefined || next.status !== RUNNING) return false;
            this.#stageCall(op, edge.caller, edge.callee, edge.existing, edge.checked);
            if (edge.existing.versionstamp === null) inserted = op;
            return true;
          },
          ahead?.entry,
          seat,
        );
      } catch (error) {
        if (error instanceof StoreClosedError) throw error;
        // Another runner moved it first (the re-planned transition is refused), or the slots
        // this pick-up was for never came (its `ready` rejected).
        return;
      } finally {
        seat?.leave();
        settle(inserted && this.#committedAt.get(inserted));
      }
      if (!outcome.ok) return;
      const { record } = outcome;
      taken.add(id);
      const caller = call?.edge?.caller;
      if (caller !== undefined && record.status === RUNNING) {
        this.#local.holds.add(id);
        this.#releaseIfEnded(caller);
      }
      previous.set(id, outcome.previous);
      if (record.status === PENDING || record.status === RUNNING) return void claimed.push(record);
      controlled++;
      (isFinalStatus(record.status) ? finalised : parked).push(record);
    };
    // Candidates are claimed in batches of the slots still open, concurrently: each claim is its
    // own atomic step, and overlapping them keeps a file or a remote store busy instead of
    // waiting on every commit in turn. Queue order still decides what matters: a candidate whose
    // running key or rate limit key an older candidate of the batch has waits for it (the older
    // gets the slot, or the window's room), and the claimed list is returned in queue order.
    const order = new Map<string, number>();
    let preferredControlled = 0;
    const full = (): boolean =>
      claimed.length >= max || controlled - preferredControlled >= CONTROL_LIMIT;
    let batch: QueueValue[] = [];
    // Full with an entry of the queue still in hand: more waits behind this pick-up.
    let more = false;
    const flush = async (): Promise<void> => {
      const keys = new Set<string>();
      const later: QueueValue[] = [];
      const first: QueueValue[] = [];
      for (const candidate of batch) {
        const its = [candidate.key, candidate.rate].filter((key) => typeof key === "string");
        if (its.some((key) => keys.has(key))) later.push(candidate);
        else first.push(candidate);
        for (const key of its) keys.add(key);
      }
      const claims = first.map((candidate) =>
        tryClaim(candidate.id, candidate.parent, mayRide(candidate))
      );
      // Each claim of the first batch has joined the ride, or will not: ends wait for no other.
      ride?.seal();
      await Promise.all(claims);
      for (const candidate of later) if (!full()) await tryClaim(candidate.id, candidate.parent);
      batch = [];
    };
    // The blocking invocations first (at most `max`), oldest first, in one such batch: their
    // records, as the blocking index's read found them, give what a queue entry gives (their
    // keys, their caller), and their claims plan from those reads (a claim they made stale fails
    // its check and reads again): the index, then the call edges, then the commit.
    const blocking = (await preferred).filter(({ id }) => !othersClaim(id));
    for (const candidate of blocking) {
      takeOn(candidate.id);
      readAhead.set(candidate.id, candidate);
      order.set(candidate.id, order.size);
      batch.push(queueValue(candidate.stored.record));
    }
    if (blocking.length > 0) await flush();
    // The ready queue in order, with the due delayed entries (their time or back-off has passed)
    // merged in. The ready queue has no time bound: an entry registered by a process whose clock
    // runs ahead is due. The slots freed meanwhile join, unless they joined at the blocking
    // index's read (the queue is read past as many).
    preferredControlled = controlled;
    widenOnce();
    // A lane's token in the ready queue stands for the lane's first invocation (one range read).
    // A pick-up from a lane moves its token behind the other lanes, so another pass over the
    // queue serves the next lane first while slots are open: the lanes take turns.
    // A newcomer parked behind a key's parked invocations while the key had room leaves a wake
    // marker: they are woken, and the queue read again, in this pick-up — a draining runner that
    // found nothing would not make another.
    for (let pass = 0, wakes = this.#wakesWritten;; pass++) {
      const claimedBefore = claimed.length;
      let fromLanes = 0;
      // Due delayed entries (first pass) where each stands in the ready queue's order.
      const lists = [pass === 0 ? withDue(due, queued) : ready()];
      // One candidate once per pass (a lane's token may be read again after it moved); a later
      // pass may see it again, woken since it was refused.
      const seen = new Set<string>();
      for (const entries of lists) {
        let listed = 0;
        const wanted = (candidate: QueueValue | undefined): candidate is QueueValue =>
          candidate !== undefined && !seen.has(candidate.id) && !taken.has(candidate.id) &&
          !othersClaim(candidate.id) &&
          (candidate.task === undefined || request.accepts?.(candidate.task) !== false);
        for await (const entry of entries) {
          if (claimed.length + batch.length >= max) await flush();
          if (full()) {
            more = claimed.length >= max;
            break;
          }
          const item = decodeQueueItem(entry.value);
          if ("lane" in item) {
            // The lane's first invocation, claimed now (after the older candidates): claimed, its
            // lane's turn moves behind the others; parked, the next one takes its place at once.
            await flush();
            while (!full()) {
              const head = await this.#laneHead(item.lane);
              if (!wanted(head) || ++listed > limit) break;
              seen.add(head.id);
              takeOn(head.id);
              order.set(head.id, order.size);
              const parkedBefore = controlled;
              await tryClaim(head.id, head.parent);
              fromLanes++;
              if (controlled === parkedBefore) break;
            }
            continue;
          }
          if (!wanted(item)) continue;
          if (++listed > limit) break;
          seen.add(item.id);
          takeOn(item.id);
          order.set(item.id, order.size);
          batch.push(item);
        }
        await flush();
      }
      const woke = this.#wakesWritten !== wakes;
      if (woke) {
        wakes = this.#wakesWritten;
        await this.#wakeMarked(runnerId);
      }
      const lanesTurned = fromLanes > 0 && claimed.length > claimedBefore;
      if (full() || !(woke || lanesTurned) || pass + 1 >= Math.max(max, 3)) break;
    }
    await timeRead?.catch(() => {});
    const position = (record: InvocationRecord): number => order.get(record.id) ?? -1;
    claimed.sort((a, b) => position(a) - position(b));
    // Parked or finalised some and slots left: what the window did not reach (a backlog behind a
    // full key, and work behind it) is read at once, not after a poll.
    const progressed = claimed.length > 0 || controlled > 0;
    if (controlled > 0 && claimed.length < max) this.#local.newWork = true;
    this.#idlePolls = progressed ? 0 : this.#idlePolls + 1;
    return { claimed, parked, finalised, more, previous };
  }

  // reads: inv/<caller> (`callerRead`: with the candidate's record when its queue entry names the
  // caller), then together calls/<caller>/<callee> and the callee's region (see addCall) — read
  // with the record instead (`ahead`) when both call ids are known here (see #callReadAhead).
  /**
   * How the claim of a child `record` goes on (`ClaimRequest.runWithCall`): to RUNNING without a
   * call edge when its caller is gone or final (as `addCallAndCheckCycles`); with the insertion
   * caller → child staged in its commit when it fits there as a one-walk insertion; else it stops
   * at PENDING, and the runner's `setInvocationRun` adds the edge or fails it with the cycle: a
   * self-call, a region with a path back to the caller (a cycle, or this child's own edge of one,
   * which `addCall` verifies), or one too big to check in the commit beside the claim's own checks.
   */
  async #claimCall(
    record: InvocationRecord,
    callerRead: Promise<KvEntryMaybeLike>,
    settled: Promise<string | undefined>,
    ahead?: CallReadAhead,
  ): Promise<ClaimCall> {
    const found = this.#decodeInvocation(await callerRead)?.record;
    // A caller that is gone or final cannot be part of a live cycle; and its hold would never be
    // released: its clean-up ran when it became final.
    if (found === undefined || isFinalStatus(found.status)) return { running: true };
    const caller = callRefOf(found);
    const callee = callRefOf(record);
    if (caller.callId === callee.callId) return { running: false };
    // Read ahead for these calls, or now: as old a read as the commit checks either way.
    let { existing, region } = ahead?.caller === caller.callId && ahead.callee === callee.callId
      ? await ahead.read
      : await this.#readCall(caller, callee);
    if (existing.versionstamp === null) {
      // Claims of this store inserting one edge (a caller's calls with equal arguments, picked up
      // together): the first inserts it, the others wait for it and reuse it, instead of failing
      // their checks on it and planning again. The edge is at the versionstamp of the commit that
      // inserted it (its value is not read again), and the region as read: that commit wrote the
      // caller's calls/, which is in the callee's region only in a cycle, and a cycle inserts
      // nothing here. When it did not commit the edge, both are read again.
      const edgeKey = this.#keys.callEdge(caller.callId, callee.callId);
      const key = JSON.stringify(edgeKey);
      const inserting = this.#edgeClaims.get(key);
      if (inserting === undefined) {
        this.#edgeClaims.set(key, settled);
        void settled.then(() => {
          if (this.#edgeClaims.get(key) === settled) this.#edgeClaims.delete(key);
        });
      } else if (inserting !== settled) {
        const versionstamp = await inserting;
        if (versionstamp !== undefined) {
          existing = { key: edgeKey, value: null, versionstamp };
        } else ({ existing, region } = await this.#readCall(caller, callee));
      }
    }
    // The claim's own checks, at most (see #apply): the record, each state key, the reservation
    // of the running key and the registration key. Each draft stays within Deno KV's 10 checks.
    const own = 1 + stateKeysOf(record).length + (record.runningKey !== null ? 1 : 0) +
      (record.registrationKey !== null ? 1 : 0);
    if (region.path !== undefined || own + 1 + region.versions.size > MAX_CHECKS) {
      return { running: false };
    }
    // An edge already there is reused, ours included (an earlier try's commit applied though it
    // reported failure): the holders again, the edge checked unchanged, nothing written twice.
    return { running: true, edge: { caller, callee, existing, checked: region.versions } };
  }

  /**
   * A child's claim reads its call edge and its region once its caller's record and its own give
   * their call ids (see #claimCall): when this process holds the caller (a paused parent) and
   * registered the child, both are known now, and the read goes with the record's — a round trip
   * less on every child's pick-up. Made for every such candidate, whether its claim goes on to
   * use it (a cycle check) or not: a range read and a key more in a round trip made anyway.
   */
  #callReadAhead(id: string, parent: string | undefined): CallReadAhead | undefined {
    if (parent === undefined) return undefined;
    const callee = this.#local.registeredCalls.get(id);
    const caller = this.#local.ownedHere.get(parent);
    // A self-call adds no edge (see #claimCall).
    if (callee === undefined || caller === undefined || callee === caller) return undefined;
    // Children of one call by callers of one call (siblings, cousins) share one read in flight.
    const pair = `${caller}\n${callee}`;
    let read = this.#callReads.get(pair);
    if (read === undefined) {
      const reading = read = this.#readCall(
        { callId: caller, invocationId: parent },
        { callId: callee, invocationId: id },
      );
      this.#callReads.set(pair, reading);
      reading.catch(() => {}).finally(() => this.#callReads.delete(pair));
    }
    return { caller, callee, read };
  }

  // reads: inv/<caller>; then as removeCall.
  /**
   * After a claim's commit wrote the call edge caller → child (see #claimCall): the caller may
   * have become final since it was read, and its clean-up (the removal of its hold) run before
   * this commit wrote its holder: release that hold again. Safe off the critical path (the child
   * runs meanwhile; the claim does not wait for it): the caller's final write precedes its
   * clean-up, and the claim's commit precedes this read, so one of the two sees the holder and
   * removes it; removing a hold of a final caller takes nothing a live invocation relies on (the
   * child keeps its own hold). Until then the edge stands, as after `addCall` before its re-read.
   */
  #releaseIfEnded(caller: CallRef): void {
    const release = async (): Promise<void> => {
      const now = await this.#read(caller.invocationId);
      if (now === undefined || isFinalStatus(now.record.status)) await this.removeCall(caller);
    };
    release().catch((error) => {
      if (error instanceof StoreClosedError) return;
      console.error(
        `nenc: could not release the call hold of invocation ${caller.invocationId}:`,
        error,
      );
    });
  }

  /** The first invocation waiting in a fairness lane, if any (one range read). */
  async #laneHead(lane: string): Promise<QueueValue | undefined> {
    const prefix = this.#keys.queue({ delayed: false, lane });
    for await (const entry of this.#kv.list({ prefix }, { limit: 1 })) {
      return decodeQueueValue(entry.value);
    }
    return undefined;
  }

  // reads: wake/… (one range read, empty unless a key with parked invocations got room) and
  // wakeat/… up to now (one range read, empty unless a rate limit key's window opened for its
  // parked), together; then per marked key the first park/<key>/… entry per wake; each wake is
  // one #apply.
  /**
   * Wakes the invocations parked on the keys a wake marker names, first available first, while
   * each key has room; a key with no room left (or nobody parked) loses its marker, checked, so a
   * commit that gave it room meanwhile keeps it. A runner that dies midway leaves the marker for
   * the next pick-up anywhere: parked work is never stranded. A rate limit key's room comes with
   * time, not with a commit: its marker is time-ordered, read once its time has come (by this
   * process's clock). Reads the kinds `read` names, calls `onMarkers` when it found any (before
   * it wakes), and says how many markers of each it found.
   */
  async #wakeMarked(
    runnerId: string,
    read: { readonly wake: boolean; readonly time: boolean } = { wake: true, time: true },
    onMarkers?: () => void,
  ): Promise<{ wake: number; time: number }> {
    const due = {
      start: this.#keys.wakeAt(""),
      end: this.#keys.wakeAt(encodeTime(this.#clock.now() + 1, 10)),
    };
    // Both range reads together.
    const [wakes, times] = await Promise.all(
      [read.wake && { prefix: this.#keys.wake() }, read.time && due].map(async (selector) => {
        const found: KvEntryLike[] = [];
        if (selector === false) return found;
        for await (const entry of this.#kv.list(selector, { limit: WAKE_KEYS })) found.push(entry);
        return found;
      }),
    );
    const markers = [...wakes!, ...times!];
    if (markers.length > 0) onMarkers?.();
    for (const marker of markers) {
      const key = String(marker.key[marker.key.length - 1]);
      const parkedHere = (stored: StoredInvocation): boolean =>
        stored.record.parkedOn === key &&
        stored.record.status === InvocationStatus.CONCURRENCY_CONTROLLED;
      const parkedOn = this.#keys.queue({ delayed: false, parkedOn: key });
      let woken = 0;
      let previous: string | undefined;
      for (; woken < WAKES_PER_KEY; woken++) {
        let first: string | undefined;
        for await (const entry of this.#kv.list({ prefix: parkedOn }, { limit: 1 })) {
          first = decodeQueueValue(entry.value).id;
        }
        if (first === undefined || first === previous) break;
        previous = first;
        const outcome = await this.#apply(
          first,
          (record) => wakeChange(record, runnerId, this.#clock.now()),
          parkedHere,
        );
        // Refused: the key has no room left. Missing: woken or canceled meanwhile (its entry
        // went with it, so the next look finds another); look again.
        if (!outcome.ok && outcome.reason !== "missing") break;
      }
      if (woken < WAKES_PER_KEY) {
        await this.#commit(this.#kv.atomic().check(marker).delete(marker.key));
      }
    }
    return { wake: wakes!.length, time: times!.length };
  }

  /**
   * The hints of one pick-up at `nowMs`: per side index, the hint's versionstamp that a read of it
   * covers (`undefined`: none), or `false` when it is not read (see kv/_hints.ts). The three hint
   * keys are read together (with the other reads of this turn).
   */
  #sideReads(nowMs: number): Record<HintKind, Promise<string | null | undefined | false>> {
    const hints = this.#hints;
    // The hints read with the final write before this pick-up, if no commit of this process
    // signalled since (else the read may predate it): as good as a read now for what other
    // processes commit, which a read now could also just miss (the next pick-up sees it).
    const ahead = this.#hintsAhead;
    this.#hintsAhead = undefined;
    const read = ahead !== undefined && !this.#group.signaledSince(ahead.mark)
      ? ahead.read
      : this.#readHints();
    const decide = (kind: HintKind): Promise<string | null | undefined | false> => {
      const plan = hints.plan(kind, nowMs);
      if (!plan.ask) return Promise.resolve(plan.stamp);
      return read.then((stamps) => {
        const stamp = stamps.get(kind)!;
        return stamp === plan.covered ? false : stamp;
      });
    };
    return { wake: decide("wake"), time: decide("time"), blocking: decide("blocking") };
  }

  /** The side index hints' versionstamps, read together (with the other reads of this turn). */
  #readHints(): Promise<HintStamps> {
    const read = Promise.all(HINT_KINDS.map((kind) => this.#reads.get(this.#keys.hint(kind))))
      .then((entries) => {
        const stamps = new Map(HINT_KINDS.map((kind, i) => [kind, entries[i]!.versionstamp]));
        this.#hints.saw(stamps);
        return stamps;
      });
    read.catch(() => {}); // seen by a plan that asks, else not needed
    return read;
  }

  // --- reads -------------------------------------------------------------------------------------

  async get(id: string): Promise<InvocationRecord | undefined> {
    return (await this.#read(id))?.record;
  }

  async getMany(ids: readonly string[]): Promise<InvocationRecord[]> {
    return (await this.#readMany(ids)).flatMap((stored) =>
      stored === undefined ? [] : [stored.record]
    );
  }

  async history(id: string): Promise<HistoryEntry[]> {
    const stored = await this.#read(id);
    if (stored === undefined) return [];
    if (stored.history !== undefined) return [...stored.history];
    const history: HistoryEntry[] = [];
    for await (const entry of this.#kv.list({ prefix: this.#keys.histories(id) })) {
      history.push(decode(entry.value, `history of invocation ${id}`) as HistoryEntry);
    }
    return history;
  }

  async *find(query: FindQuery): AsyncIterable<InvocationRecord> {
    const filters = Object.entries(query.args ?? {});
    const ids = await this.#listIds(this.#keys.byTask(query.taskId));
    for (const record of await this.getMany(ids)) {
      if (query.statuses !== undefined && !query.statuses.has(record.status)) continue;
      if (filters.every(([name, value]) => record.args[name] === value)) yield record;
    }
  }

  // reads: child/<parent>/… (one range read), then the records.
  async children(parentId: string): Promise<InvocationRecord[]> {
    return this.getMany(await this.#listIds(this.#keys.byParent(parentId)));
  }

  async slotHolders(runningKey: string): Promise<string[]> {
    return [...decodeSlot(await this.#reads.get(this.#keys.slot(runningKey))).holders];
  }

  // reads: runner/… (one range read); the owners in exec/… (one key per owner, one read each,
  // and one more); the exec/<owner>/… of dead owners and their records, in pages, until `max`;
  // pend/… up to pendingBeforeMs (one range read) and those records. A live runner's executions
  // are not read: the cost grows with what went stale, not with what is live.
  async recoverable(query: RecoverableQuery): Promise<InvocationRecord[]> {
    const { pendingBeforeMs, heartbeatBeforeMs, max } = query;
    const heartbeats = new Map((await this.runners()).map((r) => [r.runnerId, r.lastSeenMs]));
    const found = new Map<string, InvocationRecord>();
    for (const owner of await this.#owners()) {
      const lastSeenMs = heartbeats.get(owner);
      if (lastSeenMs !== undefined && lastSeenMs >= heartbeatBeforeMs) continue;
      for await (const ids of this.#idPages(this.#keys.execution(owner))) {
        for (const record of await this.getMany(ids)) {
          if (record.ownerId !== owner) continue; // moved on since the index was read
          // An owner without a heartbeat (never sent, or removed) is judged by the invocation's
          // last change instead: it gets the same timeout as a runner that went silent then.
          if ((lastSeenMs ?? record.updatedAtMs) < heartbeatBeforeMs) found.set(record.id, record);
          if (found.size >= max) return [...found.values()];
        }
      }
    }
    const stale = this.#kv.list({
      start: this.#keys.pending(""),
      end: this.#keys.pending(timePosition(pendingBeforeMs, "")),
    }, { limit: max });
    const ids: string[] = [];
    for await (const entry of stale) ids.push(String(entry.key[entry.key.length - 1]).slice(10));
    for (const record of await this.getMany(ids)) {
      if (found.size >= max) break;
      if (record.status === PENDING && record.updatedAtMs < pendingBeforeMs) {
        found.set(record.id, record);
      }
    }
    return [...found.values()];
  }

  /**
   * The runners that own executions, from exec/…: one read of one key per owner, each starting
   * past the previous owner's keys, and one more that finds none.
   */
  async #owners(): Promise<string[]> {
    const prefix = this.#keys.execution();
    const owners: string[] = [];
    for (;;) {
      const last = owners.at(-1);
      // `start` is inclusive: an owner followed by "\0" sorts after every key of that owner.
      const selector = last === undefined
        ? { prefix }
        : { prefix, start: this.#keys.execution(`${last}\u0000`) };
      let next: string | undefined;
      for await (const entry of this.#kv.list(selector, { limit: 1 })) {
        next = String(entry.key[prefix.length]);
      }
      if (next === undefined) return owners;
      owners.push(next);
    }
  }

  /** The ids (last key parts) under `prefix`, in pages of RECOVERY_PAGE, read as they are asked. */
  async *#idPages(prefix: KvKey): AsyncGenerator<string[]> {
    let page: string[] = [];
    for await (const entry of this.#kv.list({ prefix }, { batchSize: RECOVERY_PAGE })) {
      page.push(String(entry.key[entry.key.length - 1]));
      if (page.length < RECOVERY_PAGE) continue;
      yield page;
      page = [];
    }
    if (page.length > 0) yield page;
  }

  // reads: exec/<runner>/… (one range read); with `page`, at most page.limit keys after
  // page.after (a page of up to LIST_BATCH is one round trip).
  async executions(runnerId: string, page?: ExecutionsPage): Promise<string[]> {
    const prefix = this.#keys.execution(runnerId);
    if (page === undefined) return await this.#listIds(prefix);
    // `start` is inclusive: the cursor followed by "\0" sorts right after it.
    const selector = page.after === undefined
      ? { prefix }
      : { prefix, start: this.#keys.execution(runnerId, `${page.after}\u0000`) };
    const options = { limit: page.limit, batchSize: Math.min(page.limit, LIST_BATCH) };
    const ids: string[] = [];
    for await (const entry of this.#kv.list(selector, options)) {
      ids.push(String(entry.key[entry.key.length - 1]));
    }
    return ids;
  }

  // reads: cancel/<runner>/… (one range read, empty unless something was canceled).
  async cancelRequests(runnerId: string): Promise<string[]> {
    return await this.#listIds(this.#keys.cancelRequest(runnerId));
  }

  // reads: the first delayed queue entry after nowMs, and the first wakeat/… marker after it.
  async nextAvailableMs(nowMs: number): Promise<number | undefined> {
    const after = encodeTime(nowMs + 1, 10);
    const delayed = this.#firstTime(
      this.#keys.queue({ delayed: true, position: after }),
      this.#keys.queue({ delayed: true, position: "\uffff" }),
    );
    const rateOpens = this.#firstTime(this.#keys.wakeAt(after), this.#keys.wakeAt("\uffff"));
    const times = (await Promise.all([delayed, rateOpens])).filter((time) => time !== undefined);
    return times.length === 0 ? undefined : Math.min(...times);
  }

  /**
   * The time of the first key in `[start, end)`, or `undefined`: its part at the position of
   * `start`'s last begins with a ULID's 10 time characters (a queue position, or a wake marker's
   * time).
   */
  async #firstTime(start: KvKey, end: KvKey): Promise<number | undefined> {
    for await (const entry of this.#kv.list({ start, end }, { limit: 1 })) {
      // The time part ends the key cut to the length of `start`.
      return positionTime(entry.key.slice(0, start.length));
    }
    return undefined;
  }

  // reads: qd/… after nowMs (one range read of every delayed entry: for the CLI, not a hot path).
  async delayedCounts(nowMs: number): Promise<Map<string, DelayedCount>> {
    const start = this.#keys.queue({ delayed: true, position: encodeTime(nowMs + 1, 10) });
    const end = this.#keys.queue({ delayed: true, position: "\uffff" });
    const counts = new Map<string, DelayedCount>();
    for await (const entry of this.#kv.list({ start, end })) {
      // Time order: a task's first entry holds its earliest time.
      const task = decodeQueueValue(entry.value).task ?? "(unknown)";
      const { count = 0, nextMs = positionTime(entry.key) } = counts.get(task) ?? {};
      counts.set(task, { count: count + 1, nextMs });
    }
    return counts;
  }

  // reads: slot/#rate#… (one range read: the rate limit keys' states).
  async rateWindows(): Promise<RateWindow[]> {
    const windows: RateWindow[] = [];
    const start = this.#keys.slot(RATE_KEY_PREFIX);
    // Past every key that starts with the prefix: the prefix with its last "#" raised to "$".
    const end = this.#keys.slot(`${RATE_KEY_PREFIX.slice(0, -1)}$`);
    for await (const entry of this.#kv.list({ start, end })) {
      const { starts = [], parked, woken } = decodeSlot(entry);
      windows.push({ key: String(entry.key[entry.key.length - 1]), starts, parked, woken });
    }
    return windows;
  }

  // reads: inv/… backwards from the newest down to sinceMs (one range read, in pages), or per
  // task task/<task>/… so and those records; a page at a time, until `limit` match. Writes
  // nothing. A status filter reads on past what it skips: its cost grows with those.
  async list(query: ListQuery): Promise<InvocationRecord[]> {
    const sinceMs = query.sinceMs ?? -Infinity;
    const matches = (record: InvocationRecord): boolean =>
      (query.statuses?.has(record.status) ?? true) && record.createdAtMs >= sinceMs;
    if (query.taskIds === undefined) {
      return await this.#newest(
        this.#keys.invocations(),
        query,
        (entries) =>
          Promise.resolve(entries.flatMap((entry) => {
            const record = this.#decodeInvocation(entry)?.record;
            return record !== undefined && matches(record) ? [record] : [];
          })),
      );
    }
    const perTask = await Promise.all(
      [...new Set(query.taskIds)].map((taskId) =>
        this.#newest(
          this.#keys.byTask(taskId),
          query,
          async (entries) =>
            (await this.getMany(entries.map((entry) => String(entry.key.at(-1))))).filter(matches),
        )
      ),
    );
    return perTask.flat().sort((a, b) => a.id < b.id ? 1 : a.id > b.id ? -1 : 0)
      .slice(0, query.limit);
  }

  /**
   * The first `query.limit` records `select` finds in the entries under `prefix` whose last part
   * is an invocation id registered at or after `query.sinceMs`, read backwards (newest first) a
   * page at a time.
   */
  async #newest(
    prefix: KvKey,
    query: ListQuery,
    select: (entries: KvEntryLike[]) => Promise<InvocationRecord[]>,
  ): Promise<InvocationRecord[]> {
    const selector = query.sinceMs === undefined
      ? { prefix }
      : { prefix, start: [...prefix, encodeTime(Math.max(0, Math.ceil(query.sinceMs)), 10)] };
    const pageSize = Math.min(query.limit, LIST_BATCH);
    const found: InvocationRecord[] = [];
    let page: KvEntryLike[] = [];
    for await (const entry of this.#kv.list(selector, { reverse: true, batchSize: pageSize })) {
      page.push(entry);
      if (page.length < pageSize) continue;
      found.push(...await select(page));
      page = [];
      if (found.length >= query.limit) return found.slice(0, query.limit);
    }
    found.push(...await select(page));
    return found.slice(0, query.limit);
  }

  // reads: slot/… (one range read: every key's state); park/<key>/… for each key with parked
  // invocations (one range read each, at most maxParked, together); then one record per key
  // that has holders or parked (its first), for the key's limit. Writes nothing.
  async concurrency(maxParked: number): Promise<KeyUsage[]> {
    const used: { key: string; holders: readonly string[]; parkedCount: number }[] = [];
    for await (const entry of this.#kv.list({ prefix: this.#keys.slot() })) {
      const key = String(entry.key.at(-1));
      const { holders, parked } = decodeSlot(entry);
      if (rateKeyTask(key) === undefined && holders.length + parked > 0) {
        used.push({ key, holders, parkedCount: parked });
      }
    }
    const parked = await Promise.all(
      used.map(async ({ key, parkedCount }) =>
        parkedCount === 0 ? [] : (await this.#listEntries(
          this.#keys.queue({ delayed: false, parkedOn: key }),
          maxParked,
        )).map((entry) => decodeQueueValue(entry.value).id)
      ),
    );
    // The limit as the invocations using the key know it: the first holder's, or first parked's.
    const userIds = used.map(({ holders }, i) => holders[0] ?? parked[i]![0]);
    const users = new Map(
      (await this.getMany(userIds.filter((id) => id !== undefined)))
        .map((record) => [record.id, record]),
    );
    return used.flatMap(({ key, holders, parkedCount }, i) => {
      const user = users.get(userIds[i] ?? "");
      const slot = user === undefined ? undefined : slotsOf(user).find((s) => s.key === key);
      return slot === undefined
        ? []
        : [{ key, limit: slot.limit, holders, parked: parked[i]!, parkedCount }];
    });
  }

  /** The last key part (an id) of every key under `prefix`. */
  async #listIds(prefix: KvKey): Promise<string[]> {
    return (await this.#listEntries(prefix)).map((entry) => String(entry.key.at(-1)));
  }

  /** The entries under `prefix` (the first `limit`). */
  async #listEntries(prefix: KvKey, limit?: number): Promise<KvEntryLike[]> {
    const entries: KvEntryLike[] = [];
    for await (const entry of this.#kv.list({ prefix }, limit === undefined ? {} : { limit })) {
      entries.push(entry);
    }
    return entries;
  }

  async counts(): Promise<Map<string, Map<InvocationStatus, number>>> {
    const counts = new Map<string, Map<InvocationStatus, number>>();
    for await (const entry of this.#kv.list({ prefix: this.#keys.invocations() })) {
      const stored = this.#decodeInvocation(entry);
      if (stored === undefined) continue;
      const { taskId, status } = stored.record;
      const perTask = counts.get(taskId) ?? new Map<InvocationStatus, number>();
      perTask.set(status, (perTask.get(status) ?? 0) + 1);
      counts.set(taskId, perTask);
    }
    return counts;
  }

  // --- cycle control -----------------------------------------------------------------------------

  // The graph on KV: calls/<caller>/<callee> per edge (its value names the callee invocation whose
  // start inserted it), called/<callee>/<caller> its reverse, holder/<call>/<invocation> per live
  // invocation holding a call, hver/<call> the holders version (see removeCall), and
  // calls/<call> — the key the call's edges are under — the version of its edges: every commit
  // that adds an edge rewrites its caller's. One range read gives a call's version, then its edges.
  //
  // Across processes, two insertions that together close a cycle (A→B here, B→A there) must not
  // both succeed. An insertion of u → v walks R, the calls reachable from v, breadth-first (the
  // reads of one level in flight together), reading each call's edges version with its edges. If
  // u is in R, the edge closes a cycle: it throws CycleDetectedError, having written nothing.
  // Then one of two protocols, by the size of R (an atomic commit holds at most 10 checks, the
  // denokv protocol):
  //
  // One walk (R of at most REGION_CHECKS calls, the usual case: a call that just started has no
  // edges). The commit checks the edge key (absent, or the edge read) and the edges version of
  // every call of R, as read. Such a commit never closes a cycle. Say it commits at T, and a path
  // v → … → u exists at T. A call x of R whose version check passed has no edge at T that its
  // list did not show: an edge added after the list was added after the version was read (one
  // range read, version first; a later page reads later), and its commit rewrote the version,
  // which cannot then read as before at T — versionstamps only grow, and a deletion of the version
  // is the last step of a removal of x's edges (removeCall), after which x has no edge, and an
  // edge added after it writes the version again. (An edge written by an earlier nenc, before
  // versions existed, was there at the list, and so was listed.) So the path's first edge leaves
  // v ∈ R on a listed edge, its target is in R, and so on to u: u is in R, and the walk would
  // have thrown. Two one-walk insertions that close a cycle together: the second to commit would
  // close it, so its check fails (the first rewrote the version of its own caller, which is on
  // the second's path); it re-plans, finds the first's edge, and throws — exactly one error.
  //
  // Commit, then verify (a larger R). The commit checks the edge key only; then the insertion
  // walks again. If a cycle appears, every process that committed an edge of it by this protocol
  // sees it in its verification, and the edge with the highest versionstamp — the one committed
  // last, the same verdict everywhere — is withdrawn by its own process, which throws
  // CycleDetectedError. The older edges stand. Both protocols together: a one-walk commit never
  // closes a cycle, so the newest edge of a cycle always comes from this protocol, and its
  // inserter withdraws it; a one-walk insertion racing it either commits first (the other's
  // verification then finds the cycle, its own edge the newest) or, by the argument above, fails
  // its check if the other's edge came first, re-plans, finds that edge and throws (the other's
  // verification finds no cycle): exactly one error again. A walk that meets an edge about to be
  // withdrawn throws too: a false report of a cycle that stood in storage. So does a walk that
  // meets the edge of a process that died between its commit and its verification, until its
  // invocation is cleaned up — never a missed cycle.
  //
  // The argument needs every edge a live invocation added or relied on to stay in storage while it
  // holds its call: removeCall deletes a call's edges only in a commit that proves the call has no
  // holder left (see there), an insertion that relies on an existing edge checks it is still
  // there when it commits, and a withdrawal checks that the cycle it saw still stands (below).
  //
  // An insertion that finds the edge already there (another invocation of the caller's call
  // inserted it) reuses it: it adds its holders, and checks the edge is still the one read. With
  // one walk that is all: at its commit no path v → … → u exists, so the edge lies on no cycle
  // then, and a cycle through it formed later has a newer edge: the inserter never withdraws it.
  // With commit-then-verify it verifies too: the edge may be the newest of a cycle its inserter is
  // about to withdraw, and then this invocation's call closes that cycle as well. After its commit
  // it re-reads the region and the edge: if the edge is gone or no longer the one relied on, its
  // inserter withdrew it (a removal cannot, this invocation holds both calls), so it re-plans from
  // a fresh read, which fails if the cycle still stands, else re-adds the edge; if the edge is the
  // newest of a cycle, it throws as the inserter will. It never deletes the edge: the inserter
  // owns the withdrawal, and holders whose verification passed rely on it. Racing the inserter's
  // withdrawal, the reuse either verifies first (sees the cycle, the edge newest: throws),
  // verifies after (edge gone: re-plans), or commits after (its check on the edge fails:
  // re-plans). A withdrawal commits only while every edge of the cycle its verification read is
  // unchanged (when the cycle has at most 10 edges: the checks of one commit), else it verifies
  // again: a cycle broken since (a removal deleted an edge of it) may have let a reuse commit —
  // one walk then finds no path — or verify without seeing it, and that reuse relies on the edge.
  // So every invocation whose call closes the cycle fails, and an edge older than the closing one
  // is reused without error.
  //
  // A commit over KV Connect may be applied though it reported failure. The insertion, tried
  // again, finds its own edge (by its value) and goes on as its inserter, with the verification
  // (after a one-walk commit, the verification finds no cycle whose newest edge is this one).
  //
  // reads: calls/<x> and calls/<x>/… for x in R, calls/<caller>/<callee>; checks the edge and,
  // with one walk, calls/<x> for x in R; writes both holders and both hver/<call>, and a new edge
  // with its reverse and calls/<caller>.
  async addCall(caller: CallRef, callee: CallRef): Promise<void> {
    if (caller.callId === callee.callId) {
      throw new CycleDetectedError([caller.callId], [caller.label ?? caller.callId]);
    }
    for (let attempt = 0;; attempt++) {
      const { existing, region } = await this.#readCall(caller, callee);
      // Our own edge (its value names the callee invocation; null if an earlier nenc wrote it):
      // an earlier try's commit was applied though it reported failure.
      const inserter = existing.versionstamp === null
        ? null
        : decode(existing.value, "a call edge");
      if (inserter === callee.invocationId) return await this.#verifyCall(caller, callee, null);
      if (region.path !== undefined) throw await this.#cycleError(caller, callee, region.path);
      const oneWalk = region.versions.size <= REGION_CHECKS;
      const draft = new AtomicDraft();
      this.#stageCall(draft, caller, callee, existing, oneWalk ? region.versions : undefined);
      if (await this.#commitDraft(draft)) {
        if (!oneWalk) await this.#verifyCall(caller, callee, existing.versionstamp);
        return;
      }
      // The edge or the region changed (or the file was locked): re-plan from a fresh read.
      await backoff(attempt);
    }
  }

  /** The reads of an insertion caller → callee, together: its edge, and the callee's region. */
  async #readCall(
    caller: CallRef,
    callee: CallRef,
  ): Promise<{ existing: KvEntryMaybeLike; region: CallRegion }> {
    const [existing, region] = await Promise.all([
      this.#reads.get(this.#keys.callEdge(caller.callId, callee.callId)),
      this.#callRegion(callee.callId, caller.callId),
    ]);
    return { existing, region };
  }

  /**
   * Stages an insertion caller → callee into `op`, planned from its reads (see above): both
   * holders and both holders versions, the check of the edge (`existing`, as read), a new edge with
   * its reverse and the caller's edges version, and with one walk the check of every version of
   * the region (`checked`). 1 + `checked.size` checks.
   */
  #stageCall(
    op: AtomicDraft,
    caller: CallRef,
    callee: CallRef,
    existing: KvEntryMaybeLike,
    checked: ReadonlyMap<string, string | null> | undefined,
  ): void {
    const keys = this.#keys;
    const edge = keys.callEdge(caller.callId, callee.callId);
    op.set(
      keys.callHolder(caller.callId, caller.invocationId),
      encode(caller.label ?? caller.callId),
    )
      .set(
        keys.callHolder(callee.callId, callee.invocationId),
        encode(callee.label ?? callee.callId),
      )
      // A holder added changes its call's holders version (removeCall's proof of "no holder").
      .set(keys.callHolders(caller.callId), encode(null))
      .set(keys.callHolders(callee.callId), encode(null))
      // A new edge must still be absent; an existing one, still the one read: a removal of
      // either call (or a withdrawal) that deleted it since must not leave this invocation
      // without it.
      .check({ key: edge, versionstamp: existing.versionstamp });
    if (existing.versionstamp === null) {
      op.set(edge, encode(callee.invocationId))
        .set(keys.calledEdge(callee.callId, caller.callId), encode(null))
        .set(keys.callEdgesVersion(caller.callId), encode(null));
    }
    for (const [callId, versionstamp] of checked ?? []) {
      op.check({ key: keys.callEdgesVersion(callId), versionstamp });
    }
  }

  // Commit-then-verify, after the commit (see above): `reused` is the versionstamp of the edge
  // this invocation relies on, null for its own. reads: calls/<x> and calls/<x>/… for x in R,
  // the cycle's edges, the holders of its calls; a withdrawal checks the cycle's edges (at most
  // 10) and deletes the edge with its reverse.
  async #verifyCall(caller: CallRef, callee: CallRef, reused: string | null): Promise<void> {
    const keys = this.#keys;
    const edge = keys.callEdge(caller.callId, callee.callId);
    for (;;) {
      const { path } = await this.#callRegion(callee.callId, caller.callId);
      if (path === undefined && reused === null) return;
      // The cycle starts at the caller: its first edge is ours.
      const ids = [caller.callId, ...path ?? [callee.callId]];
      const edges = path === undefined
        ? [edge]
        : ids.map((id, i) => keys.callEdge(id, ids[(i + 1) % ids.length]!));
      const stamps = await this.#versionstamps(edges);
      const ours = stamps[0] ?? null;
      // A reused edge no longer the one relied on was withdrawn by its inserter, in a cycle it
      // saw: re-plan from a fresh read, which fails if that cycle still stands.
      if (reused !== null && ours !== reused) return await this.addCall(caller, callee);
      // An edge of the cycle already gone means it was withdrawn or removed: the cycle is broken.
      if (path === undefined || stamps.some((stamp) => stamp === null)) return;
      // Not the newest edge: the newest one's inserter withdraws it.
      if (stamps.some((stamp) => stamp! > ours!)) return;
      // Ours the newest: fail, and withdraw it if we inserted it (only the inserter does: other
      // holders may rely on an edge this insertion reused).
      if (reused !== null) throw await this.#cycleError(caller, callee, path);
      const withdrawal = this.#kv.atomic()
        .delete(edge)
        .delete(keys.calledEdge(callee.callId, caller.callId));
      if (edges.length <= MAX_CHECKS) {
        edges.forEach((key, i) => withdrawal.check({ key, versionstamp: stamps[i]! }));
      }
      if (await this.#commit(withdrawal)) throw await this.#cycleError(caller, callee, path);
    }
  }

  /**
   * The calls reachable from `from` (R), breadth-first, the lists of one level in flight
   * together: each one's edges version as read (null: absent), and, if `target` is among them, a
   * shortest path from `from` to the call before `target` (the walk stops at its level).
   */
  async #callRegion(from: string, target: string): Promise<CallRegion> {
    const keys = this.#keys;
    const versionLength = keys.callEdgesVersion(from).length;
    const versions = new Map<string, string | null>();
    const parents = new Map<string, string>();
    for (let level = [from]; level.length > 0 && !parents.has(target);) {
      const next: string[] = [];
      for (let start = 0; start < level.length; start += REGION_LISTS) {
        await Promise.all(
          level.slice(start, start + REGION_LISTS).map(async (callId) => {
            versions.set(callId, null);
            for await (const entry of this.#kv.list(keys.callEdgesRange(callId))) {
              if (entry.key.length === versionLength) {
                versions.set(callId, entry.versionstamp);
                continue;
              }
              const callee = String(entry.key[versionLength]);
              if (callee === from || parents.has(callee)) continue;
              parents.set(callee, callId);
              next.push(callee);
            }
          }),
        );
      }
      level = next;
    }
    if (!parents.has(target)) return { versions };
    const path: string[] = [];
    for (let callId = target; callId !== from;) {
      callId = parents.get(callId)!;
      path.push(callId);
    }
    return { versions, path: path.reverse() };
  }

  /** The cycle caller → callee → … (`path`, from the callee) → caller, with the calls' labels. */
  async #cycleError(
    caller: CallRef,
    callee: CallRef,
    path: readonly string[],
  ): Promise<CycleDetectedError> {
    const labels = await Promise.all(
      path.slice(1).map(async (callId) => {
        const holders = this.#kv.list({ prefix: this.#keys.callHolder(callId) }, { limit: 1 });
        for await (const entry of holders) return decodeString(entry.value);
        return callId;
      }),
    );
    return new CycleDetectedError(
      [caller.callId, ...path],
      [caller.label ?? caller.callId, callee.label ?? callee.callId, ...labels],
    );
  }

  // reads: holder/<call>/<inv> and hver/<call> together, then together the holders of the call
  // this removal releases (see below), holder/<call>/… (one more than them), calls/<call>/… and
  // called/<call>/…. If another holder is listed: checks it and deletes the released holders.
  // Else: checks hver/<call>; deletes every edge of the call with its reverse, calls/<call> (its
  // edges version), the released holders and hver/<call> (at most CHUNK_MUTATIONS keys per commit,
  // each checking hver/<call>).
  //
  // Deleting the edges must not race with a new holder of the call (another invocation of it
  // starting a child, or being started as one): its edges are the ones a later insertion needs
  // to see. A KV check cannot cover a key prefix, so the holders of a call share one version key,
  // hver/<call>, which every commit that adds a holder of the call (addCall) rewrites; a commit
  // that adds an edge of the call always adds a holder of it. The deleting commit checks the
  // versionstamp of hver/<call> read *before* the holders were listed, so it commits only if no
  // holder came since that list found none but those it releases, which it deletes: no holder
  // exists after it. If hver/<call> was absent, the check passes only if it is absent
  // again at commit time, i.e. nothing rewrote it since, or the last commit to touch it was
  // another such deletion, which itself proved no holder then — either way no holder exists. An
  // edge listed here and deleted and re-added since came with a holder, so the check fails. On a
  // failed check: re-read and re-plan (now seeing the new holder, or nothing left to delete).
  // A removal that lists another holder leaves the clean-up to it: its release checks that other
  // holder's key unchanged, so it commits only while that one still holds the call. A release
  // therefore never leaves a call without holders — only a deleting commit does — and two
  // holders releasing together cannot each leave the clean-up to the other: the second commit
  // fails, re-reads and finds itself the last. (It also fails when the other one is rewritten,
  // starting a child: a re-read then.) The edges version goes after the edges (its absence then
  // means "no edge": addCall's argument), the released holders and hver/<call> last (the last
  // commit of a call with many edges): a removal cut short leaves a holder and is finished when
  // tried again, and one whose release or deletion was applied though reported failed finds its
  // holder gone: nothing left to do. Data written before hver/<call> existed reads as "absent",
  // which the argument covers: no migration.
  //
  // The removals of one call asked of this store before one of them lists the call's holders go
  // together, as one removal releasing all their holders: equal calls of one caller (siblings
  // with equal arguments) end together, and would otherwise each list the other, leave the
  // clean-up to it, and have one of the two commits refused and the whole removal tried again.
  removeCall(ref: Pick<CallRef, "callId" | "invocationId">): Promise<void> {
    const gathering = this.#removals.get(ref.callId);
    // A removal asked again for an invocation the gathering one releases goes on its own: the
    // gathering one may have read its holder before a claim wrote it (see #releaseIfEnded), and
    // would not read it again. At most JOINED_REMOVALS go together (one commit deletes them all).
    if (
      gathering !== undefined && !gathering.released.has(ref.invocationId) &&
      gathering.released.size < JOINED_REMOVALS
    ) {
      gathering.released.add(ref.invocationId);
      return gathering.done;
    }
    const released = new Set([ref.invocationId]);
    // Started after this turn: it is in #removals before any of its steps.
    const done = Promise.resolve().then(() => this.#removeHolds(ref.callId, released));
    this.#removals.set(ref.callId, { released, done });
    return done;
  }

  /** Releases the holds of the invocations `released` (more may join until it lists). */
  async #removeHolds(callId: string, released: Set<string>): Promise<void> {
    const keys = this.#keys;
    const version = keys.callHolders(callId);
    const gathered = (): void => {
      if (this.#removals.get(callId)?.released === released) this.#removals.delete(callId);
    };
    try {
      for (let attempt = 0;; attempt++) {
        // One read (the reads of a turn go together): hver/<call> before the holders are listed.
        const first = [...released];
        const [{ versionstamp: stamp }, ...held] = await Promise.all([
          this.#reads.get(version),
          ...first.map((id) => this.#reads.get(keys.callHolder(callId, id))),
        ]);
        // Most invocations never join the call graph (no parent, no child running): nothing to
        // do. Nor is there when the holder is gone: released while another holder held the call
        // (which cleans up), or deleted with the call's edges — by this removal tried again after
        // such a commit was applied though it reported failure.
        if (released.size === first.length && held.every((entry) => entry.versionstamp === null)) {
          return;
        }
        gathered();
        // The holders of the removals that joined since that read are read with the lists.
        const [joined, holders, callees, callers] = await Promise.all([
          this.#getEntries(
            [...released].slice(first.length).map((id) => keys.callHolder(callId, id)),
          ),
          this.#listEntries(keys.callHolder(callId), released.size + 1),
          this.#listIds(keys.callEdge(callId)),
          this.#listIds(keys.calledEdge(callId)),
        ]);
        const mine = [...held, ...joined].flatMap((entry) =>
          entry.versionstamp === null ? [] : [entry.key]
        );
        if (mine.length === 0) return;
        const other = holders.find((entry) => !released.has(String(entry.key.at(-1))));
        if (other !== undefined) {
          const release = this.#kv.atomic().check({
            key: other.key,
            versionstamp: other.versionstamp,
          });
          for (const key of mine) release.delete(key);
          if (await this.#commit(release)) return;
        } else {
          const edges: KvKey[] = [];
          for (const callee of callees) {
            edges.push(keys.callEdge(callId, callee), keys.calledEdge(callee, callId));
          }
          for (const caller of callers) {
            edges.push(keys.calledEdge(callId, caller), keys.callEdge(caller, callId));
          }
          edges.push(keys.callEdgesVersion(callId));
          // The released holders and hver/<call> go in the last commit, all of them: a removal
          // cut short leaves every one of its holders, and is finished when tried again.
          const last = [...mine, version];
          const chunks = chunked(edges, CHUNK_MUTATIONS);
          const tail = chunks.at(-1)!; // the edges hold calls/<call> at least
          if (tail.length + last.length <= CHUNK_MUTATIONS) tail.push(...last);
          else chunks.push(last);
          let done = 0;
          for (const chunk of chunks) {
            const op = this.#kv.atomic().check({ key: version, versionstamp: stamp });
            for (const key of chunk) op.delete(key);
            if (!await this.#commit(op)) break;
            done++;
          }
          if (done === chunks.length) return;
        }
        await backoff(attempt);
      }
    } finally {
      gathered();
    }
  }

  async #versionstamps(keys: readonly KvKey[]): Promise<(string | null)[]> {
    return (await this.#getEntries(keys)).map((entry) => entry.versionstamp);
  }

  // --- blocking control --------------------------------------------------------------------------

  // The layout: waits/<waiter>/<waited> and waited/<waited>/<waiter> (the edge both ways, each
  // holding the time its waited end was first waited on), ready/<time><waited>/<waiter> (an entry
  // per edge whose waited end waits on nothing, ordered by that time, then the waited id), and
  // wnode/<id> (a marker: the invocation has been in the wait graph; a release without it reads
  // nothing).
  // No count is kept per invocation, so every key belongs to one edge, or to one invocation's own
  // steps: adding N edges is one commit without checks (one per WAIT_EDGES_PER_COMMIT), and
  // children that end together release their edges without contending on their parent's key.
  // What a count would decide is read instead, where it is cheap: a waiter that starts waiting
  // drops its own ready entries (it is running: no pick-up wants it), a release gives them back to
  // a waiter left waiting on nothing only when it is available to run, and blocking() checks that
  // each available candidate waits on nothing — so it is exact whatever a race left in the index.

  // reads: waits/<waiter>/<waited>… and wnode/<waited>… (point reads: the edges already there, and
  // which ends were waited on before), waited/<waiter>/… (its own ready entries), and one entry of
  // waited/<waited>/… per end waited on before (its first-wait time); checks: none; writes: per new edge both keys, its ready entry and
  // wnode/<waited>; wnode/<waiter>, and deletes the waiter's ready entries — in commits of
  // WAIT_EDGES_PER_COMMIT edges, in flight together. (A change with `waitFor` stages this in its
  // own commit, see #apply.)
  async waitFor(waiterId: string, waitedIds: readonly string[], nowMs: number): Promise<void> {
    checkWaits(waiterId, waitedIds);
    await Promise.all(
      chunked(waitedIds, WAIT_EDGES_PER_COMMIT).map(async (chunk) => {
        const draft = new AtomicDraft();
        const planned = await this.#readWaits(waiterId, chunk);
        // Written blind, with no versionstamp known: the edges of its ends are not known here.
        for (const id of [waiterId, ...planned.added]) this.#local.edges.delete(id);
        this.#stageWaits(draft, waiterId, planned, nowMs);
        await this.#commitBlind(draft);
      }),
    );
  }

  /**
   * The reads that adding the wait edges `waiterId` → `waitedIds` is planned from (see
   * #stageWaits): the edges not there yet, with the time each end was first waited on (null: never
   * waited on), and the waiter's own ready entries.
   */
  async #readWaits(waiterId: string, waitedIds: readonly string[]): Promise<PlannedWaits> {
    const keys = this.#keys;
    const ids = [...new Set(waitedIds)];
    // The waiter's own marker with the ends': what the edges known here are checked against.
    const [present, markers, waiters] = await Promise.all([
      this.#getEntries(ids.map((id) => keys.waitEdge(waiterId, id))),
      this.#getEntries([...ids, waiterId].map((id) => keys.waitNode(id))),
      this.#edgesOf(keys.waitedEdge(waiterId)),
    ]);
    // A retry (or a second wait on it) finds the edge: a new time would leave its entry behind.
    const added = ids.filter((_, i) => present[i]!.versionstamp === null);
    // Waited on already (it has a marker, and an edge in): every edge into an invocation carries
    // the time it was first waited on, so the new one takes it from any other. (One never in the
    // wait graph, such as a child just called, costs no read.)
    const firstWaits = await Promise.all(
      added.map((id) =>
        markers[ids.indexOf(id)]!.versionstamp === null ? null : this.#firstWaitMs(id)
      ),
    );
    return {
      added,
      firstWaits,
      waiters,
      markers: new Map([...ids, waiterId].map((id, i) => [id, markers[i]!])),
    };
  }

  /**
   * Checks on `op` the markers of a wait's waiter and of the ends it adds edges to, as its reads
   * found them, when they fit in the commit's checks: then what the commit leaves is known here
   * (see #knowEdges). Whether it did.
   */
  #checkMarkers(op: AtomicDraft, waiterId: string, planned: PlannedWaits): boolean {
    if (op.checks.length + 1 + planned.added.length > MAX_CHECKS) return false;
    for (const id of [waiterId, ...planned.added]) {
      op.check({
        key: this.#keys.waitNode(id),
        versionstamp: planned.markers.get(id)!.versionstamp,
      });
    }
    return true;
  }

  /**
   * After a wait's commit at `versionstamp` that checked the markers (see #checkMarkers): the edges
   * of its waiter and of the ends it added, where those before it were known (a marker absent: no
   * edge; else as known here at that marker), are known here at the new marker.
   */
  #knowEdges(waiterId: string, planned: PlannedWaits, nowMs: number, versionstamp: string): void {
    const edges = this.#local.edges;
    const before = (id: string): Omit<KnownEdges, "marker"> | undefined => {
      const marker = planned.markers.get(id)!.versionstamp;
      if (marker === null) return { waiters: [], waited: [] };
      const known = edges.get(id);
      return known?.marker === marker ? known : undefined;
    };
    const remember = (id: string, known: KnownEdges | undefined): void => {
      edges.delete(id);
      if (known === undefined) return;
      edges.set(id, known);
      if (edges.size > CALLS_KNOWN) edges.delete(edges.keys().next().value!);
    };
    const added = planned.added.map((id, i) => ({ id, atMs: planned.firstWaits[i] ?? nowMs }));
    const waiter = before(waiterId);
    remember(
      waiterId,
      waiter &&
        { marker: versionstamp, waiters: planned.waiters, waited: [...waiter.waited, ...added] },
    );
    for (const { id, atMs } of added) {
      const end = before(id);
      remember(
        id,
        end && {
          marker: versionstamp,
          waiters: [...end.waiters, { id: waiterId, atMs }],
          waited: end.waited,
        },
      );
    }
  }

  /** Stages on `op` that `waiterId` waits on the ends `#readWaits` found it does not wait on yet. */
  #stageWaits(
    op: AtomicDraft,
    waiterId: string,
    { added, firstWaits, waiters }: PlannedWaits,
    nowMs: number,
  ): void {
    const keys = this.#keys;
    this.#local.waitNodes.add(waiterId);
    added.forEach((waitedId, i) => {
      this.#local.waitNodes.add(waitedId);
      const atMs = firstWaits[i] ?? nowMs;
      op.set(keys.waitEdge(waiterId, waitedId), encode(atMs))
        .set(keys.waitedEdge(waitedId, waiterId), encode(atMs))
        .set(keys.ready(readyPosition(atMs, waitedId), waiterId), encode(waitedId))
        .set(keys.waitNode(waitedId), encode(null))
        .signal(keys.hint("blocking"), encode(null));
    });
    // The waiter waits now: no blocking invocation while it does.
    for (const waiter of waiters) {
      if (waiter.atMs !== null) {
        op.delete(keys.ready(readyPosition(waiter.atMs, waiterId), waiter.id));
      }
    }
    op.set(keys.waitNode(waiterId), encode(null));
  }

  // A final invocation's edges go in its final commit (see #apply); this is for one waited on after
  // (see orchestrator's #releaseEnded), and for what was too many for that commit.
  // reads: see #waitEdgesOf; checks: none; writes: deletes both keys and the ready entry of every
  // edge of <id> (in commits of CHUNK_MUTATIONS keys); then for each waiter available to run and
  // left waiting on nothing, its ready entries back (see #restoreWaiters).
  async releaseWaiters(id: string): Promise<void> {
    const release = await this.#waitEdgesOf(id);
    if (release === undefined) return;
    await Promise.all(
      chunked(release.doomed, CHUNK_MUTATIONS).map((chunk) => {
        const draft = new AtomicDraft();
        for (const key of chunk) draft.delete(key);
        return this.#commitBlind(draft);
      }),
    );
    await this.#restoreWaiters(release.waiterIds);
  }

  // reads: wnode/<id>, then waited/<id>/… and waits/<id>/… (two range reads, together).
  /**
   * The keys of every wait edge of an invocation (both keys and the ready entry of each), and its
   * waiters; `undefined` when it was never in the wait graph (no marker: nothing else is read).
   * The marker may have been read already.
   */
  async #waitEdgesOf(
    id: string,
    marker: Promise<KvEntryMaybeLike> = this.#reads.get(this.#keys.waitNode(id)),
    edges?: Promise<[WaitEdge[], WaitEdge[]]>,
  ): Promise<{ doomed: KvKey[]; waiterIds: string[] } | undefined> {
    const keys = this.#keys;
    if ((await marker).versionstamp === null) return undefined;
    const [waiters, waited] = await (edges ?? this.#edgeLists(id));
    const doomed: KvKey[] = [];
    for (const waiter of waiters) {
      doomed.push(keys.waitedEdge(id, waiter.id), keys.waitEdge(waiter.id, id));
      if (waiter.atMs !== null) doomed.push(keys.ready(readyPosition(waiter.atMs, id), waiter.id));
    }
    for (const other of waited) {
      doomed.push(keys.waitEdge(id, other.id), keys.waitedEdge(other.id, id));
      if (other.atMs !== null) doomed.push(keys.ready(readyPosition(other.atMs, other.id), id));
    }
    return { doomed, waiterIds: waiters.map((waiter) => waiter.id) };
  }

  /**
   * After a release: the waiters available to run and left waiting on nothing get their ready
   * entries back. A running or paused waiter is no candidate for a pick-up (its entries wait for
   * none): only an available one — handed back, or an operator's — is read further.
   */
  async #restoreWaiters(waiterIds: readonly string[]): Promise<void> {
    if (waiterIds.length === 0) return;
    const records = await this.#readMany(waiterIds);
    await Promise.all(
      records.flatMap((stored) =>
        stored !== undefined && AVAILABLE_FOR_RUN_STATUSES.has(stored.record.status)
          ? [this.#restoreReady(stored.record.id)]
          : []
      ),
    );
  }

  // reads: waits/<id>/… (one entry), waited/<id>/…; checks: none; writes: the ready entry of
  // every edge into <id>, when <id> waits on nothing.
  /** Gives an invocation left waiting on nothing its ready entries back. */
  async #restoreReady(id: string): Promise<void> {
    const keys = this.#keys;
    const [waiting, waiters] = await Promise.all([
      this.#waitsOnSomething(id),
      this.#edgesOf(keys.waitedEdge(id)),
    ]);
    if (waiting || waiters.length === 0) return;
    const draft = new AtomicDraft();
    for (const waiter of waiters) {
      if (waiter.atMs !== null) {
        draft.set(keys.ready(readyPosition(waiter.atMs, id), waiter.id), encode(id))
          .signal(keys.hint("blocking"), encode(null));
      }
    }
    await this.#commitBlind(draft);
  }

  /** When an invocation was first waited on, if anyone waits on it (one entry of one range read). */
  async #firstWaitMs(id: string): Promise<number | null> {
    for await (const entry of this.#kv.list({ prefix: this.#keys.waitedEdge(id) }, { limit: 1 })) {
      const atMs = decode(entry.value, "a wait edge");
      return typeof atMs === "number" ? atMs : null;
    }
    return null;
  }

  /** Whether an invocation waits on anything (one range read of at most one entry). */
  async #waitsOnSomething(id: string): Promise<boolean> {
    for await (const _ of this.#kv.list({ prefix: this.#keys.waitEdge(id) }, { limit: 1 })) {
      return true;
    }
    return false;
  }

  /** The edges into `id` (its waiters), and out of it (what it waits on): two range reads. */
  #edgeLists(id: string): Promise<[WaitEdge[], WaitEdge[]]> {
    return Promise.all([
      this.#edgesOf(this.#keys.waitedEdge(id)),
      this.#edgesOf(this.#keys.waitEdge(id)),
    ]);
  }

  /** The other ends of the edges under `prefix`, and when each was added (`null`: before 0.2). */
  async #edgesOf(prefix: KvKey): Promise<WaitEdge[]> {
    const edges: WaitEdge[] = [];
    for await (const entry of this.#kv.list({ prefix })) {
      const atMs = decode(entry.value, "a wait edge");
      edges.push({
        id: String(entry.key[entry.key.length - 1]),
        atMs: typeof atMs === "number" ? atMs : null,
      });
    }
    return edges;
  }

  /** Commits a draft without checks, trying again while the file is locked. */
  async #commitBlind(draft: AtomicDraft): Promise<void> {
    if (draft.mutations.length === 0) return;
    for (let attempt = 0; !await this.#group.commit(draft); attempt++) await backoff(attempt);
  }

  // reads: waited/<id>/… (one range read).
  async waiters(id: string): Promise<string[]> {
    return await this.#listIds(this.#keys.waitedEdge(id));
  }

  // reads: the ready index in pages, the records of each page's in order (getMany) as many at a
  // time as are still wanted, but those held here, and together with them per candidate
  // waits/<id>/… (one entry); writes: deletes the entries of ended invocations.
  // Pages go on until `max` are found or the index ends: waited-on invocations that run already (a
  // parent's earliest children, say) must not hide available ones behind them.
  async blocking(max: number, nowMs: number): Promise<string[]> {
    return (await this.#blocking(max, nowMs)).found.map(({ id }) => id);
  }

  /**
   * As blocking(), with each one's record entry as read, and whether the index held any entry at
   * all. For a pick-up (`widen`, see ClaimRequest.widen: the new `max`, asked once the index is
   * read), each one's oldest waiter's record is read with it (`waiter`): the pick-up claims with
   * these reads (see #claim), and the waiter is mostly the caller.
   */
  async #blocking(
    max: number,
    nowMs: number,
    widen?: () => number,
  ): Promise<{ found: BlockingCandidate[]; indexed: boolean }> {
    const waiters = widen !== undefined;
    // Not read: nothing known of the index.
    if (max <= 0) return { found: [], indexed: true };
    const prefix = this.#keys.ready();
    const pageSize = max * 4 + 10;
    const found: BlockingCandidate[] = [];
    // An invocation is met once per call: its first entry is its oldest wait.
    const met = new Set<string>();
    for (let after: KvKey | undefined;;) {
      const page: { key: KvKey; id: string }[] = [];
      // `start` is inclusive: a key followed by a 0 byte is the first key after it.
      const selector = after === undefined ? { prefix } : { prefix, start: [...after, ""] };
      for await (const entry of this.#kv.list(selector, { limit: pageSize })) {
        page.push({ key: entry.key, id: decodeString(entry.value) });
        after = entry.key;
      }
      // Those a runner of this process holds are no candidates: not read (see ownedHere).
      const owned = this.#local.ownedHere;
      // The first waiter of each (the index key ends with it).
      const waiterOf = new Map<string, string>();
      for (const { key, id } of page) {
        if (met.has(id) || owned.has(id) || waiterOf.has(id)) continue;
        waiterOf.set(id, String(key[key.length - 1]));
      }
      const ids = [...waiterOf.keys()];
      for (const id of ids) met.add(id);
      if (widen !== undefined) max = widen();
      // Read in order, as many at a time as are still wanted: most are available and wait on
      // nothing, and a pick-up wants a few of them (reading a whole page cost a record read per
      // entry at every pick-up). Whether each waits on something is read with the records (one
      // round trip, not two in turn): a range read more for the few found ended or unavailable.
      for (let next = 0; next < ids.length && found.length < max;) {
        const chunk = ids.slice(next, next += max - found.length);
        const waiterReads = waiters
          ? chunk.map((id) => this.#reads.get(this.#keys.invocation(waiterOf.get(id)!)))
          : [];
        waiterReads.forEach((read) => read.catch(() => {})); // seen by the claim that uses it
        const calls = waiters ? chunk.map((id) => this.#callReadAhead(id, waiterOf.get(id)!)) : [];
        const [entries, waiting] = await Promise.all([
          this.#getEntries(chunk.map((id) => this.#keys.invocation(id))),
          Promise.all(chunk.map((id) => this.#waitsOnSomething(id))),
        ]);
        const records = entries.map((entry) => this.#decodeInvocation(entry));
        // An ended invocation's entries (a release that raced a restore leaves one): gone now.
        const ended = new Set(chunk.filter((_, i) => {
          const stored = records[i];
          return stored === undefined || isFinalStatus(stored.record.status);
        }));
        if (ended.size > 0) {
          const draft = new AtomicDraft();
          for (const { key, id } of page) if (ended.has(id)) draft.delete(key);
          await this.#commitBlind(draft);
        }
        chunk.forEach((id, i) => {
          const stored = records[i];
          if (stored === undefined || !isAvailable(stored, nowMs) || waiting[i]) return;
          found.push({
            id,
            entry: entries[i]!,
            stored,
            ...(waiters
              ? { waiter: { id: waiterOf.get(id)!, read: waiterReads[i]! }, call: calls[i] }
              : {}),
          });
        });
      }
      const indexed = after !== undefined;
      if (found.length >= max) return { found, indexed };
      if (page.length < pageSize) return { found, indexed };
    }
  }

  // writes: cycle/<invocation> (its path and time), expireIn = CYCLE_RETENTION_MS; no check: a
  // record of the same invocation replaces it.
  async recordCycle(cycle: RefusedCycle): Promise<void> {
    const { invocationId, callIds, labels, atMs } = cycle;
    await this.#kv.atomic()
      .set(this.#keys.cycle(invocationId), encode({ callIds, labels, atMs }), {
        expireIn: CYCLE_RETENTION_MS,
      })
      .commit();
  }

  // reads: cycle/… newest invocation first, at most CYCLES_KEPT (one range read); expiry is lazy:
  // older ones are left out by their time.
  async cycles(): Promise<RefusedCycle[]> {
    const sinceMs = this.#clock.now() - CYCLE_RETENTION_MS;
    const cycles: RefusedCycle[] = [];
    const listed = this.#kv.list({ prefix: this.#keys.cycle() }, {
      reverse: true,
      limit: CYCLES_KEPT,
    });
    for await (const entry of listed) {
      const cycle = decodeCycle(entry.value, String(entry.key[entry.key.length - 1]));
      if (cycle.atMs > sinceMs) cycles.push(cycle);
    }
    return cycles.sort((a, b) => b.atMs - a.atMs);
  }

  // --- runners -----------------------------------------------------------------------------------

  async heartbeat(runnerId: string, nowMs: number, taskIds?: readonly string[]): Promise<void> {
    const value = taskIds === undefined ? nowMs : { lastSeenMs: nowMs, taskIds };
    await this.#kv.atomic().set(this.#keys.runner(runnerId), encode(value)).commit();
  }

  // reads: runner/<id> (only with seenBeforeMs); checks: runner/<id>, so a heartbeat written since
  // the read keeps the entry; writes: deletes runner/<id>.
  async removeRunner(runnerId: string, seenBeforeMs?: number): Promise<void> {
    const key = this.#keys.runner(runnerId);
    if (seenBeforeMs === undefined) {
      await this.#kv.atomic().delete(key).commit();
      return;
    }
    const entry = await this.#reads.get(key);
    if (entry.versionstamp === null) return;
    if (decodeHeartbeat(entry.value).lastSeenMs >= seenBeforeMs) return;
    await this.#commit(this.#kv.atomic().check(entry).delete(key));
  }

  async runners(): Promise<RunnerInfo[]> {
    const runners: RunnerInfo[] = [];
    for await (const entry of this.#kv.list({ prefix: this.#keys.runner() })) {
      runners.push({
        runnerId: String(entry.key[entry.key.length - 1]),
        ...decodeHeartbeat(entry.value),
      });
    }
    return runners;
  }

  // reads: lease/upkeep; checks: lease/upkeep (its versionstamp as read: a take-over between the
  // read and the commit fails the commit, which reads again); writes: lease/upkeep, { runnerId,
  // untilMs } with expireIn until then (lazy: readers compare untilMs). A retry of a take whose
  // answer was lost reads the lease as its own, and renews it.
  async takeUpkeepLease(runnerId: string, { nowMs, untilMs }: UpkeepLease): Promise<boolean> {
    const key = this.#keys.upkeep();
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(key);
      const held = decodeLease(entry);
      if (held !== undefined && held.runnerId !== runnerId && held.untilMs > nowMs) return false;
      const op = this.#kv.atomic()
        .check({ key, versionstamp: entry.versionstamp })
        .set(key, encode({ runnerId, untilMs }), { expireIn: Math.max(1, untilMs - nowMs) });
      if (await this.#commit(op)) return true;
      await backoff(attempt);
    }
  }

  // reads: lease/upkeep; checks: lease/upkeep; writes: deletes it, when this runner holds it.
  async releaseUpkeepLease(runnerId: string): Promise<void> {
    const key = this.#keys.upkeep();
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(key);
      if (decodeLease(entry)?.runnerId !== runnerId) return;
      if (await this.#commit(this.#kv.atomic().check(entry).delete(key))) return;
      await backoff(attempt);
    }
  }

  // --- waiting -----------------------------------------------------------------------------------

  async waitFinal(id: string, signal?: AbortSignal): Promise<InvocationRecord | undefined> {
    const record = await this.get(id);
    if (record === undefined || isFinalStatus(record.status)) return record;
    if (signal?.aborted) return undefined;
    const closed = this.#local.closed;
    if (closed !== undefined) {
      throw new StoreClosedError(`Cannot wait for invocation ${id}: the KV store is closed`, {
        cause: closed.cause,
      });
    }
    // This process's own changes wake the waiter at once; other processes' are found by one
    // poller per app and KV handle that reads every awaited invocation in batches, so a
    // thousand waiters cost a hundred reads per round, not a thousand loops of their own.
    // They wake with the final record they saw (none when it is gone).
    const waiting = listenFor(this.#local.finals, id, signal);
    this.#local.poller ??= this.#pollFinals();
    return await waiting;
  }

  /**
   * Polls the awaited invocations until none is awaited. A sweep reads them all, a slice of at
   * most `POLL_SLICE` per round, and takes the poll delay (5 ms, doubling with each round that
   * finds nothing that another process ended, up to 500 ms) — and once it has backed off that far,
   * 1 ms per invocation it reads when that is longer (`POLL_MS_PER_AWAITED`): while ends made
   * elsewhere keep coming it reads fast, and when none come the read rate stays bounded with ten
   * thousand waiters (most of which this process's own changes wake anyway); an end made elsewhere
   * is seen within about a sweep. The back-off counts rounds, not sweeps: a process
   * whose waiters all end here (one that runs what it awaits) slows down within a few rounds
   * however many they are, instead of reading each of them a few times over. Its cadence is I/O
   * pacing, not app time, so it runs on real timers like the commit back-off: with a fake app
   * clock, in-process changes still wake waiters at once.
   * A read that finds the KV closed has rejected every waiter (see `closeSignals`): the poller
   * stops, and a pause it is in ends at once, so no timer of it outlives the store.
   */
  async #pollFinals(): Promise<void> {
    const local = this.#local;
    const finals = local.finals;
    // The poller steps down in the same step that finds no waiter left (not a tick later, when a
    // waiter may have joined and found it still there).
    try {
      for (let idle = 0, cursor = 0, sweep = 0; finals.size > 0;) {
        let awaited = this.#polled(sweep);
        if (cursor >= awaited.length) {
          cursor = 0;
          awaited = this.#polled(++sweep);
        }
        const slices = Math.ceil(awaited.length / POLL_SLICE);
        // A sweep takes the poll delay; backed off all the way, at least POLL_MS_PER_AWAITED per
        // invocation it reads.
        const sweepMs = idle >= POLL_BACKED_OFF
          ? Math.max(pollDelayMs(idle), awaited.length * POLL_MS_PER_AWAITED)
          : pollDelayMs(idle);
        const roundMs = Math.max(MIN_POLL_ROUND_MS, sweepMs / Math.max(1, slices));
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            clearTimeout(timer);
            local.wakePoller = undefined;
            resolve();
          };
          const timer = setTimeout(wake, roundMs);
          local.wakePoller = wake;
        });
        if (local.closed !== undefined) return;
        const ids = awaited.slice(cursor, cursor + POLL_SLICE);
        cursor += ids.length;
        if (ids.length === 0) continue;
        let ended = 0;
        let read: (StoredInvocation | undefined)[];
        try {
          read = await this.#readMany(ids);
        } catch (error) {
          if (error instanceof StoreClosedError) return;
          // A failed read (the network, a bad record) is tried again next round, backing off.
          idle++;
          continue;
        }
        read.forEach((stored, index) => {
          const waiters = finals.get(ids[index]!);
          // Waiters already woken by this process's own change are gone: only an end that
          // another process made keeps the poller quick.
          if (
            waiters !== undefined && (stored === undefined || isFinalStatus(stored.record.status))
          ) {
            forget(local, ids[index]!);
            ended++;
            notify(waiters, undefined, stored?.record);
          }
        });
        idle = ended > 0 ? 0 : idle + 1;
      }
    } finally {
      local.poller = undefined;
    }
  }

  /**
   * The awaited invocations the poller reads in sweep `sweep`: those a runner of this process
   * holds end here, which wakes their waiters at once, so they are read every `OWNED_SWEEPS`-th
   * sweep only — one ended elsewhere (this process taken for dead) is still seen, later.
   */
  #polled(sweep: number): string[] {
    const awaited = [...this.#local.finals.keys()];
    if (sweep % OWNED_SWEEPS === 0) return awaited;
    const owned = this.#local.ownedHere;
    return awaited.filter((id) => !owned.has(id));
  }

  async waitWork(signal?: AbortSignal): Promise<void> {
    // New work from this process wakes the runner at once; work from other processes is found
    // by polling, backing off while claims come back empty.
    // A closed store rejects at once, and a store found closed meanwhile ends the wait.
    const closed = this.#local.closed;
    if (closed !== undefined) {
      throw new StoreClosedError("Cannot wait for work: the KV store is closed", {
        cause: closed.cause,
      });
    }
    if (signal?.aborted || this.#local.newWork) return;
    const wake = new AbortController();
    const stop = (): void => wake.abort();
    signal?.addEventListener("abort", stop, { once: true });
    try {
      await Promise.race([
        listen(this.#local.work, wake.signal),
        this.#clock.sleep(pollDelayMs(this.#idlePolls), wake.signal),
      ]);
    } finally {
      wake.abort();
      signal?.removeEventListener("abort", stop);
    }
  }

  #announceWork(): void {
    this.#idlePolls = 0;
    this.#local.newWork = true;
    notify(this.#local.work);
  }

  // --- purge -------------------------------------------------------------------------------------

  // reads: inv/<id>, hist/<id>/… (a history too long for the record); checks: inv/<id>; writes:
  // every key of the invocation, with the new expireIn, and purge/<pos> moved.
  async schedulePurge(id: string, purgeAtMs: number): Promise<void> {
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(this.#keys.invocation(id));
      const stored = this.#decodeInvocation(entry);
      if (stored === undefined || !isFinalStatus(stored.record.status)) return;
      // Not before an idempotency key naming the invocation expires.
      purgeAtMs = keptPurgeAtMs(stored.record, purgeAtMs);
      const record = { ...stored.record, purgeAtMs };
      const options = { expireIn: Math.max(1, purgeAtMs - this.#clock.now()) };
      const op = new AtomicDraft()
        .check({ key: this.#keys.invocation(id), versionstamp: entry.versionstamp })
        .set(this.#keys.invocation(id), this.#encode({ ...stored, record }, id), options)
        .delete(this.#keys.purge(purgePosition(stored.record.purgeAtMs!, id)));
      const keyed = historyKeys(stored);
      const expireLater = await this.#stageExpiry(op, record, purgeAtMs, options, keyed);
      if (await this.#group.commit(op)) {
        if (expireLater) await this.#expireHistory(id, keyed, purgeAtMs);
        return;
      }
      await backoff(attempt);
    }
  }

  /**
   * Stages on `op` the expiry of a final invocation's keys other than its record: its purge
   * entry, its index entries and its history entries stored as keys, `1..historyCount` (none
   * while the history is in the record) — unless there are more than `INLINE_EXPIRY` of them (a
   * long run of re-routes), which {@linkcode #expireHistory}
   * re-sets after the commit, in commits of their own: one commit could not hold them all.
   * Returns whether that is needed. Should it not happen (the process dies in between), the purge
   * sweep deletes the invocation's keys anyway: the purge entry outlives the record by
   * `PURGE_ENTRY_GRACE_MS` for that.
   */
  async #stageExpiry(
    op: AtomicDraft,
    record: InvocationRecord,
    purgeAtMs: number,
    options: { expireIn: number },
    historyCount: number,
    marker: Promise<KvEntryMaybeLike> = this.#reads.get(this.#keys.waitNode(record.id)),
  ): Promise<boolean> {
    const keys = this.#keys;
    const id = record.id;
    op.set(keys.purge(purgePosition(purgeAtMs, id)), encode(id), {
      expireIn: options.expireIn + PURGE_ENTRY_GRACE_MS,
    });
    op.set(keys.byTask(record.taskId, id), encode(null), options);
    if (record.parentId !== null) op.set(keys.byParent(record.parentId, id), encode(null), options);
    // The marker as read with the record (or now), and the history entries together.
    const [node, history] = await Promise.all([marker, this.#inlineHistory(id, historyCount)]);
    // The wait graph's marker (a wait edge written later leaves one for the sweep to delete).
    if (node.versionstamp !== null) op.set(node.key, encode(null), options);
    for (const entry of history) op.set(entry.key, entry.value as Uint8Array, options);
    return historyCount > INLINE_EXPIRY;
  }

  /**
   * Re-sets history entries `1..historyCount` of a final invocation to expire at `purgeAtMs`.
   * Each commit checks that the record still has that purge time (the history of a final
   * invocation no longer changes, but a later `schedulePurge` may move it, or the sweep delete
   * it): a late write must not give the history another deadline than its record's.
   */
  async #expireHistory(id: string, historyCount: number, purgeAtMs: number): Promise<void> {
    const key = this.#keys.invocation(id);
    for (let first = 1; first <= historyCount; first += CHUNK_MUTATIONS) {
      const last = Math.min(historyCount, first + CHUNK_MUTATIONS - 1);
      const entries = await this.#historyEntries(id, first, last);
      for (let attempt = 0;; attempt++) {
        const entry = await this.#reads.get(key);
        if (this.#decodeInvocation(entry)?.record.purgeAtMs !== purgeAtMs) return;
        const options = { expireIn: Math.max(1, purgeAtMs - this.#clock.now()) };
        const op = this.#kv.atomic().check({ key, versionstamp: entry.versionstamp });
        for (const history of entries) op.set(history.key, history.value, options);
        if (await this.#commit(op)) break;
        await backoff(attempt);
      }
    }
  }

  /**
   * The history entries a final invocation with `historyCount` of them expires in its final
   * commit: all of them, unless there are too many (then they expire after it).
   */
  #inlineHistory(id: string, historyCount: number): Promise<KvEntryMaybeLike[]> {
    return historyCount > INLINE_EXPIRY
      ? Promise.resolve([])
      : this.#historyEntries(id, 1, historyCount);
  }

  /** The stored history entries `first..last` of an invocation (numbered from 1, point reads). */
  async #historyEntries(id: string, first: number, last: number): Promise<KvEntryMaybeLike[]> {
    const keys = Array.from(
      { length: last - first + 1 },
      (_, i) => this.#keys.history(id, first + i),
    );
    return (await this.#getEntries(keys)).filter((entry) => entry.versionstamp !== null);
  }

  async purgeDue(nowMs: number): Promise<number> {
    await this.checkSchema();
    await this.#moveStatusIndex();
    const due: { id: string; key: KvKey }[] = [];
    const end = this.#keys.purge(purgePosition(nowMs + 1, ""));
    for await (const entry of this.#kv.list({ start: this.#keys.purge(""), end })) {
      due.push({ id: decodeString(entry.value), key: entry.key });
    }
    for (const { id, key } of due) await this.#deleteInvocation(id, key);
    return due.length;
  }

  async purgeAll(): Promise<void> {
    await this.checkSchema();
    const keys: KvKey[] = [];
    for await (const entry of this.#kv.list({ prefix: this.#keys.app })) keys.push(entry.key);
    await this.#deleteKeys(keys);
    // The schema key is gone too: the next registration writes it again.
    this.#schemaPresent = false;
  }

  // Per page of the status index of layouts 1 and 2 (10 keys) — reads: status/… (one range
  // read), their records; checks: the records; writes: exec/<owner>/<id> of an owned one (0.1
  // wrote none); deletes the status keys. Layout 3 writes no status index: what an older nenc left
  // in it (its data, or its writes until it stopped at the new version) joins the executions
  // recovery reads, at the first sweep: an old runner stops at the new version, handing its work
  // back, or is dead, and its claims are recovered with its other executions (not by their age:
  // no pend/ entry, which the old runner would not delete). Nothing left: one empty range read.
  async #moveStatusIndex(): Promise<void> {
    const keys = this.#keys;
    for (let attempt = 0;;) {
      const page: KvKey[] = [];
      for await (const entry of this.#kv.list({ prefix: keys.legacyStatus() }, { limit: 10 })) {
        page.push(entry.key);
      }
      if (page.length === 0) return;
      const ids = page.map((key) => String(key[key.length - 1]));
      const entries = await this.#getEntries(ids.map((id) => keys.invocation(id)));
      const op = this.#kv.atomic();
      page.forEach((statusKey, i) => {
        const entry = entries[i]!;
        op.check({ key: entry.key, versionstamp: entry.versionstamp }).delete(statusKey);
        const owner = this.#decodeInvocation(entry)?.record.ownerId ?? null;
        if (owner !== null) op.set(keys.execution(owner, ids[i]!), encode(null));
      });
      if (await this.#commit(op)) attempt = 0;
      else await backoff(attempt++);
    }
  }

  /**
   * Deletes a final invocation and its keys. The record and the purge entry go in the last
   * commit (a long history needs several), so a sweep cut short finds the invocation again.
   */
  async #deleteInvocation(id: string, purgeKey: KvKey): Promise<void> {
    forget(this.#local, id);
    const entry = await this.#reads.get(this.#keys.invocation(id));
    const stored = entry.value === null ? undefined : this.#decodeStored(entry.value, id);
    const doomed: KvKey[] = [];
    for await (const history of this.#kv.list({ prefix: this.#keys.histories(id) })) {
      doomed.push(history.key);
    }
    if (stored !== undefined) {
      const { record } = stored;
      doomed.push(this.#keys.byTask(record.taskId, id));
      if (record.parentId !== null) doomed.push(this.#keys.byParent(record.parentId, id));
      // A final invocation is in the runner index only when canceled while its execution (on a
      // runner that died since) held its slots.
      if (record.ownerId !== null) doomed.push(this.#keys.execution(record.ownerId, id));
    }
    // Its edges first: the release reads the wait graph marker, which goes with the rest.
    await this.releaseWaiters(id);
    doomed.push(this.#keys.waitNode(id), this.#keys.invocation(id), purgeKey);
    await this.#deleteKeys(doomed);
    notify(this.#local.finals.get(id));
  }

  /** Deletes `keys` in order, in commits of at most `CHUNK_MUTATIONS`. */
  async #deleteKeys(keys: readonly KvKey[]): Promise<void> {
    for (let start = 0; start < keys.length; start += CHUNK_MUTATIONS) {
      for (let attempt = 0;; attempt++) {
        const op = this.#kv.atomic();
        for (const key of keys.slice(start, start + CHUNK_MUTATIONS)) op.delete(key);
        if (await this.#commit(op)) break;
        await backoff(attempt);
      }
    }
  }

  // --- encoding and commits ----------------------------------------------------------------------

  async #read(id: string): Promise<StoredInvocation | undefined> {
    return this.#decodeInvocation(await this.#reads.get(this.#keys.invocation(id)));
  }

  /** The invocations `ids`, in order (`undefined` for missing ones), 10 keys per read. */
  async #readMany(ids: readonly string[]): Promise<(StoredInvocation | undefined)[]> {
    const entries = await this.#getEntries(ids.map((id) => this.#keys.invocation(id)));
    return entries.map((entry) => this.#decodeInvocation(entry));
  }

  /** Reads any number of keys, coalesced into `getMany` calls with other reads of this turn. */
  #getEntries(keys: readonly KvKey[]): Promise<KvEntryMaybeLike[]> {
    return Promise.all(keys.map((key) => this.#reads.get(key)));
  }

  /** Decodes an invocation entry; `undefined` when absent or past its purge deadline. */
  #decodeInvocation(entry: KvEntryMaybeLike): StoredInvocation | undefined {
    if (entry.versionstamp === null) return undefined;
    const stored = this.#decodeStored(entry.value, String(entry.key[entry.key.length - 1]));
    const purgeAtMs = stored.record.purgeAtMs;
    return purgeAtMs !== null && purgeAtMs <= this.#clock.now() ? undefined : stored;
  }

  #decodeStored(value: unknown, id: string): StoredInvocation {
    const stored = decode(value, `invocation ${id}`) as StoredInvocation;
    if (
      typeof stored !== "object" || stored === null || typeof stored.record !== "object" ||
      stored.record === null || stored.record.id !== id || !isInvocationStatus(stored.record.status)
    ) {
      throw new SerializationError(
        `Cannot read invocation ${id}: the stored value is not a nenc invocation`,
      );
    }
    return stored;
  }

  #encode(stored: StoredInvocation, id: string): Uint8Array {
    const bytes = encode(stored);
    if (bytes.byteLength > KV_MAX_VALUE_BYTES) {
      throw new SerializationError(
        `Cannot store invocation ${id}: its record is ${bytes.byteLength} bytes, over the ${KV_MAX_VALUE_BYTES}-byte (64 KiB) Deno KV value limit; return a smaller result or store it elsewhere and return a reference`,
      );
    }
    return bytes;
  }

  /**
   * Commits; "database is locked" (thrown by SQLite under multi-process load) counts as a conflict.
   * `stamped` is given the versionstamp of what it wrote, where the store tells it.
   */
  async #commit(op: KvAtomicLike, stamped?: (versionstamp: string) => void): Promise<boolean> {
    try {
      const result = await op.commit();
      if (result.versionstamp !== undefined) stamped?.(result.versionstamp);
      return result.ok;
    } catch (error) {
      if (isLocked(error)) return false;
      throw error;
    }
  }

  /**
   * Commits the draft of a transition of invocation `id`: on its own (`alone`), in a group commit,
   * or on a ride (see kv/_ride.ts). A claim with a seat offers its draft to the ends that free its
   * slot, and takes the verdict of the end's commit that took it; taken by none, it commits once
   * its slot is given back (`ready`). An end of an execution of runner `endsFor` (`null`: no end)
   * takes one claim waiting on the ride of its slot into its commit, when the two share no key
   * and fit one operation.
   */
  async #commitStep(
    op: AtomicDraft,
    alone: boolean,
    endsFor: string | null,
    id: string,
    ready: Promise<void> | undefined,
    seat: Seat | undefined,
    stamped: (versionstamp: string) => void,
  ): Promise<boolean> {
    if (seat?.joined === true) {
      const verdict = await seat.offer(op, ready!);
      // Committed with the end: returned once the runner has the slot back (its pick-up counts
      // the slots given back when it ends).
      if (verdict === true) {
        if (seat.versionstamp !== undefined) stamped(seat.versionstamp);
        await ready!.catch(() => {});
      }
      if (verdict !== undefined) return verdict;
    }
    // A claim on no ride (or left by every end) commits once its slot is given back.
    if (ready !== undefined) await ready;
    const ride = endsFor === null ? undefined : this.#rides.get(id);
    const rider = ride?.runnerId === endsFor ? await ride!.board() : undefined;
    const claim = rider?.take();
    if (claim === undefined || !this.#group.fits(op, claim)) {
      rider?.settle(undefined);
      return await (alone ? this.#commitDraft(op, stamped) : this.#group.commit(op, stamped));
    }
    let joint: boolean;
    let jointStamp: string | undefined;
    try {
      joint = await this.#group.commit(
        new AtomicDraft().absorb(op).absorb(claim),
        (stamp) => jointStamp = stamp,
      );
    } catch (error) {
      rider!.fail(error);
      throw error;
    }
    rider!.settle(joint, jointStamp);
    if (jointStamp !== undefined) stamped(jointStamp);
    // Refused: most often the claim's check (another process claimed it first). The end goes on
    // its own as planned, and reads again only if its own check failed.
    return joint || await this.#group.commit(op, stamped);
  }

  /**
   * Commits a draft on its own, not in a group commit: drafts that share a key (the holders
   * version of a call, written by every insertion of its edges) go through the group committer
   * one after another, a round trip each; on their own they go at once.
   */
  #commitDraft(draft: AtomicDraft, stamped?: (versionstamp: string) => void): Promise<boolean> {
    return this.#group.tracked(draft, () => {
      const op = this.#kv.atomic();
      draft.applyTo(op);
      return this.#commit(op, (versionstamp) => {
        this.#committedAt.set(draft, versionstamp);
        stamped?.(versionstamp);
      });
    });
  }

  // reads: schema
  checkSchema(): Promise<void> {
    return this.#readSchema(false);
  }

  // Per group — reads: group/<name>; checks: its absence; writes: its limit. (Once per runner
  // start: a commit per group keeps any number of groups within Deno KV's 10 checks.)
  async defineGroups(limits: ReadonlyMap<string, number>): Promise<void> {
    // Refuse before writing anything: a process with one wrong limit stores none of its groups.
    const names = [...limits.keys()];
    const stored = await this.#getEntries(names.map((name) => this.#keys.group(name)));
    stored.forEach((entry, i) => {
      const name = names[i]!;
      if (entry.versionstamp === null) return;
      const limit = Number(decode(entry.value, `the limit of concurrency group ${name}`));
      if (limit !== limits.get(name)) throw groupLimitMismatch(name, limit, limits.get(name)!);
    });
    for (const [name, limit] of limits) {
      const key = this.#keys.group(name);
      for (let attempt = 0;; attempt++) {
        const entry = await this.#reads.get(key);
        if (entry.versionstamp !== null) {
          const stored = Number(decode(entry.value, `the limit of concurrency group ${name}`));
          if (stored !== limit) throw groupLimitMismatch(name, stored, limit);
          break;
        }
        const op = this.#kv.atomic().check({ key, versionstamp: null }).set(key, encode(limit));
        if (await this.#commit(op)) break;
        await backoff(attempt);
      }
    }
  }

  /**
   * The schema check of the entry points that write: `claim` (never creates the key) and
   * `register*` (create it, the first write of an app). It re-reads the key once the last read is
   * `SCHEMA_RECHECK_MS` old on the store's clock, so a process that checked once still notices,
   * within about a second, data that a newer nenc has upgraded since; between re-reads it costs
   * nothing. `checkSchema`, `purgeDue` and `purgeAll` read it every time.
   */
  #ensureSchema(create: boolean): Promise<void> {
    if (
      this.#clock.now() - this.#schemaCheckedAtMs < SCHEMA_RECHECK_MS &&
      (this.#schemaPresent || !create)
    ) {
      return Promise.resolve();
    }
    const pending = this.#schemaRead;
    if (pending !== undefined && (pending.create || !create)) return pending.done;
    const read = { create, done: this.#readSchema(create) };
    this.#schemaRead = read;
    const settled = (): void => {
      if (this.#schemaRead === read) this.#schemaRead = undefined;
    };
    read.done.then(settled, settled);
    return read.done;
  }

  // reads: schema; with `create`, when absent — checks: schema absent; writes: schema
  /** Reads the schema key: refuses a newer version; with `create`, writes it when absent. */
  async #readSchema(create: boolean): Promise<void> {
    const key = this.#keys.schema();
    for (let attempt = 0;; attempt++) {
      const startedMs = this.#clock.now();
      const entry = await this.#reads.get(key);
      if (entry.versionstamp !== null) {
        const version = Number(decode(entry.value, "the schema version"));
        if (version > KV_SCHEMA_VERSION) {
          throw new NencError(
            `Cannot use the KV store of app ${this.appId}: its data has schema version ${version}, newer than this nenc's ${KV_SCHEMA_VERSION}; upgrade nenc`,
          );
        }
        // Data of an older layout is read as it is; the first write stamps this layout on it,
        // so an older nenc stops before it misreads what this one writes (parked invocations,
        // slot states).
        if (version < KV_SCHEMA_VERSION && create) {
          const op = this.#kv.atomic().check(entry).set(key, encode(KV_SCHEMA_VERSION));
          if (!await this.#commit(op)) {
            await backoff(attempt);
            continue;
          }
        }
        this.#schemaCheckedAtMs = startedMs;
        this.#schemaPresent = true;
        return;
      }
      if (!create) {
        this.#schemaCheckedAtMs = startedMs;
        this.#schemaPresent = false;
        return;
      }
      const op = this.#kv.atomic().check({ key, versionstamp: null }).set(
        key,
        encode(KV_SCHEMA_VERSION),
      );
      if (await this.#commit(op)) {
        this.#schemaCheckedAtMs = startedMs;
        this.#schemaPresent = true;
        return;
      }
      await backoff(attempt);
    }
  }

  // --- schedules ---------------------------------------------------------------------------------

  // reads: sched/<name>; checks: sched/<name>; writes: sched/<name> — nothing when the stored
  // definition is the same (upsertSchedule decides): a retry whose earlier try was applied finds
  // its own write so.
  async putSchedule(schedule: Schedule): Promise<Schedule> {
    await this.#ensureSchema(true);
    const key = this.#keys.schedule(schedule.name);
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(key);
      const stored = decodeSchedule(entry, schedule.name);
      const next = upsertSchedule(stored, schedule);
      if (next === stored) return stored;
      const op = new AtomicDraft().check({ key, versionstamp: entry.versionstamp })
        .set(key, encode(next));
      if (await this.#group.commit(op)) return next;
      await backoff(attempt);
    }
  }

  // reads: sched/<name>; checks: sched/<name>; writes: deletes it (its tick claims expire).
  async deleteSchedule(name: string): Promise<boolean> {
    const key = this.#keys.schedule(name);
    for (let attempt = 0;; attempt++) {
      const entry = await this.#reads.get(key);
      if (entry.versionstamp === null) return false;
      if (await this.#commit(this.#kv.atomic().check(entry).delete(key))) return true;
      await backoff(attempt);
    }
  }

  // reads: sched/… (one range read).
  async schedules(): Promise<Schedule[]> {
    const schedules: Schedule[] = [];
    for await (const entry of this.#kv.list({ prefix: this.#keys.schedule() })) {
      schedules.push(decodeSchedule(entry, String(entry.key[entry.key.length - 1]))!);
    }
    return schedules;
  }

  // reads: tick/<name>/<tick>, sched/<name>, and slot/<lane> when the invocation joins a lane;
  // checks: the tick absent, sched/<name>, slot/<lane> (≤ 3); writes: tick/<name>/<tick> (the
  // invocation's id, expireIn = tickClaimMs), sched/<name> (its last tick), and what register()
  // writes for a new invocation (inv/<id> with its first history entry, task/<task>/<id>, its queue or lane
  // entry, the lane's state and token) — no registration or idempotency key.
  async fireTick(
    schedule: Schedule,
    invocation: NewInvocation & { readonly scheduledAtMs: number },
  ): Promise<FiredTick | undefined> {
    await this.#ensureSchema(true);
    const keys = this.#keys;
    const scheduleKey = keys.schedule(schedule.name);
    const tickKey = keys.tick(schedule.name, invocation.scheduledAtMs);
    for (let attempt = 0;; attempt++) {
      const [claim, entry] = await Promise.all([
        this.#reads.get(tickKey),
        this.#reads.get(scheduleKey),
      ]);
      const stored = decodeSchedule(entry, schedule.name);
      if (claim.versionstamp !== null) {
        // Our own claim, committed by an earlier try whose answer was lost: done.
        const record = idOf(claim) === invocation.id
          ? (await this.#read(invocation.id))?.record
          : undefined;
        return record !== undefined && stored !== undefined
          ? { invocation: record, schedule: stored }
          : undefined;
      }
      const next = planTick(stored, schedule, invocation);
      if (next === undefined) return undefined;
      const op = new AtomicDraft()
        .check({ key: tickKey, versionstamp: null })
        .check({ key: scheduleKey, versionstamp: entry.versionstamp })
        .set(tickKey, encode(invocation.id), { expireIn: tickClaimMs(next) })
        .set(scheduleKey, encode(next));
      if (joinsLane(invocation)) {
        const slot = await this.#reads.get(keys.slot(invocation.lane));
        this.#stageLaneJoin(op, invocation.lane, slot, invocation, 1);
      }
      const record = this.#stage(op, invocation);
      if (await this.#group.commit(op)) {
        this.#announceWork();
        return { invocation: record, schedule: next };
      }
      await backoff(attempt);
    }
  }

  // --- inspection --------------------------------------------------------------------------------

  // reads: holder/…, calls/… and waits/… in full (one range read each): the live graphs.
  async graphs(): Promise<LiveGraphs> {
    const calls = new Map<string, { label: string; invocationIds: string[] }>();
    for await (const entry of this.#kv.list({ prefix: this.#keys.every("holder") })) {
      const [callId, invocationId] = entry.key.slice(-2).map(String) as [string, string];
      const call = calls.get(callId) ?? { label: decodeString(entry.value), invocationIds: [] };
      call.invocationIds.push(invocationId);
      calls.set(callId, call);
    }
    const pairs = async (kind: "calls" | "waits"): Promise<[string, string][]> => {
      const found: [string, string][] = [];
      const prefix = this.#keys.every(kind);
      for await (const entry of this.#kv.list({ prefix })) {
        // calls/<call> is the call's edges version, not an edge.
        if (entry.key.length === prefix.length + 2) {
          found.push(entry.key.slice(-2).map(String) as [string, string]);
        }
      }
      return found;
    };
    return {
      calls: {
        calls: [...calls].map(([callId, call]) => ({ callId, ...call })),
        edges: await pairs("calls"),
      },
      waits: await pairs("waits"),
    };
  }
}

/** How many of an invocation's history entries are `hist/<id>/<seq>` keys: none while in its record. */
function historyKeys(stored: StoredInvocation): number {
  return stored.history === undefined ? stored.record.seq : 0;
}

function encode(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function decode(value: unknown, what: string): unknown {
  if (!(value instanceof Uint8Array)) {
    throw new SerializationError(
      `Cannot read ${what}: the stored value is not nenc data (expected bytes)`,
    );
  }
  try {
    return JSON.parse(decoder.decode(value));
  } catch (error) {
    throw new SerializationError(`Cannot read ${what}: the stored bytes are not JSON`, {
      cause: error,
    });
  }
}

function decodeString(value: unknown): string {
  const text = decode(value, "an index entry");
  if (typeof text !== "string") {
    throw new SerializationError("Cannot read an index entry: not a string");
  }
  return text;
}

/**
 * A runner's heartbeat as stored under runner/<id>: its time (epoch ms) and the tasks it defines
 * (a bare number before 0.2).
 */
function decodeHeartbeat(value: unknown): { lastSeenMs: number; taskIds?: readonly string[] } {
  const decoded = decode(value, "a runner heartbeat");
  if (typeof decoded === "object" && decoded !== null) {
    const { lastSeenMs, taskIds } = decoded as { lastSeenMs: unknown; taskIds: unknown };
    return {
      lastSeenMs: Number(lastSeenMs),
      ...(Array.isArray(taskIds) ? { taskIds: taskIds.map(String) } : {}),
    };
  }
  return { lastSeenMs: Number(decoded) };
}

/** The upkeep lease as stored under lease/upkeep: its holder and until when; none: `undefined`. */
function decodeLease(
  entry: KvEntryMaybeLike,
): { readonly runnerId: string; readonly untilMs: number } | undefined {
  if (entry.versionstamp === null) return undefined;
  const lease = decode(entry.value, "the upkeep lease") as
    | { readonly runnerId?: unknown; readonly untilMs?: unknown }
    | null;
  if (
    typeof lease !== "object" || lease === null || typeof lease.runnerId !== "string" ||
    typeof lease.untilMs !== "number"
  ) {
    throw new SerializationError(
      "Cannot read the upkeep lease: the stored value is not a nenc lease",
    );
  }
  return { runnerId: lease.runnerId, untilMs: lease.untilMs };
}

/** A refused cycle as stored under cycle/<invocation>. */
function decodeCycle(value: unknown, invocationId: string): RefusedCycle {
  const cycle = decode(value, `the cycle refused to invocation ${invocationId}`) as {
    readonly callIds?: unknown;
    readonly labels?: unknown;
    readonly atMs?: unknown;
  } | null;
  const strings = (list: unknown): list is string[] =>
    Array.isArray(list) && list.every((item) => typeof item === "string");
  if (
    typeof cycle !== "object" || cycle === null || !strings(cycle.callIds) ||
    !strings(cycle.labels) || typeof cycle.atMs !== "number"
  ) {
    throw new SerializationError(
      `Cannot read the cycle refused to invocation ${invocationId}: the stored value is not a nenc cycle`,
    );
  }
  return { invocationId, callIds: cycle.callIds, labels: cycle.labels, atMs: cycle.atMs };
}

/**
 * A slot key's state as stored under slot/<key>: `{ holders, parked, woken, queued, turn }` (and
 * `starts`, a rate limit key's log), or the holders' ids alone while nothing else is kept (one
 * id, a string, before 0.2).
 */
function decodeSlot(entry: KvEntryMaybeLike): SlotState {
  if (entry.versionstamp === null) return EMPTY_SLOT;
  const value = decode(entry.value, "a slot key");
  const ids = (holders: unknown): holders is string[] =>
    Array.isArray(holders) && holders.every((id) => typeof id === "string");
  if (typeof value === "string") return { ...EMPTY_SLOT, holders: [value] };
  if (ids(value)) return { ...EMPTY_SLOT, holders: value };
  const state = value as Partial<Record<keyof SlotState, unknown>> | null;
  const count = (n: unknown): n is number | undefined => n === undefined || typeof n === "number";
  if (
    typeof state !== "object" || state === null || !ids(state.holders) ||
    !count(state.parked) || !count(state.woken) || !count(state.queued) ||
    !(state.turn === undefined || state.turn === null || isTurn(state.turn)) ||
    !(state.starts === undefined ||
      Array.isArray(state.starts) && state.starts.every((ms) => typeof ms === "number"))
  ) {
    throw new SerializationError("Cannot read a slot key: not a nenc slot state");
  }
  return {
    holders: state.holders,
    parked: state.parked ?? 0,
    woken: state.woken ?? 0,
    queued: state.queued ?? 0,
    turn: state.turn ?? null,
    ...(state.starts !== undefined ? { starts: state.starts as number[] } : {}),
  };
}

/**
 * The stored value of a slot key's state: the holders' ids alone when that is all there is,
 * `undefined` for an empty one (the key goes).
 */
function encodeSlot(state: SlotState): Uint8Array | undefined {
  if (
    state.parked === 0 && state.woken === 0 && state.queued === 0 && state.turn === null &&
    !state.starts?.length
  ) {
    return state.holders.length === 0 ? undefined : encode(state.holders);
  }
  return encode(state);
}

function isTurn(turn: unknown): turn is LaneTurn {
  const { atMs, id } = turn as Partial<LaneTurn>;
  return typeof turn === "object" && typeof atMs === "number" && typeof id === "string";
}

/**
 * Where a fairness lane's token is in the ready queue: at its turn, where an invocation of the
 * turn's id would stand (`~` sorts after every ULID character), then named by the lane.
 */
function laneTokenPosition(turn: LaneTurn, lane: string): string {
  return `${priorityPrefix(turn.priority ?? 0)}${timePosition(turn.atMs, `${turn.id}~${lane}`)}`;
}

/** The invocation id an index entry holds, or `undefined` when the key is absent. */
function idOf(entry: KvEntryMaybeLike): string | undefined {
  return entry.versionstamp === null ? undefined : decodeString(entry.value);
}

/**
 * A schedule as stored under sched/<name> (see `Schedule`), or `undefined` when the key is absent.
 */
function decodeSchedule(entry: KvEntryMaybeLike, name: string): Schedule | undefined {
  if (entry.versionstamp === null) return undefined;
  const value = decode(entry.value, `schedule ${name}`) as Partial<Schedule> | null;
  if (
    typeof value !== "object" || value === null || value.name !== name ||
    typeof value.cron !== "string" || typeof value.taskId !== "string" ||
    typeof value.sinceMs !== "number"
  ) {
    throw new SerializationError(
      `Cannot read schedule ${name}: the stored value is not a nenc schedule`,
    );
  }
  return value as Schedule;
}

/**
 * An idempotency key as stored under idem/<task>/<key>: the invocation it names and its deadline
 * (epoch ms); `undefined` when the key is absent.
 */
function decodeIdempotency(
  entry: KvEntryMaybeLike,
): { readonly id: string; readonly expiresAtMs: number } | undefined {
  if (entry.versionstamp === null) return undefined;
  const value = decode(entry.value, "an idempotency key") as {
    id?: unknown;
    expiresAtMs?: unknown;
  };
  if (
    typeof value !== "object" || value === null || typeof value.id !== "string" ||
    typeof value.expiresAtMs !== "number"
  ) {
    throw new SerializationError("Cannot read an idempotency key: not a nenc idempotency key");
  }
  return { id: value.id, expiresAtMs: value.expiresAtMs };
}

/** A claim's read of a call edge and the callee's region, made ahead (see #callReadAhead). */
interface CallReadAhead {
  /** The call ids read for. */
  readonly caller: string;
  readonly callee: string;
  readonly read: Promise<{ existing: KvEntryMaybeLike; region: CallRegion }>;
}

/** An invocation others wait on that can run, as {@linkcode KvStore.blocking} read it. */
interface BlockingCandidate {
  readonly id: string;
  /** Its record's entry as read: a claim's first attempt plans from it (see #apply's `first`). */
  readonly entry: KvEntryMaybeLike;
  readonly stored: StoredInvocation;
  /** Its oldest waiter and that one's record, read with it (the caller, mostly). */
  readonly waiter?: { readonly id: string; readonly read: Promise<KvEntryMaybeLike> };
  /** The call edge waiter → it and its region, read with it when known here. */
  readonly call?: CallReadAhead | undefined;
}

/**
 * A queue entry's value: the invocation, and its first slot key and rate limit key to order
 * claims by.
 */
interface QueueValue {
  readonly id: string;
  readonly key: string | null;
  /** The task (entries written before 0.2 lack it). */
  readonly task?: string;
  /** Its priority (absent: 0): a due delayed entry is claimed where it would stand in `q`. */
  readonly priority?: number;
  /** Its rate limit key, if any. */
  readonly rate?: string;
  /**
   * Its caller (`parentId`), if any: a pick-up reads the caller's record with the invocation's
   * (entries written before lack it: the caller is read after).
   */
  readonly parent?: string;
}

/**
 * Whether a candidate's claim may go in the commit of an end (see kv/_ride.ts), as its queue entry
 * tells: no slot key, no rate limit key, no caller (a call edge to plan).
 */
function mayRide(candidate: QueueValue): boolean {
  return candidate.key === null && candidate.rate === undefined && candidate.parent === undefined;
}

function queueValue(record: InvocationRecord): QueueValue {
  return {
    id: record.id,
    key: slotsOf(record)[0]?.key ?? null,
    task: record.taskId,
    ...(record.priority ? { priority: record.priority } : {}),
    ...(record.rate !== undefined ? { rate: record.rate.key } : {}),
    ...(record.parentId !== null ? { parent: record.parentId } : {}),
  };
}

function decodeQueueValue(value: unknown): QueueValue {
  const decoded = decodeQueueItem(value);
  if ("lane" in decoded) {
    throw new SerializationError("Cannot read a queue entry: a lane token, not an invocation");
  }
  return decoded;
}

/** An entry of the ready queue: an invocation, or the token of a fairness lane. */
function decodeQueueItem(value: unknown): QueueValue | { readonly lane: string } {
  const decoded = decode(value, "a queue entry") as Partial<QueueValue> & { lane?: unknown };
  if (typeof decoded === "object" && decoded !== null && typeof decoded.lane === "string") {
    return { lane: decoded.lane };
  }
  if (typeof decoded !== "object" || decoded === null || typeof decoded.id !== "string") {
    throw new SerializationError("Cannot read a queue entry: not a nenc queue entry");
  }
  return decoded as QueueValue;
}

/**
 * `entries` with their first page asked for now, so that the read goes together with others; read
 * later, they come in order as usual (a failed read fails then).
 */
function started(
  entries: AsyncIterable<KvEntryLike>,
): AsyncIterable<KvEntryLike> & { readonly any: Promise<boolean> } {
  const iterator = entries[Symbol.asyncIterator]();
  const first = iterator.next();
  first.catch(() => {}); // seen by whoever reads it; an abandoned read must not crash the process
  return {
    /** Whether there is any entry. */
    any: first.then((next) => !next.done, () => true),
    async *[Symbol.asyncIterator]() {
      for (let next = await first; !next.done; next = await iterator.next()) yield next.value;
    },
  };
}

/**
 * The entries of the ready queue with the due delayed ones merged in where each would stand (by
 * priority, then time, then id): the delayed queue is ordered by time alone, for its range reads.
 */
async function* withDue(
  due: AsyncIterable<KvEntryLike>,
  ready: AsyncIterable<KvEntryLike>,
): AsyncIterable<{ readonly value: unknown }> {
  const merged: { readonly position: string; readonly value: unknown }[] = [];
  for await (const entry of due) {
    const { priority = 0 } = decodeQueueValue(entry.value);
    const position = `${priorityPrefix(priority)}${String(entry.key[entry.key.length - 1])}`;
    merged.push({ position, value: entry.value });
  }
  merged.sort((a, b) => a.position < b.position ? -1 : a.position > b.position ? 1 : 0);
  let next = 0;
  for await (const entry of ready) {
    const position = String(entry.key[entry.key.length - 1]);
    while (next < merged.length && merged[next]!.position < position) yield merged[next++]!;
    yield entry;
  }
  yield* merged.slice(next);
}

/** Whether a new invocation waits in its lane: it has one, and is not delayed. */
function joinsLane(invocation: NewInvocation): invocation is NewInvocation & { lane: string } {
  return Boolean(invocation.lane) &&
    (invocation.availableAtMs === undefined || invocation.availableAtMs <= invocation.nowMs);
}

/** Whether a stored invocation may be picked up now: available status, back-off passed. */
function isAvailable(stored: StoredInvocation, nowMs: number): boolean {
  return AVAILABLE_FOR_RUN_STATUSES.has(stored.record.status) &&
    !(stored.queue?.delayed && stored.record.availableAtMs > nowMs);
}

/** The time of a delayed queue entry's key: a position is a ULID's 10 time characters, then an id. */
function positionTime(key: KvKey): number {
  return decodeTime(`${String(key[key.length - 1]).slice(0, 10)}${"0".repeat(16)}`);
}

/** A position ordered by time, then id. */
function timePosition(ms: number, id: string): string {
  return `${encodeTime(Math.max(0, Math.floor(ms)), 10)}${id}`;
}

/**
 * A position in the ready queue, a lane or a parked list: by priority, then time, then id. At
 * priority 0 it is the time position itself (so entries written before priorities sort as they
 * did); a higher priority gets a prefix that sorts before every time ("!", then 1,000 less the
 * priority in 4 digits), a lower one a prefix that sorts after them ("~", then minus the priority).
 */
function queuePosition(
  record: Pick<InvocationRecord, "priority" | "availableAtMs" | "id">,
): string {
  return `${priorityPrefix(record.priority ?? 0)}${timePosition(record.availableAtMs, record.id)}`;
}

function priorityPrefix(priority: number): string {
  if (priority === 0) return "";
  return priority > 0
    ? `!${String(PRIORITY_LIMIT - priority).padStart(4, "0")}`
    : `~${String(-priority).padStart(4, "0")}`;
}

const readyPosition = timePosition;

/** Refuses a wait of an invocation on itself (an edge it could never see released). */
function checkWaits(waiterId: string, waitedIds: readonly string[]): void {
  if (waitedIds.includes(waiterId)) {
    throw new RangeError(`Cannot wait: invocation ${waiterId} cannot wait on itself`);
  }
}

/** `items` in chunks of at most `size`, in order. */
const purgePosition = timePosition;

/**
 * Invocations of one lane registered per commit by registerMany (each about 5 mutations), and
 * the bytes of one such commit: within Deno KV's limits per atomic operation.
 */
const LANE_JOIN_CHUNK = 50;
const LANE_JOIN_BYTES = 256 * 1024;
/**
 * How long a rate limit key's log outlives the last window it counts in: a process whose clock
 * runs behind by less still finds it.
 */
const RATE_LOG_GRACE_MS = 60_000;
/** Wake markers of each kind one pick-up reads, and invocations it wakes per marked key at most. */
const WAKE_KEYS = 16;
const WAKES_PER_KEY = 100;
/** Queue entries of tasks a runner does not run that one claim reads past. */
const SKIP_LIMIT = 1_000;
/** Awaited invocations read per round of the final poller, and the shortest round. */
const POLL_SLICE = 100;
/**
 * Earlier history entries a final transition re-sets with `expireIn` in its own commit; a longer
 * history (hundreds of re-routes) is re-set in commits of its own after it.
 */
const INLINE_EXPIRY = 100;
/**
 * History entries an invocation keeps in its record's value (see StoredInvocation.history): a
 * flat run has 4 (registered, pending, running, its end), a parent that waits twice about 10.
 */
const HISTORY_IN_RECORD = 16;
/**
 * Wait edges added per commit: 4 keys each (the edge both ways, its ready entry, the waited end's
 * marker), so a chunk and the change it goes with stay well under denokv's 1000 mutations.
 */
const WAIT_EDGES_PER_COMMIT = 100;
/**
 * Keys of wait edges a final commit deletes itself (3 per edge): more go in commits of their own
 * right after it (a parent of more than 100 children, say), keeping the commit well under denokv's
 * 1000 mutations.
 */
const RELEASE_INLINE_KEYS = 300;
/** The most entries one batch of a KV list returns (Deno KV clamps larger batch sizes to it). */
const LIST_BATCH = 500;
/** Keys of a dead runner's executions read per page by recovery: one list batch. */
const RECOVERY_PAGE = LIST_BATCH;
/** Mutations per housekeeping commit (expiry, deletes): under denokv's 1000 per operation. */
const CHUNK_MUTATIONS = 500;
/**
 * Removals of one call's holds that go together at most (see removeCall): with hver/<call>, well
 * within one commit's CHUNK_MUTATIONS.
 */
const JOINED_REMOVALS = 100;
/** Checks per atomic commit: denokv's limit (the Deno CLI allows 100). */
const MAX_CHECKS = 10;
/**
 * The largest region of a one-walk call insertion: its commit checks the edge and the edges
 * version of every call of the region.
 */
const REGION_CHECKS = MAX_CHECKS - 1;
/** The lists of one level of a call region's walk in flight at once. */
const REGION_LISTS = 50;
/** The call ids of invocations registered here that a process keeps (see registeredCalls). */
const CALLS_KNOWN = 10_000;
/** How long a purge entry outlives its invocation's keys, for the sweep to delete any left. */
const PURGE_ENTRY_GRACE_MS = 24 * 3_600_000;
const MIN_POLL_ROUND_MS = 5;
/**
 * The finals poller's read budget once it has backed off all the way (`POLL_BACKED_OFF` rounds
 * found no end made elsewhere): a sweep takes at least this long per invocation it reads (1,000
 * records a second at most, however many are awaited). Without it a process awaiting thousands
 * of queued results that it runs itself read each of them every half second (3 reads per
 * invocation of a one-slot runner's work). While ends made elsewhere keep coming (a caller
 * beside runner processes) the poller stays quick: capped there, 2,000 results awaited from 4
 * runner processes came at the budget's pace, 930 a second.
 */
const POLL_MS_PER_AWAITED = 1;
/** Rounds without an end made elsewhere after which the poller is backed off all the way. */
const POLL_BACKED_OFF = 7;
/** The finals poller reads the awaited invocations held here every this many sweeps. */
const OWNED_SWEEPS = 10;
/** How old (store clock) the last schema read may be before `claim` or `register` reads again. */
const SCHEMA_RECHECK_MS = 1_000;

/** Poll delays while nothing changes: 5 ms, doubling up to 500 ms. */
function pollDelayMs(polls: number): number {
  return Math.min(500, 5 * 2 ** Math.min(polls, 7));
}
