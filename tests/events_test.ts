/**
 * Logs and events (SPEC §7.4): `app.on` / `app.off`, the events of every transition this process
 * makes (checked against the stored history, on memory and on Deno KV), runner events, and what
 * the app's logger receives; `createLogger` and `NENC_LOG_LEVEL`.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { Nenc, type NencOptions } from "../core/app.ts";
import { CanceledError, RetryError } from "../core/errors.ts";
import type { InvocationEvent, RunnerEvent } from "../core/events.ts";
import type { Invocation } from "../core/invocation.ts";
import { createLogger, type LogFields, type Logger } from "../core/log.ts";
import type { TaskContext } from "../core/task.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { FakeClock } from "./_fake_clock.ts";
import { openTestKv, type TestKv } from "./_kv.ts";

/** One message a {@linkcode capturingLogger} received. */
interface LogLine {
  readonly level: string;
  readonly message: string;
  readonly fields: LogFields | undefined;
}

/** A logger that keeps every message, at every level. */
function capturingLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (message: string, fields?: LogFields): void =>
    void lines.push({ level, message, fields });
  return {
    logger: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") },
    lines,
  };
}

/** Every event of `app`, as it comes. */
function recordEvents(app: Nenc): { invocations: InvocationEvent[]; runners: RunnerEvent[] } {
  const invocations: InvocationEvent[] = [];
  const runners: RunnerEvent[] = [];
  app.on("invocation", (event) => void invocations.push(event));
  app.on("runner", (event) => void runners.push(event));
  return { invocations, runners };
}

/** `previous → status` of each event of one invocation, in order. */
function steps(events: readonly InvocationEvent[], id: string): string[] {
  return events.filter((event) => event.id === id).map((event) =>
    `${event.previous} → ${event.status}`
  );
}

/**
 * The events of `invocation` are its stored history, one for one: the same statuses in order,
 * each with the status before it, the runner and the time of its entry (one process made them all).
 */
async function assertEventsAreHistory(
  events: readonly InvocationEvent[],
  invocation: Invocation<unknown>,
): Promise<void> {
  const history = await invocation.history();
  const mine = events.filter((event) => event.id === invocation.id);
  assert.deepEqual(
    mine,
    history.map((entry, i) => ({
      id: invocation.id,
      taskId: invocation.taskId,
      status: entry.status,
      previous: i === 0 ? null : history[i - 1]!.status,
      runnerId: entry.runnerId,
      at: entry.timestampMs,
    })),
  );
}

const opened: TestKv[] = [];
after(() => {
  for (const kv of opened) kv.close();
});

const backends: readonly [string, (options: NencOptions) => Promise<Nenc>][] = [
  ["memory", (options) => Promise.resolve(new Nenc(options))],
  ["kv :memory:", async (options) => {
    const kv = await openTestKv(":memory:");
    opened.push(kv);
    return new Nenc({ ...options, kv });
  }],
];

