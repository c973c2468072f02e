import { test } from "node:test";
import assert from "node:assert/strict";
import { renderGraphsDocument, renderGraphsSvg } from "../cli/_svg.ts";
import { callId, callLabel, serializeArguments } from "../core/ids.ts";
import type { InvocationStatus } from "../core/status.ts";
import type { InvocationRecord, LiveGraphs, RefusedCycle } from "../core/store.ts";
import { findAll, parseXml, textOf, type XmlElement } from "./_xml.ts";

/** An invocation record as a store holds it; `holdsSlots` defaults to what its status implies. */
function record(
  id: string,
  status: InvocationStatus,
  args: Record<string, unknown> = {},
  holdsSlots?: boolean,
): InvocationRecord {
  const serialized = serializeArguments(args);
  return {
    id,
    taskId: "build",
    callId: callId("build", serialized),
    args: serialized,
    parentId: null,
    registrationKey: null,
    runningKey: null,
    status,
    ownerId: null,
    seq: 1,
    claimSeq: null,
    updatedAtMs: 0,
    createdAtMs: 0,
    retries: 0,
    availableAtMs: 0,
    finishedAtMs: null,
    purgeAtMs: null,
    ...holdsSlots === undefined ? {} : { holdsSlots },
  };
}

const NO_CALLS: LiveGraphs["calls"] = { calls: [], edges: [] };

/** The nodes of a drawn graph, by id: status, slot mark, centre and text. */
function nodesOf(svg: string): Map<string, {
  status: string;
  slot: string | undefined;
  x: number;
  y: number;
  text: string;
}> {
  const nodes = findAll(parseXml(svg), (element) => element.attributes["data-node"] !== undefined);
  return new Map(nodes.map((node) => {
    const [x, y] = /^translate\(([-\d.]+) ([-\d.]+)\)$/.exec(node.attributes.transform!)!
      .slice(1).map(Number) as [number, number];
    const texts = findAll(node, (element) => element.name === "text").map(textOf);
    return [node.attributes["data-node"]!, {
      status: node.attributes["data-status"]!,
      slot: node.attributes["data-slot"],
      x,
      y,
      text: texts.join("\n"),
    }];
  }));
}

function edgesOf(svg: string): string[][] {
  return findAll(parseXml(svg), (element) => element.attributes["data-from"] !== undefined)
    .map((edge) => [edge.attributes["data-from"]!, edge.attributes["data-to"]!]);
}

function fillOf(svg: string, id: string): string {
  const [node] = findAll(parseXml(svg), (element) => element.attributes["data-node"] === id);
  const [box] = findAll(node!, (element) => element.name === "rect");
  return box!.attributes.fill!;
}

function legendOf(svg: string): string[] {
  return findAll(parseXml(svg), (element) => element.attributes["data-legend"] !== undefined)
    .map((item: XmlElement) => item.attributes["data-legend"]!);
}

test("svg: the wait-for graph is layered left to right — every waiter left of what it waits on (a chain of three and a diamond) — and draws one arrow per wait edge", () => {
  const waits: [string, string][] = [
    ["a", "b"],
    ["b", "c"],
    ["top", "left"],
    ["top", "right"],
    ["left", "bottom"],
    ["right", "bottom"],
  ];
  const records = ["a", "b", "c", "top", "left", "right", "bottom"].map((id) =>
    record(id, "paused", { id })
  );
  const { waits: svg } = renderGraphsSvg({ calls: NO_CALLS, waits }, records);
  const nodes = nodesOf(svg);
  assert.equal(nodes.size, 7);
  for (const [waiter, waited] of waits) {
    assert.ok(
      nodes.get(waiter)!.x < nodes.get(waited)!.x,
      `${waiter} (x ${nodes.get(waiter)!.x}) is left of ${waited} (x ${nodes.get(waited)!.x})`,
    );
  }
  assert.equal(nodes.get("left")!.x, nodes.get("right")!.x, "one layer for both middle ones");
  assert.deepEqual(edgesOf(svg), waits);
});

