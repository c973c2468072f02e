/**
 * Batching of KV traffic inside one process: group commit (transitions that touch disjoint keys
 * share one `kv.atomic()`) and read coalescing (point reads issued together share one `getMany`).
 *
 * A KV file commits one transaction at a time, and a remote KV pays a round trip per commit, so
 * under load commits — not reads — bound nenc's throughput. The {@linkcode GroupCommitter} keeps
 * one commit in flight per local store and gathers the transitions that arrive meanwhile into the
 * next (a batch that is full, by checks, mutations or bytes, goes at once beside it); over the
 * denokv protocol, whose commits hold 10 checks and cost a round trip, several go at once.
 *
 * Why merging is safe: each transition is a draft of checks and mutations built from its own
 * reads. A batch only takes drafts whose key sets (checked, set or deleted) are pairwise disjoint,
 * so within the batch no draft's mutation can touch a key another draft checks or writes: the
 * merged commit has the same effect as committing the drafts one after another with nothing in
 * between — an interleaving that could have happened without batching. If any check of the batch
 * fails, nothing was written: one read of the checked keys fails the drafts another writer made
 * stale (their callers re-read and re-plan as they always do), and the rest commit again together
 * before any newcomer; when that read finds none stale, or a commit throws, each draft commits
 * on its own.
 *
 * @module
 */

import type { KvAtomicLike, KvEntryMaybeLike, KvKey, KvLike } from "./kv_like.ts";

/**
 * The checks of one atomic operation over the denokv protocol (KV Connect: Deno Deploy, denokv)
 * and in `@deno/kv`'s own SQLite store (Bun, Node).
 */
const PROTOCOL_MAX_CHECKS = 10;
/**
 * The checks of one atomic operation in the Deno CLI's own store (a file, `:memory:`). A committer
 * starts with it; a batch of more than PROTOCOL_MAX_CHECKS that the store refuses teaches it the
 * protocol's limit, for good (see GroupCommitter).
 */
const LOCAL_MAX_CHECKS = 100;
/** Well under denokv's 1000 mutations and 800 KiB per atomic operation. */
const MAX_MUTATIONS = 400;
const MAX_BYTES = 400 * 1024;
/** Deno KV's `getMany` reads at most this many keys. */
const GET_MANY_LIMIT = 10;
/** Tries of one operation while the database stays locked; then the error goes to the caller. */
const MAX_LOCKED_ATTEMPTS = 10;

/**
 * Commits in flight at once per store. On a local store, one, unless batches are full: a file
 * commits one transaction at a time anyway, and what waits meanwhile joins the next batch
 * (measured here: 2 or 4 in flight gave smaller batches and fewer invocations per second on a
 * file). Over the denokv protocol, up to this many: with 10 checks per commit, a pick-up of 32 is
 * 4 commits, one round trip together rather than four in turn.
 */
const MAX_IN_FLIGHT = 8;

type Mutation =
  | {
    readonly type: "set";
    readonly key: KvKey;
    readonly value: Uint8Array;
    readonly expireIn?: number;
  }
  | { readonly type: "delete"; readonly key: KvKey };

/** The checks and mutations of one transition, committed by {@linkcode GroupCommitter.commit}. */
export class AtomicDraft {
  readonly checks: { key: KvKey; versionstamp: string | null }[] = [];
  readonly mutations: Mutation[] = [];
  /**
   * Every key the draft checks or changes, as strings, each with how (see `clash`): drafts that
   * share a key are not merged, nor in flight together, unless both only check it at the same
   * versionstamp (the calls of one caller each check its cancel request absent).
   */
  readonly keys: Map<string, string> = new Map();
  /**
   * Keys set blind with a constant value, only so that their versionstamps move (see
   * {@linkcode AtomicDraft.signal}): not in `keys`, set once per operation.
   */
  readonly signals: Map<string, { readonly key: KvKey; readonly value: Uint8Array }> = new Map();
  bytes = 0;

  /** Commits only if `key` still has this versionstamp (`null`: absent). */
  check(check: { key: KvKey; versionstamp: string | null }): this {
    this.checks.push(check);
    this.#touch(check.key, `checked at ${check.versionstamp}`);
    return this;
  }

