/**
 * The live graphs drawn as SVG, in the server: the wait-for graph (invocations, waiter → waited,
 * with each one's status and whether a waiter holds or freed its slot) and the call graph (calls,
 * caller → callee, with their live invocations), laid out in layers by dagre. Shared by
 * `nenc graph --svg` and the web monitor's graph page. Private to `cli/`.
 *
 * The SVG is self-contained and safe to inline in a page: presentation attributes only (no
 * `<style>`, which would apply to the whole page), no external fonts, images or scripts, ids
 * prefixed per graph, and every text — labels carry task arguments, which are user data —
 * escaped.
 *
 * @module
 */

import dagre from "@dagrejs/dagre";
import type { Nenc } from "../core/app.ts";
import { cycleLine } from "./_render.ts";
import { callLabel } from "../core/ids.ts";
import { ALL_STATUSES, type InvocationStatus } from "../core/status.ts";
import {
  holdsSlots,
  type InvocationRecord,
  type LiveGraphs,
  type RefusedCycle,
} from "../core/store.ts";

/** What the graph views read from the store at once. */
export interface LiveGraphsData {
  /** The live call graph and wait graph. */
  readonly graphs: LiveGraphs;
  /** The invocations of both graphs that still exist. */
  readonly records: readonly InvocationRecord[];
  /** The cycles refused lately, most recent first. */
  readonly cycles: readonly RefusedCycle[];
}

/** Reads the live graphs, their invocations and the recent refused cycles from the app's store. */
export async function readLiveGraphs(app: Nenc): Promise<LiveGraphsData> {
  const store = app.orchestrator.store;
  const [graphs, cycles] = await Promise.all([store.graphs(), store.cycles()]);
  const ids = new Set([
    ...graphs.waits.flat(),
    ...graphs.calls.calls.flatMap((call) => call.invocationIds),
  ]);
  return { graphs, records: await store.getMany([...ids]), cycles };
}

/** The two graphs as standalone SVG documents. */
export interface GraphsSvg {
  /** The wait-for graph: waiter → waited. */
  readonly waits: string;
  /** The call graph: caller → callee. */
  readonly calls: string;
}

/**
 * The live wait-for and call graphs of an app as SVG (an SVG saying so when a graph is empty),
 * and the cycles refused lately: what the monitor's graph page shows.
 *
 * @example Nothing live yet
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { renderLiveGraphs } from "./_svg.ts";
 *
 * const { waits, calls, cycles } = await renderLiveGraphs(new Nenc());
 * console.log(waits.includes("No invocation waits on another right now."), calls.startsWith("<svg"), cycles); // true true []
 * ```
 */
export async function renderLiveGraphs(
  app: Nenc,
): Promise<{ waits: string; calls: string; cycles: readonly RefusedCycle[] }> {
  const { graphs, records, cycles } = await readLiveGraphs(app);
  return { ...renderGraphsSvg(graphs, records), cycles };
}

/** Draws each live graph on its own, as a standalone SVG document. */
export function renderGraphsSvg(
  graphs: LiveGraphs,
  records: readonly InvocationRecord[],
): GraphsSvg {
  const byId = new Map(records.map((record) => [record.id, record]));
  return {
    waits: standalone(drawWaits(graphs, byId)),
    calls: standalone(drawCalls(graphs, byId)),
  };
}

/**
 * Both live graphs and the recent refused cycles in one standalone SVG document, one under the
 * other (what `nenc graph --svg` writes).
 */
export function renderGraphsDocument(data: LiveGraphsData): string {
  const byId = new Map(data.records.map((record) => [record.id, record]));
  const parts = [drawWaits(data.graphs, byId), drawCalls(data.graphs, byId)];
  if (data.cycles.length > 0) parts.push(drawCycles(data.cycles));
  let y = 0;
  let body = "";
  for (const part of parts) {
    body += `<g transform="translate(0 ${y})">${part.body}</g>`;
    y += part.height + SECTION_GAP;
  }
  return standalone({
    width: Math.max(...parts.map((part) => part.width)),
    height: y - SECTION_GAP,
    body,
  });
}

// --- drawing ---------------------------------------------------------------------------------------

/** A drawing at the origin: its size, and its SVG elements. */
interface Drawing {
  readonly width: number;
  readonly height: number;
  readonly body: string;
}

