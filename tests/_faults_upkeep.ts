/**
 * The fault-injection contract of upkeep (issue #12): the atomic step it adds — the upkeep lease
 * taken or renewed (`Store.takeUpkeepLease`) — meets each of the three faults of
 * `tests/_faults.ts`: refused and not applied; applied, then reported failed; the store down for
 * 2 s. In every case, with a deadline on every wait: the RUNNING invocation of a runner that died
 * and a claim that stayed PENDING are recovered and run once each, one runner does the upkeep
 * all along (the holder keeps the lease it renews), and a runner from outside cannot take it.
 *
 * Two runners share the app and start once the fault is armed: their first takes meet it.
 */
import assert from "node:assert/strict";
import { within } from "./_deadline.ts";
import {
  assertNoProblems,
  FaultPlan,
  faultScenarios,
  type FaultyAppFactory,
  ORCHESTRATOR,
  RUNNER,
} from "./_faults.ts";

const STEP_DEADLINE_MS = 8_000;
const SCENARIO_DEADLINE_MS = 30_000;

/** What one scenario saw. */
interface Facts {
  readonly plan: FaultPlan;
  /** The runners that made recovery rounds, in the order of their first. */
  readonly holders: readonly string[];
  /** How many times each invocation's function ran, by its `n`: 1 the dead runner's, 2 the claim. */
  readonly runs: ReadonlyMap<number, number>;
  /** The statuses each invocation went through, by its `n`. */
  readonly histories: ReadonlyMap<number, readonly string[]>;
  /** Whether a runner from outside took the lease while the two ran (a live one holds it). */
  readonly outsiderTook: boolean;
}

async function runScenario(
  makeApp: FaultyAppFactory,
  appId: string,
  plan: FaultPlan,
): Promise<Facts> {
  const app = await makeApp(plan, { appId, orchestrator: ORCHESTRATOR });
  const runs = new Map<number, number>();
  const work = app.task("work", ({ n }: { n: number }) => {
    runs.set(n, (runs.get(n) ?? 0) + 1);
    return n;
  });
  const o = app.orchestrator;
  // A runner that took an invocation and died a minute ago, and one whose claim stays PENDING
  // while its heartbeat is fresh (maxPendingSeconds is 1).
  const lost = await work.call({ n: 1 });
  const stuck = await work.call({ n: 2 });
  assert.deepEqual((await o.getInvocationsToRun(1, { runnerId: "dead" })).map(({ id }) => id), [
    lost.id,
  ]);
  await o.setInvocationRun(undefined, lost, { runnerId: "dead" });
  await o.store.heartbeat("dead", Date.now() - 60_000);
  assert.deepEqual((await o.getInvocationsToRun(1, { runnerId: "slow" })).map(({ id }) => id), [
    stuck.id,
  ]);
  await o.store.heartbeat("slow", Date.now());
  const holders: string[] = [];
  const recover = o.recoverInvocations.bind(o);
  o.recoverInvocations = (options = {}) => {
    const runnerId = options.runnerId!;
    if (options.ids === undefined && !holders.includes(runnerId)) holders.push(runnerId);
    return recover(options);
  };
  plan.arm();
  const runners = [app.runner(RUNNER), app.runner(RUNNER)];
  for (const runner of runners) runner.start();
  let outsiderTook: boolean;
  try {
    await within(
      Promise.all([lost.result(), stuck.result()]),
      SCENARIO_DEADLINE_MS,
      "both recovered invocations to end",
    );
    await plan.outageOver();
    const nowMs = Date.now();
    outsiderTook = await o.store.takeUpkeepLease("outsider", { nowMs, untilMs: nowMs + 1_000 });
  } finally {
    await within(
      Promise.all(runners.map((runner) => runner.stop())),
      STEP_DEADLINE_MS,
      "the runners to stop",
    );
  }
  const histories = new Map<number, readonly string[]>();
  for (const [n, invocation] of [[1, lost], [2, stuck]] as const) {
    histories.set(n, (await invocation.history()).map(({ status }) => status));
  }
  return { plan, holders, runs, histories, outsiderTook };
}

/** Every broken promise of one scenario, one line each. */
function judge(facts: Facts): void {
  const { plan } = facts;
  assert.ok(
    plan.kind === "none" || plan.firedAtMs !== undefined,
    "the fault was never injected: no lease was taken after arming",
  );
  const problems: string[] = [];
  if (facts.holders.length !== 1) {
    problems.push(`recovery rounds by ${facts.holders.length} runners, not one`);
  }
  for (const [n, recovery] of [[1, "running_recovery"], [2, "pending_recovery"]] as const) {
    const history = facts.histories.get(n) ?? [];
    if ((facts.runs.get(n) ?? 0) !== 1) problems.push(`invocation ${n} ran ${facts.runs.get(n)}×`);
    if (!history.includes(recovery) || history.at(-1) !== "success") {
      problems.push(`invocation ${n} went ${history.join(" → ")}`);
    }
  }
  if (facts.outsiderTook) problems.push("a runner from outside took the lease from live runners");
  assertNoProblems(plan, problems);
}

/**
 * Registers the upkeep fault contract for one backend: the lease's take meets every fault, and
 * a control run without one.
 */
export function upkeepFaultContract(backend: string, makeApp: FaultyAppFactory): void {
  const ending =
    "a dead runner's RUNNING invocation and a stale claim are recovered and run once each, by one lease holder all along";
  faultScenarios(
    (fault) => `[${backend}] upkeep: the lease's take ${fault}: ${ending}`,
    (kind) => runScenario(makeApp, `upkeep-faults-${kind}`, new FaultPlan("lease", kind)),
    judge,
  );
}
