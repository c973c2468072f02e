/**
 * Cron schedules (SPEC §7.3): what a schedule is, and which of its ticks are due — decided once,
 * here, for every backend. Cron expressions are read by [croner](https://croner.56k.guru) (5 or 6
 * fields, seconds first; IANA timezones). A runner that defines a schedule's task fires its due
 * ticks; each tick is claimed in the atomic step that registers its invocation
 * (`Store.fireTick`), so a tick has exactly one invocation however many runners race for it.
 *
 * @module
 */

import { cronOf } from "./_cron.ts";
import { canonicalJson, type SerializedArguments } from "./ids.ts";
import type { InvocationRecord, NewInvocation } from "./store.ts";
import type { Task } from "./task.ts";

/**
 * What a schedule does with the ticks it missed (older than `misfireMs` when a runner that defines
 * its task sees them): skip them (`"none"`), fire only the most recent one (`"latest"`), or fire
 * each (`"all"`, at most {@linkcode MAX_TICKS_PER_PASS}).
 *
 * @example
 * ```ts
 * import type { CatchUp } from "@nenc/nenc";
 *
 * const catchUp: CatchUp = "latest"; // after an outage, run the last missed report once
 * console.log(catchUp); // "latest"
 * ```
 */
export type CatchUp = "none" | "latest" | "all";

/**
 * Options of `app.schedule(name, options)`; defaults in brackets.
 *
 * @example A report every night at 3:00 in Berlin
 * ```ts
 * import { Nenc, type ScheduleOptions } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const report = app.task("report", ({ kind }: { kind: string }) => `${kind} report`);
 * const options: ScheduleOptions<{ kind: string }> = {
 *   cron: "0 3 * * *",
 *   task: report,
 *   args: { kind: "sales" },
 *   timezone: "Europe/Berlin",
 *   catchUp: "latest",
 * };
 * console.log((await app.schedule("nightly-sales", options)).cron); // "0 3 * * *"
 * ```
 */
export interface ScheduleOptions<Args = unknown> {
  /**
   * A cron expression of 5 fields (minute hour day month weekday) or 6 (seconds first), as croner
   * reads it (names such as `MON` and nicknames such as `@daily` too).
   */
  readonly cron: string;
  /** The task each tick calls: a task of the app, or its name. */
  readonly task: Task<Args, unknown> | string;
  /** The arguments of every tick's call [none]. */
  readonly args?: Args;
  /** The IANA timezone the expression is read in [`"UTC"`]: every runner reads it alike. */
  readonly timezone?: string;
  /** What to do with missed ticks [`"none"`]. */
  readonly catchUp?: CatchUp;
  /** A tick seen by a runner this long after its time, or later, was missed [`60_000`]. */
  readonly misfireMs?: number;
}

/**
 * A schedule as stored with the app's data: its definition, since when it holds, and the last
 * tick it fired.
 *
 * @example
 * ```ts
 * import { Nenc, type Schedule } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const schedule: Schedule = await app.schedule("heartbeat", { cron: "*\/5 * * * *", task: ping });
 * console.log(schedule.taskId, schedule.timezone, schedule.catchUp, schedule.lastTickMs); // "ping" "UTC" "none" null
 * ```
 */
export interface Schedule {
  /** The schedule's name, unique within the app. */
  readonly name: string;
  /** Its cron expression. */
  readonly cron: string;
  /** The task each tick calls. */
  readonly taskId: string;
  /** The arguments of each tick's call, each as canonical JSON. */
  readonly args: SerializedArguments;
  /** The IANA timezone the expression is read in. */
  readonly timezone: string;
  /** What to do with missed ticks. */
  readonly catchUp: CatchUp;
  /** A tick seen this long after its time, or later, was missed. */
  readonly misfireMs: number;
  /**
   * When this definition was stored (the upsert that created or changed it), epoch ms: no tick
   * before it fires.
   */
  readonly sinceMs: number;
  /** The last tick fired, epoch ms, or `null`. */
  readonly lastTickMs: number | null;
  /** The invocation the last tick fired, or `null`. */
  readonly lastInvocationId: string | null;
}

/**
 * A tick fired by {@linkcode Store.fireTick}: its invocation and the schedule as it was stored with
 * the tick.
 *
 * @example
 * ```ts
 * import { type FiredTick, Nenc } from "@nenc/nenc";
 *
 * const app = new Nenc();
 * const ping = app.task("ping", () => "pong");
 * const schedule = await app.schedule("heartbeat", { cron: "* * * * * *", task: ping });
 * const tickMs = Math.ceil((Date.now() + 1) / 1000) * 1000;
 * const fired: FiredTick | undefined = await app.orchestrator.fireTick(schedule, tickMs, { runnerId: "r1" });
 * console.log(fired?.invocation.scheduledAtMs === tickMs, fired?.schedule.lastTickMs === tickMs); // true true
 * ```
 */