test("svg: each node shows its call and status, coloured by status; the legend lists exactly the statuses drawn; a purged invocation is drawn as gone", () => {
  const graphs: LiveGraphs = {
    calls: NO_CALLS,
    waits: [["p", "r"], ["p", "q"], ["p", "x"]],
  };
  const records = [
    record("p", "paused", { pkg: "app" }),
    record("r", "running", { pkg: "db" }),
    record("q", "registered", { pkg: "ui" }),
  ];
  const { waits: svg } = renderGraphsSvg(graphs, records);
  const nodes = nodesOf(svg);
  assert.deepEqual(
    [...nodes].map(([id, node]) => [id, node.status]),
    [["p", "paused"], ["r", "running"], ["q", "registered"], ["x", "gone"]],
  );
  assert.match(nodes.get("r")!.text, /^build\(\{"pkg":"db"\}\)\nrunning r$/);
  assert.match(nodes.get("x")!.text, /^\(purged\)\ngone x$/);
  const fills = new Set(["p", "r", "q", "x"].map((id) => fillOf(svg, id)));
  assert.equal(fills.size, 4, "four statuses, four colours");
  assert.deepEqual(legendOf(svg), ["registered", "running", "paused", "gone", "freed its slot"]);
});

test("svg: a waiter that freed its slot (paused) has a dashed border and says so; one that holds it a thick solid one; what they wait on is not marked", () => {
  const graphs: LiveGraphs = { calls: NO_CALLS, waits: [["freed", "child"], ["held", "child"]] };
  const records = [
    record("freed", "paused"),
    record("held", "running", {}, true),
    record("child", "running", {}, true),
  ];
  const { waits: svg } = renderGraphsSvg(graphs, records);
  const nodes = nodesOf(svg);
  assert.equal(nodes.get("freed")!.slot, "freed");
  assert.match(nodes.get("freed")!.text, /freed its slot$/);
  assert.equal(nodes.get("held")!.slot, "holds");
  assert.match(nodes.get("held")!.text, /holds its slot$/);
  assert.equal(nodes.get("child")!.slot, undefined);
  const border = (id: string): Readonly<Record<string, string>> => {
    const [node] = findAll(parseXml(svg), (element) => element.attributes["data-node"] === id);
    return findAll(node!, (element) => element.name === "rect")[0]!.attributes;
  };
  assert.equal(border("freed")["stroke-dasharray"], "6 3");
  assert.equal(border("held")["stroke-dasharray"], undefined);
  assert.equal(border("held")["stroke-width"], "3");
  assert.deepEqual(legendOf(svg).slice(-2), ["holds its slot", "freed its slot"]);
});

test("svg: arguments are data — <script>, quotes, & and a control character in labels and ids come out escaped: the SVG parses as XML, has no script element, and its text reads them back", () => {
  const evil = { s: `<script>alert("x")</script>`, t: `it's & "quoted" ]]>` };
  const parent = record("p<&>\"'", "paused", evil);
  const child = record("c", "running", { s: "</text></g><script>alert(1)</script>" });
  const graphs: LiveGraphs = {
    calls: {
      calls: [
        { callId: parent.callId, label: "build(<b>&amp;)", invocationIds: [parent.id] },
        // A label read back from a store may hold anything, even a character XML forbids.
        { callId: child.callId, label: "build(</text><script>)\u0001", invocationIds: [child.id] },
      ],
      edges: [[parent.callId, child.callId]],
    },
    waits: [[parent.id, child.id]],
  };
  const { waits, calls } = renderGraphsSvg(graphs, [parent, child]);
  for (const svg of [waits, calls]) {
    assert.doesNotMatch(svg, /<script/i);
    assert.deepEqual(findAll(parseXml(svg), (element) => element.name === "script"), []);
  }
  const label = callLabel("build", serializeArguments(evil));
  const nodes = nodesOf(waits);
  assert.deepEqual([...nodes.keys()], [`p<&>"'`, "c"]);
  assert.equal(nodes.get(`p<&>"'`)!.text.split("\n")[0], `${label.slice(0, 63)}…`);
  assert.equal(
    findAll(parseXml(waits), (element) => element.name === "title").map(textOf)[0]!
      .split("\n")[0],
    label,
    "the tooltip holds the whole label",
  );
  assert.deepEqual(edgesOf(waits), [[`p<&>"'`, "c"]]);
  const callNodes = nodesOf(calls);
  assert.equal(callNodes.get(parent.callId)!.text.split("\n")[0], "build(<b>&amp;)");
  assert.equal(callNodes.get(child.callId)!.text.split("\n")[0], "build(</text><script>)\uFFFD");
});

test("svg: nothing live — each graph is an SVG saying so, with no node, no edge and no legend", () => {
  const { waits, calls } = renderGraphsSvg({ calls: NO_CALLS, waits: [] }, []);
  for (
    const [svg, says] of [
      [waits, "No invocation waits on another right now."],
      [calls, "No live calls right now."],
    ] as const
  ) {
    const tree = parseXml(svg);
    assert.equal(tree.name, "svg");
    assert.equal(tree.attributes.xmlns, "http://www.w3.org/2000/svg");
    const [empty, ...more] = findAll(
      tree,
      (element) => element.attributes["data-empty"] === "true",
    );
    assert.equal(more.length, 0);
    assert.equal(textOf(empty!), says);
    assert.equal(nodesOf(svg).size, 0);
    assert.deepEqual(edgesOf(svg), []);
    assert.deepEqual(legendOf(svg), []);
  }
});

