/**
 * The fault-injection contract of the refused cycles kept for inspection (issue #13): the write
 * that records one (`Store.recordCycle`) meets each of the three faults of `tests/_faults.ts`:
 * refused and not applied; applied, then reported failed; the store down for 2 s. In every case,
 * with a deadline on every wait: recording never turns the refused cycle into another error — the
 * callee fails with the `CycleDetectedError`, the caller that catches it gets it and returns —
 * nothing hangs, and the failed record is logged. What the record shows afterwards: nothing when
 * the write was refused (it is not tried again), the cycle with its path otherwise (applied; or
 * written once the store is up again, when the runner tries the callee's start again).
 */
import { caughtCycle } from "./_contract_cycles.ts";
import { within } from "./_deadline.ts";
import { collect } from "./_contract_routing.ts";
import {
  assertNoProblems,
  FaultPlan,
  faultScenarios,
  type FaultyAppFactory,
  ORCHESTRATOR,
  RUNNER,
} from "./_faults.ts";
import { CycleDetectedError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";

const SCENARIO_DEADLINE_MS = 30_000;

/** What one scenario saw. */
interface Facts {
  readonly plan: FaultPlan;
  /** What the outer `a` returned, or the error its `result()` rejected with. */
  readonly outer: unknown;
  /** What the caller `b` caught from the inner `a`'s `result()`. */
  readonly caught: unknown;
  /** The inner `a`'s last status and its error's name. */
  readonly inner: { readonly status: string; readonly error: string | undefined } | undefined;
  /** The labels of the refused cycles listed afterwards. */
  readonly listed: readonly (readonly string[])[];
  /** Whether the logger was told that a cycle could not be recorded. */
  readonly recordFailed: boolean;
}

async function runScenario(
  makeApp: FaultyAppFactory,
  appId: string,
  plan: FaultPlan,
): Promise<Facts> {
  const logged: string[] = [];
  const logger: Logger = {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (message) => void logged.push(message),
  };
  const app = await makeApp(plan, { appId, orchestrator: ORCHESTRATOR, logger });
  let caught: unknown;
  const { a } = caughtCycle(app, (error) => caught = error);
  plan.arm();
  const runner = app.runner(RUNNER);
  runner.start();
  let outer: unknown;
  try {
    const invocation = await a.call({ n: 1 });
    outer = await within(
      invocation.result().catch((error: unknown) => error),
      SCENARIO_DEADLINE_MS,
      "the outer invocation to end",
    );
  } finally {
    await within(runner.stop(), SCENARIO_DEADLINE_MS, "the runner to stop");
  }
  await plan.outageOver();
  const store = app.orchestrator.store;
  const [record] = await collect(
    store.find({ taskId: "a", statuses: new Set(["failed", "success"] as const) }),
  ).then((records) => records.filter((record) => record.parentId !== null));
  const listed = (await store.cycles()).map((cycle) => cycle.labels);
  return {
    plan,
    outer,
    caught,
    inner: record && { status: record.status, error: record.error?.name },
    listed,
    recordFailed: logged.some((message) => message.startsWith("could not record the cycle")),
  };
}

/** Every broken promise of one scenario, one line each. */
function judge(facts: Facts): void {
  const { plan } = facts;
  const problems: string[] = [];
  if (plan.kind !== "none" && plan.firedAtMs === undefined) {
    problems.push("the fault was never injected: no cycle was recorded after arming");
  }
  if (facts.outer !== "caught") problems.push(`the outer a ended with ${String(facts.outer)}`);
  if (!(facts.caught instanceof CycleDetectedError)) {
    problems.push(`the caller caught ${String(facts.caught)}, not the CycleDetectedError`);
  }
  if (facts.inner?.status !== "failed" || facts.inner.error !== "CycleDetectedError") {
    problems.push(`the inner a ended ${facts.inner?.status} with ${facts.inner?.error}`);
  }
  const expected = plan.kind === "refuse" ? [] : [['b({"n":1})', 'a({"n":1})']];
  if (JSON.stringify(facts.listed) !== JSON.stringify(expected)) {
    problems.push(`listed ${JSON.stringify(facts.listed)}, expected ${JSON.stringify(expected)}`);
  }
  if (facts.recordFailed !== (plan.kind !== "none")) {
    problems.push(`a failed record was ${facts.recordFailed ? "" : "not "}logged`);
  }
  assertNoProblems(plan, problems);
}

/**
 * Registers the cycle record's fault contract for one backend: the record meets every fault, and
 * a control run without one.
 */
export function cycleFaultContract(backend: string, makeApp: FaultyAppFactory): void {
  const ending =
    "the callee fails with the CycleDetectedError and its caller catches that error, nothing hangs";
  faultScenarios(
    (fault) => `[${backend}] cycles: the record of a refused cycle ${fault}: ${ending}`,
    (kind) => runScenario(makeApp, `cycle-faults-${kind}`, new FaultPlan("cycle", kind)),
    judge,
  );
}