  /** Sets a key to nenc's bytes; `expireIn` in ms. */
  set(key: KvKey, value: Uint8Array, options?: { expireIn?: number }): this {
    const expireIn = options?.expireIn;
    this.mutations.push(
      expireIn === undefined ? { type: "set", key, value } : { type: "set", key, value, expireIn },
    );
    this.bytes += value.byteLength;
    this.#touch(key, WRITTEN);
    return this;
  }

  /** Deletes a key. */
  delete(key: KvKey): this {
    this.mutations.push({ type: "delete", key });
    this.#touch(key, WRITTEN);
    return this;
  }

  /**
   * Sets `key` to `value` (always the same for a key) so its versionstamp moves: a signal to
   * readers that compare versionstamps, which no draft checks. Drafts that signal the same key
   * still merge (one set serves them all), and none waits for another's in flight.
   */
  signal(key: KvKey, value: Uint8Array): this {
    const text = JSON.stringify(key);
    if (!this.signals.has(text)) {
      this.signals.set(text, { key, value });
      this.bytes += text.length + value.byteLength;
    }
    return this;
  }

  /** Takes `other`'s checks, mutations and signals in: one operation commits both, or neither. */
  absorb(other: AtomicDraft): this {
    this.checks.push(...other.checks);
    this.mutations.push(...other.mutations);
    for (const [text, how] of other.keys) {
      if (this.keys.get(text) !== WRITTEN) this.keys.set(text, how);
    }
    for (const [text, signal] of other.signals) this.signals.set(text, signal);
    this.bytes += other.bytes;
    return this;
  }

  /**
   * Adds this draft to an atomic operation; the signals and the checks not in `applied` yet (then
   * added): drafts merged may check one key alike.
   */
  applyTo(op: KvAtomicLike, applied: Set<string> = new Set()): void {
    for (const [text, { key, value }] of this.signals) {
      if (applied.has(text)) continue;
      applied.add(text);
      op.set(key, value);
    }
    for (const check of this.checks) {
      const text = `${JSON.stringify(check.key)} ${check.versionstamp}`;
      if (applied.has(text)) continue;
      applied.add(text);
      op.check(check);
    }
    for (const mutation of this.mutations) {
      if (mutation.type === "delete") op.delete(mutation.key);
      else if (mutation.expireIn === undefined) op.set(mutation.key, mutation.value);
      else op.set(mutation.key, mutation.value, { expireIn: mutation.expireIn });
    }
  }

  #touch(key: KvKey, how: string): void {
    const text = JSON.stringify(key);
    if (this.keys.get(text) !== WRITTEN) this.keys.set(text, how);
    this.bytes += text.length;
  }
}

/** How a draft touches a key it sets or deletes (see AtomicDraft.keys). */
const WRITTEN = "written";

/**
 * Whether two drafts that touch one key, as `a` and `b` say, must not be merged or in flight
 * together: unless both only check it at one versionstamp, one's commit may change what the
 * other's saw.
 */
function clash(a: string, b: string): boolean {
  return a === WRITTEN || a !== b;
}

interface Waiting {
  readonly draft: AtomicDraft;
  /** Given the versionstamp of the commit that applied the draft, where the store tells it. */
  readonly stamped: ((versionstamp: string) => void) | undefined;
  readonly resolve: (ok: boolean) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Commits drafts, merging those that wait at the same time into one atomic operation.
 *
 * A committer does not know its store's limit of checks per operation: it merges up to the Deno
 * CLI's 100 until a store refuses a batch of more than 10 (the denokv protocol's limit), then up
 * to 10 for good; the refused batch's drafts are merged again within it, before anything that
 * arrived since (a commit that threw was not applied, or its drafts recognise their own write).
 */
export class GroupCommitter {
  readonly #kv: KvLike;
  #waiting: Waiting[] = [];
  #inFlight = 0;
  /**
   * The keys of the drafts in flight, each with how and by how many batches: a draft touching one
   * so that they clash waits for them.
   */
  readonly #busy = new Map<string, { readonly how: string; batches: number }>();
  #maxChecks = LOCAL_MAX_CHECKS;
  /** A pump is due at the end of this turn. */
  #scheduled = false;
  /** Drafts with signals handed in whose commit has not settled. */
  #signaling = 0;
  /** Moves whenever a draft with signals is handed in, and when its commit settles. */
  #signalEpoch = 0;

