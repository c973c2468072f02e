/**
 * The demo's scenario, and its facts read back from the store: {@linkcode runDemo} runs a
 * release on a runner with one slot, builds a pull request with a dependency cycle, deploys
 * services to three environments while rolling one back and probing them every second (a
 * schedule), announces each deploy to a rate-limited status page, stores a nightly release
 * schedule, and summarizes what the store recorded — so the summary stays true when another
 * process ran part of the work.
 *
 * @module
 */

import {
  CycleDetectedError,
  type HistoryEntry,
  type Invocation,
  type InvocationStatus,
  isFinalStatus,
  nextTickMs,
} from "../../mod.ts";
import {
  announce,
  app,
  build,
  dependenciesOf,
  deploy,
  fetchToolchain,
  probe,
  release,
  type ReleaseReport,
  rollback,
  workspace,
} from "./app.ts";

/** The environments and services of the deploy phase. */
export const ENVIRONMENTS = ["staging", "prod-eu", "prod-us"] as const;
/** The services deployed to every environment. */
export const SERVICES = ["cart-api", "checkout-api", "search-api", "email-worker"] as const;
/** The service rolled back in every environment while the others deploy. */
export const ROLLED_BACK = "reviews-api";
/** Slots of the runner that builds: one is enough for any depth and width. */
export const BUILD_SLOTS = 1;
/** Slots of the runner that deploys: more than the limits, so that only the limits hold it back. */
export const DEPLOY_SLOTS = 8;
/** The schedule that probes the services every second while they deploy and are announced. */
export const PROBE_SCHEDULE = { name: "probe-services", cron: "* * * * * *" } as const;
/** The nightly release: stored at the end, so it fires at 3:00 UTC, not during the demo. */
export const NIGHTLY_SCHEDULE = { name: "nightly-release", cron: "0 3 * * *" } as const;

/** What the demo did, from the store. */
export interface DemoSummary {
  /** Invocations per task and status. */
  readonly statuses: Readonly<Record<string, Readonly<Partial<Record<InvocationStatus, number>>>>>;
  /** Calls of `build` (by main, `release` and every build that ran) and the invocations they made. */
  readonly builds: { readonly calls: number; readonly invocations: number };
  /** What `release` returned: the fan-out/fan-in result. */
  readonly release: ReleaseReport;
  /**
   * Deploys and rollbacks: the most deploys of one environment that held its running slots at
   * once, the most deploys and rollbacks that held the `deploys` group's slots at once, how many
   * rollbacks ran, and the pick-ups refused because a key was full (parked until it had room).
   */
  readonly deploys: {
    readonly maxAtOncePerEnv: Readonly<Record<string, number>>;
    readonly maxInGroup: number;
    readonly rollbacks: number;
    readonly refused: number;
  };
  /**
   * The announcements to the rate-limited status page: how many, the most picked up in any window
   * of 1,000 ms (the rate limit), and the time from the first pick-up to the last.
   */
  readonly announces: {
    readonly sent: number;
    readonly maxInAnyWindow: number;
    readonly spanMs: number;
  };
  /**
   * The schedules: the ticks the probe schedule fired (each tick's invocation saw it as
   * `ctx.scheduledAt`), how many ticks had more than one invocation, and the gaps between
   * consecutive ticks; the nightly release's cron and its next tick (ISO), read back.
   */
  readonly schedules: {
    readonly probeTicks: number;
    readonly duplicateTicks: number;
    readonly missedTicks: number;
    readonly nightly: { readonly cron: string; readonly nextTick: string };
  };
  /** Retries of `fetchToolchain` before it succeeded. */
  readonly fetchRetries: number;
  /** The message of the `CycleDetectedError` the pull request's build failed with. */
  readonly cycleMessage: string;
  /** Invocations finished by this process's runners and by other processes' runners. */
  readonly finishedBy: { readonly thisProcess: number; readonly otherProcesses: number };
  /** Wall time of the scenario, ms. */
  readonly wallMs: number;
}

/**
 * Runs the scenario on `app` (whatever its backend) and summarizes it from the store. Other
 * processes running the same app on the same store may take part.
 */
