/**
 * OpenTelemetry (SPEC §7.4): the spans of runs and their links, through an SDK registered for this
 * file (`@opentelemetry/sdk-trace-base` with an in-memory exporter, `@opentelemetry/sdk-metrics`
 * with a reader collected by hand), and a parent and its child run in two processes on one KV
 * file, sharing one trace.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AsyncLocalStorage } from "node:async_hooks";
import {
  type Context,
  context,
  type ContextManager,
  metrics,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import {
  AggregationTemporality,
  type CollectionResult,
  type DataPoint,
  type Histogram,
  MeterProvider,
  MetricReader,
} from "@opentelemetry/sdk-metrics";
import { Nenc } from "../core/app.ts";
import { RetryError } from "../core/errors.ts";
import { FakeClock } from "./_fake_clock.ts";
import { DEADLINE_MS, LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import type { CrossProcessSpan } from "./_otel_worker.ts";

const spans = new InMemorySpanExporter();
const tracerProvider = new BasicTracerProvider({
  spanProcessors: [new SimpleSpanProcessor(spans)],
});
trace.setGlobalTracerProvider(tracerProvider);

/**
 * A metric reader the test collects by hand. Delta: a collection holds what was recorded or
 * observed since the one before (a stopped runner's gauges are not observed any more).
 */
class TestReader extends MetricReader {
  protected onShutdown(): Promise<void> {
    return Promise.resolve();
  }
  protected onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
}
const reader = new TestReader({
  aggregationTemporalitySelector: () => AggregationTemporality.DELTA,
});
metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));

// Bun runs every test file in one process: the next files see no SDK.
after(() => {
  trace.disable();
  metrics.disable();
});

/** A context manager on `AsyncLocalStorage`, as an SDK's for Node registers one. */
class TestContextManager implements ContextManager {
  readonly #storage = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.#storage.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    context: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return this.#storage.run(context, () => fn.call(thisArg, ...args));
  }
  bind<T>(_context: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.#storage.disable();
    return this;
  }
}

/** The finished spans, in the order they ended; the exporter is emptied for the next test. */
function finished(): ReadableSpan[] {
  const all = spans.getFinishedSpans();
  spans.reset();
  return all;
}

function named(all: readonly ReadableSpan[], name: string): ReadableSpan[] {
  return all.filter((span) => span.name === name);
}

/** The one span named `name`. */
function only(all: readonly ReadableSpan[], name: string): ReadableSpan {
  const [span, ...others] = named(all, name);
  assert.ok(span !== undefined && others.length === 0, `not one span named ${name}`);
  return span;
}

/** Nanoseconds of a span's time. */
function ns([seconds, nanos]: readonly [number, number]): number {
  return seconds * 1e9 + nanos;
}

test("a run has one span, named nenc <task id>, with the invocation's id, task id, call id, attempt 1, runner id and the status it ended in", async () => {
  finished();
  const app = new Nenc();
  const double = app.task("double", ({ n }: { n: number }) => 2 * n);
  const invocation = await double.call({ n: 21 });
  await app.runner({ runnerId: "runner-one" }).drain({ maxMs: DEADLINE_MS });
  assert.equal(await invocation.result(), 42);
  const [span, ...others] = finished();
  assert.deepEqual(others, []);
  assert.equal(span?.name, "nenc double");
  assert.equal(span.kind, SpanKind.CONSUMER);
  assert.deepEqual(span.attributes, {
    "nenc.invocation_id": invocation.id,
    "nenc.task_id": "double",
    "nenc.call_id": invocation.callId,
    "nenc.attempt": 1,
    "nenc.runner_id": "runner-one",
    "nenc.status": "success",
  });
  assert.equal(span.status.code, SpanStatusCode.UNSET);
  assert.equal(span.parentSpanContext, undefined);
  assert.deepEqual(span.events, []);
});