for (const [backend, makeApp] of backends) {
  test(`[${backend}] events: a success is registered → pending → running → success, each event its history entry; the runner starts and stops; nothing is logged at info or above`, async () => {
    const { logger, lines } = capturingLogger();
    const app = await makeApp({ logger });
    const { invocations, runners } = recordEvents(app);
    const ping = app.task("ping", () => "pong");
    const invocation = await ping.call();
    await app.runner({ runnerId: "r1" }).drain({ maxMs: DEADLINE_MS });
    assert.deepEqual(steps(invocations, invocation.id), [
      "null → registered",
      "registered → pending",
      "pending → running",
      "running → success",
    ]);
    await assertEventsAreHistory(invocations, invocation);
    assert.deepEqual(runners, [
      { runnerId: "r1", event: "started" },
      { runnerId: "r1", event: "stopped" },
    ]);
    assert.deepEqual(lines.filter((line) => line.level !== "debug"), []);
  });

  test(`[${backend}] events and logs: a failure ends running → failed, and the logger gets one error naming the invocation, its task, the runner and the error`, async () => {
    const { logger, lines } = capturingLogger();
    const app = await makeApp({ logger });
    const { invocations } = recordEvents(app);
    const pay = app.task("pay", ({ card }: { card: string }): string => {
      throw new RangeError(`Cannot pay with card ${card}: declined`);
    });
    const invocation = await pay.call({ card: "4242" });
    await app.runner({ runnerId: "r1" }).drain({ maxMs: DEADLINE_MS });
    assert.deepEqual(steps(invocations, invocation.id).slice(-1), ["running → failed"]);
    await assertEventsAreHistory(invocations, invocation);
    const errors = lines.filter((line) => line.level === "error");
    assert.deepEqual(errors, [{
      level: "error",
      message:
        `invocation ${invocation.id} (task pay) failed: RangeError: Cannot pay with card 4242: declined`,
      fields: {
        runnerId: "r1",
        invocationId: invocation.id,
        taskId: "pay",
        attempt: 1,
        retried: false,
        error: { name: "RangeError", message: "Cannot pay with card 4242: declined" },
      },
    }]);
  });

  test(`[${backend}] events and logs: a retried attempt goes running → retry → pending → running → success, and is logged as a warning with its attempt`, async () => {
    const { logger, lines } = capturingLogger();
    const app = await makeApp({ logger });
    const { invocations } = recordEvents(app);
    let runs = 0;
    const flaky = app.task("flaky", (): string => {
      if (++runs === 1) throw new RetryError("Cannot connect yet");
      return "connected";
    }, { maxRetries: 1 });
    const invocation = await flaky.call();
    await app.runner({ runnerId: "r1" }).drain({ maxMs: DEADLINE_MS });
    assert.deepEqual(steps(invocations, invocation.id), [
      "null → registered",
      "registered → pending",
      "pending → running",
      "running → retry",
      "retry → pending",
      "pending → running",
      "running → success",
    ]);
    await assertEventsAreHistory(invocations, invocation);
    const warnings = lines.filter((line) => line.level === "warn");
    assert.equal(warnings.length, 1);
    assert.equal(
      warnings[0]!.message,
      `invocation ${invocation.id} (task flaky) failed (attempt 1, retried): RetryError: Cannot connect yet`,
    );
    assert.equal(warnings[0]!.fields?.retried, true);
  });

  test(`[${backend}] events: a parent awaiting its child pauses and resumes; the child, registered by the parent's runner, runs meanwhile`, async () => {
    const app = await makeApp({ logger: capturingLogger().logger });
    const { invocations } = recordEvents(app);
    const child = app.task("child", ({ i }: { i: number }) => i * 2);
    const parent = app.task("parent", async (): Promise<number> => {
      return await (await child.call({ i: 21 })).result();
    });
    const invocation = await parent.call();
    await app.runner({ runnerId: "r1" }).drain({ maxMs: DEADLINE_MS });
    assert.equal(await invocation.result(), 42);
    assert.deepEqual(steps(invocations, invocation.id), [
      "null → registered",
      "registered → pending",
      "pending → running",
      "running → paused",
      "paused → resumed",
      "resumed → success",
    ]);
    await assertEventsAreHistory(invocations, invocation);
    const childId = invocations.find((event) => event.taskId === "child")!.id;
    const childInvocation = await app.orchestrator.getInvocation(childId);
    await assertEventsAreHistory(invocations, childInvocation!);
    const registered = invocations.find((event) => event.id === childId)!;
    assert.equal(registered.runnerId, "r1", "the child is registered by the parent's runner");
    // The child ran while the parent was paused: in between, in the events' order.
    const order = invocations.map((event) => `${event.taskId} ${event.status}`);
    assert.ok(order.indexOf("parent paused") < order.indexOf("child running"));
    assert.ok(order.indexOf("child success") < order.indexOf("parent resumed"));
  });

  test(`[${backend}] events and logs: a cancel of a running invocation is running → canceled by no runner, logged by the canceller and by the runner once its function returned`, async () => {
    const { logger, lines } = capturingLogger();
    const app = await makeApp({ logger });
    const { invocations } = recordEvents(app);
    const job = app.task("job", async (_args: undefined, ctx: TaskContext) => {
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      return "stopped";
    });
    await using runner = app.runner({ runnerId: "r1", pollMs: 5 });
    runner.start();
    const invocation = await job.call();
    await waitUntil(async () => await invocation.status() === "running", {
      message: "the job runs",
    });
    assert.equal(await invocation.cancel({ reason: "not needed" }), true);
    assert.ok(
      await invocation.result().catch((error: unknown) => error) instanceof CanceledError,
    );
    await waitUntil(() => lines.some((line) => line.message.includes("canceled while it ran")), {
      message: "the runner logs the end of the canceled execution",
    });
    assert.deepEqual(steps(invocations, invocation.id).slice(-1), ["running → canceled"]);
    assert.equal(invocations.at(-1)!.runnerId, null);
    await assertEventsAreHistory(invocations, invocation);
    const infos = lines.filter((line) => line.level === "info").map((line) => line.message);
    assert.deepEqual(infos, [
      `invocation ${invocation.id} (task job) canceled: not needed`,
      `invocation ${invocation.id} (task job) canceled while it ran here: CanceledError: ${
        new CanceledError(invocation.id, "not needed").message
      }; its function has returned`,
    ]);
  });

  test(`[${backend}] events: a stopping runner hands back what still runs: running → killed → rerouted, by that runner`, async () => {
    const app = await makeApp({ logger: capturingLogger().logger });
    const { invocations } = recordEvents(app);
    let started!: () => void;
    const running = new Promise<void>((resolve) => started = resolve);
    const job = app.task("job", async (_args: undefined, ctx: TaskContext) => {
      started();
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
    });
    const runner = app.runner({ runnerId: "r1" });
    runner.start();
    const invocation = await job.call();
    await within(running, DEADLINE_MS, "the job runs");
    await runner.stop({ graceMs: 0 });
    assert.deepEqual(steps(invocations, invocation.id).slice(-2), [
      "running → killed",
      "killed → rerouted",
    ]);
    await assertEventsAreHistory(invocations, invocation);
  });
}