export async function runDemo(): Promise<DemoSummary> {
  const startedMs = performance.now();
  const ownRunners = new Set<string>();

  // 1. The release: a fan-out/fan-in 6 levels deep and 48 packages wide, on one slot; then the
  //    pull request whose plugins depend on each other.
  let report: ReleaseReport;
  let cycleMessage: string;
  {
    await using runner = app.runner({ concurrency: BUILD_SLOTS });
    ownRunners.add(runner.id);
    runner.start();
    report = await (await release.call({ version: "2024.11.0" })).result();
    cycleMessage = await (await build.call({ pkg: "mdx-plugin" })).result().then(
      () => {
        throw new Error("Cannot run the demo: the plugin cycle built without an error");
      },
      (error) => {
        if (!(error instanceof CycleDetectedError)) throw error;
        return error.message;
      },
    );
  }

  // 2. Deploys: every service to every environment, and a rollback in every environment, all
  //    queued before the runner starts, on more slots than the limits let run; a schedule probes
  //    the services every second meanwhile. Then each deploy is announced to the status page,
  //    five a second.
  {
    await app.schedule(PROBE_SCHEDULE.name, { cron: PROBE_SCHEDULE.cron, task: probe });
    await using runner = app.runner({ concurrency: DEPLOY_SLOTS });
    ownRunners.add(runner.id);
    const plan = SERVICES.flatMap((pkg) => ENVIRONMENTS.map((env) => ({ env, pkg })));
    const deploys = await deploy.parallelize(plan);
    const rollbacks = await rollback.parallelize(
      ENVIRONMENTS.map((env) => ({ env, pkg: ROLLED_BACK })),
    );
    runner.start();
    await Promise.all([deploys.results(), rollbacks.results()]);
    await (await announce.parallelize(plan)).results();
    await app.unschedule(PROBE_SCHEDULE.name);
    // A tick fired just before the unschedule runs too: every probe ends before the summary.
    await runner.drain();
  }
  await app.schedule(NIGHTLY_SCHEDULE.name, {
    cron: NIGHTLY_SCHEDULE.cron,
    task: release,
    args: { version: "nightly" },
  });
  const wallMs = performance.now() - startedMs;

  const histories = await readHistories();
  return {
    statuses: statusCounts(histories),
    builds: buildCalls(histories),
    release: report,
    deploys: deployOverlaps(histories),
    announces: announcements(histories),
    schedules: await scheduled(histories),
    fetchRetries: retries(histories, fetchToolchain.id),
    cycleMessage,
    finishedBy: finishedBy(histories, ownRunners),
    wallMs,
  };
}

/** One invocation as the store recorded it. */
interface Recorded {
  readonly invocation: Invocation;
  readonly history: readonly HistoryEntry[];
}

async function readHistories(): Promise<Recorded[]> {
  const recorded: Recorded[] = [];
  for (const task of app.tasks()) {
    for await (const invocation of app.orchestrator.getExistingInvocations(task)) {
      recorded.push({ invocation, history: await invocation.history() });
    }
  }
  return recorded;
}

function statusCounts(recorded: readonly Recorded[]): DemoSummary["statuses"] {
  const counts: Record<string, Partial<Record<InvocationStatus, number>>> = {};
  for (const { invocation: { taskId }, history } of recorded) {
    const status = history.at(-1)!.status;
    const perTask = counts[taskId] ??= {};
    perTask[status] = (perTask[status] ?? 0) + 1;
  }
  return counts;
}

/** How many times the task's function started: RUNNING entries (a resume does not restart it). */
function runs(history: readonly HistoryEntry[]): number {
  return history.filter((entry) => entry.status === "running").length;
}

/**
 * Calls of `build`: main's one (the pull request), and each run of `release` and of `build`
 * calls every package it needs once — so the calls follow from the runs the store recorded.
 */
function buildCalls(recorded: readonly Recorded[]): DemoSummary["builds"] {
  let calls = 1;
  let invocations = 0;
  for (const { invocation: { taskId, args }, history } of recorded) {
    if (taskId === release.id) calls += runs(history) * Object.keys(workspace).length;
    if (taskId === build.id) {
      invocations++;
      calls += runs(history) * dependenciesOf(args.pkg as string).length;
    }
  }
  return { calls, invocations };
}

/**
 * The most deploys of one environment, and of deploys and rollbacks, that held slots at once,
 * from the histories in the store: an execution holds its slots from the pick-up that took them
 * (PENDING, then RUNNING) to the entry that gave them back (here, its final status). Each entry
 * is stamped when its change is planned on the state it changes, so a pick-up that took a slot
 * another execution gave back is stamped after that one's final entry: history times cannot show
 * an overlap that did not happen. Refused pick-ups (a full environment or group: the invocation
 * is parked until the key has room) are counted from the histories too.
 */