test("an SDK registered after runs made without one gets the spans of the runs after it", async () => {
  trace.disable();
  try {
    finished();
    const app = new Nenc();
    const double = app.task("double", ({ n }: { n: number }) => 2 * n);
    const before = await double.call({ n: 1 });
    await app.runner().drain({ maxMs: DEADLINE_MS });
    assert.equal(await before.result(), 2);
    assert.deepEqual(finished(), [], "no SDK: no span");
    assert.ok(trace.setGlobalTracerProvider(tracerProvider));
    const after = await double.call({ n: 2 });
    await app.runner().drain({ maxMs: DEADLINE_MS });
    assert.equal(await after.result(), 4);
    const [span, ...others] = finished();
    assert.deepEqual(others, []);
    assert.equal(span?.attributes["nenc.invocation_id"], after.id);
  } finally {
    trace.disable();
    trace.setGlobalTracerProvider(tracerProvider);
  }
});

test("the span of a call made inside a task is a child of its caller's span, in its trace; the caller's span has a pause event naming what it waits for, then a resume event, around the child's run", async () => {
  finished();
  const app = new Nenc();
  const child = app.task("child", ({ n }: { n: number }) => n + 1);
  const parent = app.task("parent", async () => {
    const invocation = await child.call({ n: 1 });
    return { child: invocation.id, result: await invocation.result() };
  });
  const invocation = await parent.call();
  // One slot: the child runs in the slot its paused parent freed.
  await app.runner({ concurrency: 1 }).drain({ maxMs: DEADLINE_MS });
  const { child: childId, result } = await invocation.result();
  assert.equal(result, 2);
  const all = finished();
  const parentSpan = only(all, "nenc parent");
  const childSpan = only(all, "nenc child");
  assert.equal(all.length, 2);
  assert.equal(childSpan.attributes["nenc.invocation_id"], childId);
  assert.equal(childSpan.spanContext().traceId, parentSpan.spanContext().traceId);
  assert.equal(childSpan.parentSpanContext?.spanId, parentSpan.spanContext().spanId);
  assert.equal(parentSpan.parentSpanContext, undefined);
  assert.deepEqual(
    parentSpan.events.map(({ name, attributes }) => [name, attributes]),
    [["nenc.pause", { "nenc.waiting_for": [childId] }], ["nenc.resume", {}]],
  );
  const [pause, resume] = parentSpan.events;
  // The SDK starts each span's clock at Date.now(), whole milliseconds, and times its events from
  // there with performance.now(): times of two spans compare to within 1 ms.
  const ms = 1e6;
  assert.ok(
    ns(pause!.time) <= ns(childSpan.startTime) + ms,
    "the child ran before its caller paused",
  );
  assert.ok(
    ns(childSpan.startTime) <= ns(resume!.time) + ms,
    "its caller resumed before the child ran",
  );
});

test("a failed run's span has status ERROR with the error's name and message, the error as an exception event, and nenc.status failed", async () => {
  finished();
  const app = new Nenc();
  const check = app.task("check", () => {
    throw new TypeError("no such order");
  });
  const invocation = await check.call();
  await app.runner().drain({ maxMs: DEADLINE_MS });
  await assert.rejects(invocation.result(), TypeError);
  const [span, ...others] = finished();
  assert.deepEqual(others, []);
  assert.equal(span?.attributes["nenc.status"], "failed");
  assert.deepEqual(span.status, {
    code: SpanStatusCode.ERROR,
    message: "TypeError: no such order",
  });
  const [exception, ...more] = span.events;
  assert.deepEqual(more, []);
  assert.equal(exception?.name, "exception");
  assert.equal(exception.attributes?.["exception.type"], "TypeError");
  assert.equal(exception.attributes?.["exception.message"], "no such order");
});