  /** Commits through `kv`. */
  constructor(kv: KvLike) {
    this.#kv = kv;
  }

  /**
   * Whether the store takes many checks per commit (a local one): there a check more in a draft
   * costs nothing; over the protocol it takes room that another draft's check would have had.
   */
  get roomy(): boolean {
    return this.#maxChecks > PROTOCOL_MAX_CHECKS;
  }

  /**
   * A mark of this committer's signals now: `undefined` while a draft with signals is under way.
   * See {@linkcode GroupCommitter.signaledSince}.
   */
  signalMark(): number | undefined {
    return this.#signaling === 0 ? this.#signalEpoch : undefined;
  }

  /**
   * Whether a draft with signals may have committed since `mark` was taken: one was handed in or
   * settled since, or one was under way then. A read made after a mark, while this says no, saw
   * every signal this committer ever committed.
   */
  signaledSince(mark: number | undefined): boolean {
    return mark === undefined || mark !== this.#signalEpoch;
  }

  /**
   * Counts `draft`'s commit (made by `commit`, here or elsewhere) for the signal marks, when it
   * has signals.
   */
  tracked(draft: AtomicDraft, commit: () => Promise<boolean>): Promise<boolean> {
    if (draft.signals.size === 0) return commit();
    this.#signaling++;
    this.#signalEpoch++;
    return commit().finally(() => {
      this.#signaling--;
      this.#signalEpoch++;
    });
  }

  /**
   * Whether `b` may join `a` in one draft: no key that they touch so that they clash (see
   * `clash`), and together within the mutations and bytes of one operation and within the
   * protocol's checks — a draft alone in its batch is not split again, and a store over the
   * protocol may not have refused a larger batch yet.
   */
  fits(a: AtomicDraft, b: AtomicDraft): boolean {
    for (const [key, how] of b.keys) {
      const mine = a.keys.get(key);
      if (mine !== undefined && clash(mine, how)) return false;
    }
    return a.checks.length + b.checks.length <= PROTOCOL_MAX_CHECKS &&
      a.mutations.length + b.mutations.length <= MAX_MUTATIONS &&
      a.bytes + b.bytes <= MAX_BYTES;
  }