function deployOverlaps(recorded: readonly Recorded[]): DemoSummary["deploys"] {
  const perEnv = new Map<string, Interval[]>();
  const inGroup: Interval[] = [];
  let rollbacks = 0;
  let refused = 0;
  for (const { invocation: { taskId, args }, history } of recorded) {
    if (taskId !== deploy.id && taskId !== rollback.id) continue;
    if (taskId === rollback.id) rollbacks++;
    refused += history.filter((entry) => entry.status === "concurrency_controlled").length;
    const held = heldIntervals(history);
    inGroup.push(...held);
    if (taskId === deploy.id) {
      const env = args.env as string;
      perEnv.set(env, [...perEnv.get(env) ?? [], ...held]);
    }
  }
  const maxAtOncePerEnv: Record<string, number> = {};
  for (const [env, intervals] of perEnv) maxAtOncePerEnv[env] = maxOverlap(intervals);
  return { maxAtOncePerEnv, maxInGroup: maxOverlap(inGroup), rollbacks, refused };
}

/** A span of time, epoch ms. */
interface Interval {
  readonly startMs: number;
  readonly endMs: number;
}

/** The entries that give an execution's slots back: its end, a retry, a pause, a hand-back. */
const RELEASES: ReadonlySet<InvocationStatus> = new Set(["paused", "retry", "rerouted"]);

/** When an invocation held its slots: from a pick-up (or a resume) to the entry that gave them back. */
function heldIntervals(history: readonly HistoryEntry[]): Interval[] {
  const intervals: Interval[] = [];
  let startMs: number | undefined;
  for (const { status, timestampMs } of history) {
    if (status === "pending" || status === "resumed") startMs ??= timestampMs;
    else if (startMs !== undefined && (isFinalStatus(status) || RELEASES.has(status))) {
      intervals.push({ startMs, endMs: timestampMs });
      startMs = undefined;
    }
  }
  return intervals;
}

/** The most intervals [start, end) that share one moment. */
function maxOverlap(intervals: readonly Interval[]): number {
  // At equal times an end comes before a start: back to back is not at once.
  const events = intervals
    .flatMap(({ startMs, endMs }) => [[startMs, 1], [endMs, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  for (const [, delta] of events) max = Math.max(max, now += delta);
  return max;
}

/** The pick-ups of the announcements: how many, the most in any window of 1,000 ms, the span. */
function announcements(recorded: readonly Recorded[]): DemoSummary["announces"] {
  const pickUps = recorded
    .filter(({ invocation }) => invocation.taskId === announce.id)
    .flatMap(({ history }) => history.filter((entry) => entry.status === "pending"))
    .map((entry) => entry.timestampMs)
    .sort((a, b) => a - b);
  // Every window [t, t + 1,000) that starts at a pick-up: the busiest window starts at one.
  let maxInAnyWindow = 0;
  for (let first = 0, last = 0; first < pickUps.length; first++) {
    while (last < pickUps.length && pickUps[last]! < pickUps[first]! + 1_000) last++;
    maxInAnyWindow = Math.max(maxInAnyWindow, last - first);
  }
  return {
    sent: pickUps.length,
    maxInAnyWindow,
    spanMs: pickUps.length === 0 ? 0 : pickUps.at(-1)! - pickUps[0]!,
  };
}

/** The probe's ticks, from its invocations' results, and the nightly schedule as stored. */
async function scheduled(recorded: readonly Recorded[]): Promise<DemoSummary["schedules"]> {
  const ticks = await Promise.all(
    recorded
      .filter(({ invocation }) => invocation.taskId === probe.id)
      .map(({ invocation }) => invocation.result() as Promise<number>),
  );
  const distinct = [...new Set(ticks)].sort((a, b) => a - b);
  const missedTicks = distinct.slice(1).reduce(
    (sum, tick, i) => sum + (tick - distinct[i]!) / 1_000 - 1,
    0,
  );
  const nightly = (await app.orchestrator.store.schedules())
    .find((schedule) => schedule.name === NIGHTLY_SCHEDULE.name);
  if (nightly === undefined) throw new Error("Cannot summarize the demo: no nightly schedule");
  return {
    probeTicks: distinct.length,
    duplicateTicks: ticks.length - distinct.length,
    missedTicks,
    nightly: { cron: nightly.cron, nextTick: new Date(nextTickMs(nightly)).toISOString() },
  };
}

function retries(recorded: readonly Recorded[], taskId: string): number {
  return recorded
    .filter(({ invocation }) => invocation.taskId === taskId)
    .reduce((sum, { history }) => sum + history.filter((e) => e.status === "retry").length, 0);
}

/** Who finished each invocation: the runner that wrote its final entry. */
function finishedBy(
  recorded: readonly Recorded[],
  ownRunners: ReadonlySet<string>,
): DemoSummary["finishedBy"] {
  let thisProcess = 0;
  let otherProcesses = 0;
  for (const { history } of recorded) {
    const runnerId = history.at(-1)!.runnerId;
    if (runnerId === null) continue;
    if (ownRunners.has(runnerId)) thisProcess++;
    else otherProcesses++;
  }
  return { thisProcess, otherProcesses };
}