test("a canceled run's span ends with nenc.status canceled, and a run a stopping runner handed back with rerouted; neither is an error", async () => {
  finished();
  const app = new Nenc();
  const wait = app.task("wait", async (_args: { n: number }, ctx) => {
    await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
  });
  const canceled = await wait.call({ n: 1 });
  const handedBack = await wait.call({ n: 2 });
  const runner = app.runner({ concurrency: 2 });
  runner.start();
  const running = (invocation: typeof canceled) => async () =>
    await invocation.status() === "running";
  await waitUntil(running(canceled), { message: "the first never ran" });
  await waitUntil(running(handedBack), { message: "the second never ran" });
  await canceled.cancel();
  await waitUntil(() => spans.getFinishedSpans().length === 1, {
    message: "the canceled run's span never ended",
  });
  await runner.stop({ graceMs: 0 });
  assert.equal(await handedBack.status(), "rerouted");
  assert.deepEqual(
    finished().map((span) => [
      span.attributes["nenc.invocation_id"],
      span.attributes["nenc.status"],
      span.status.code,
    ]),
    [[canceled.id, "canceled", SpanStatusCode.UNSET], [
      handedBack.id,
      "rerouted",
      SpanStatusCode.UNSET,
    ]],
  );
});

test("a retried invocation has a span per run, attempt 1 (status retry, its error recorded) then attempt 2 (success), both children of its caller's span", async () => {
  finished();
  const app = new Nenc();
  const flaky = app.task("flaky", (_args: undefined, ctx) => {
    if (ctx.attempt === 0) throw new RetryError("the first run fails");
    return "ok";
  }, { maxRetries: 1 });
  const caller = app.task("caller", async () => await (await flaky.call()).result());
  const invocation = await caller.call();
  await app.runner({ concurrency: 2 }).drain({ maxMs: DEADLINE_MS });
  assert.equal(await invocation.result(), "ok");
  const all = finished();
  const callerSpan = only(all, "nenc caller");
  const runs = named(all, "nenc flaky");
  assert.deepEqual(
    runs.map((span) => [
      span.attributes["nenc.attempt"],
      span.attributes["nenc.status"],
      span.status.code,
      span.events.map(({ name }) => name),
      span.parentSpanContext?.spanId,
    ]),
    [
      [1, "retry", SpanStatusCode.ERROR, ["exception"], callerSpan.spanContext().spanId],
      [2, "success", SpanStatusCode.UNSET, [], callerSpan.spanContext().spanId],
    ],
  );
  assert.equal(new Set(runs.map((span) => span.attributes["nenc.invocation_id"])).size, 1);
});

test("a call made in user code under an active span (with a context manager) is run in a child of that span; inside the task, its run's span is the active one", async () => {
  finished();
  const manager = new TestContextManager();
  context.setGlobalContextManager(manager);
  try {
    const app = new Nenc();
    const activeInTask: string[] = [];
    const job = app.task("job", () => {
      activeInTask.push(trace.getActiveSpan()?.spanContext().spanId ?? "none");
    });
    const tracer = trace.getTracer("test");
    const invocation = await tracer.startActiveSpan("request", async (span) => {
      try {
        return await job.call();
      } finally {
        span.end();
      }
    });
    // Started under another span: the run's parent is still the one stored with the invocation.
    await tracer.startActiveSpan("unrelated", async (span) => {
      await app.runner().drain({ maxMs: DEADLINE_MS });
      span.end();
    });
    await invocation.result();
    const all = finished();
    const request = only(all, "request");
    const run = only(all, "nenc job");
    assert.equal(run.spanContext().traceId, request.spanContext().traceId);
    assert.equal(run.parentSpanContext?.spanId, request.spanContext().spanId);
    assert.deepEqual(activeInTask, [run.spanContext().spanId]);
  } finally {
    context.disable();
  }
});

test("a tick of a schedule fired under an active span starts a trace of its own: its invocation stores no trace context", async () => {
  const manager = new TestContextManager();
  context.setGlobalContextManager(manager);
  try {
    const clock = new FakeClock(Date.UTC(2026, 0, 1, 12, 0, 0, 500));
    const app = new Nenc({ clock });
    app.task("beat", () => "beat");
    const schedule = await app.schedule("every-second", { cron: "* * * * * *", task: "beat" });
    clock.advance(500);
    const fired = await trace.getTracer("test").startActiveSpan("deploy", async (span) => {
      try {
        return await app.orchestrator.fireTick(schedule, clock.now(), { runnerId: "r1" });
      } finally {
        span.end();
      }
    });
    assert.ok(fired !== undefined, "the tick did not fire");
    assert.equal((await app.orchestrator.store.get(fired.invocation.id))?.trace, undefined);
  } finally {
    context.disable();
    finished();
  }
});