test("events: the upkeep recovers a dead runner's invocation (pending → pending_recovery → rerouted), reports the runner dead, and logs the recovery naming the dead runner", async () => {
  const clock = new FakeClock();
  const { logger, lines } = capturingLogger();
  const app = new Nenc({ clock, logger });
  const { invocations, runners } = recordEvents(app);
  const job = app.task("job", () => 1);
  const invocation = await job.call();
  // A runner of another process claims it, beats once, and dies.
  await app.orchestrator.getInvocationsToRun(1, { runnerId: "ghost" });
  await app.orchestrator.store.heartbeat("ghost", clock.now());
  clock.advance(app.orchestrator.options.runnerTimeoutSeconds * 1000 + 1);
  await app.orchestrator.recoverInvocations({ runnerId: "keeper" });
  assert.deepEqual(steps(invocations, invocation.id), [
    "null → registered",
    "registered → pending",
    "pending → pending_recovery",
    "pending_recovery → rerouted",
  ]);
  await assertEventsAreHistory(invocations, invocation);
  assert.deepEqual(runners, [{ runnerId: "ghost", event: "dead" }]);
  const warnings = lines.filter((line) => line.level === "warn");
  assert.deepEqual(warnings.map((line) => line.message), [
    `recovered invocation ${invocation.id} (task job) from runner ghost: it was pending; re-queued`,
    `runner ghost is presumed dead: no heartbeat for ${
      app.orchestrator.options.runnerTimeoutSeconds * 1000 + 1
    } ms; its invocations are recovered`,
  ]);
  assert.equal(warnings[0]!.fields?.fromRunnerId, "ghost");
  assert.equal(warnings[0]!.fields?.invocationId, invocation.id);
});

