/**
 * Every key nenc writes to Deno KV, in one place. All keys live under `["nenc", appId]`; ids
 * (ULIDs, call ids, runner ids) are strings, so keys sort by creation time where it matters.
 *
 * @module
 */

import type { KvKey } from "./kv_like.ts";

/**
 * The key shapes of one app.
 *
 * @example Reading what an app wrote to Deno KV
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { Keys } from "@nenc/nenc/kv";
 *
 * const kv = await Deno.openKv(":memory:");
 * const app = new Nenc({ appId: "shop", kv });
 * const invocation = await app.task("ping", () => "pong").call();
 * const keys = new Keys("shop");
 * console.log(keys.invocation(invocation.id).slice(0, 3)); // ["nenc", "shop", "inv"]
 * console.log((await kv.get(keys.invocation(invocation.id))).versionstamp !== null); // true
 * kv.close();
 * ```
 */
export class Keys {
  /** The prefix of every key of the app. */
  readonly app: KvKey;

  /** Keys under `["nenc", appId]`. */
  constructor(appId: string) {
    this.app = ["nenc", appId];
  }

  /** The schema version of the data under this app: a number. */
  schema(): KvKey {
    return [...this.app, "schema"];
  }
  /** The limit of a concurrency group, as the runners defined it. */
  group(name: string): KvKey {
    return [...this.app, "group", name];
  }
  /** One invocation: its record and its queue position. */
  invocation(id: string): KvKey {
    return [...this.app, "inv", id];
  }
  /** All invocations (prefix). */
  invocations(): KvKey {
    return [...this.app, "inv"];
  }
  /** One history entry of an invocation. */
  history(id: string, seq: number): KvKey {
    return [...this.app, "hist", id, seq];
  }
  /** The history of an invocation (prefix). */
  histories(id: string): KvKey {
    return [...this.app, "hist", id];
  }
  /** Index: the invocations of a task. */
  byTask(taskId: string, id?: string): KvKey {
    return id === undefined ? [...this.app, "task", taskId] : [...this.app, "task", taskId, id];
  }
  /** Index: the invocations called by a parent. */
  byParent(parentId: string, id?: string): KvKey {
    return id === undefined
      ? [...this.app, "child", parentId]
      : [...this.app, "child", parentId, id];
  }
  /**
   * Index: the PENDING invocations by the time they entered PENDING (`position`: that time as a
   * ULID time, then the id), written and deleted with the status. Recovery reads it only up to
   * `maxPendingSeconds` ago: the claims that never went on.
   */
  pending(position?: string): KvKey {
    return position === undefined ? [...this.app, "pend"] : [...this.app, "pend", position];
  }
  /**
   * The status index of layouts 1 and 2 (every PENDING, RUNNING, PAUSED, RESUMED and slot-holding
   * CANCELED invocation), which recovery used to read whole: only the upgrade to layout 3 reads
   * it, and deletes it (see `KV_SCHEMA_VERSION`).
   */
  legacyStatus(): KvKey {
    return [...this.app, "status"];
  }
  /** Registration concurrency: the invocation holding a key (it has not run yet). */
  registration(key: string): KvKey {
    return [...this.app, "reg", key];
  }
  /**
   * An idempotency key of a task: the invocation it names and its deadline, written with
   * `expireIn` = its time to live (expiry is lazy: readers compare the deadline).
   */
  idempotency(taskId: string, key: string): KvKey {
    return [...this.app, "idem", taskId, key];
  }
  /**
   * A slot key's state, one value: the invocations holding its slots (at most its limit), and how
   * many are parked on it and woken from it (every key's state: the prefix).
   */
  slot(key?: string): KvKey {
    return key === undefined ? [...this.app, "slot"] : [...this.app, "slot", key];
  }
  /** Running concurrency: the paused invocation that reserved a slot to resume. */
  reservation(key: string): KvKey {
    return [...this.app, "reserve", key];
  }
  /**
   * The broker: one entry per queued invocation, in the ready queue (`q`), the delayed queue
   * (`qd`, retry back-off), its fairness lane (`lane/<key>`, whose token is in the ready queue at
   * the lane's turn), or parked on a slot key (`park/<key>`), ordered by a ULID position.
   */
  queue(
    entry: {
      readonly delayed: boolean;
      readonly position?: string;
      readonly parkedOn?: string;
      readonly lane?: string;
    },
  ): KvKey {
    const prefix = entry.parkedOn !== undefined
      ? [...this.app, "park", entry.parkedOn]
      : entry.lane !== undefined
      ? [...this.app, "lane", entry.lane]
      : [...this.app, entry.delayed ? "qd" : "q"];
    return entry.position === undefined ? prefix : [...prefix, entry.position];
  }
  /**
   * A wake marker: the slot key has invocations parked on it and room; the next pick-up wakes
   * them. Written without a check by the commit that leaves the key so, deleted (checked) by the
   * pick-up that finds nothing more to wake.
   */
  wake(key?: string): KvKey {
    return key === undefined ? [...this.app, "wake"] : [...this.app, "wake", key];
  }
  /**
   * A time-ordered wake marker of a rate limit key: it has invocations parked on it, and its
   * window opens at `time` (a ULID time, 10 characters). Written without a check by the commit
   * that leaves the key so; a pick-up reads those due (one range read up to now), wakes the
   * parked, and deletes the marker (checked).
   */
  wakeAt(time?: string, key?: string): KvKey {
    return [
      ...this.app,
      "wakeat",
      ...(time === undefined ? [] : [time]),
      ...(key === undefined ? [] : [key]),
    ];
  }
  /**
   * A pick-up's hint that a side index it reads may have gained entries: `wake` (wake markers),
   * `time` (delayed queue entries and time-ordered wake markers), `blocking` (the ready index).
   * Set blind by every commit that adds such an entry, with a constant value: only its
   * versionstamp says something (see `KvStore`'s `#sideReads`).
   */
  hint(kind: "wake" | "time" | "blocking"): KvKey {
    return [...this.app, "hint", kind];
  }
  /** Index: final invocations by purge time. */
  purge(position?: string): KvKey {
    return position === undefined ? [...this.app, "purge"] : [...this.app, "purge", position];
  }
  /**
   * Index: the invocations a runner executes (owns), per runner (every runner's: the prefix).
   * Recovery reads only the ranges of runners whose heartbeat stopped.
   */
  execution(runnerId?: string, id?: string): KvKey {
    return [
      ...this.app,
      "exec",
      ...(runnerId === undefined ? [] : [runnerId]),
      ...(id === undefined ? [] : [id]),
    ];
  }
  /** A cancel request for the runner executing a canceled invocation, until that execution ends. */
  cancelRequest(runnerId: string, id?: string): KvKey {
    return id === undefined
      ? [...this.app, "cancel", runnerId]
      : [...this.app, "cancel", runnerId, id];
  }
  /** A cron schedule of the app (every schedule: the prefix). */
  schedule(name?: string): KvKey {
    return name === undefined ? [...this.app, "sched"] : [...this.app, "sched", name];
  }
  /**
   * The claim of a schedule's tick (epoch ms): the invocation it fired, written with `expireIn`
   * (`tickClaimMs`) by the commit that registers it.
   */
  tick(name: string, tickMs: number): KvKey {
    return [...this.app, "tick", name, tickMs];
  }
  /**
   * The upkeep lease: the runner that does recovery and purge for every runner, and until when
   * (epoch ms, in the value; written with `expireIn` too, which is lazy).
   */
  upkeep(): KvKey {
    return [...this.app, "lease", "upkeep"];
  }
  /**
   * A refused call cycle, by the invocation that failed with it (every cycle: the prefix); written
   * with `expireIn` (`CYCLE_RETENTION_MS`).
   */
  cycle(invocationId?: string): KvKey {
    return invocationId === undefined
      ? [...this.app, "cycle"]
      : [...this.app, "cycle", invocationId];
  }
  /** A runner's heartbeat. */
  runner(runnerId?: string): KvKey {
    return runnerId === undefined ? [...this.app, "runner"] : [...this.app, "runner", runnerId];
  }
  /** Blocking control: the edge waiter → waited (its value: when it was added, epoch ms). */
  waitEdge(waiterId: string, waitedId?: string): KvKey {
    return waitedId === undefined
      ? [...this.app, "waits", waiterId]
      : [...this.app, "waits", waiterId, waitedId];
  }
  /** Blocking control: the reverse edge, waited → waiter (the same value). */
  waitedEdge(waitedId: string, waiterId?: string): KvKey {
    return waiterId === undefined
      ? [...this.app, "waited", waitedId]
      : [...this.app, "waited", waitedId, waiterId];
  }
  /** Blocking control: a marker of an invocation that has been in the wait graph (purge deletes it). */
  waitNode(id: string): KvKey {
    return [...this.app, "wnode", id];
  }
  /**
   * Blocking control: the ready index, one entry per edge whose waited end waits on nothing, by
   * the edge's time, then the waited id (the position), then the waiter.
   */
  ready(position?: string, waiterId?: string): KvKey {
    if (position === undefined) return [...this.app, "ready"];
    return waiterId === undefined
      ? [...this.app, "ready", position]
      : [...this.app, "ready", position, waiterId];
  }
  /** Cycle control: the edge caller → callee. */
  callEdge(callerCallId: string, calleeCallId?: string): KvKey {
    return calleeCallId === undefined
      ? [...this.app, "calls", callerCallId]
      : [...this.app, "calls", callerCallId, calleeCallId];
  }
  /**
   * Cycle control: the version of a call's edges to its callees, rewritten by every commit that
   * adds one. It is the key the edges are under: {@linkcode Keys.callEdgesRange} reads it first
   * and the edges after it, and a list of the edges' prefix leaves it out. Absent until the first
   * such commit (edges written before it existed read as "absent": same meaning).
   */
  callEdgesVersion(callerCallId: string): KvKey {
    return [...this.app, "calls", callerCallId];
  }
  /**
   * Cycle control: one range read of a call's edges version ({@linkcode Keys.callEdgesVersion})
   * and then its edges (`true` sorts after every string: the end is past every callee).
   */
  callEdgesRange(callerCallId: string): { readonly start: KvKey; readonly end: KvKey } {
    return {
      start: this.callEdgesVersion(callerCallId),
      end: [...this.callEdgesVersion(callerCallId), true],
    };
  }
  /** Cycle control: the reverse edge callee → caller. */
  calledEdge(calleeCallId: string, callerCallId?: string): KvKey {
    return callerCallId === undefined
      ? [...this.app, "called", calleeCallId]
      : [...this.app, "called", calleeCallId, callerCallId];
  }
  /** Cycle control: a live invocation holding a call. */
  callHolder(callId: string, invocationId?: string): KvKey {
    return invocationId === undefined
      ? [...this.app, "holder", callId]
      : [...this.app, "holder", callId, invocationId];
  }
  /**
   * Cycle control: a call's holders version, rewritten by every commit that adds a holder of the
   * call; the commit that deletes the call's edges checks it. Absent until the first such commit
   * (data written before this key existed reads as absent: same meaning).
   */
  callHolders(callId: string): KvKey {
    return [...this.app, "hver", callId];
  }
  /** Every key of one kind (prefix), for whole-graph reads: call holders, call edges, wait edges. */
  every(kind: "holder" | "calls" | "waits"): KvKey {
    return [...this.app, kind];
  }
}
