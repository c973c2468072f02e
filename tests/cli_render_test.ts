import { test } from "node:test";
import assert from "node:assert/strict";
import {
  renderDot,
  renderInvocation,
  renderList,
  renderMermaid,
  renderSchedules,
  renderStatus,
  renderTree,
  table,
} from "../cli/_render.ts";
import type { TreeNode } from "../cli/_inspect.ts";
import type { Schedule } from "../core/schedules.ts";
import type { InvocationStatus } from "../core/status.ts";
import type { InvocationRecord, LiveGraphs } from "../core/store.ts";

const T0 = Date.UTC(2026, 0, 1);

function record(overrides: Partial<InvocationRecord> & { id: string }): InvocationRecord {
  return {
    taskId: "add",
    callId: "add#1",
    args: { x: "1", y: "2" },
    parentId: null,
    registrationKey: null,
    runningKey: null,
    status: "success",
    ownerId: null,
    seq: 4,
    claimSeq: 2,
    updatedAtMs: T0,
    createdAtMs: T0,
    retries: 0,
    availableAtMs: T0,
    finishedAtMs: T0,
    purgeAtMs: null,
    ...overrides,
  };
}

test("table() aligns columns two spaces apart, right-aligns from the given column, trims line ends", () => {
  assert.equal(
    table([["task", "success", "failed"], ["add", "12", "0"], ["multiply", "3", "10"]], 1),
    "task      success  failed\n" +
      "add            12       0\n" +
      "multiply        3      10\n",
  );
  assert.equal(table([["a", ""], ["bb", "c"]]), "a\nbb  c\n");
});

test("renderStatus() shows a task × status table of the statuses present with totals, the delayed invocations per task with the next due, the rate limits' windows, the keys in use with holders and parked, the runners with tasks and holdings, marking silent ones, then the unserved tasks", () => {
  const counts = new Map<string, Map<InvocationStatus, number>>([
    ["pay", new Map<InvocationStatus, number>([["failed", 1]])],
    ["add", new Map<InvocationStatus, number>([["success", 12], ["registered", 2]])],
  ]);
  const text = renderStatus({
    counts,
    delayed: new Map([["pay", { count: 1, nextMs: T0 + 2_500 }], ["add", {
      count: 12,
      nextMs: T0 + 120_000,
    }]]),
    rates: new Map([["pay", { limit: 5, intervalMs: 1_000, keys: 3, busiest: 5, parked: 40 }]]),
    concurrency: [
      {
        kind: "group",
        name: "deploys",
        key: `#group#deploys#${"ab".repeat(32)}`,
        limit: 2,
        holders: ["01H1", "01H2"],
        parked: [],
        parkedCount: 0,
      },
      {
        kind: "task",
        name: "add",
        key: "add",
        limit: 1,
        holders: ["01H3"],
        parked: ["01P1", "01P2"],
        parkedCount: 5,
      },
    ],
    runners: [
      {
        runnerId: "runner-new",
        lastSeenMs: T0 - 400,
        alive: true,
        taskIds: ["add", "pay"],
        held: ["01H1", "01H3"],
      },
      { runnerId: "runner-old", lastSeenMs: T0 - 30_000, alive: false, taskIds: [], held: [] },
      {
        runnerId: "runner-0.1",
        lastSeenMs: T0 - 45_000,
        alive: false,
        taskIds: undefined,
        held: [],
      },
    ],
    unserved: ["pay", "report"],
    nowMs: T0,
  });
  assert.equal(
    text,
    "task  registered  success  failed  total\n" +
      "add            2       12       0     14\n" +
      "pay            0        0       1      1\n" +
      "\n" +
      "delayed  waiting    next due\n" +
      "add           12  in 2.0 min\n" +
      "pay            1    in 2.5 s\n" +
      "\n" +
      "rate limit      limit  keys  busiest window  parked\n" +
      "pay         5 / 1.0 s     3               5      40\n" +
      "\n" +
      "concurrency    key                       limit  holders  parked  held by    parked (next first)\n" +
      "group deploys  #group#deploys#abababab…  2      2        0       01H1,01H2  -\n" +
      "task add       add                       1      1        5       01H3       01P1,01P2 (+3)\n" +
      "\n" +
      "runner      last heartbeat                      tasks    holds\n" +
      "runner-new  0.4 s ago                           add,pay  01H1,01H3\n" +
      "runner-old  30.0 s ago (silent: presumed dead)  -        -\n" +
      "runner-0.1  45.0 s ago (silent: presumed dead)  ?        -\n" +
      "\n" +
      "Queued, but no live runner defines them: pay, report\n",
  );
});

