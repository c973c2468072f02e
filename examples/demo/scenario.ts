/**
 * The demo's scenario, and its facts read back from the store: {@linkcode runDemo} runs a
 * release on a runner with one slot, builds a pull request with a dependency cycle, deploys
 * services to three environments, and summarizes what the store recorded — so the summary stays
 * true when another process ran part of the work.
 *
 * @module
 */

import {
  CycleDetectedError,
  type HistoryEntry,
  type Invocation,
  type InvocationStatus,
} from "../../mod.ts";
import {
  app,
  build,
  dependenciesOf,
  deploy,
  type Deployment,
  fetchToolchain,
  release,
  type ReleaseReport,
  workspace,
} from "./app.ts";

/** The environments and services of the deploy phase. */
export const ENVIRONMENTS = ["staging", "prod-eu", "prod-us"] as const;
/** The services deployed to every environment. */
export const SERVICES = ["cart-api", "checkout-api", "search-api", "email-worker"] as const;
/** Slots of the runner that builds: one is enough for any depth and width. */
export const BUILD_SLOTS = 1;
/** Slots of the runner that deploys: more than one, so that deploys could collide. */
export const DEPLOY_SLOTS = 4;

/** What the demo did, from the store. */
export interface DemoSummary {
  /** Invocations per task and status. */
  readonly statuses: Readonly<Record<string, Readonly<Partial<Record<InvocationStatus, number>>>>>;
  /** Calls of `build` (by main, `release` and every build that ran) and the invocations they made. */
  readonly builds: { readonly calls: number; readonly invocations: number };
  /** What `release` returned: the fan-out/fan-in result. */
  readonly release: ReleaseReport;
  /** Deploys: the most that ran at once per environment and overall, and refused pick-ups. */
  readonly deploys: {
    readonly maxAtOncePerEnv: Readonly<Record<string, number>>;
    readonly maxAtOnce: number;
    readonly requeued: number;
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

  // 2. Deploys: every service to every environment, with more slots than environments.
  {
    await using runner = app.runner({ concurrency: DEPLOY_SLOTS });
    ownRunners.add(runner.id);
    runner.start();
    const plan = SERVICES.flatMap((pkg) => ENVIRONMENTS.map((env) => ({ env, pkg })));
    await (await deploy.parallelize(plan)).results();
  }
  const wallMs = performance.now() - startedMs;

  const histories = await readHistories();
  return {
    statuses: statusCounts(histories),
    builds: buildCalls(histories),
    release: report,
    deploys: await deployOverlaps(histories),
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
 * The most deploys that ran at once, per environment and overall, from the times each deploy
 * stored in its result. They are read inside the task: after its invocation took the running
 * slot, before it gave it back — so, unlike history timestamps (taken before each commit), they
 * cannot show an overlap that did not happen. Refused pick-ups are counted from the histories.
 */
async function deployOverlaps(recorded: readonly Recorded[]): Promise<DemoSummary["deploys"]> {
  const intervals: { env: string; startMs: number; endMs: number }[] = [];
  let requeued = 0;
  for (const { invocation, history } of recorded) {
    if (invocation.taskId !== deploy.id) continue;
    requeued += history.filter((entry) => entry.status === "concurrency_controlled").length;
    const { startedAtMs, finishedAtMs } = await (invocation as Invocation<Deployment>).result();
    intervals.push({
      env: invocation.args.env as string,
      startMs: startedAtMs,
      endMs: finishedAtMs,
    });
  }
  const maxAtOncePerEnv: Record<string, number> = {};
  for (const env of new Set(intervals.map((interval) => interval.env))) {
    maxAtOncePerEnv[env] = maxOverlap(intervals.filter((interval) => interval.env === env));
  }
  return { maxAtOncePerEnv, maxAtOnce: maxOverlap(intervals), requeued };
}

/** The most intervals [start, end) that share one moment. */
function maxOverlap(intervals: readonly { startMs: number; endMs: number }[]): number {
  // At equal times an end comes before a start: back to back is not at once.
  const events = intervals
    .flatMap(({ startMs, endMs }) => [[startMs, 1], [endMs, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  for (const [, delta] of events) max = Math.max(max, now += delta);
  return max;
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
