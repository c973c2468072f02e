/**
 * `nenc monitor`: a web monitor over an app's store. Server-rendered HTML (no front-end build, no
 * CDN: CSS and one small script inline), kept live by server-sent events; the only write is
 * cancel, a POST. Served by Hono through `@hono/node-server`, so the one code path runs on Deno,
 * Bun and Node.
 *
 * Security: it listens on loopback by default; any other host needs a token, which every request
 * (server-sent events included) then carries as `Authorization: Bearer <token>` or
 * `?token=<token>`, or gets 401. Without a token, requests must name a loopback host (against DNS
 * rebinding) and a cancel must come from the monitor's own pages (same origin). The monitor logs
 * nothing, so the token appears in no log; the pages carry it in their links only when they were
 * requested with `?token=`.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { type Context, Hono } from "hono";
import { html, raw } from "hono/html";
import type { Nenc } from "../core/app.ts";
import { StoreClosedError } from "../core/errors.ts";
import { callLabel } from "../core/ids.ts";
import {
  ALL_STATUSES,
  type HistoryEntry,
  type InvocationStatus,
  isFinalStatus,
} from "../core/status.ts";
import {
  holdsSlots,
  type InvocationRecord,
  rateKeyTask,
  type SerializedError,
} from "../core/store.ts";
import {
  concurrencyView,
  invocationTree,
  isAlive,
  listInvocations,
  runnersView,
  type TreeNode,
  unservedOf,
} from "./_inspect.ts";
import { cycleLine, duration } from "./_render.ts";
import { readLiveGraphs, renderGraphsSvg } from "./_svg.ts";

/** The host names the monitor serves without a token. */
const LOOPBACK_HOSTS: ReadonlySet<string> = new Set(["127.0.0.1", "::1", "localhost"]);

/**
 * Options of {@linkcode startMonitor}; defaults in brackets.
 *
 * @example
 * ```ts
 * import type { MonitorOptions } from "@nenc/nenc/cli";
 *
 * const options: MonitorOptions = { host: "0.0.0.0", port: 8787, token: crypto.randomUUID() };
 * console.log(options.port); // 8787
 * ```
 */
export interface MonitorOptions {
  /**
   * The address to listen on [`"127.0.0.1"`]; any but `127.0.0.1`, `::1` and `localhost` needs a
   * `token`.
   */
  readonly host?: string;
  /** The port [`8787`]; `0` picks a free one. */
  readonly port?: number;
  /** The token every request must carry (at least 16 characters) [none]. */
  readonly token?: string;
  /** How often the live pages' source of events reads the store, ms [`1000`]. */
  readonly pollMs?: number;
}

/**
 * A monitor that listens: its address, and `close()`.
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { type RunningMonitor, startMonitor } from "@nenc/nenc/cli";
 *
 * const app = new Nenc();
 * const monitor: RunningMonitor = await startMonitor(app, { port: 0 });
 * console.log(monitor.url.startsWith("http://127.0.0.1:")); // true
 * await monitor.close();
 * ```
 */
export interface RunningMonitor {
  /** Where it listens, e.g. `http://127.0.0.1:8787/` (without the token). */
  readonly url: string;
  /** The port it listens on. */
  readonly port: number;
  /** Stops listening, ends the event streams and closes the connections. */
  close(): Promise<void>;
}

/** Whether `host` is served without a token: `127.0.0.1`, `::1` or `localhost`. */
function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host);
}

/**
 * Checks the options: a `RangeError` for a bad port or poll interval, a `TypeError` for a host
 * other than loopback without a token, or a token shorter than 16 characters.
 */
export function checkMonitorOptions(options: MonitorOptions): void {
  const { host = "127.0.0.1", port = 8787, token, pollMs = 1000 } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new RangeError(`Cannot start the monitor: port must be an integer 0-65535, got ${port}`);
  }
  if (!(pollMs > 0)) {
    throw new RangeError(`Cannot start the monitor: pollMs must be > 0, got ${pollMs}`);
  }
  if (token !== undefined && token.length < 16) {
    throw new TypeError(
      "Cannot start the monitor: the token must be at least 16 characters (for example a random UUID)",
    );
  }
  if (token === undefined && !isLoopbackHost(host)) {
    throw new TypeError(
      `Cannot start the monitor on ${host}: any host other than 127.0.0.1, ::1 or localhost needs a token (the token option, --token on the command line), which every request must then carry`,
    );
  }
}

/**
 * Serves the web monitor of `app`'s store until `close()`. Resolves once it listens.
 *
 * @throws {TypeError} for a host other than loopback without a token (see
 * {@linkcode MonitorOptions.host}).
 *
 * @example
 * ```ts
 * import { Nenc } from "@nenc/nenc";
 * import { startMonitor } from "@nenc/nenc/cli";
 *
 * const app = new Nenc();
 * await app.task("ping", () => "pong").call();
 * const monitor = await startMonitor(app, { port: 0 });
 * const page = await (await fetch(monitor.url)).text();
 * console.log(page.includes("ping")); // true
 * await monitor.close();
 * ```
 */