test("with no SDK registered, a run passes the trace context stored with its invocation on to what it calls (a process without an SDK keeps the trace whole); a call with no span active stores none", async () => {
  const provider = trace.getTracerProvider();
  trace.disable();
  const manager = new TestContextManager();
  context.setGlobalContextManager(manager);
  try {
    const app = new Nenc();
    const child = app.task("child", () => "child");
    const parent = app.task("parent", async () => (await child.call()).id);
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const remote = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      traceFlags: 1,
      isRemote: true,
    });
    const traced = await context.with(remote, () => parent.call());
    const untraced = await parent.call();
    await app.runner().drain({ maxMs: DEADLINE_MS });
    const stored = async (id: string): Promise<string | undefined> =>
      (await app.orchestrator.store.get(id))?.trace;
    assert.equal(await stored(traced.id), traceparent);
    assert.equal(await stored(await traced.result()), traceparent);
    assert.equal(await stored(untraced.id), undefined);
    assert.equal(await stored(await untraced.result()), undefined);
  } finally {
    context.disable();
    trace.setGlobalTracerProvider(provider);
  }
});

/** The data points of metric `name` in a collection. */
function points<T>(collected: CollectionResult, name: string): DataPoint<T>[] {
  return collected.resourceMetrics.scopeMetrics
    .flatMap(({ metrics }) => metrics)
    .filter(({ descriptor }) => descriptor.name === name)
    .flatMap(({ dataPoints }) => dataPoints as DataPoint<T>[]);
}

test("nenc.wait.duration records, per task, the ms from when an invocation was available to its run's start", async () => {
  const clock = new FakeClock();
  const app = new Nenc({ clock });
  const report = app.task("report", () => "pdf");
  await report.call();
  await report.call(undefined, { delayMs: 100 });
  clock.advance(250);
  await app.runner().drain({ maxMs: DEADLINE_MS });
  const [point, ...others] = points<Histogram>(await reader.collect(), "nenc.wait.duration")
    .filter(({ attributes }) => attributes["nenc.task_id"] === "report");
  assert.deepEqual(others, []);
  assert.deepEqual(
    [point?.value.count, point?.value.sum, point?.value.min, point?.value.max],
    [2, 400, 150, 250],
  );
});

test("nenc.invocations counts, by task and status, the transitions this process made, with no event listener: a retried invocation's registered, pending and running twice, retry, success", async () => {
  const app = new Nenc();
  const counted = app.task("counted", (_args: undefined, ctx) => {
    if (ctx.attempt === 0) throw new RetryError("once more");
  }, { maxRetries: 1 });
  await counted.call();
  await app.runner().drain({ maxMs: DEADLINE_MS });
  const counts = Object.fromEntries(
    points<number>(await reader.collect(), "nenc.invocations")
      .filter(({ attributes }) => attributes["nenc.task_id"] === "counted")
      .map(({ attributes, value }) => [attributes["nenc.status"], value]),
  );
  assert.deepEqual(counts, { registered: 1, pending: 2, running: 2, retry: 1, success: 1 });
  finished();
});

