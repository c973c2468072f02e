/**
 * OpenTelemetry through `@opentelemetry/api` (SPEC §7.4): a span per run of an invocation, its
 * parent the span of the run that called it — in another process too, for the trace context is
 * stored with the invocation — and the runner's metrics. Without an SDK registered in the process
 * it costs a look at the global providers per run and per transition: no span, no attribute, no
 * metric is made.
 *
 * The stored trace context is a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), written and
 * read here rather than through the api's propagator: the api's default propagator does nothing
 * unless an SDK sets one, and the record is read by nenc alone. A process without an SDK passes
 * the context on unchanged: what its runs call carry the trace context their run was called with.
 *
 * @module
 */

import {
  context,
  type Counter,
  createNoopMeter,
  type Histogram,
  isSpanContextValid,
  type MeterProvider,
  metrics,
  type ObservableGauge,
  type ObservableResult,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  type Span,
  type SpanContext,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import type { InvocationStatus } from "./status.ts";

/** The instrumentation scope of nenc's spans and metrics. */
const SCOPE = "nenc";

/** A W3C `traceparent` of version 00. */
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The W3C `traceparent` of a span context. */
function traceparentOf(spanContext: SpanContext): string {
  const flags = (spanContext.traceFlags & 0xff).toString(16).padStart(2, "0");
  return `00-${spanContext.traceId}-${spanContext.spanId}-${flags}`;
}

/** The span context of a W3C `traceparent`, or `undefined` for anything else. */
function parseTraceparent(traceparent: string): SpanContext | undefined {
  const match = TRACEPARENT.exec(traceparent);
  if (match === null) return undefined;
  const spanContext: SpanContext = {
    traceId: match[1]!,
    spanId: match[2]!,
    traceFlags: parseInt(match[3]!, 16),
    isRemote: true,
  };
  return isSpanContextValid(spanContext) ? spanContext : undefined;
}

/**
 * The trace context a call stores with its invocation: that of the span active where it is made
 * (user code in a span, or a task's own span under a context manager), else that of the run it is
 * made from (`runTrace`, see {@linkcode RunTelemetry.trace}), else none.
 */
export function callTrace(runTrace: string | undefined): string | undefined {
  const active = trace.getSpanContext(context.active());
  return active !== undefined && isSpanContextValid(active) ? traceparentOf(active) : runTrace;
}

let tracerOf:
  | { readonly provider: TracerProvider; readonly tracer: Tracer | undefined }
  | undefined;

/** The api's no-op tracer provider: what its proxy delegates to while no SDK is registered. */
const NO_TRACER_PROVIDER = new ProxyTracerProvider().getDelegate();

/** nenc's tracer, or `undefined` while no SDK has registered a tracer provider. */
function activeTracer(): Tracer | undefined {
  let provider = trace.getTracerProvider();
  // The api's global provider is its proxy, before and after an SDK registers: registering sets
  // the proxy's delegate. So the delegate says whether spans are made, and it is looked at every
  // time — a provider registered after a run without one is seen at the next run.
  if (provider instanceof ProxyTracerProvider) provider = provider.getDelegate();
  if (tracerOf?.provider !== provider) {
    tracerOf = {
      provider,
      tracer: provider === NO_TRACER_PROVIDER ? undefined : provider.getTracer(SCOPE),
    };
  }
  return tracerOf.tracer;
}

/** A run of an invocation, as its span names it: an execution of the runner. */
export interface Run {
  readonly invocation: { readonly id: string; readonly taskId: string; readonly callId: string };
  /** The retries before this run: its attempt is one more. */
  readonly attempt: number;
  readonly runnerId: string;
}

/**
 * The telemetry of one run: its span (while an SDK is registered) and the trace context its calls
 * carry.
 */
export class RunTelemetry {
  readonly #span: Span | undefined;
  readonly #parentTrace: string | undefined;
  #status: InvocationStatus | undefined;
  #error: unknown;

  /**
   * The telemetry of `run`, whose invocation stored the trace context `storedTrace`; `undefined`
   * when it has nothing to do: no SDK registered, and no context to pass on.
   */
  static start(run: Run, storedTrace: string | undefined): RunTelemetry | undefined {
    const tracer = activeTracer();
    if (tracer === undefined) {
      return storedTrace === undefined ? undefined : new RunTelemetry(undefined, storedTrace);
    }
    const { invocation } = run;
    const parent = storedTrace === undefined ? undefined : parseTraceparent(storedTrace);
    // The stored context is the parent, never what is active where the runner runs.
    const span = tracer.startSpan(
      `nenc ${invocation.taskId}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "nenc.invocation_id": invocation.id,
          "nenc.task_id": invocation.taskId,
          "nenc.call_id": invocation.callId,
          "nenc.attempt": run.attempt + 1,
          "nenc.runner_id": run.runnerId,
        },
      },
      parent === undefined ? ROOT_CONTEXT : trace.setSpanContext(ROOT_CONTEXT, parent),
    );
    return new RunTelemetry(span, storedTrace);
  }

  private constructor(span: Span | undefined, parentTrace: string | undefined) {
    this.#span = span;
    this.#parentTrace = parentTrace;
  }

  /** The trace context of the run: what the calls made from it store. */
  get trace(): string | undefined {
    return this.#span === undefined ? this.#parentTrace : traceparentOf(this.#span.spanContext());
  }

  /** Runs the task's function with the run's span active (seen under a context manager). */
  run<T>(fn: () => T): T {
    if (this.#span === undefined) return fn();
    return context.with(trace.setSpan(ROOT_CONTEXT, this.#span), fn);
  }

  /** The run paused to wait for `waited`. */
  paused(waited: readonly { readonly id: string }[]): void {
    if (!this.#span?.isRecording()) return;
    this.#span.addEvent("nenc.pause", { "nenc.waiting_for": waited.map(({ id }) => id) });
  }

  /** The run resumed. */
  resumed(): void {
    this.#span?.addEvent("nenc.resume");
  }

  /** The run's end was recorded: it left the invocation in `status`, failed with `error`. */
  recorded(status: InvocationStatus, error?: unknown): void {
    this.#status = status;
    this.#error = error;
  }

  /**
   * The run is over: its span ends with the status it left the invocation in, or as an error
   * when it recorded none (the invocation is not this runner's any more).
   */
  end(): void {
    const span = this.#span;
    if (span === undefined) return;
    const status = this.#status;
    const error = this.#error;
    if (status !== undefined) span.setAttribute("nenc.status", status);
    if (error !== undefined) {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
      });
    } else if (status === undefined) {
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: "Cannot record the run's end: the invocation is not this runner's any more",
      });
    }
    span.end();
  }
}

// --- metrics ------------------------------------------------------------------------------------

/** What a runner's gauges read: what it knows without a store read. */
export interface RunnerGauges {
  readonly runnerId: string;
  /** Paused invocations whose waits ended, waiting for one of its slots. */
  queueDepth(): number;
  /** Its slots an execution holds. */
  slotsInUse(): number;
}

/** The live runners of this process. */
const runners = new Set<RunnerGauges>();

interface Instruments {
  readonly provider: MeterProvider;
  readonly invocations: Counter;
  readonly waits: Histogram;
  readonly queueDepth: ObservableGauge;
  readonly slotsInUse: ObservableGauge;
}

let instruments: Instruments | undefined;
/** The api's no-op meter provider, once seen: what it returns until a provider is registered. */
let noopProvider: MeterProvider | undefined;

/** nenc's instruments on the global meter provider, or `undefined` while none is registered. */
function activeInstruments(): Instruments | undefined {
  const provider = metrics.getMeterProvider();
  if (provider === noopProvider) return undefined;
  if (instruments?.provider === provider) return instruments;
  const meter = provider.getMeter(SCOPE);
  if (meter === createNoopMeter()) {
    noopProvider = provider;
    return undefined;
  }
  if (instruments !== undefined) {
    instruments.queueDepth.removeCallback(observeQueueDepth);
    instruments.slotsInUse.removeCallback(observeSlotsInUse);
  }
  instruments = {
    provider,
    invocations: meter.createCounter("nenc.invocations", {
      description: "Invocations that entered a status, by a transition this process made",
    }),
    waits: meter.createHistogram("nenc.wait.duration", {
      description: "From when an invocation is available to when its run starts",
      unit: "ms",
    }),
    queueDepth: meter.createObservableGauge("nenc.queue.depth", {
      description: "Paused invocations ready to go on, waiting for one of the runner's slots",
    }),
    slotsInUse: meter.createObservableGauge("nenc.slots.in_use", {
      description: "The runner's slots held by a running invocation",
    }),
  };
  instruments.queueDepth.addCallback(observeQueueDepth);
  instruments.slotsInUse.addCallback(observeSlotsInUse);
  return instruments;
}

function observeQueueDepth(result: ObservableResult): void {
  for (const runner of runners) {
    result.observe(runner.queueDepth(), { "nenc.runner_id": runner.runnerId });
  }
}

function observeSlotsInUse(result: ObservableResult): void {
  for (const runner of runners) {
    result.observe(runner.slotsInUse(), { "nenc.runner_id": runner.runnerId });
  }
}

/** A runner started: its gauges are observed until {@linkcode runnerStopped}. */
export function runnerStarted(runner: RunnerGauges): void {
  runners.add(runner);
  activeInstruments();
}

/** A runner stopped. */
export function runnerStopped(runner: RunnerGauges): void {
  runners.delete(runner);
}

/** A run of `taskId` starts `waitedMs` after its invocation was available. */
export function runStarted(taskId: string, waitedMs: number): void {
  activeInstruments()?.waits.record(Math.max(0, waitedMs), { "nenc.task_id": taskId });
}

/**
 * Whether the transitions of this process are counted (`nenc.invocations`): while a meter provider
 * is registered. The app's reporter then makes their events as for a listener.
 */
export function countsTransitions(): boolean {
  return activeInstruments() !== undefined;
}

/** This process moved an invocation of `taskId` to `status`. */
export function countTransition(
  transition: { readonly taskId: string; readonly status: InvocationStatus },
): void {
  activeInstruments()?.invocations.add(1, {
    "nenc.task_id": transition.taskId,
    "nenc.status": transition.status,
  });
}
