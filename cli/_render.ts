/**
 * Text rendering for the command line, as pure functions: aligned tables, the status report,
 * the list of invocations, one invocation's report and tree, the schedules, the live graphs as
 * Mermaid or DOT, and the refused cycles. Private to `cli/`.
 *
 * @module
 */

import type { KeyConcurrency, RunnerView, TreeNode } from "./_inspect.ts";
import { callLabel } from "../core/ids.ts";
import { nextTickMs, type Schedule } from "../core/schedules.ts";
import { ALL_STATUSES, type HistoryEntry, type InvocationStatus } from "../core/status.ts";
import type {
  DelayedCount,
  InvocationRecord,
  LiveGraphs,
  RefusedCycle,
  SerializedError,
} from "../core/store.ts";

/**
 * Aligns rows into columns two spaces apart; columns from index `rightFrom` on are aligned to
 * the right (numbers). Trailing spaces are trimmed; every line ends with a newline.
 */
export function table(rows: readonly (readonly string[])[], rightFrom = Infinity): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => widths[i] = Math.max(widths[i] ?? 0, cell.length));
  }
  return rows.map((row) =>
    row.map((cell, i) => i >= rightFrom ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))
      .join("  ").trimEnd() + "\n"
  ).join("");
}

/** What `status` reports: invocations per task and status, keys, runners, unserved tasks. */
export interface StatusReport {
  /** Invocations per task and status, from `Store.counts()`. */
  readonly counts: ReadonlyMap<string, ReadonlyMap<InvocationStatus, number>>;
  /** Per task, the invocations waiting for their time, from `Store.delayedCounts()`. */
  readonly delayed: ReadonlyMap<string, DelayedCount>;
  /** Per rate-limited task, its rate limit keys' windows now. */
  readonly rates: ReadonlyMap<string, RateReport>;
  /** The concurrency keys in use: limit, holders, parked. */
  readonly concurrency: readonly KeyConcurrency[];
  /** The runners: last heartbeat, tasks defined, invocations held. */
  readonly runners: readonly RunnerView[];
  /** The tasks with invocations waiting to be picked up that no live runner defines. */
  readonly unserved: readonly string[];
  /** Now, epoch ms. */
  readonly nowMs: number;
}

/** What `status` reports about the rate limit of one task, over its keys. */
export interface RateReport {
  /** Its limit: pick-ups per window. */
  readonly limit: number;
  /** Its window, ms. */
  readonly intervalMs: number;
  /** Its keys with a state (a log, or invocations waiting). */
  readonly keys: number;
  /** The most pick-ups of one key in the window that ends now. */
  readonly busiest: number;
  /** Invocations parked on its keys, waiting for a window to open. */
  readonly parked: number;
}

/**
 * The status report: a table of tasks × statuses (only statuses present), the tasks with
 * invocations waiting for their time (delayed calls, retries in back-off), the rate limits'
 * windows, the concurrency keys in use, the runners, then the queued tasks no live runner defines.
 */