test("logs: a refused call cycle is logged at error with the invocation id and the cycle's path", async () => {
  const { logger, lines } = capturingLogger();
  const app = new Nenc({ logger });
  // deno-lint-ignore prefer-const
  let b: { call(args: { n: number }): Promise<Invocation<number>> };
  const a = app.task("a", async ({ n }: { n: number }): Promise<number> => {
    return await (await b.call({ n })).result();
  });
  b = app.task("b", async ({ n }: { n: number }): Promise<number> => {
    return await (await a.call({ n })).result();
  });
  const invocation = await a.call({ n: 1 });
  await app.runner({ runnerId: "r1", concurrency: 3 }).drain({ maxMs: DEADLINE_MS });
  assert.equal(await invocation.status(), "failed");
  const cycle = lines.find((line) => line.message.includes("call cycle"));
  assert.ok(cycle !== undefined, JSON.stringify(lines));
  assert.equal(cycle.level, "error");
  assert.match(
    cycle.message,
    /^invocation \w+ \(task a\) failed: it would close a call cycle: b\(\{"n":1\}\) → a\(\{"n":1\}\) → b\(\{"n":1\}\)$/,
  );
  assert.deepEqual(cycle.fields?.cycle, ['b({"n":1})', 'a({"n":1})']);
  assert.equal((cycle.fields?.error as { name: string }).name, "CycleDetectedError");
  assert.equal(cycle.fields?.runnerId, "r1");
});

test("app.off() stops delivery: a listener removed gets no more events, another one still does", async () => {
  const app = new Nenc({ logger: capturingLogger().logger });
  const removed: string[] = [];
  const kept: string[] = [];
  const listener = (event: InvocationEvent): void => void removed.push(event.status);
  app.on("invocation", listener);
  app.on("invocation", (event) => void kept.push(event.status));
  const ping = app.task("ping", () => "pong");
  await ping.call();
  app.off("invocation", listener);
  await ping.call();
  assert.deepEqual(removed, ["registered"]);
  assert.deepEqual(kept, ["registered", "registered"]);
});

test("a listener that throws (or rejects) breaks nothing: the run ends as usual, later listeners still get every event, and the logger gets each throw at error", async () => {
  const { logger, lines } = capturingLogger();
  const app = new Nenc({ logger });
  app.on("invocation", (event) => {
    if (event.status === "running") throw new Error("listener bug");
  });
  app.on("invocation", (event) => {
    return event.status === "success"
      ? Promise.reject(new TypeError("async listener bug"))
      : undefined;
  });
  const statuses: string[] = [];
  app.on("invocation", (event) => void statuses.push(event.status));
  const ping = app.task("ping", () => "pong");
  const invocation = await ping.call();
  await app.runner().drain({ maxMs: DEADLINE_MS });
  assert.equal(await invocation.result(), "pong");
  assert.deepEqual(statuses, ["registered", "pending", "running", "success"]);
  const errors = (): LogLine[] => lines.filter((line) => line.level !== "debug");
  await waitUntil(() => errors().length === 2, { message: "both listener errors are logged" });
  assert.deepEqual(errors().map((line) => [line.level, line.message]), [
    ["error", "a listener of event invocation threw: Error: listener bug"],
    ["error", "a listener of event invocation threw: TypeError: async listener bug"],
  ]);
  assert.equal((errors()[0]!.fields?.payload as InvocationEvent).id, invocation.id);
});

test("app.on() and app.off() refuse an unknown event with a TypeError naming the events", () => {
  const app = new Nenc();
  assert.throws(
    () => app.on("invocations" as "invocation", () => {}),
    {
      name: "TypeError",
      message: /Cannot add listeners to event "invocations": the events are invocation, runner/,
    },
  );
  assert.throws(() => app.off("nope" as "runner", () => {}), TypeError);
});

test("new Nenc({ logger }) and app.logger = … refuse an object without the four methods", () => {
  const partial = { info() {}, warn() {}, error() {} } as unknown as Logger;
  assert.throws(() => new Nenc({ logger: partial }), {
    name: "TypeError",
    message:
      "Cannot create the app: the logger must have debug, info, warn and error methods (debug is missing)",
  });
  const app = new Nenc();
  assert.throws(() => app.logger = partial, /Cannot set the logger: /);
  const { logger } = capturingLogger();
  app.logger = logger;
  assert.equal(app.logger, logger);
});