/** How a waiter stands with its slot. */
type SlotMark = "holds" | "freed";

/** One node to lay out and draw. */
interface Node {
  /** The node's id in the graph (an invocation id, or a call id). */
  readonly id: string;
  /** Its lines of text, the first in bold. */
  readonly lines: readonly string[];
  /** What colours it: an invocation's status, or `gone` (purged meanwhile). */
  readonly status: InvocationStatus | "gone";
  /** A waiter's slot: held (a solid, thick border) or freed (a dashed one). */
  readonly slot?: SlotMark;
}

/** One graph to lay out: its nodes and edges, what it is, and what to say when it is empty. */
interface Graph {
  /** Prefixes the ids of its SVG elements. */
  readonly name: string;
  readonly title: string;
  readonly empty: string;
  readonly nodes: readonly Node[];
  readonly edges: readonly (readonly [string, string])[];
}

const FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";
const FONT_SIZE = 12;
/** The advance of one character of a monospace font at {@linkcode FONT_SIZE}, a little generous. */
const CHAR_WIDTH = 7.4;
const LINE_HEIGHT = 16;
const PADDING = 8;
const MARGIN = 16;
const TITLE_HEIGHT = 28;
const LEGEND_ROW = 22;
const SECTION_GAP = 24;
/** Longer texts are cut, with `…` (the whole text is the node's tooltip). */
const MAX_CHARS = 64;
/** A call node lists this many of its invocations at most. */
const MAX_INVOCATIONS = 3;

/** Fill colours by status, light enough for dark text, told apart on a white page. */
const FILL: Readonly<Record<InvocationStatus | "gone", string>> = {
  registered: "#e5e7eb",
  pending: "#fef3c7",
  running: "#93c5fd",
  paused: "#fcd34d",
  resumed: "#a5f3fc",
  success: "#86efac",
  failed: "#fca5a5",
  retry: "#fdba74",
  rerouted: "#ddd6fe",
  killed: "#f9a8d4",
  concurrency_controlled: "#c4b5fd",
  concurrency_controlled_final: "#a8a29e",
  pending_recovery: "#fde68a",
  running_recovery: "#bae6fd",
  canceled: "#d1d5db",
  gone: "#ffffff",
};

function drawWaits(graphs: LiveGraphs, records: ReadonlyMap<string, InvocationRecord>): Drawing {
  const ids = new Set(graphs.waits.flat());
  const waiters = new Set(graphs.waits.map(([waiter]) => waiter));
  const nodes = [...ids].map((id): Node => {
    const record = records.get(id);
    const status = record?.status ?? "gone";
    const slot: SlotMark | undefined = record === undefined || !waiters.has(id)
      ? undefined
      : holdsSlots(record)
      ? "holds"
      : "freed";
    return {
      id,
      lines: [
        record === undefined ? "(purged)" : callLabel(record.taskId, record.args),
        `${status} ${id}`,
        ...slot === undefined ? [] : [slot === "holds" ? "holds its slot" : "freed its slot"],
      ],
      status,
      ...slot === undefined ? {} : { slot },
    };
  });
  return draw({
    name: "waits",
    title: "Wait-for graph: waiter → waited",
    empty: "No invocation waits on another right now.",
    nodes,
    edges: graphs.waits,
  });
}

function drawCalls(graphs: LiveGraphs, records: ReadonlyMap<string, InvocationRecord>): Drawing {
  const nodes = graphs.calls.calls.map((call): Node => {
    const invocations = call.invocationIds.map((id) => ({
      id,
      status: records.get(id)?.status ?? "gone" as const,
    }));
    const shown = invocations.slice(0, MAX_INVOCATIONS).map(({ id, status }) => `${status} ${id}`);
    const more = invocations.length - MAX_INVOCATIONS;
    return {
      id: call.callId,
      lines: [call.label, ...shown, ...more > 0 ? [`… ${more} more`] : []],
      status: invocations[0]?.status ?? "gone",
    };
  });
  return draw({
    name: "calls",
    title: "Call graph: caller → callee",
    empty: "No live calls right now.",
    nodes,
    edges: graphs.calls.edges,
  });
}