export interface FiredTick {
  /** The invocation registered for the tick (REGISTERED, `scheduledAtMs` = the tick). */
  readonly invocation: InvocationRecord;
  /** The schedule after the tick: `lastTickMs` and `lastInvocationId` name it. */
  readonly schedule: Schedule;
}

/**
 * At most this many ticks of one schedule are due at once: the most recent ones (so `catchUp:
 * "all"` fires at most this many missed ticks).
 *
 * @example
 * ```ts
 * import { MAX_TICKS_PER_PASS } from "@nenc/nenc/core";
 *
 * console.log(MAX_TICKS_PER_PASS); // 100
 * ```
 */
export const MAX_TICKS_PER_PASS = 100;

/** How long a tick's claim outlives the misfire window of its schedule. */
const TICK_CLAIM_GRACE_MS = 3_600_000;

/**
 * The time after which a schedule's ticks have not fired: its last fired tick, or just before its
 * definition was stored (a tick at that very millisecond fires).
 *
 * @example
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { tickCursorMs } from "@nenc/nenc/core";
 *
 * const fresh: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 120_000, lastTickMs: null, lastInvocationId: null,
 * };
 * console.log(tickCursorMs(fresh), tickCursorMs({ ...fresh, lastTickMs: 180_000 })); // 119999 180000
 * ```
 */
export function tickCursorMs(schedule: Schedule): number {
  return Math.max(schedule.sinceMs - 1, schedule.lastTickMs ?? -Infinity);
}

/**
 * The first tick of a schedule after its cursor ({@linkcode tickCursorMs}) and after `afterMs`,
 * epoch ms; `Infinity` when the expression has no more.
 *
 * @example
 * ```ts
 * import { nextTickMs, type Schedule } from "@nenc/nenc";
 *
 * const minutely: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 90_000, lastTickMs: null, lastInvocationId: null,
 * };
 * console.log(nextTickMs(minutely), nextTickMs(minutely, 200_000)); // 120000 240000
 * ```
 */
export function nextTickMs(schedule: Schedule, afterMs = -Infinity): number {
  const from = Math.max(tickCursorMs(schedule), afterMs);
  return cronOf(schedule.cron, schedule.timezone).nextRun(new Date(from))?.getTime() ?? Infinity;
}

/**
 * The ticks of a schedule to fire at `nowMs`, oldest first: of its ticks after its cursor and
 * after `afterMs` (those a runner handled already), at most the {@linkcode MAX_TICKS_PER_PASS}
 * most recent; those within `misfireMs` of their time are on time and fire, older ones were
 * missed and follow `catchUp`.
 *
 * @example Back at 00:06:30 after an outage since 00:00:30: one tick on time, five missed
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { dueTicks } from "@nenc/nenc/core";
 *
 * const minutely: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 30_000, lastTickMs: null, lastInvocationId: null,
 * };
 * const minutes = (catchUp: "none" | "latest" | "all") =>
 *   dueTicks({ ...minutely, catchUp }, 390_000).map((tickMs) => tickMs / 60_000);
 * console.log(minutes("none"), minutes("latest"), minutes("all")); // [6] [5, 6] [1, 2, 3, 4, 5, 6]
 * ```
 */
export function dueTicks(schedule: Schedule, nowMs: number, afterMs = -Infinity): number[] {
  const cron = cronOf(schedule.cron, schedule.timezone);
  let ticks: number[] = [];
  // Forward from the cursor: one or two steps in the common case. More ticks than a pass takes
  // (a long outage): the most recent ones, read backwards from now.
  for (
    let tick = cron.nextRun(new Date(Math.max(tickCursorMs(schedule), afterMs)));
    tick !== null && tick.getTime() <= nowMs;
    tick = cron.nextRun(tick)
  ) {
    ticks.push(tick.getTime());
    if (ticks.length > MAX_TICKS_PER_PASS) {
      ticks = cron.previousRuns(MAX_TICKS_PER_PASS, new Date(nowMs + 1))
        .map((date) => date.getTime()).reverse();
      break;
    }
  }
  const onTimeFromMs = nowMs - schedule.misfireMs;
  const missed = ticks.filter((tickMs) => tickMs < onTimeFromMs);
  const onTime = ticks.filter((tickMs) => tickMs >= onTimeFromMs);
  switch (schedule.catchUp) {
    case "none":
      return onTime;
    case "latest":
      return [...missed.slice(-1), ...onTime];
    case "all":
      return ticks;
  }
}