export function renderStatus(report: StatusReport): string {
  const tasks = [...report.counts.keys()].sort();
  const statuses = ALL_STATUSES.filter((status) =>
    tasks.some((task) => report.counts.get(task)!.has(status))
  );
  let text = "";
  if (tasks.length === 0) {
    text += "No invocations.\n";
  } else {
    const rows = tasks.map((task) => {
      const perTask = report.counts.get(task)!;
      const total = [...perTask.values()].reduce((sum, count) => sum + count, 0);
      return [task, ...statuses.map((status) => String(perTask.get(status) ?? 0)), String(total)];
    });
    text += table([["task", ...statuses, "total"], ...rows], 1);
  }
  text += "\n";
  if (report.delayed.size > 0) {
    const delayed = [...report.delayed].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
    text += table([
      ["delayed", "waiting", "next due"],
      ...delayed.map(([task, { count, nextMs }]) => [
        task,
        String(count),
        `in ${duration(nextMs - report.nowMs)}`,
      ]),
    ], 1) + "\n";
  }
  if (report.rates.size > 0) {
    const rates = [...report.rates].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
    text += table([
      ["rate limit", "limit", "keys", "busiest window", "parked"],
      ...rates.map(([task, rate]) => [
        task,
        `${rate.limit} / ${duration(rate.intervalMs)}`,
        String(rate.keys),
        String(rate.busiest),
        String(rate.parked),
      ]),
    ], 1) + "\n";
  }
  if (report.concurrency.length > 0) {
    text += table([
      ["concurrency", "key", "limit", "holders", "parked", "held by", "parked (next first)"],
      ...report.concurrency.map((key) => [
        `${key.kind} ${key.name}`,
        shortKey(key.key),
        String(key.limit),
        String(key.holders.length),
        String(key.parkedCount),
        ids(key.holders, key.holders.length),
        ids(key.parked, key.parkedCount),
      ]),
    ]) + "\n";
  }
  if (report.runners.length === 0) {
    text += "No runners.\n";
  } else {
    text += table([
      ["runner", "last heartbeat", "tasks", "holds"],
      ...report.runners.map((runner) => {
        const ageMs = Math.max(0, report.nowMs - runner.lastSeenMs);
        const dead = runner.alive ? "" : " (silent: presumed dead)";
        return [
          runner.runnerId,
          `${(ageMs / 1000).toFixed(1)} s ago${dead}`,
          runner.taskIds === undefined ? "?" : runner.taskIds.join(",") || "-",
          ids(runner.held, runner.held.length),
        ];
      }),
    ]);
  }
  if (report.unserved.length > 0) {
    text += `\nQueued, but no live runner defines them: ${report.unserved.join(", ")}\n`;
  }
  return text;
}

/** A slot key with its hash cut to 8 characters (`send#3f2a9c1b…#keys`). */
function shortKey(key: string): string {
  return key.replace(/[0-9a-f]{64}/, (hash) => `${hash.slice(0, 8)}…`);
}

/** Ids separated by commas, `-` for none, and how many more when `total` is larger. */
function ids(list: readonly string[], total: number): string {
  if (total === 0) return "-";
  return list.join(",") + (total > list.length ? ` (+${total - list.length})` : "");
}

/**
 * The invocations of `list`, newest first: id, task, status, age (since registration) and the
 * runner that owns it (`-`: none).
 */
export function renderList(records: readonly InvocationRecord[], nowMs: number): string {
  if (records.length === 0) return "No invocations match.\n";
  return table([
    ["invocation", "task", "status", "age", "runner"],
    ...records.map((record) => [
      record.id,
      record.taskId,
      record.status,
      duration(nowMs - record.createdAtMs),
      record.ownerId ?? "-",
    ]),
  ]);
}

/**
 * An invocation and its descendants as an indented tree: id, call and status per line; `…` under
 * an invocation whose descendants were not all read.
 */
export function renderTree(root: TreeNode): string {
  const line = (node: TreeNode): string =>
    `${node.record.id}  ${callLabel(node.record.taskId, node.record.args)}  ${node.record.status}`;
  const lines = [line(root)];
  const walk = (node: TreeNode, indent: string): void => {
    node.children.forEach((child, i) => {
      const last = i === node.children.length - 1 && !node.truncated;
      lines.push(`${indent}${last ? "└─ " : "├─ "}${line(child)}`);
      walk(child, indent + (last ? "   " : "│  "));
    });
    if (node.truncated) lines.push(`${indent}└─ … (not read: the tree stops at its size bound)`);
  };
  walk(root, "");
  return lines.join("\n") + "\n";
}

