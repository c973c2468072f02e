/**
 * The fault-injection contract of cron schedules (issue #11): the two atomic steps they add — a
 * tick fired (`Store.fireTick`: its claim, the schedule's last tick and its invocation) and a
 * schedule stored (`Store.putSchedule`) — each meet the three faults of `tests/_faults.ts`:
 * refused and not applied; applied, then reported failed; the store down for 2 s. In every case,
 * with a deadline on every wait: every tick from the first to the last fired has exactly one
 * invocation, run once, and the schedule as stored names the last of them.
 *
 * Two runners share the app and race for every tick of a schedule that ticks every second; its
 * `misfireMs` (30 s) outlasts the outage, so the ticks due while the store was down fire after
 * it: a gap is a lost tick. `schedule()` is retried by its caller, as a start-up script would:
 * a fault of a call outside a task is the caller's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Schedule } from "../core/schedules.ts";
import type { InvocationRecord } from "../core/store.ts";
import type { TaskContext } from "../core/task.ts";
import { waitUntil, within } from "./_deadline.ts";
import {
  assertNoProblems,
  FAULT_KINDS,
  type FaultKind,
  FaultPlan,
  type FaultyAppFactory,
  ORCHESTRATOR,
  OUTAGE_MS,
  RUNNER,
  type ScheduleWrite,
} from "./_faults.ts";

const STEP_DEADLINE_MS = 8_000;
const SCENARIO_DEADLINE_MS = 30_000;
/** Ticks that must fire after the outage (or the fault) before the scenario ends. */
const TICKS_AFTER = 3;

const DEFINITION = { cron: "* * * * * *", task: "beat", misfireMs: 30_000 } as const;

/** What one scenario saw. */
interface Facts {
  readonly plan: FaultPlan;
  /** The invocations of the schedule's task. */
  readonly invocations: readonly InvocationRecord[];
  /** How many times each tick ran, from the task's own count. */
  readonly runs: ReadonlyMap<number, number>;
  /** The schedule as stored once the runners stopped. */
  readonly final: Schedule | undefined;
  /** The schedules as stored at the end, after `unschedule()`. */
  readonly schedules: readonly Schedule[];
  /** The schedule as read right after a fault of `schedule()`, before the caller's retry. */
  readonly storedBeforeRetry: Schedule | undefined;
  /** What the caller's retry of `schedule()` resolved to. */
  readonly stored: Schedule;
}

const isInjected = (error: unknown): boolean =>
  error instanceof Error && /injected store fault/.test(error.message);

async function runScenario(
  makeApp: FaultyAppFactory,
  appId: string,
  plan: FaultPlan,
): Promise<Facts> {
  const app = await makeApp(plan, { appId, orchestrator: ORCHESTRATOR });
  const runs = new Map<number, number>();
  app.task("beat", (_args: undefined, ctx: TaskContext) => {
    runs.set(ctx.scheduledAt!, (runs.get(ctx.scheduledAt!) ?? 0) + 1);
  });
  if (plan.write === "schedule") plan.arm();
  let stored: Schedule | undefined;
  let storedBeforeRetry: Schedule | undefined;
  await waitUntil(async () => {
    try {
      stored = await app.schedule("beat", DEFINITION);
      return true;
    } catch (error) {
      if (!isInjected(error)) throw error;
      if (plan.kind === "applied") {
        storedBeforeRetry = (await app.orchestrator.store.schedules())[0];
      }
      return false;
    }
  }, { message: "schedule() never landed", intervalMs: 100, timeoutMs: STEP_DEADLINE_MS });
  if (plan.write === "tick") plan.arm();
  const runners = [app.runner(RUNNER), app.runner(RUNNER)];
  for (const runner of runners) runner.start();
  try {
    // Until the fault fired, the store is up again, and TICKS_AFTER more ticks fired.
    const startedMs = Date.now();
    await waitUntil(async () => {
      if (plan.down) return false;
      const fromMs = plan.kind === "none" || plan.write === "schedule"
        ? startedMs
        : plan.firedAtMs === undefined
        ? Infinity
        : plan.firedAtMs + (plan.kind === "down" ? OUTAGE_MS : 0);
      const lastTickMs = (await app.orchestrator.store.schedules())[0]?.lastTickMs ?? -Infinity;
      return lastTickMs >= fromMs + TICKS_AFTER * 1_000;
    }, { message: "the ticks never went on", intervalMs: 50, timeoutMs: SCENARIO_DEADLINE_MS });
  } finally {
    await within(
      Promise.all(runners.map((runner) => runner.stop())),
      STEP_DEADLINE_MS,
      "the runners to stop",
    );
  }
  // No runner fires any more: the schedule names the last tick fired. Then no tick fires at all,
  // and a runner runs what was fired and not run yet.
  const final = (await app.orchestrator.store.schedules())[0];
  await within(app.unschedule("beat"), STEP_DEADLINE_MS, "unschedule()");
  await within(app.runner(RUNNER).drain(), STEP_DEADLINE_MS, "the last runs");
  const invocations: InvocationRecord[] = [];
  for await (const record of app.orchestrator.store.find({ taskId: "beat" })) {
    invocations.push(record);
  }
  return {
    plan,
    invocations,
    runs,
    final,
    schedules: await app.orchestrator.store.schedules(),
    storedBeforeRetry,
    stored: stored!,
  };
}