/**
 * The cycles refused lately, most recent first: for each, when and the invocation that failed
 * with it, then its path one call a line (the whole cycle on one line is its tooltip).
 */
function drawCycles(cycles: readonly RefusedCycle[]): Drawing {
  let body = `<g data-graph="cycles">${title("Refused cycles, most recent first", 0)}`;
  let y = TITLE_HEIGHT;
  let chars = 0;
  for (const cycle of cycles) {
    // Its path indented under the header (by position: SVG collapses spaces).
    const lines: [string, number][] = [
      [`${new Date(cycle.atMs).toISOString()} ${cycle.invocationId}`, 0],
      ...cycle.labels.map((label, i): [string, number] => i === 0 ? [label, 4] : [`→ ${label}`, 2]),
      [`→ back to ${cycle.labels[0]}`, 2],
    ];
    body += `<g data-cycle="${escapeXml(cycle.invocationId)}"><title>${
      escapeXml(cycleLine(cycle))
    }</title>`;
    for (const [line, indent] of lines) {
      y += LINE_HEIGHT;
      body += text(MARGIN + indent * CHAR_WIDTH, y, line, MAX_CHARS * 2);
      chars = Math.max(chars, indent + Math.min(line.length, MAX_CHARS * 2));
    }
    body += "</g>";
    y += LINE_HEIGHT / 2;
  }
  return { width: MARGIN * 2 + chars * CHAR_WIDTH, height: y, body: `${body}</g>` };
}

/** Lays a graph out in layers (left to right) and draws it: title, edges, nodes, legend. */
function draw(graph: Graph): Drawing {
  if (graph.nodes.length === 0) {
    const width = MARGIN * 2 + Math.max(graph.title.length, graph.empty.length) * CHAR_WIDTH;
    return {
      width,
      height: TITLE_HEIGHT + LINE_HEIGHT * 2,
      body: `<g data-graph="${graph.name}">${title(graph.title, 0)}` +
        `<text x="${MARGIN}" y="${TITLE_HEIGHT + LINE_HEIGHT}" fill="#4b5563" data-empty="true">${
          escapeXml(graph.empty)
        }</text></g>`,
    };
  }
  const layout = new dagre.graphlib.Graph<
    Record<string, unknown>,
    { width: number; height: number; x?: number; y?: number },
    { points?: { x: number; y: number }[] }
  >();
  layout.setGraph({ rankdir: "LR", nodesep: 16, ranksep: 56, marginx: MARGIN, marginy: 8 });
  layout.setDefaultEdgeLabel(() => ({}));
  for (const node of graph.nodes) {
    const chars = Math.max(...node.lines.map((line) => Math.min(line.length, MAX_CHARS)));
    layout.setNode(node.id, {
      width: chars * CHAR_WIDTH + PADDING * 2,
      height: node.lines.length * LINE_HEIGHT + PADDING * 2,
    });
  }
  for (const [from, to] of graph.edges) layout.setEdge(from, to);
  dagre.layout(layout);
  const { width = 0, height = 0 } = layout.graph() as { width?: number; height?: number };

  const arrow = `nenc-${graph.name}-arrow`;
  let body = `<g data-graph="${graph.name}">${title(graph.title, 0)}` +
    `<defs><marker id="${arrow}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" ` +
    `markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" ` +
    `fill="#374151"/></marker></defs>`;
  body += `<g transform="translate(0 ${TITLE_HEIGHT})">`;
  for (const [from, to] of graph.edges) {
    const points = layout.edge(from, to)?.points ?? [];
    const d = points.map((p, i) => `${i === 0 ? "M" : "L"} ${round(p.x)} ${round(p.y)}`)
      .join(" ");
    body += `<path data-from="${escapeXml(from)}" data-to="${escapeXml(to)}" d="${d}" ` +
      `fill="none" stroke="#374151" stroke-width="1.5" marker-end="url(#${arrow})"/>`;
  }
  for (const node of graph.nodes) {
    const { x = 0, y = 0, width: w, height: h } = layout.node(node.id);
    body += drawNode(node, x, y, w, h);
  }
  body += "</g>";
  const legend = drawLegend(graph, Math.max(width, 320), TITLE_HEIGHT + height);
  return {
    width: Math.max(width, legend.width),
    height: TITLE_HEIGHT + height + legend.height,
    body: `${body}${legend.body}</g>`,
  };
}