export async function startMonitor(
  app: Nenc,
  options: MonitorOptions = {},
): Promise<RunningMonitor> {
  checkMonitorOptions(options);
  const { host = "127.0.0.1", port = 8787 } = options;
  const monitor = createMonitor(app, options);
  let server!: ReturnType<typeof serve>;
  const address = await new Promise<AddressInfo>((resolve, reject) => {
    server = serve({ fetch: monitor.fetch, hostname: host, port }, resolve);
    server.once("error", reject);
  });
  const name = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return {
    url: `http://${name}:${address.port}/`,
    port: address.port,
    async close() {
      monitor.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections of browsers would hold close() open.
        (server as { closeAllConnections?: () => void }).closeAllConnections?.();
      });
    },
  };
}

/** What a request's context holds: the token to put in links, when it came with `?token=`. */
type Env = { Variables: { linkToken?: string } };

/** The monitor's request handler, and `close()` to end its event streams. */
interface Monitor {
  /** Answers one request. */
  fetch(request: Request): Promise<Response>;
  /** Ends the event streams (the store is the caller's). */
  close(): void;
}

/** The monitor's routes over `app`'s store, without a server; the options are checked. */
function createMonitor(app: Nenc, options: MonitorOptions): Monitor {
  const { token, pollMs = 1000 } = options;
  const pulse = new Pulse(app, pollMs);
  const routes = new Hono<Env>();

  routes.use(async (c, next): Promise<Response | void> => {
    if (token !== undefined) {
      const given = bearer(c.req.header("authorization")) ?? c.req.query("token");
      if (given === undefined || !sameSecret(given, token)) {
        c.header("WWW-Authenticate", 'Bearer realm="nenc monitor"');
        return c.text("401 Unauthorized: this monitor needs its token.\n", 401);
      }
      if (c.req.query("token") !== undefined) c.set("linkToken", given);
    } else {
      // No token: only requests that name a loopback host (a DNS-rebound name is refused).
      const hostname = hostOf(c.req.header("host"));
      if (hostname === undefined || !isLoopbackHost(hostname)) {
        return c.text(
          "403 Forbidden: this monitor answers requests to a loopback host only.\n",
          403,
        );
      }
    }
    await next();
    c.header("Content-Security-Policy", CONTENT_SECURITY_POLICY);
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Referrer-Policy", "no-referrer");
    c.header("Cache-Control", "no-store");
  });

  routes.get("/", async (c) => c.html(page(c, "Overview", await overviewPage(app, link(c)))));
  routes.get("/invocations", async (c) => {
    const filter = listFilter(c.req.query("task"), c.req.query("status"));
    return typeof filter === "string"
      ? c.html(page(c, "Invocations", html`<p class="error">${filter}</p>`), 400)
      : c.html(
        page(
          c,
          "Invocations",
          await listPage(app, filter, link(c), c.get("linkToken")),
        ),
      );
  });
  routes.get("/invocations/:id", async (c) => {
    const body = await invocationPage(app, c.req.param("id"), link(c));
    return body === undefined
      ? c.html(page(c, "Not found", html`<p>No invocation ${c.req.param("id")}.</p>`), 404)
      : c.html(page(c, `Invocation ${c.req.param("id")}`, body));
  });
  routes.post("/invocations/:id/cancel", async (c) => {
    if (token === undefined && !sameOrigin(c)) {
      return c.text(
        "403 Forbidden: a cancel needs the token, or must come from the monitor's own pages.\n",
        403,
      );
    }
    const id = c.req.param("id");
    await app.orchestrator.cancel([{ id }], { reason: "canceled from nenc monitor" });
    return c.redirect(link(c)(`/invocations/${encodeURIComponent(id)}`), 303);
  });
  routes.get("/graph", async (c) => c.html(page(c, "Graph", await graphPage(app, link(c)))));
  routes.get("/runners", async (c) => c.html(page(c, "Runners", await runnersPage(app, link(c)))));
  routes.get(
    "/concurrency",
    async (c) => c.html(page(c, "Concurrency", await concurrencyPage(app, link(c)))),
  );
  routes.get("/events", (c) => pulse.response(c.req.raw.signal));
  routes.notFound((c) => c.html(page(c, "Not found", html`<p>No such page.</p>`), 404));
  routes.onError((error, c) =>
    c.html(page(c, "Error", html`<p class="error">${(error as Error).message}</p>`), 500)
  );
  return {
    fetch: async (request) => await routes.fetch(request),
    close: () => pulse.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// Security helpers

function bearer(header: string | undefined): string | undefined {
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1];
}

/** Compares two secrets in constant time (their SHA-256 digests, so lengths do not leak). */
function sameSecret(given: string, expected: string): boolean {
  const digest = (text: string): Buffer => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** The host name of a Host header (`127.0.0.1:8787` → `127.0.0.1`, `[::1]:80` → `::1`). */
function hostOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = header.match(/^\[([^\]]+)\](?::\d+)?$/) ?? header.match(/^([^:]+)(?::\d+)?$/);
  return match?.[1]?.toLowerCase();
}