/** Every broken promise of one scenario, one line each. */
function judge(facts: Facts): void {
  const { plan } = facts;
  assert.ok(
    plan.kind === "none" || plan.firedAtMs !== undefined,
    `the fault was never injected: no ${plan.write} write reached the store after arming`,
  );
  const problems: string[] = [];
  const ticks = facts.invocations.map((record) => record.scheduledAtMs!).sort((a, b) => a - b);
  const first = ticks[0]!;
  const seconds = ticks.map((tickMs) => (tickMs - first) / 1_000);
  const expected = Array.from({ length: ticks.length }, (_, i) => i);
  if (ticks.length === 0) problems.push("no tick fired");
  else if (seconds.join() !== expected.join()) {
    problems.push(`ticks fired (seconds after the first): ${seconds.join(", ")}, not each once`);
  }
  for (const record of facts.invocations) {
    const runs = facts.runs.get(record.scheduledAtMs!) ?? 0;
    if (runs !== 1) problems.push(`tick ${record.scheduledAtMs} ran ${runs} times`);
    if (record.status !== "success") {
      problems.push(`tick ${record.scheduledAtMs} ended ${record.status}`);
    }
  }
  if (facts.schedules.length !== 0) problems.push("the schedule outlived unschedule()");
  if (facts.stored.lastTickMs !== null) problems.push("a new schedule had a last tick");
  if (
    facts.storedBeforeRetry !== undefined &&
    JSON.stringify(facts.storedBeforeRetry) !== JSON.stringify(facts.stored)
  ) {
    problems.push(
      `the retry of schedule() rewrote what the applied try stored: ${
        JSON.stringify(facts.storedBeforeRetry)
      } became ${JSON.stringify(facts.stored)}`,
    );
  }
  if (
    plan.write === "schedule" && plan.kind === "applied" && facts.storedBeforeRetry === undefined
  ) {
    problems.push("the applied schedule() was not stored");
  }
  const last = facts.invocations.find((record) => record.scheduledAtMs === ticks.at(-1));
  const { lastTickMs, lastInvocationId } = facts.final ?? {};
  if (last !== undefined && (lastTickMs !== last.scheduledAtMs || lastInvocationId !== last.id)) {
    problems.push(
      `the schedule's last tick is ${lastTickMs} (${lastInvocationId}), not ${last.scheduledAtMs} (${last.id})`,
    );
  }
  assertNoProblems(plan, problems);
}

const WRITES: readonly { write: ScheduleWrite; label: string }[] = [
  { write: "tick", label: "a tick fired (claim, last tick, invocation)" },
  { write: "schedule", label: "schedule() storing a schedule" },
];

/**
 * Registers the schedule fault contract for one backend: both writes × every fault, and a control
 * run without one. The first test starts every scenario of the backend at once.
 */
export function scheduleFaultContract(backend: string, makeApp: FaultyAppFactory): void {
  const ending =
    "every tick from the first to the last fired has one invocation, run once, and the schedule names the last";
  const cases = [
    {
      write: "tick" as ScheduleWrite,
      kind: "none" as FaultKind,
      name:
        `[${backend}] schedules: control without a fault, two runners and a tick every second: ${ending}`,
    },
    ...WRITES.flatMap(({ write, label }) =>
      FAULT_KINDS.map(({ kind, fault }) => ({
        write,
        kind,
        name: `[${backend}] schedules: ${label} ${fault}: ${ending}`,
      }))
    ),
  ];
  type Settled = { ok: true; value: Facts } | { ok: false; error: unknown };
  let all: Map<string, Promise<Settled>> | undefined;
  const start = (): Map<string, Promise<Settled>> =>
    new Map(cases.map(({ write, kind }, i) => [
      `${write}/${kind}`,
      runScenario(makeApp, `schedule-faults-${i}-${write}-${kind}`, new FaultPlan(write, kind))
        .then(
          (value): Settled => ({ ok: true, value }),
          (error): Settled => ({ ok: false, error }),
        ),
    ]));
  for (const { write, kind, name } of cases) {
    test(name, async () => {
      all ??= start();
      const facts = await all.get(`${write}/${kind}`)!;
      if (!facts.ok) throw facts.error;
      judge(facts.value);
    });
  }
}