test("renderStatus() says so when there are no invocations and no runners", () => {
  assert.equal(
    renderStatus({
      counts: new Map(),
      delayed: new Map(),
      rates: new Map(),
      concurrency: [],
      runners: [],
      unserved: [],
      nowMs: T0,
    }),
    "No invocations.\n\nNo runners.\n",
  );
});

test("renderSchedules() shows each schedule's cron, timezone, call, next tick and last tick with its invocation's status, purged when gone", () => {
  const base: Schedule = {
    name: "nightly",
    cron: "0 3 * * *",
    taskId: "report",
    args: { kind: '"sales"' },
    timezone: "Europe/Berlin",
    catchUp: "none",
    misfireMs: 60_000,
    sinceMs: T0 - 86_400_000,
    lastTickMs: T0 - 3_600_000,
    lastInvocationId: "01A",
  };
  const text = renderSchedules({
    schedules: [
      base,
      { ...base, name: "old", lastInvocationId: "01GONE" },
      {
        ...base,
        name: "soon",
        cron: "*/10 * * * * *",
        timezone: "UTC",
        taskId: "ping",
        args: {},
        lastTickMs: null,
        lastInvocationId: null,
      },
    ],
    lastInvocations: [record({ id: "01A", taskId: "report", status: "failed" })],
    nowMs: T0 + 5_000,
  });
  assert.equal(
    text,
    "schedule  cron            timezone       task                      next tick                 last tick                 last invocation  status\n" +
      'nightly   0 3 * * *       Europe/Berlin  report({"kind":"sales"})  2026-01-01T02:00:00.000Z  2025-12-31T23:00:00.000Z  01A              failed\n' +
      'old       0 3 * * *       Europe/Berlin  report({"kind":"sales"})  2026-01-01T02:00:00.000Z  2025-12-31T23:00:00.000Z  01GONE           purged\n' +
      "soon      */10 * * * * *  UTC            ping({})                  2026-01-01T00:00:10.000Z  -                         -                -\n",
  );
  assert.equal(
    renderSchedules({ schedules: [], lastInvocations: [], nowMs: T0 }),
    "No schedules.\n",
  );
});

test("renderInvocation() shows the record, parent, children, history with ISO times and the result", () => {
  const parent = record({ id: "P1", taskId: "sum", callId: "sum#1", args: { n: "2" } });
  const child = record({ id: "C1", parentId: "P1", status: "running", ownerId: "runner-1" });
  const text = renderInvocation({
    record: { ...parent, result: "3" },
    history: [
      { status: "registered", runnerId: null, timestampMs: T0, seq: 1 },
      { status: "success", runnerId: "runner-1", timestampMs: T0 + 1500, seq: 2 },
    ],
    children: [child],
  });
  assert.equal(
    text,
    "invocation  P1\n" +
      "task        sum\n" +
      "call id     sum#1\n" +
      'args        {"n":2}\n' +
      "status      success\n" +
      "owner       none\n" +
      "retries     0\n" +
      "parent      none\n" +
      "children    1\n" +
      '  C1  add({"x":1,"y":2})  running\n' +
      "history\n" +
      "  2026-01-01T00:00:00.000Z  registered\n" +
      "  2026-01-01T00:00:01.500Z  success     runner-1\n" +
      "result      3\n",
  );
  const orphan = renderInvocation({ record: child, history: [], children: [] });
  assert.ok(orphan.split("\n").includes("parent      P1 (purged)"), orphan);
  const withParent = renderInvocation({ record: child, parent, history: [], children: [] });
  assert.ok(withParent.split("\n").includes('parent      P1  sum({"n":2})  success'), withParent);
});

test("renderInvocation() shows an error with its data fields and its whole cause chain", () => {
  const text = renderInvocation({
    record: record({
      id: "F1",
      status: "failed",
      error: {
        name: "CycleDetectedError",
        message: "A cycle was detected",
        data: { callIds: '["a#1"]' },
        cause: {
          name: "Error",
          message: "the bank said no",
          data: {},
          cause: { value: '"insufficient funds"' },
        },
      },
    }),
    history: [],
    children: [],
  });
  assert.ok(
    text.endsWith(
      "error       CycleDetectedError: A cycle was detected\n" +
        '    callIds: ["a#1"]\n' +
        "  caused by Error: the bank said no\n" +
        '  caused by "insufficient funds"\n',
    ),
    text,
  );
});