/** Runs `fn` with `NENC_LOG_LEVEL` set to `value` (unset for `undefined`), then restores it. */
function withLogLevel<T>(value: string | undefined, fn: () => T): T {
  const before = process.env.NENC_LOG_LEVEL;
  if (value === undefined) delete process.env.NENC_LOG_LEVEL;
  else process.env.NENC_LOG_LEVEL = value;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env.NENC_LOG_LEVEL;
    else process.env.NENC_LOG_LEVEL = before;
  }
}

/** The levels a logger made by `make` writes, of one message at each level. */
function levelsWritten(make: (write: (level: string) => void) => Logger): string[] {
  const written: string[] = [];
  const logger = make((level) => written.push(level));
  logger.debug("d");
  logger.info("i");
  logger.warn("w");
  logger.error("e");
  return written;
}

test("createLogger() writes at NENC_LOG_LEVEL and above (info when unset; silent writes nothing); an explicit level wins", () => {
  const fromEnvironment = (value: string | undefined): string[] =>
    withLogLevel(value, () => levelsWritten((write) => createLogger({ write })));
  assert.deepEqual(fromEnvironment(undefined), ["info", "warn", "error"]);
  assert.deepEqual(fromEnvironment("debug"), ["debug", "info", "warn", "error"]);
  assert.deepEqual(fromEnvironment("WARN"), ["warn", "error"]);
  assert.deepEqual(fromEnvironment("error"), ["error"]);
  assert.deepEqual(fromEnvironment("silent"), []);
  assert.deepEqual(
    withLogLevel("error", () => levelsWritten((write) => createLogger({ level: "debug", write }))),
    ["debug", "info", "warn", "error"],
  );
});

test("createLogger(): a NENC_LOG_LEVEL that is no level means info, with one console warning per bad value; an explicit bad level is a RangeError", () => {
  const original = console.warn;
  const warnings: unknown[][] = [];
  console.warn = (...args: unknown[]) => void warnings.push(args);
  try {
    const levels = withLogLevel("verbose", () => {
      const first = levelsWritten((write) => createLogger({ write }));
      levelsWritten((write) => createLogger({ write }));
      return first;
    });
    assert.deepEqual(levels, ["info", "warn", "error"]);
  } finally {
    console.warn = original;
  }
  assert.deepEqual(warnings, [[
    'nenc: NENC_LOG_LEVEL must be one of debug, info, warn, error, silent, got "verbose"; logging at info',
  ]]);
  assert.throws(() => createLogger({ level: "loud" as "info" }), {
    name: "RangeError",
    message:
      'Cannot create the logger: level must be one of debug, info, warn, error, silent, got "loud"',
  });
});

test("the default logger of an app writes to standard error (console.error) at every level from NENC_LOG_LEVEL: a retried attempt (warn) and a failure (error), with their fields", async () => {
  const original = console.error;
  const errors: unknown[][] = [];
  console.error = (...args: unknown[]) => void errors.push(args);
  try {
    const app = withLogLevel("warn", () => new Nenc());
    const pay = app.task("pay", (): string => {
      throw new RetryError("declined");
    }, { maxRetries: 1 });
    const invocation = await pay.call();
    await app.runner({ runnerId: "r1" }).drain({ maxMs: DEADLINE_MS });
    const fields = (attempt: number, retried: boolean) => ({
      runnerId: "r1",
      invocationId: invocation.id,
      taskId: "pay",
      attempt,
      retried,
      error: { name: "RetryError", message: "declined" },
    });
    assert.deepEqual(errors, [
      [
        `nenc warn: invocation ${invocation.id} (task pay) failed (attempt 1, retried): RetryError: declined`,
        fields(1, true),
      ],
      [
        `nenc error: invocation ${invocation.id} (task pay) failed: RetryError: declined`,
        fields(2, false),
      ],
    ]);
  } finally {
    console.error = original;
  }
});