test("nenc.slots.in_use and nenc.queue.depth observe each live runner: the slots its executions hold, and its paused invocations waiting for a slot to go on", async () => {
  const app = new Nenc({ orchestrator: { blockingControl: false } });
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const blocker = app.task("blocker", () => released);
  const child = app.task("child", () => "child");
  const parent = app.task("parent", async () => await (await child.call()).result());
  // By priority, the one slot of "busy" runs the parent, then (the parent paused) the blocker.
  const invocation = await parent.call(undefined, { priority: 10 });
  const blocking = await blocker.call(undefined, { priority: 5 });
  const busy = app.runner({ concurrency: 1, runnerId: "busy" });
  busy.start();
  await waitUntil(async () => await blocking.status() === "running", {
    message: "the blocker never ran",
  });
  // The child runs elsewhere and ends: its parent waits for busy's slot, held by the blocker.
  const other = app.runner({ concurrency: 2, runnerId: "other" });
  other.start();
  const gauges = async (): Promise<Record<string, number | undefined>> => {
    const collected = await reader.collect();
    const of = (name: string, runnerId: string): number | undefined =>
      points<number>(collected, name).find(({ attributes }) =>
        attributes["nenc.runner_id"] === runnerId
      )?.value;
    return {
      busySlots: of("nenc.slots.in_use", "busy"),
      busyQueue: of("nenc.queue.depth", "busy"),
      otherSlots: of("nenc.slots.in_use", "other"),
      otherQueue: of("nenc.queue.depth", "other"),
    };
  };
  await waitUntil(async () => (await gauges()).busyQueue === 1, {
    message: "the parent never waited for a slot",
  });
  assert.deepEqual(await gauges(), { busySlots: 1, busyQueue: 1, otherSlots: 0, otherQueue: 0 });
  release();
  assert.equal(await within(invocation.result(), DEADLINE_MS, "the parent's result"), "child");
  await Promise.all([busy.stop(), other.stop()]);
  const after = await gauges();
  assert.deepEqual(after, {
    busySlots: undefined,
    busyQueue: undefined,
    otherSlots: undefined,
    otherQueue: undefined,
  });
  finished();
});

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;

test(
  "a parent run in one process and its child run in another, on one KV file, share one trace: the child's span is a child of the parent's",
  { skip: deno === undefined ? "multi-process tests run under deno test" : false },
  async () => {
    const directory = mkdtempSync(join(tmpdir(), "nenc-otel-"));
    try {
      const kvPath = join(directory, "nenc.db");
      const worker = new URL("./_otel_worker.ts", import.meta.url).pathname;
      const run = (role: string) =>
        new Promise<string>((resolve, reject) => {
          const child = spawn(
            deno!.execPath(),
            ["run", "-A", "--no-check", worker, role, kvPath, join(directory, `${role}.jsonl`)],
            { stdio: ["ignore", "pipe", "pipe"] },
          );
          let stderr = "";
          child.stderr.on("data", (chunk) => stderr += chunk);
          const guard = setTimeout(() => child.kill("SIGKILL"), LONG_DEADLINE_MS);
          child.on("close", (code) => {
            clearTimeout(guard);
            if (code === 0) resolve(role);
            else reject(new Error(`the ${role} worker exited with ${code}:\n${stderr}`));
          });
        });
      await within(Promise.all([run("parent"), run("child")]), LONG_DEADLINE_MS, "the workers");
      const read = (role: string): CrossProcessSpan[] =>
        readFileSync(join(directory, `${role}.jsonl`), "utf8").trim().split("\n")
          .map((line) => JSON.parse(line) as CrossProcessSpan);
      const [parentSpan, ...parentOthers] = read("parent");
      const [childSpan, ...childOthers] = read("child");
      assert.deepEqual([parentOthers, childOthers], [[], []]);
      assert.equal(parentSpan?.name, "nenc parent");
      assert.equal(childSpan?.name, "nenc child");
      assert.notEqual(childSpan.pid, parentSpan.pid);
      assert.equal(childSpan.traceId, parentSpan.traceId);
      assert.equal(childSpan.parentSpanId, parentSpan.spanId);
      assert.equal(parentSpan.parentSpanId, undefined);
      assert.deepEqual(
        [parentSpan.attributes["nenc.runner_id"], childSpan.attributes["nenc.runner_id"]],
        ["runner-parent", "runner-child"],
      );
      assert.deepEqual(parentSpan.events, ["nenc.pause", "nenc.resume"]);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  },
);