  /**
   * Commits `draft`, alone or with others: `false` when one of its own checks failed. `stamped` is
   * given the versionstamp of the commit that applied it (every key it sets has it), where the
   * store tells it.
   */
  commit(draft: AtomicDraft, stamped?: (versionstamp: string) => void): Promise<boolean> {
    return this.tracked(draft, () => this.#enqueue(draft, stamped));
  }

  #enqueue(
    draft: AtomicDraft,
    stamped: ((versionstamp: string) => void) | undefined,
  ): Promise<boolean> {
    return new Promise((resolve, reject) => {
      // The drafts of this turn go together: transitions that one read or commit resolved all
      // draft theirs in the same turn. Over the protocol, those of the turns until the next
      // timer as well: the reads of a pick-up or of the ends of a batch come back a few turns
      // apart, and a round trip is long beside a timer's turn.
      this.#waiting.push({ draft, stamped, resolve, reject });
      if (this.#scheduled) return;
      this.#scheduled = true;
      const pump = (): void => {
        this.#scheduled = false;
        this.#pump();
      };
      if (this.#maxChecks > PROTOCOL_MAX_CHECKS) queueMicrotask(pump);
      else setTimeout(pump, 0);
    });
  }

  #pump(): void {
    // A store of 100 checks per commit (a local one) takes one batch at a time, and a batch that
    // is not full waits for it, gathering what arrives meanwhile; one of 10 (over the network)
    // takes them as they come: there a batch is small anyway, and a round trip long.
    const batches = this.#maxChecks > PROTOCOL_MAX_CHECKS ? 1 : MAX_IN_FLIGHT;
    while (this.#inFlight < MAX_IN_FLIGHT && this.#waiting.length > 0) {
      const { batch, left, full } = this.#nextBatch();
      if (batch.length === 0 || (this.#inFlight >= batches && !full)) return;
      this.#waiting = left;
      this.#inFlight++;
      const keys = new Map(batch.flatMap(({ draft }) => [...draft.keys]));
      for (const [key, how] of keys) {
        const busy = this.#busy.get(key);
        if (busy === undefined) this.#busy.set(key, { how, batches: 1 });
        else busy.batches++;
      }
      // Whatever goes wrong, every draft of the batch settles (settling twice changes nothing).
      void this.#run(batch).catch((error) => batch.forEach(({ reject }) => reject(error))).finally(
        () => {
          for (const key of keys.keys()) {
            if (--this.#busy.get(key)!.batches === 0) this.#busy.delete(key);
          }
          this.#inFlight--;
          this.#pump();
        },
      );
    }
  }

  async #run(batch: readonly Waiting[]): Promise<void> {
    if (batch.length === 1) return this.#commitAlone(batch[0]!);
    let ok: boolean | undefined;
    let versionstamp: string | undefined;
    try {
      ({ ok, versionstamp } = await this.#commitDrafts(batch.map(({ draft }) => draft)));
    } catch {
      const checks = batch.reduce((sum, { draft }) => sum + draft.checks.length, 0);
      if (checks > PROTOCOL_MAX_CHECKS && this.#maxChecks > PROTOCOL_MAX_CHECKS) {
        // Refused over the store's limit (or a storage error — then 10 is merely cautious): the
        // drafts go again, first, within the protocol's limit.
        this.#maxChecks = PROTOCOL_MAX_CHECKS;
        this.#waiting.unshift(...batch);
        return;
      }
      // Too big together, or a storage error: each draft on its own says which.
    }
    if (ok) return batch.forEach((waiting) => applied(waiting, versionstamp));
    // A check failed: one read of the checked keys finds the drafts another writer made stale;
    // they fail, and the others are committed again together, before anything that arrived
    // meanwhile: each round fails at least one draft, so a valid draft is not held back by a
    // stream of stale arrivals. Under contention between processes this costs a read, not a
    // commit per draft. When none is stale (an error, a failed read, or a race since), each
    // commits alone.
    let stale: boolean[] = [];
    if (ok === false) {
      try {
        stale = await this.#stale(batch);
      } catch {
        // The read failed: each draft on its own says which failed.
      }
    }
    if (!stale.some(Boolean)) {
      await Promise.all(batch.map((waiting) => this.#commitAlone(waiting)));
      return;
    }
    batch.forEach((waiting, i) => stale[i] && waiting.resolve(false));
    const rest = batch.filter((_, i) => !stale[i]);
    if (rest.length > 0) await this.#run(rest);
  }

  /**
   * Commits the drafts as one operation: `false` when a check failed. "database is locked", which
   * SQLite throws when processes share a file, is not a verdict: the same operation is tried
   * again after a jittered pause (a commit that threw was never applied), whole, so a batch is not
   * split into more commits exactly when the file is busiest.
   */
  async #commitDrafts(
    drafts: readonly AtomicDraft[],
  ): Promise<{ readonly ok: boolean; readonly versionstamp?: string | undefined }> {
    for (let attempt = 0;; attempt++) {
      const op = this.#kv.atomic();
      const applied = new Set<string>();
      for (const draft of drafts) draft.applyTo(op, applied);
      try {
        return await op.commit();
      } catch (error) {
        if (!isLocked(error) || attempt + 1 >= MAX_LOCKED_ATTEMPTS) throw error;
      }
      await backoff(attempt);
    }
  }

  /**
   * For each draft of `batch`, whether one of its checks no longer holds. The keys are read in
   * `getMany` calls of at most 10 (Deno KV refuses more), together: not one snapshot, and none is
   * needed — a draft found stale is re-read and re-planned by its caller, as after any lost race,
   * and one found valid is committed again with all its checks, which that commit verifies.
   */
  async #stale(batch: readonly Waiting[]): Promise<boolean[]> {
    const checks = batch.flatMap(({ draft }) => draft.checks);
    const chunks = chunked(checks.map(({ key }) => key), GET_MANY_LIMIT);
    const entries = (await Promise.all(chunks.map((keys) => this.#kv.getMany(keys)))).flat();
    const changed = new Set(
      checks.flatMap((check, i) =>
        entries[i]!.versionstamp === check.versionstamp ? [] : [JSON.stringify(check.key)]
      ),
    );
    return batch.map(({ draft }) =>
      draft.checks.some(({ key }) => changed.has(JSON.stringify(key)))
    );
  }

  /**
   * The oldest waiting drafts that fit in one operation with pairwise disjoint keys, none of them
   * in flight, and whether the batch is full: a draft that waits was left out for want of room.
   */
  #nextBatch(): { batch: Waiting[]; left: Waiting[]; full: boolean } {
    const batch: Waiting[] = [];
    const left: Waiting[] = [];
    const keys = new Map<string, string>();
    let checks = 0;
    let mutations = 0;
    let bytes = 0;
    let full = false;
    for (const waiting of this.#waiting) {
      const { draft } = waiting;
      const clashes = (key: string, how: string): boolean => {
        const batched = keys.get(key);
        const busy = this.#busy.get(key);
        return (batched !== undefined && clash(batched, how)) ||
          (busy !== undefined && clash(busy.how, how));
      };
      if ([...draft.keys].some(([key, how]) => clashes(key, how))) {
        left.push(waiting);
        continue;
      }
      const fits = batch.length === 0 || (
        checks + draft.checks.length <= this.#maxChecks &&
        mutations + draft.mutations.length <= MAX_MUTATIONS &&
        bytes + draft.bytes <= MAX_BYTES
      );
      if (!fits) {
        full = true;
        left.push(waiting);
        continue;
      }
      batch.push(waiting);
      checks += draft.checks.length;
      mutations += draft.mutations.length;
      bytes += draft.bytes;
      for (const [key, how] of draft.keys) keys.set(key, how);
    }
    return { batch, left, full };
  }

  async #commitAlone(waiting: Waiting): Promise<void> {
    const { draft, resolve, reject } = waiting;
    try {
      const { ok, versionstamp } = await this.#commitDrafts([draft]);
      if (ok) applied(waiting, versionstamp);
      else resolve(false);
    } catch (error) {
      // A file still locked after every try is a conflict, as it always was for the store's
      // callers: they re-read and try again. Only other errors reach them.
      if (isLocked(error)) resolve(false);
      else reject(error);
    }
  }
}

/** A draft's commit applied: its versionstamp to `stamped` (when known), then `true`. */
function applied(waiting: Waiting, versionstamp: string | undefined): void {
  if (versionstamp !== undefined) waiting.stamped?.(versionstamp);
  waiting.resolve(true);
}

interface Read {
  readonly key: KvKey;
  readonly resolve: (entry: KvEntryMaybeLike) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Point reads issued in the same turn of the event loop share `getMany` calls of up to 10 keys:
 * when a group commit resolves, the transitions it resolves all read next, and one read serves
 * them. Each read is still a fresh read of its key (a `getMany` is one consistent snapshot), so
 * callers see nothing older than a `get` of their own would have returned.
 */
export class ReadCoalescer {
  readonly #kv: KvLike;
  #reads: Read[] = [];

  /** Reads through `kv`. */
  constructor(kv: KvLike) {
    this.#kv = kv;
  }

  /** Reads one key, together with the other reads of this turn. */
  get(key: KvKey): Promise<KvEntryMaybeLike> {
    return new Promise((resolve, reject) => {
      if (this.#reads.push({ key, resolve, reject }) === 1) queueMicrotask(() => this.#flush());
    });
  }

  #flush(): void {
    const reads = this.#reads;
    this.#reads = [];
    for (const chunk of chunked(reads, GET_MANY_LIMIT)) {
      this.#kv.getMany(chunk.map(({ key }) => key)).then(
        (entries) => chunk.forEach((read, i) => read.resolve(entries[i]!)),
        (error) => chunk.forEach((read) => read.reject(error)),
      );
    }
  }
}

/** `items` in runs of at most `size`, in order. */
export function chunked<T>(items: readonly T[], size: number): T[][] {
  const chunks: T[][] = [];
  for (let start = 0; start < items.length; start += size) {
    chunks.push(items.slice(start, start + size));
  }
  return chunks;
}

/** Whether `error` is SQLite's "database is locked", thrown when processes share a file. */
export function isLocked(error: unknown): boolean {
  return error instanceof Error && /database is locked/i.test(error.message);
}

/** Jittered exponential back-off between conflicting or locked commits. */
export function backoff(attempt: number): Promise<void> {
  const ms = Math.min(100, 2 ** attempt) * Math.random();
  return new Promise((resolve) => setTimeout(resolve, ms));
}