/** A duration for people: seconds under 100 s, then minutes under 100 min, then hours. */
export function duration(ms: number): string {
  const seconds = Math.max(0, ms) / 1000;
  if (seconds < 100) return `${seconds.toFixed(1)} s`;
  if (seconds < 6_000) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3_600).toFixed(1)} h`;
}

/** What `show` reports about one invocation. */
export interface InvocationReport {
  /** The invocation. */
  readonly record: InvocationRecord;
  /** Its history, oldest first. */
  readonly history: readonly HistoryEntry[];
  /** Its parent, when it has one that still exists. */
  readonly parent?: InvocationRecord | undefined;
  /** The invocations it called. */
  readonly children: readonly InvocationRecord[];
}

/** One invocation: the record, parent and children, history with ISO times, result or error. */
export function renderInvocation(report: InvocationReport): string {
  const { record } = report;
  const brief = (other: InvocationRecord): string =>
    `${other.id}  ${callLabel(other.taskId, other.args)}  ${other.status}`;
  const parent = record.parentId === null
    ? "none"
    : report.parent === undefined
    ? `${record.parentId} (purged)`
    : brief(report.parent);
  let text = table([
    ["invocation", record.id],
    ["task", record.taskId],
    ["call id", record.callId],
    [
      "args",
      `{${
        Object.keys(record.args).sort().map((name) =>
          `${JSON.stringify(name)}:${record.args[name]}`
        ).join(",")
      }}`,
    ],
    ["status", record.status],
    ["owner", record.ownerId ?? "none"],
    ["retries", String(record.retries)],
    ["parent", parent],
    ["children", String(report.children.length)],
  ]);
  for (const child of report.children) text += `  ${brief(child)}\n`;
  text += "history\n";
  text += table(report.history.map((entry) => [
    "  " + new Date(entry.timestampMs).toISOString(),
    entry.status,
    entry.runnerId ?? "",
  ]));
  if (record.result !== undefined) text += `result      ${record.result}\n`;
  if (record.error !== undefined) text += renderError(record.error);
  return text;
}

/** An error with its data fields and its cause chain, one level per line. */
function renderError(error: SerializedError): string {
  let text = "";
  let level: SerializedError | { readonly value: string } | undefined = error;
  for (let prefix = "error       "; level !== undefined; prefix = "  caused by ") {
    if ("value" in level) return text + `${prefix}${level.value}\n`;
    text += `${prefix}${level.name}: ${level.message}\n`;
    for (const [field, value] of Object.entries(level.data)) text += `    ${field}: ${value}\n`;
    level = level.cause;
  }
  return text;
}

/** What `schedules` reports. */
export interface SchedulesReport {
  /** The schedules, by name. */
  readonly schedules: readonly Schedule[];
  /** The invocations their last ticks fired that still exist. */
  readonly lastInvocations: readonly InvocationRecord[];
  /** Now, epoch ms: the next tick is the first after it. */
  readonly nowMs: number;
}

/**
 * The schedules: name, cron expression and timezone, the task's call, the next tick, and the last
 * tick fired with its invocation and that invocation's status (`purged` once it is gone).
 */
export function renderSchedules(report: SchedulesReport): string {
  if (report.schedules.length === 0) return "No schedules.\n";
  const invocations = new Map(report.lastInvocations.map((record) => [record.id, record]));
  const time = (ms: number | null): string =>
    ms === null ? "-" : Number.isFinite(ms) ? new Date(ms).toISOString() : "none";
  return table([
    ["schedule", "cron", "timezone", "task", "next tick", "last tick", "last invocation", "status"],
    ...report.schedules.map((schedule) => {
      const id = schedule.lastInvocationId;
      return [
        schedule.name,
        schedule.cron,
        schedule.timezone,
        callLabel(schedule.taskId, schedule.args),
        time(nextTickMs(schedule, report.nowMs)),
        time(schedule.lastTickMs),
        id ?? "-",
        id === null ? "-" : invocations.get(id)?.status ?? "purged",
      ];
    }),
  ]);
}

/** Labels of wait-graph nodes by invocation id (for example `task(args) status`). */
export type WaitLabels = ReadonlyMap<string, string>;

/**
 * The live graphs as a Mermaid flowchart: the call graph (call ids, caller → callee, each call
 * labelled with its live invocations) and the wait graph (invocations, waiter → waited).
 */
export function renderMermaid(graphs: LiveGraphs, labels: WaitLabels = new Map()): string {
  const text = (value: string): string =>
    `"${
      value.replace(/#/g, "#35;").replace(/"/g, "#quot;").replace(/&/g, "#amp;")
        .replace(/</g, "#lt;").replace(/>/g, "#gt;").replace(/`/g, "#96;")
        .replace(/\n/g, "<br/>")
    }"`;
  const lines = ["flowchart LR"];
  const { calls, edges } = graphs.calls;
  if (calls.length === 0 && graphs.waits.length === 0) lines.push("  %% no live calls, no waits");
  if (calls.length > 0) {
    const ids = new Map(calls.map((call, i) => [call.callId, `c${i}`]));
    lines.push(`  subgraph calls ["call graph: caller → callee"]`);
    for (const call of calls) {
      lines.push(`    ${ids.get(call.callId)}[${text(callText(call))}]`);
    }
    for (const [caller, callee] of edges) {
      lines.push(`    ${ids.get(caller)} --> ${ids.get(callee)}`);
    }
    lines.push("  end");
  }
  if (graphs.waits.length > 0) {
    const ids = waitNodeIds(graphs);
    lines.push(`  subgraph waits ["wait graph: waiter → waited"]`);
    for (const [id, node] of ids) lines.push(`    ${node}[${text(waitText(id, labels))}]`);
    for (const [waiter, waited] of graphs.waits) {
      lines.push(`    ${ids.get(waiter)} --> ${ids.get(waited)}`);
    }
    lines.push("  end");
  }
  return lines.join("\n") + "\n";
}

/** The live graphs as a Graphviz DOT digraph, one cluster per graph. */
export function renderDot(graphs: LiveGraphs, labels: WaitLabels = new Map()): string {
  const text = (value: string): string =>
    `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;
  const lines = ["digraph nenc {", "  rankdir=LR;", "  node [shape=box];"];
  const { calls, edges } = graphs.calls;
  if (calls.length === 0 && graphs.waits.length === 0) lines.push("  // no live calls, no waits");
  if (calls.length > 0) {
    const ids = new Map(calls.map((call, i) => [call.callId, `c${i}`]));
    lines.push("  subgraph cluster_calls {", `    label=${text("call graph: caller → callee")};`);
    for (const call of calls) {
      lines.push(`    ${ids.get(call.callId)} [label=${text(callText(call))}];`);
    }
    for (const [caller, callee] of edges) {
      lines.push(`    ${ids.get(caller)} -> ${ids.get(callee)};`);
    }
    lines.push("  }");
  }
  if (graphs.waits.length > 0) {
    const ids = waitNodeIds(graphs);
    lines.push("  subgraph cluster_waits {", `    label=${text("wait graph: waiter → waited")};`);
    for (const [id, node] of ids) lines.push(`    ${node} [label=${text(waitText(id, labels))}];`);
    for (const [waiter, waited] of graphs.waits) {
      lines.push(`    ${ids.get(waiter)} -> ${ids.get(waited)};`);
    }
    lines.push("  }");
  }
  return lines.join("\n") + "\n}\n";
}

/**
 * The cycles refused lately as comment lines (`prefix`: `%%` for Mermaid, `//` for DOT), most
 * recent first, under a heading; nothing when there are none.
 */
export function renderCycles(cycles: readonly RefusedCycle[], prefix: string): string {
  if (cycles.length === 0) return "";
  const lines = cycles.map((cycle) => `${prefix} ${cycleLine(cycle).replace(/[\r\n]/g, " ")}`);
  return `${prefix} refused cycles, most recent first:\n${lines.join("\n")}\n`;
}

/**
 * One refused cycle: when, the invocation that failed with it, and its path, the first call
 * repeated after "back to".
 */
export function cycleLine(cycle: RefusedCycle): string {
  const path = [...cycle.labels, `back to ${cycle.labels[0]}`].join(" → ");
  return `${new Date(cycle.atMs).toISOString()}  ${cycle.invocationId}: ${path}`;
}

function callText(call: LiveGraphs["calls"]["calls"][number]): string {
  return `${call.label}\n${call.invocationIds.join("\n")}`;
}

function waitText(id: string, labels: WaitLabels): string {
  const label = labels.get(id);
  return label === undefined ? id : `${label}\n${id}`;
}

/** Node ids of the wait graph's invocations, in order of first appearance. */
function waitNodeIds(graphs: LiveGraphs): Map<string, string> {
  const ids = new Map<string, string>();
  for (const edge of graphs.waits) {
    for (const id of edge) if (!ids.has(id)) ids.set(id, `w${ids.size}`);
  }
  return ids;
}