/** A node centred on `x`, `y`: its box, filled by status, bordered by slot, and its lines. */
function drawNode(node: Node, x: number, y: number, w: number, h: number): string {
  const border = node.slot === "holds"
    ? `stroke-width="3"`
    : node.slot === "freed"
    ? `stroke-width="2" stroke-dasharray="6 3"`
    : `stroke-width="1"`;
  let body = `<g data-node="${escapeXml(node.id)}" data-status="${node.status}"${
    node.slot === undefined ? "" : ` data-slot="${node.slot}"`
  } transform="translate(${round(x)} ${round(y)})">`;
  body += `<title>${escapeXml(node.lines.join("\n"))}</title>`;
  body += `<rect x="${round(-w / 2)}" y="${round(-h / 2)}" width="${round(w)}" ` +
    `height="${round(h)}" rx="4" fill="${FILL[node.status]}" stroke="#111827" ${border}/>`;
  node.lines.forEach((line, i) => {
    const baseline = -h / 2 + PADDING + (i + 1) * LINE_HEIGHT - 4;
    body += text(-w / 2 + PADDING, baseline, line, MAX_CHARS, i === 0);
  });
  return body + "</g>";
}

/** The legend under a graph: the colours of the statuses it shows, and the slot borders. */
function drawLegend(graph: Graph, width: number, top: number): Drawing {
  const present = new Set(graph.nodes.map((node) => node.status));
  const items: { label: string; fill: string; border: string }[] = [
    ...[...ALL_STATUSES, "gone" as const].filter((status) => present.has(status)).map((
      status,
    ) => ({ label: status, fill: FILL[status], border: `stroke-width="1"` })),
  ];
  const slots = new Set(graph.nodes.flatMap((node) => node.slot ?? []));
  if (slots.has("holds")) {
    items.push({ label: "holds its slot", fill: "#ffffff", border: `stroke-width="3"` });
  }
  if (slots.has("freed")) {
    items.push({
      label: "freed its slot",
      fill: "#ffffff",
      border: `stroke-width="2" stroke-dasharray="6 3"`,
    });
  }
  let body = "";
  let x = MARGIN;
  let row = 0;
  for (const item of items) {
    const itemWidth = 18 + item.label.length * CHAR_WIDTH + 16;
    if (x + itemWidth > width && x > MARGIN) {
      x = MARGIN;
      row++;
    }
    const y = top + 8 + row * LEGEND_ROW;
    body += `<g data-legend="${escapeXml(item.label)}"><rect x="${round(x)}" y="${y}" ` +
      `width="14" height="14" rx="2" fill="${item.fill}" stroke="#111827" ${item.border}/>` +
      text(x + 20, y + 11, item.label, MAX_CHARS) + "</g>";
    x += itemWidth;
  }
  return { width, height: 8 + (row + 1) * LEGEND_ROW, body };
}

function title(value: string, y: number): string {
  return `<text x="${MARGIN}" y="${y + 18}" font-size="14" font-weight="bold">${
    escapeXml(value)
  }</text>`;
}

/** One line of text at `x`, `y` (its baseline), cut to `max` characters. */
function text(x: number, y: number, value: string, max: number, bold = false): string {
  const shown = value.length > max ? `${value.slice(0, max - 1)}…` : value;
  return `<text x="${round(x)}" y="${round(y)}"${bold ? ` font-weight="bold"` : ""}>${
    escapeXml(shown)
  }</text>`;
}

/** A drawing as an SVG document of its own. */
function standalone(drawing: Drawing): string {
  const width = round(drawing.width);
  const height = round(drawing.height);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" role="img"><rect width="100%" height="100%" ` +
    `fill="#ffffff"/><g font-family="${FONT}" font-size="${FONT_SIZE}" fill="#111827">` +
    `${drawing.body}</g></svg>\n`;
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

/**
 * Text made safe for XML content and attribute values: the five special characters as entities,
 * and characters XML 1.0 does not allow (control characters, unpaired surrogates) as U+FFFD.
 */
export function escapeXml(value: string): string {
  return value
    .replace(
      // deno-lint-ignore no-control-regex
      /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g,
      "\uFFFD",
    )
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