/**
 * Whether two schedules are the same version of one schedule: the same name, definition and
 * `sinceMs` (ticks fired since may differ).
 *
 * @example
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { isSameSchedule } from "@nenc/nenc/core";
 *
 * const schedule: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 0, lastTickMs: null, lastInvocationId: null,
 * };
 * console.log(isSameSchedule(schedule, { ...schedule, lastTickMs: 60_000 })); // true
 * console.log(isSameSchedule(schedule, { ...schedule, cron: "0 * * * *", })); // false
 * ```
 */
export function isSameSchedule(a: Schedule, b: Schedule): boolean {
  return a.name === b.name && a.sinceMs === b.sinceMs && sameDefinition(a, b);
}

function sameDefinition(a: Schedule, b: Schedule): boolean {
  return a.cron === b.cron && a.taskId === b.taskId && a.timezone === b.timezone &&
    a.catchUp === b.catchUp && a.misfireMs === b.misfireMs &&
    canonicalJson(a.args) === canonicalJson(b.args);
}

/**
 * The schedule to store for an upsert of `next` over `stored`: `stored` itself when the definition
 * is the same (nothing to write: its `sinceMs` and last tick stay), else `next` with the last tick
 * of `stored` — a changed definition holds from `next.sinceMs` on.
 *
 * @example The same definition twice changes nothing; another cron starts anew
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { upsertSchedule } from "@nenc/nenc/core";
 *
 * const stored: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 0, lastTickMs: 60_000, lastInvocationId: "01J",
 * };
 * const again = { ...stored, sinceMs: 90_000, lastTickMs: null, lastInvocationId: null };
 * console.log(upsertSchedule(stored, again) === stored); // true
 * const hourly = upsertSchedule(stored, { ...again, cron: "0 * * * *" });
 * console.log(hourly.sinceMs, hourly.lastTickMs); // 90000 60000
 * ```
 */
export function upsertSchedule(stored: Schedule | undefined, next: Schedule): Schedule {
  if (stored !== undefined && sameDefinition(stored, next)) return stored;
  return {
    ...next,
    lastTickMs: stored?.lastTickMs ?? null,
    lastInvocationId: stored?.lastInvocationId ?? null,
  };
}

/**
 * Plans a tick: the schedule as stored after `invocation` fires the tick `invocation.scheduledAtMs`
 * of `schedule`, or `undefined` when it may not — the schedule is gone or was changed (`stored` is
 * not the same version), or the tick is not after its cursor (fired already, or before the
 * definition). Backends store it with the tick's claim and the invocation in one atomic step.
 *
 * @example
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { type NewInvocation, planTick } from "@nenc/nenc/core";
 *
 * const schedule: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 0, lastTickMs: null, lastInvocationId: null,
 * };
 * const tick: NewInvocation & { scheduledAtMs: number } = {
 *   id: "01J", taskId: "t", callId: "t#0", args: {}, parentId: null, registrationKey: null,
 *   runningKey: null, nowMs: 60_001, runnerId: "r1", scheduledAtMs: 60_000,
 * };
 * const after = planTick(schedule, schedule, tick);
 * console.log(after?.lastTickMs, after?.lastInvocationId); // 60000 "01J"
 * console.log(planTick(after, schedule, tick)); // undefined: fired already
 * ```
 */
export function planTick(
  stored: Schedule | undefined,
  schedule: Schedule,
  invocation: Pick<NewInvocation, "id"> & { readonly scheduledAtMs: number },
): Schedule | undefined {
  const tickMs = invocation.scheduledAtMs;
  if (
    stored === undefined || !isSameSchedule(stored, schedule) || tickMs <= tickCursorMs(stored)
  ) return undefined;
  return { ...stored, lastTickMs: tickMs, lastInvocationId: invocation.id };
}

/**
 * How long the claim of a tick is kept once fired, in ms: the schedule's misfire window and an
 * hour. Past its cursor no runner fires the tick again anyway; the claim covers a schedule stored
 * anew meanwhile by a process whose clock lags (its `sinceMs` may be before the tick).
 *
 * @example
 * ```ts
 * import { type Schedule } from "@nenc/nenc";
 * import { tickClaimMs } from "@nenc/nenc/core";
 *
 * const schedule: Schedule = {
 *   name: "s", cron: "* * * * *", taskId: "t", args: {}, timezone: "UTC", catchUp: "none",
 *   misfireMs: 60_000, sinceMs: 0, lastTickMs: null, lastInvocationId: null,
 * };
 * console.log(tickClaimMs(schedule)); // 3660000
 * ```
 */
export function tickClaimMs(schedule: Schedule): number {
  return schedule.misfireMs + TICK_CLAIM_GRACE_MS;
}