const GRAPHS: LiveGraphs = {
  calls: {
    calls: [
      { callId: "parent#1", label: 'parent({"n":2})', invocationIds: ["P1"] },
      { callId: "child#1", label: "child(<a&b>)`#", invocationIds: ["C1", "C2"] },
    ],
    edges: [["parent#1", "child#1"]],
  },
  waits: [["P1", "C1"], ["P1", "C2"]],
};

test("renderMermaid() draws both graphs as subgraphs, escaping quotes, #, &, <, >, backticks in labels", () => {
  assert.equal(
    renderMermaid(GRAPHS, new Map([["P1", 'parent({"n":2}) paused']])),
    "flowchart LR\n" +
      '  subgraph calls ["call graph: caller → callee"]\n' +
      '    c0["parent({#quot;n#quot;:2})<br/>P1"]\n' +
      '    c1["child(#lt;a#amp;b#gt;)#96;#35;<br/>C1<br/>C2"]\n' +
      "    c0 --> c1\n" +
      "  end\n" +
      '  subgraph waits ["wait graph: waiter → waited"]\n' +
      '    w0["parent({#quot;n#quot;:2}) paused<br/>P1"]\n' +
      '    w1["C1"]\n' +
      '    w2["C2"]\n' +
      "    w0 --> w1\n" +
      "    w0 --> w2\n" +
      "  end\n",
  );
});

test("renderDot() draws both graphs as clusters, escaping quotes and backslashes in labels", () => {
  const graphs: LiveGraphs = {
    calls: {
      calls: [
        { callId: "a#1", label: 'a({"path":"C:\\\\tmp"})', invocationIds: ["A1"] },
        { callId: "b#1", label: "b({})", invocationIds: ["B1"] },
      ],
      edges: [["a#1", "b#1"]],
    },
    waits: [["A1", "B1"]],
  };
  assert.equal(
    renderDot(graphs),
    "digraph nenc {\n" +
      "  rankdir=LR;\n" +
      "  node [shape=box];\n" +
      "  subgraph cluster_calls {\n" +
      '    label="call graph: caller → callee";\n' +
      '    c0 [label="a({\\"path\\":\\"C:\\\\\\\\tmp\\"})\\nA1"];\n' +
      '    c1 [label="b({})\\nB1"];\n' +
      "    c0 -> c1;\n" +
      "  }\n" +
      "  subgraph cluster_waits {\n" +
      '    label="wait graph: waiter → waited";\n' +
      '    w0 [label="A1"];\n' +
      '    w1 [label="B1"];\n' +
      "    w0 -> w1;\n" +
      "  }\n" +
      "}\n",
  );
});

test("renderMermaid() and renderDot() of empty graphs are valid and say there is nothing live", () => {
  const empty: LiveGraphs = { calls: { calls: [], edges: [] }, waits: [] };
  assert.equal(renderMermaid(empty), "flowchart LR\n  %% no live calls, no waits\n");
  assert.equal(
    renderDot(empty),
    "digraph nenc {\n  rankdir=LR;\n  node [shape=box];\n  // no live calls, no waits\n}\n",
  );
});

test("renderList() shows id, task, status, age since registration and owning runner, newest first as given; says so when nothing matches", () => {
  assert.equal(
    renderList([
      record({
        id: "01B",
        taskId: "pay",
        status: "running",
        ownerId: "runner-1",
        createdAtMs: T0 - 2_500,
      }),
      record({ id: "01A", status: "success", createdAtMs: T0 - 600_000 }),
    ], T0),
    "invocation  task  status   age       runner\n" +
      "01B         pay   running  2.5 s     runner-1\n" +
      "01A         add   success  10.0 min  -\n",
  );
  assert.equal(renderList([], T0), "No invocations match.\n");
});

test("renderTree() draws an invocation's descendants with their calls and statuses, and marks where the tree was cut", () => {
  const node = (id: string, status: InvocationStatus, children: TreeNode[] = []): TreeNode => ({
    record: record({ id, taskId: "child", args: { i: id.slice(-1) }, status }),
    children,
    truncated: false,
  });
  const root = node("01R", "paused", [
    node("01A1", "success", [node("01A2", "running")]),
    node("01B3", "canceled"),
  ]);
  assert.equal(
    renderTree(root),
    '01R  child({"i":R})  paused\n' +
      '├─ 01A1  child({"i":1})  success\n' +
      '│  └─ 01A2  child({"i":2})  running\n' +
      '└─ 01B3  child({"i":3})  canceled\n',
  );
  root.children[1]!.truncated = true;
  assert.match(
    renderTree(root),
    /└─ 01B3 .*\n {3}└─ … \(not read: the tree stops at its size bound\)\n$/,
  );
});