/** Whether a request comes from a page of this monitor: `Sec-Fetch-Site` or `Origin` says so. */
function sameOrigin(c: Context): boolean {
  const site = c.req.header("sec-fetch-site");
  if (site !== undefined) return site === "same-origin";
  const origin = c.req.header("origin");
  return origin !== undefined && origin === `http://${c.req.header("host")}`;
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

/**
 * The source of the live pages' events: while someone listens, it reads the store's counts and
 * runners every `pollMs` and tells every listener when they changed. One reader for all
 * listeners; nothing is read while nobody listens.
 */
class Pulse {
  readonly #app: Nenc;
  readonly #pollMs: number;
  readonly #listeners = new Set<(version: number) => void>();
  readonly #streams = new Set<ReadableStreamDefaultController<Uint8Array>>();
  #version = 0;
  #stop = new AbortController();
  #running = false;

  constructor(app: Nenc, pollMs: number) {
    this.#app = app;
    this.#pollMs = pollMs;
  }

  /** An event stream: `ready` at once, then `change` (with a version) on every change. */
  response(signal: AbortSignal): Response {
    const encoder = new TextEncoder();
    let listener: ((version: number) => void) | undefined;
    let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
    const end = (): void => {
      if (listener !== undefined) this.#listeners.delete(listener);
      if (controller !== undefined) this.#streams.delete(controller);
    };
    const body = new ReadableStream<Uint8Array>({
      start: (stream) => {
        controller = stream;
        const send = (text: string): void => {
          try {
            stream.enqueue(encoder.encode(text));
          } catch {
            end();
          }
        };
        listener = (version) => send(`event: change\ndata: ${version}\n\n`);
        this.#streams.add(stream);
        this.#listeners.add(listener);
        send(`retry: ${Math.max(1000, this.#pollMs)}\nevent: ready\ndata: ${this.#version}\n\n`);
        signal.addEventListener("abort", end, { once: true });
        this.#run();
      },
      cancel: end,
    });
    return new Response(body, {
      headers: {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-store",
        "Connection": "keep-alive",
      },
    });
  }

  /** Ends every stream and the reader. */
  close(): void {
    this.#stop.abort();
    for (const stream of this.#streams) {
      try {
        stream.close();
      } catch { /* already closed */ }
    }
    this.#streams.clear();
    this.#listeners.clear();
  }

  async #run(): Promise<void> {
    if (this.#running || this.#stop.signal.aborted) return;
    this.#running = true;
    let last: string | undefined;
    try {
      while (this.#listeners.size > 0 && !this.#stop.signal.aborted) {
        const fingerprint = await this.#fingerprint();
        // A read that failed (a store that blips) changes nothing: the next poll tries again.
        if (fingerprint !== undefined) {
          if (last !== undefined && fingerprint !== last) {
            this.#version++;
            for (const listener of [...this.#listeners]) listener(this.#version);
          }
          last = fingerprint;
        }
        await this.#app.clock.sleep(this.#pollMs, this.#stop.signal);
      }
    } catch {
      // The monitor closes (its sleep aborted), or its store is closed.
    } finally {
      this.#running = false;
    }
  }

  /**
   * What the pages show of the store, in short: counts per task and status, and the runners with
   * whether each is alive — not their heartbeats' times, which move every second with any live
   * worker and would make every page fetch itself again each poll. `undefined` when the store
   * could not be read; a closed store stops the monitor's polling for good.
   */
  async #fingerprint(): Promise<string | undefined> {
    const { orchestrator, clock } = this.#app;
    try {
      const [counts, runners] = await Promise.all([
        orchestrator.store.counts(),
        orchestrator.store.runners(),
      ]);
      const alive = isAlive(this.#app, clock.now());
      return JSON.stringify([
        [...counts].map(([task, statuses]) => [task, [...statuses]]).sort(),
        runners.map((runner) => [runner.runnerId, alive(runner)]).sort(),
      ]);
    } catch (error) {
      if (error instanceof StoreClosedError) throw error;
      return undefined;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Pages

type Html = ReturnType<typeof html>;
/** Makes a link to a path of the monitor, with the token when the page was requested with it. */
type Link = (path: string) => string;

function link(c: Context<Env>): Link {
  const token = c.get("linkToken");
  return (path) =>
    token === undefined
      ? path
      : `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

const SCRIPT = `"use strict";
const source = new EventSource(document.body.dataset.events);
source.addEventListener("open", () => document.body.dataset.live = "on");
source.addEventListener("error", () => document.body.dataset.live = "off");
let busy = false;
source.addEventListener("change", async () => {
  if (busy) return;
  busy = true;
  try {
    const response = await fetch(location.href, { headers: { accept: "text/html" } });
    if (!response.ok) return;
    const next = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = next.getElementById("content");
    if (fresh !== null) document.getElementById("content").replaceWith(fresh);
    document.body.dataset.version = String(Number(document.body.dataset.version || 0) + 1);
  } finally {
    busy = false;
  }
});
`;

const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "style-src 'unsafe-inline'",
  `script-src 'sha256-${createHash("sha256").update(SCRIPT).digest("base64")}'`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join("; ");

const STYLE = `
:root { color-scheme: light dark; --fg: #1d232a; --muted: #66707a; --line: #d9dee3; --bg: #fff;
  --panel: #f5f7f9; --accent: #2f6fdf; }
@media (prefers-color-scheme: dark) { :root { --fg: #e3e7ea; --muted: #9aa4ad; --line: #39414a;
  --bg: #15191d; --panel: #1d2329; --accent: #6ea0ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.2em; align-items: baseline; padding: .7em 1.2em;
  border-bottom: 1px solid var(--line); background: var(--panel); }
header strong { font-size: 1.05em; }
body[data-live="on"] header::after { content: "● live"; margin-left: auto; color: #16a34a;
  font-size: 12px; }
header a { color: var(--fg); text-decoration: none; }
header a[aria-current] { color: var(--accent); font-weight: 600; }
main { padding: 1em 1.2em 3em; max-width: 1400px; }
h1 { font-size: 1.3em; margin: .2em 0 .6em; }
h2 { font-size: 1.05em; margin: 1.6em 0 .5em; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: .3em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, .id { font: 12.5px ui-monospace, monospace; }
pre { background: var(--panel); padding: .6em .8em; overflow: auto; margin: .3em 0; }
.muted { color: var(--muted); }
.error { color: #c62828; }
.empty { color: var(--muted); font-style: italic; }
.status { display: inline-block; padding: 0 .45em; border-radius: 3px; font-size: 12px;
  background: var(--panel); border: 1px solid var(--line); }
.s-running, .s-resumed, .s-pending { background: #dbeafe; color: #1e40af; border-color: #93c5fd; }
.s-paused { background: #fef3c7; color: #92400e; border-color: #fcd34d; }
.s-success { background: #dcfce7; color: #166534; border-color: #86efac; }
.s-failed, .s-concurrency_controlled_final { background: #fee2e2; color: #991b1b;
  border-color: #fca5a5; }
.s-canceled { background: #e5e7eb; color: #374151; border-color: #9ca3af; }
.s-concurrency_controlled, .s-retry, .s-rerouted { background: #f3e8ff; color: #6b21a8;
  border-color: #d8b4fe; }
.timeline { display: flex; height: 22px; border: 1px solid var(--line); margin: .4em 0 .8em;
  max-width: 900px; }
.timeline span { overflow: hidden; white-space: nowrap; font-size: 11px; padding: 2px 4px;
  border-right: 1px solid var(--bg); min-width: 4px; }
form.inline { display: inline; }
.bar { width: 360px; height: 14px; background: var(--panel); }
.bar span { display: block; height: 100%; min-width: 3px; }
#children ul { margin: .2em 0; padding-left: 1.4em; }
label { margin-right: 1em; }
button { font: inherit; padding: .2em .8em; cursor: pointer; }
.graph { overflow: auto; border: 1px solid var(--line); background: #fff; padding: .5em;
  margin: .3em 0 1em; }
.graph svg { display: block; }
`;

const NAV: readonly (readonly [string, string])[] = [
  ["/", "Overview"],
  ["/invocations", "Invocations"],
  ["/graph", "Graph"],
  ["/concurrency", "Concurrency"],
  ["/runners", "Runners"],
];

function page(c: Context<Env>, title: string, body: Html): Html {
  const to = link(c);
  const path = c.req.path;
  const current = (href: string): boolean =>
    href === "/" ? path === "/" : path === href || path.startsWith(`${href}/`);
  return html`
    <!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8">
        <meta name="referrer" content="no-referrer">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>${title} · nenc monitor</title>
        <style>${raw(STYLE)}</style>
      </head>
      <body data-events="${to("/events")}">
        <header><strong>nenc monitor</strong>${NAV.map(([href, name]) =>
          html`
            <a href="${to(href)}" ${current(href) ? raw(' aria-current="page"') : ""}>${name}</a>
          `
        )}</header>
        <main id="content"><h1>${title}</h1>${body}</main>
        <script>${raw(SCRIPT)}</script>
      </body>
    </html>
  `;
}

function statusBadge(status: InvocationStatus): Html {
  return html`<span class="status s-${status}">${status}</span>`;
}

function idLink(to: Link, id: string): Html {
  return html`<a class="id" href="${to(`/invocations/${encodeURIComponent(id)}`)}">${id}</a>`;
}

function argsText(record: InvocationRecord): string {
  return callLabel(record.taskId, record.args).slice(record.taskId.length);
}

async function overviewPage(app: Nenc, to: Link): Promise<Html> {
  const store = app.orchestrator.store;
  const nowMs = app.clock.now();
  const [counts, delayed, runners] = await Promise.all([
    store.counts(),
    store.delayedCounts(nowMs),
    runnersView(app, nowMs),
  ]);
  const unserved = unservedOf(counts, runners);
  const tasks = [...counts.keys()].sort();
  const statuses = ALL_STATUSES.filter((status) => tasks.some((t) => counts.get(t)!.has(status)));
  const alive = runners.filter((runner) => runner.alive);
  return html`<p class="muted">App <code>${app.appId}</code>. The page follows the store live.</p>
${
    unserved.length === 0
      ? ""
      : html`<p class="error" id="unserved">Queued, and no live runner defines them: ${
        unserved.join(", ")
      }.</p>`
  }
<h2>Invocations per task and status</h2>
${
    tasks.length === 0 ? html`<p class="empty">No invocations.</p>` : html`<table id="counts">
<tr><th>task</th>${
      statuses.map((status) => html`<th>${statusBadge(status)}</th>`)
    }<th>total</th></tr>
${
      tasks.map((task) => {
        const perTask = counts.get(task)!;
        const total = [...perTask.values()].reduce((sum, n) => sum + n, 0);
        const query = (status?: string): string =>
          to(
            `/invocations?task=${encodeURIComponent(task)}${
              status === undefined ? "" : `&status=${status}`
            }`,
          );
        return html`<tr><td><a href="${query()}">${task}</a></td>${
          statuses.map((status) => {
            const count = perTask.get(status);
            return html`<td class="n">${
              count === undefined ? "" : html`<a href="${query(status)}">${count}</a>`
            }</td>`;
          })
        }<td class="n">${total}</td></tr>`;
      })
    }
</table>`
  }
${
    delayed.size === 0 ? "" : html`
      <h2>Waiting for their time</h2>
      <table>
      <tr><th>task</th><th>waiting</th><th>next due</th></tr>
      ${[...delayed].sort(([a], [b]) => a < b ? -1 : 1).map(([task, { count, nextMs }]) =>
        html`
          <tr>
            <td>${task}</td>
            <td class="n">${count}</td>
            <td>in ${duration(nextMs - nowMs)}</td>
          </tr>
        `
      )}</table>
    `
  }
<h2>Runners</h2>
<p><a href="${to("/runners")}">${alive.length} alive</a>${
    runners.length > alive.length
      ? html`, ${runners.length - alive.length} silent (presumed dead)`
      : ""
  }.</p>`;
}

async function invocationPage(app: Nenc, id: string, to: Link): Promise<Html | undefined> {
  const store = app.orchestrator.store;
  const record = await store.get(id);
  if (record === undefined) return undefined;
  const [history, parent, tree] = await Promise.all([
    store.history(id),
    record.parentId === null ? undefined : store.get(record.parentId),
    invocationTree(app, id, TREE_NODES),
  ]);
  const children = tree?.children ?? [];
  const nowMs = app.clock.now();
  const final = isFinalStatus(record.status);
  return html`
    <p>${statusBadge(record.status)} <code>${callLabel(record.taskId, record.args)}</code>
    ${final ? "" : html`
      <form class="inline" method="post"
        action="${to(
          `/invocations/${encodeURIComponent(id)}/cancel`,
        )}"><button type="submit" id="cancel">Cancel</button></form>
    `}</p>
    <table>
      <tr>
        <th>task</th>
        <td>${record.taskId}</td>
      </tr>
      <tr>
        <th>owner</th>
        <td>${record.ownerId ?? html`<span class="muted">none</span>`}</td>
      </tr>
      <tr>
        <th>retries</th>
        <td>${record.retries}</td>
      </tr>
      <tr>
        <th>holds its slots</th>
        <td>${holdsSlots(record) ? "yes" : "no"}</td>
      </tr>
      <tr>
        <th>registered</th>
        <td>${new Date(record.createdAtMs).toISOString()} (${duration(
          nowMs - record.createdAtMs,
        )} ago)</td>
      </tr>
      <tr>
        <th>parent</th>
        <td>${record.parentId === null
          ? html`<span class="muted">none</span>`
          : parent === undefined
          ? html`<span class="id">${record.parentId}</span> <span class="muted">(purged)</span>`
          : html`${idLink(to, parent.id)} <code>${callLabel(parent.taskId, parent.args)}</code> ${
            statusBadge(parent.status)
          }`}</td>
      </tr>
    </table>
    <h2>Arguments</h2>
    ${Object.keys(record.args).length === 0
      ? html`<p class="empty">No arguments.</p>`
      : html`<table id="args">${
        Object.keys(record.args).sort().map((name) =>
          html`
            <tr>
              <th>${name}</th>
              <td>
                <pre>${record.args[name]}</pre>
              </td>
            </tr>
          `
        )
      }</table>`}
    ${record.result === undefined ? "" : html`
      <h2>Result</h2>
      <pre id="result">${record.result}</pre>
    `}
    ${record.error === undefined ? "" : html`<h2>Error</h2>${errorHtml(record.error)}`}
    <h2>History</h2>
    ${timeline(history, final ? undefined : nowMs)}
    <table
      id="history"><tr><th>time</th><th>status</th><th>runner</th><th>for</th></tr>${history.map(
        (entry, i) => {
          const nextMs = history[i + 1]?.timestampMs ?? (final ? undefined : nowMs);
          return html`
            <tr>
              <td>${new Date(entry.timestampMs).toISOString()}</td>
              <td>${statusBadge(entry.status)}</td>
              <td class="id">${entry.runnerId ?? ""}</td>
              <td>${nextMs === undefined ? "" : duration(nextMs - entry.timestampMs)}</td>
            </tr>
          `;
        },
      )}</table>
    <h2>Children (${children.length}${tree?.truncated ? "+" : ""})</h2>
    ${tree === undefined || children.length === 0
      ? html`<p class="empty">It called nothing.</p>`
      : html`<div id="children">${treeHtml(tree, to)}</div>`}
  `;
}

/** The invocations a node called, recursively, as nested lists. */
function treeHtml(node: TreeNode, to: Link): Html {
  return html`<ul>${
    node.children.map((child) =>
      html`<li>${idLink(to, child.record.id)} <code>${
        callLabel(child.record.taskId, child.record.args)
      }</code> ${statusBadge(child.record.status)}${
        child.children.length === 0 ? "" : treeHtml(child, to)
      }</li>`
    )
  }${node.truncated ? html`<li class="muted">… more not shown</li>` : ""}</ul>`;
}

/** The history as a bar: one segment per status, as wide as it lasted, with its runner. */
function timeline(history: readonly HistoryEntry[], nowMs: number | undefined): Html {
  const first = history[0]?.timestampMs;
  const last = nowMs ?? history.at(-1)?.timestampMs;
  if (first === undefined || last === undefined) return html``;
  const span = Math.max(1, last - first);
  return html`<div class="timeline" role="img" aria-label="history">${
    history.map((entry, i) => {
      const endMs = history[i + 1]?.timestampMs ?? nowMs ?? entry.timestampMs;
      const share = Math.max(0.5, ((endMs - entry.timestampMs) / span) * 100);
      const who = entry.runnerId === null ? "" : ` by ${entry.runnerId}`;
      return html`<span class="s-${entry.status}" style="flex: ${
        share.toFixed(2)
      } 0 0" title="${`${entry.status}${who}, ${
        duration(endMs - entry.timestampMs)
      }`}">${entry.status}</span>`;
    })
  }</div>`;
}

function errorHtml(error: SerializedError): Html {
  const levels: Html[] = [];
  let level: SerializedError | { readonly value: string } | undefined = error;
  while (level !== undefined) {
    if ("value" in level) {
      levels.push(html`<pre>caused by ${level.value}</pre>`);
      break;
    }
    const data = Object.entries(level.data);
    levels.push(
      html`<pre class="error">${
        levels.length === 0 ? "" : "caused by "
      }${level.name}: ${level.message}${
        data.map(([field, value]) => `\n  ${field}: ${value}`)
      }</pre>`,
    );
    level = level.cause;
  }
  return html`<div id="error">${levels}</div>`;
}

/** How many descendants an invocation's page shows at most. */
const TREE_NODES = 200;
/** How many invocations a list shows at most. */
const LIST_LIMIT = 200;

/** The list's filter from the query (`task`, `status`: comma-separated), or what is wrong. */
function listFilter(
  task: string | undefined,
  status: string | undefined,
): { taskIds?: string[]; statuses?: Set<InvocationStatus>; limit: number } | string {
  const split = (text: string | undefined): string[] =>
    (text ?? "").split(",").map((part) => part.trim()).filter((part) => part !== "");
  const taskIds = split(task);
  const statuses = split(status);
  const unknown = statuses.filter((name) => !ALL_STATUSES.includes(name as InvocationStatus));
  if (unknown.length > 0) {
    return `Cannot list invocations: unknown status ${unknown.join(", ")} (statuses: ${
      ALL_STATUSES.join(", ")
    })`;
  }
  return {
    ...taskIds.length === 0 ? {} : { taskIds },
    ...statuses.length === 0 ? {} : { statuses: new Set(statuses as InvocationStatus[]) },
    limit: LIST_LIMIT,
  };
}

async function listPage(
  app: Nenc,
  filter: { taskIds?: string[]; statuses?: Set<InvocationStatus>; limit: number },
  to: Link,
  token: string | undefined,
): Promise<Html> {
  const [records, counts] = await Promise.all([
    listInvocations(app, filter),
    app.orchestrator.store.counts(),
  ]);
  const nowMs = app.clock.now();
  const tasks = [...new Set([...counts.keys(), ...app.tasks().map((task) => task.id)])].sort();
  const chosenTask = filter.taskIds?.length === 1 ? filter.taskIds[0] : undefined;
  const chosenStatus = filter.statuses?.size === 1 ? [...filter.statuses][0] : undefined;
  const option = (value: string, chosen: string | undefined): Html =>
    html`
      <option value="${value}" ${value === chosen ? raw(" selected") : ""}>${value}</option>
    `;
  return html`
    <form method="get" action="/invocations">
      <label>task <select name="task"><option value="">any</option>${tasks.map((task) =>
        option(task, chosenTask)
      )}</select></label>
      <label>status <select name="status"><option value="">any</option>${ALL_STATUSES.map((
        status,
      ) => option(status, chosenStatus))}</select></label>
      ${token === undefined ? "" : html`<input type="hidden" name="token" value="${token}">`}
      <button type="submit">Filter</button>
    </form>
    ${records.length === 0 ? html`<p class="empty">No invocation matches.</p>` : html`
      <p class="muted">${records.length === filter.limit
        ? `The newest ${filter.limit}.`
        : `${records.length} invocation${records.length === 1 ? "" : "s"}, newest first.`}</p>
      <table id="list">
        <tr><th>invocation</th><th>call</th><th>status</th><th>age</th><th>runner</th></tr>
        ${records.map((record) =>
          html`
            <tr class="invocation">
              <td>${idLink(to, record.id)}</td>
              <td><code>${callLabel(record.taskId, record.args)}</code></td>
              <td>${statusBadge(record.status)}</td>
              <td>${duration(nowMs - record.createdAtMs)}</td>
              <td class="id">${record.ownerId ?? ""}</td>
            </tr>
          `
        )}
      </table>
    `}
  `;
}

async function graphPage(app: Nenc, to: Link): Promise<Html> {
  const { graphs, records, cycles } = await readLiveGraphs(app);
  const byId = new Map(records.map((record) => [record.id, record]));
  const waited = new Map<string, string[]>();
  for (const [waiter, target] of graphs.waits) {
    waited.set(waiter, [...waited.get(waiter) ?? [], target]);
  }
  const live = graphs.waits.length > 0 || graphs.calls.calls.length > 0;
  const svg = live ? renderGraphsSvg(graphs, records) : undefined;
  const waiters = [...waited].map(([waiter, targets]) => {
    const record = byId.get(waiter);
    return html`
      <tr>
        <td>${idLink(to, waiter)}</td>
        <td><code>${record === undefined
          ? "(purged)"
          : callLabel(record.taskId, record.args)}</code></td>
        <td>${record === undefined ? "" : statusBadge(record.status)}</td>
        <td>${record === undefined
          ? ""
          : holdsSlots(record)
          ? "holds its slot"
          : "freed its slot"}</td>
        <td>waits on ${targets.length}</td>
      </tr>
    `;
  });
  return html`
    <h2>Refused cycles</h2>
    ${cycles.length === 0 ? html`<p class="empty">No cycle was refused lately.</p>` : html`
      <ul id="cycles">${cycles.map((cycle) =>
        html`<li><a href="${to(`/invocations/${encodeURIComponent(cycle.invocationId)}`)}"><code>${
          cycleLine(cycle)
        }</code></a></li>`
      )}</ul>
    `}
    ${svg === undefined
      ? html`
        <p class="empty"
          id="nothing-live">Nothing is live: no invocation waits on another, no call is held.</p>
      `
      : html`
        <h2>Wait-for graph</h2>
        <div class="graph" id="wait-graph">${raw(svg.waits)}</div>
        <h2>Who waits on whom</h2>
        <table id="waiters">
          <tr><th>waiter</th><th>call</th><th>status</th><th>its slot</th><th>waits on</th></tr>
          ${waiters}
        </table>
        <h2>Call graph</h2>
        <div class="graph" id="call-graph">${raw(svg.calls)}</div>
      `}
  `;
}

async function runnersPage(app: Nenc, to: Link): Promise<Html> {
  const nowMs = app.clock.now();
  const timeoutMs = app.orchestrator.options.runnerTimeoutSeconds * 1000;
  const runners = await runnersView(app, nowMs);
  if (runners.length === 0) return html`<p class="empty">No runners.</p>`;
  const held = await Promise.all(
    runners.map((runner) => app.orchestrator.store.getMany(runner.held.slice(0, RUNNER_ROWS))),
  );
  return html`
    <table id="runners">
      <tr><th>runner</th><th>last heartbeat</th><th>tasks it defines</th><th>invocations it holds</th></tr>
      ${runners.map((runner) =>
        html`
          <tr>
            <td class="id">${runner.runnerId}</td>
            <td>${duration(nowMs - runner.lastSeenMs)} ago${runner.alive ? "" : html`
              <span class="error">(silent: presumed dead)</span>
            `}</td>
            <td>${(runner.taskIds ?? []).join(", ")}</td>
            <td class="n">${runner.held.length}</td>
          </tr>
        `
      )}
    </table>
    ${runners.map((runner, i) => {
      const records = held[i]!;
      const spanMs = Math.max(timeoutMs, ...records.map((record) => nowMs - record.updatedAtMs));
      // A bar from a time to now, on a scale of the last spanMs (now at the right).
      const bar = (fromMs: number, status: string): Html => {
        const share = Math.min(100, ((nowMs - fromMs) / spanMs) * 100);
        return html`<div class="bar"><span class="s-${status}" style="margin-left: ${
          (100 - share).toFixed(2)
        }%"></span></div>`;
      };
      return html`
        <h2>${runner.runnerId}</h2>
        <table class="runner-timeline">
          <tr><th colspan="3"></th><th>the last ${duration(spanMs)}, now at the right</th></tr>
          <tr>
            <td colspan="2">heartbeat</td>
            <td>${duration(nowMs - runner.lastSeenMs)} ago</td>
            <td>${bar(runner.lastSeenMs, runner.alive ? "success" : "failed")}</td>
          </tr>
          ${records.map((record) =>
            html`
              <tr>
                <td>${idLink(to, record.id)}</td>
                <td><code>${callLabel(record.taskId, record.args)}</code></td>
                <td>${statusBadge(record.status)} for ${duration(nowMs - record.updatedAtMs)}</td>
                <td>${bar(record.updatedAtMs, record.status)}</td>
              </tr>
            `
          )}
        </table>
        ${runner.held.length > records.length
          ? html`<p class="muted">and ${runner.held.length - records.length} more.</p>`
          : ""}
      `;
    })}
  `;
}

/** How many held invocations the runners page shows per runner. */
const RUNNER_ROWS = 50;

async function concurrencyPage(app: Nenc, to: Link): Promise<Html> {
  const store = app.orchestrator.store;
  const nowMs = app.clock.now();
  const [keys, windows] = await Promise.all([concurrencyView(app), store.rateWindows()]);
  const records = new Map(
    (await store.getMany([...new Set(keys.flatMap((key) => [...key.holders, ...key.parked]))]))
      .map((record) => [record.id, record]),
  );
  const who = (id: string): Html => {
    const record = records.get(id);
    return html`<div>${idLink(to, id)} <code>${
      record === undefined ? "" : argsText(record)
    }</code></div>`;
  };
  const rates = windows.flatMap(({ key, starts, parked, woken }) => {
    const taskId = rateKeyTask(key)!;
    const limit = app.getTask(taskId)?.options.rateLimit;
    if (limit === undefined) return [];
    const inWindow = starts.filter((startMs) => startMs > nowMs - limit.intervalMs).length;
    return [{ taskId, key, limit, inWindow, parked, woken }];
  });
  return html`
    <h2>Keys in use</h2>
    ${keys.length === 0
      ? html`<p class="empty">No key has holders or parked invocations.</p>`
      : html`
        <table id="keys">
          <tr><th>kind</th><th>name</th><th>key</th><th>limit</th><th>holders</th><th>parked</th></tr>
          ${keys.map((key) =>
            html`
              <tr>
                <td>${key.kind}</td>
                <td>${key.name}</td>
                <td class="id">${key.key}</td>
                <td class="n limit">${key.limit}</td>
                <td class="holders">${key.holders.map(who)}</td>
                <td class="parked">${key.parked.map(who)}${key.parkedCount > 0
                  ? html`<div class="muted count">${key.parkedCount} parked</div>`
                  : ""}</td>
              </tr>
            `
          )}
        </table>
      `}
    <h2>Rate windows</h2>
    ${rates.length === 0
      ? html`<p class="empty">No rate limit key has pick-ups, parked or woken invocations.</p>`
      : html`
        <table id="rates">
          <tr><th>task</th><th>key</th><th>limit</th><th>pick-ups in the window</th><th>parked</th><th>woken</th></tr>
          ${rates.map(({ taskId, key, limit, inWindow, parked, woken }) =>
            html`
              <tr>
                <td>${taskId}</td>
                <td class="id">${key}</td>
                <td>${limit.limit} / ${duration(limit.intervalMs)}</td>
                <td class="n">${inWindow}</td>
                <td class="n">${parked}</td>
                <td class="n">${woken}</td>
              </tr>
            `
          )}
        </table>
      `}
  `;
}
