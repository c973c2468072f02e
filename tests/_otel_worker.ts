/**
 * A worker process for the cross-process trace test: `deno run -A tests/_otel_worker.ts <role>
 * <kv file> <spans file>`. Each registers an OpenTelemetry SDK with an in-memory exporter and runs
 * one task of an app on the KV file: `parent` calls the parent (which calls the child and waits
 * for it) and runs only the parent; `child` runs only the child. Each stops by itself once its
 * run is over (a deadline bounds it), then writes its finished spans to the spans file, one JSON
 * object a line.
 */
import { writeFileSync } from "node:fs";
import process from "node:process";
import { trace } from "@opentelemetry/api";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { Nenc } from "../core/app.ts";
import { Runner } from "../core/runner.ts";
import { LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { openSharedTestKv } from "./_kv.ts";

/** A finished span as a worker writes it. */
export interface CrossProcessSpan {
  readonly name: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly attributes: Record<string, unknown>;
  /** The names of its events. */
  readonly events: string[];
  /** The process that ended it. */
  readonly pid: number;
}

const [role, kvPath, spansPath] = process.argv.slice(2);
if (role === undefined || kvPath === undefined || spansPath === undefined) {
  throw new Error("usage: _otel_worker.ts <parent | child> <kv file> <spans file>");
}

const exporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(
  new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
);

const kv = await openSharedTestKv(kvPath);
const app = new Nenc({ appId: "otel", kv });
const child = app.task("child", ({ n }: { n: number }) => n + 1);
const parent = app.task("parent", async () => await (await child.call({ n: 1 })).result());
// This process runs its role's task only: the other one runs in the other process.
const task = role === "parent" ? parent : child;
const runner = new Runner({
  orchestrator: app.orchestrator,
  clock: app.clock,
  getTask: (taskId) => taskId === task.id ? app.getTask(taskId) : undefined,
  tasks: () => [app.getTask(task.id)!],
}, { runnerId: `runner-${role}` });
runner.start();
if (role === "parent") {
  const invocation = await parent.call();
  await within(invocation.result(), LONG_DEADLINE_MS, "the parent's result");
} else {
  await waitUntil(() => runner.finished === 1, {
    timeoutMs: LONG_DEADLINE_MS,
    message: "the child never ran",
  });
}
await runner.stop();
kv.close();
const lines = exporter.getFinishedSpans().map((span): string =>
  JSON.stringify(
    {
      name: span.name,
      traceId: span.spanContext().traceId,
      spanId: span.spanContext().spanId,
      ...(span.parentSpanContext !== undefined
        ? { parentSpanId: span.parentSpanContext.spanId }
        : {}),
      attributes: span.attributes,
      events: span.events.map(({ name }) => name),
      pid: process.pid,
    } satisfies CrossProcessSpan,
  )
);
writeFileSync(spansPath, lines.join("\n") + "\n");