test("svg: the call graph draws one node per call with its live invocations and their statuses (at most three, then how many more), callers left of callees", () => {
  const release = record("r1", "paused", { v: 1 });
  const builds = ["b1", "b2", "b3", "b4"].map((id) => record(id, "running", { pkg: "db" }));
  const graphs: LiveGraphs = {
    calls: {
      calls: [
        { callId: release.callId, label: 'release({"v":1})', invocationIds: ["r1"] },
        {
          callId: builds[0]!.callId,
          label: 'build({"pkg":"db"})',
          invocationIds: ["b1", "b2", "b3", "b4"],
        },
      ],
      edges: [[release.callId, builds[0]!.callId]],
    },
    waits: [],
  };
  const { calls: svg } = renderGraphsSvg(graphs, [release, ...builds]);
  const nodes = nodesOf(svg);
  assert.equal(nodes.get(release.callId)!.status, "paused");
  assert.equal(
    nodes.get(builds[0]!.callId)!.text,
    'build({"pkg":"db"})\nrunning b1\nrunning b2\nrunning b3\n… 1 more',
  );
  assert.ok(nodes.get(release.callId)!.x < nodes.get(builds[0]!.callId)!.x);
  assert.deepEqual(edgesOf(svg), [[release.callId, builds[0]!.callId]]);
});

test("svg: the document of `graph --svg` holds both graphs, then the refused cycles with their path, most recent first; element ids are unique", () => {
  const cycles: RefusedCycle[] = [
    {
      invocationId: "i2",
      callIds: ["a#1", "b#1"],
      labels: ["a()", "b()"],
      atMs: Date.UTC(2026, 0, 1, 12),
    },
    { invocationId: "i1", callIds: ["s#1"], labels: ["self()"], atMs: Date.UTC(2026, 0, 1, 11) },
  ];
  const graphs: LiveGraphs = {
    calls: { calls: [{ callId: "x#1", label: "x()", invocationIds: ["p"] }], edges: [] },
    waits: [["p", "c"]],
  };
  const svg = renderGraphsDocument({
    graphs,
    records: [record("p", "paused"), record("c", "running")],
    cycles,
  });
  const tree = parseXml(svg);
  const texts = findAll(tree, (element) => element.name === "text").map(textOf);
  const at = (line: string): number => texts.indexOf(line);
  assert.ok(at("Wait-for graph: waiter → waited") >= 0);
  assert.ok(at("Call graph: caller → callee") > at("Wait-for graph: waiter → waited"));
  assert.ok(at("Refused cycles, most recent first") > at("Call graph: caller → callee"));
  assert.deepEqual(texts.slice(at("Refused cycles, most recent first") + 1), [
    "2026-01-01T12:00:00.000Z i2",
    "a()",
    "→ b()",
    "→ back to a()",
    "2026-01-01T11:00:00.000Z i1",
    "self()",
    "→ back to self()",
  ]);
  assert.deepEqual(
    findAll(tree, (element) => element.attributes["data-cycle"] !== undefined).map((cycle) =>
      textOf(findAll(cycle, (element) => element.name === "title")[0]!)
    ),
    [
      "2026-01-01T12:00:00.000Z  i2: a() → b() → back to a()",
      "2026-01-01T11:00:00.000Z  i1: self() → back to self()",
    ],
    "each cycle's tooltip holds it whole",
  );
  const ids = findAll(tree, (element) => element.attributes.id !== undefined)
    .map((element) => element.attributes.id);
  assert.equal(new Set(ids).size, ids.length);
});

test("svg: the tests' XML parser refuses what is not well-formed: a raw < or a bare & in text or a value, a mismatched tag, an unquoted or repeated attribute, a second root", () => {
  for (
    const bad of [
      "<svg><text>a < b</text></svg>",
      "<svg><text>a & b</text></svg>",
      '<svg><g a="<"/></svg>',
      '<svg><g a="&x;"/></svg>',
      "<svg><g></svg></g>",
      "<svg><g a=1/></svg>",
      '<svg><g a="1" a="2"/></svg>',
      "<svg/><svg/>",
    ]
  ) assert.throws(() => parseXml(bad), SyntaxError, bad);
  assert.equal(textOf(parseXml("<a>x &amp; &lt;&#65;&#x42;<b>&quot;</b></a>")), 'x & <AB"');
});
