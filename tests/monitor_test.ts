/**
 * The web monitor over HTTP: a real server on 127.0.0.1 (port 0) over a memory store, on Deno, Bun
 * and Node — every route, escaping, the token on every route (server-sent events included), the
 * Host check, the cancel POST's rules, the live events; and `nenc monitor` as a real Deno process
 * on a KV file (Deno only). The browser tests are in monitor_browser_test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Nenc } from "../core/app.ts";
import { CanceledError } from "../core/errors.ts";
import { startMonitor } from "../cli/monitor.ts";
import type { RunningMonitor } from "../cli/monitor.ts";
import { DEADLINE_MS, waitUntil, within } from "./_deadline.ts";
import { WatchedClock } from "./_fake_clock.ts";

const TOKEN = "test-token-0123456789abcdef";
const EVIL = "<script>alert('x')</script>";

/** Every GET route of the monitor, for an app with the invocation `id`. */
const routes = (id: string): string[] => [
  "/",
  "/invocations",
  "/invocations?task=echo&status=success",
  `/invocations/${id}`,
  "/graph",
  "/concurrency",
  "/runners",
  "/events",
];

async function withMonitor(
  app: Nenc,
  options: Parameters<typeof startMonitor>[1],
  fn: (monitor: RunningMonitor) => Promise<void>,
): Promise<void> {
  const monitor = await startMonitor(app, { port: 0, ...options });
  try {
    await fn(monitor);
  } finally {
    await monitor.close();
  }
}

/** GETs a page (without following redirects) and returns its status and text. */
async function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string }> {
  const response = await fetch(url, { headers, redirect: "manual" });
  // An event stream never ends: read the headers only.
  if (response.headers.get("content-type")?.startsWith("text/event-stream")) {
    await response.body?.cancel();
    return { status: response.status, text: "" };
  }
  return { status: response.status, text: squeeze(await response.text()) };
}

/** HTML with its layout whitespace taken out: runs of white space as one, none next to a tag. */
function squeeze(text: string): string {
  return text.replace(/\s+/g, " ").replace(/ ?(<[^>]*>) ?/g, "$1");
}

/** An app with a parent and its children run, a failure, a rate-limited task with one parked. */
async function fixture(): Promise<{ app: Nenc; parentId: string; childIds: string[] }> {
  const app = new Nenc({ appId: "monitor-test" });
  const echo = app.task("echo", ({ text }: { text: string }) => `${text}!`);
  app.task("boom", ({ text }: { text: string }): string => {
    throw new RangeError(`Cannot boom: ${text}`, { cause: "the fuse" });
  });
  const parent = app.task("parent", async ({ n }: { n: number }): Promise<string[]> => {
    const children = await echo.parallelize(
      Array.from({ length: n }, (_, i) => ({ text: `c${i}` })),
    );
    return await children.results();
  });
  const invocation = await parent.call({ n: 2 });
  await app.runner({ concurrency: 2 }).drain();
  const childIds = (await app.orchestrator.store.children(invocation.id)).map((child) => child.id);
  return { app, parentId: invocation.id, childIds };
}

test("every page renders the store's data: counts per task and status, the invocation with its arguments, result, history, parent and children, the runners with their tasks and held invocations, the rate windows; unknown pages and ids are 404", async () => {
  const { app, parentId, childIds } = await fixture();
  const ping = app.task("ping", () => "pong", { rateLimit: { limit: 1, intervalMs: 60_000 } });
  await ping.parallelize([undefined, undefined]);
  // One picked up (held by r1, PENDING), one parked on the rate limit.
  const [held] = await app.orchestrator.getInvocationsToRun(2, { runnerId: "r1" });
  await app.orchestrator.store.heartbeat("r1", app.clock.now(), ["ping"]);
  await withMonitor(app, {}, async (monitor) => {
    const overview = await get(monitor.url);
    assert.equal(overview.status, 200);
    assert.match(overview.text, /<a href="\/invocations\?task=echo&amp;status=success">2<\/a>/);
    assert.match(overview.text, /parent/);
    assert.match(overview.text, /1 alive/);

    const parent = await get(`${monitor.url}invocations/${parentId}`);
    assert.equal(parent.status, 200);
    assert.match(parent.text, /<th>n<\/th><td><pre>2<\/pre>/);
    assert.match(parent.text, /<pre id="result">\[&quot;c0!&quot;,&quot;c1!&quot;\]<\/pre>/);
    for (const status of ["registered", "pending", "running", "paused", "resumed", "success"]) {
      assert.match(parent.text, new RegExp(`<td><span class="status s-${status}">`), status);
    }
    assert.match(parent.text, /<h2>Children \(2\)<\/h2>/);
    for (const id of childIds) assert.ok(parent.text.includes(`href="/invocations/${id}"`));
    assert.doesNotMatch(parent.text, /id="cancel"/, "a final invocation has no cancel button");

    const child = await get(`${monitor.url}invocations/${childIds[0]}`);
    assert.ok(child.text.includes(`href="/invocations/${parentId}"`), "the child links its parent");

    const runners = await get(`${monitor.url}runners`);
    assert.match(
      runners.text,
      /<td class="id">r1<\/td><td>[^<]+ ago<\/td><td>ping<\/td><td class="n">1<\/td>/,
    );
    assert.ok(runners.text.includes(`href="/invocations/${held!.id}"`));

    const concurrency = await get(`${monitor.url}concurrency`);
    assert.match(
      concurrency.text,
      /<td>ping<\/td><td class="id">#rate#ping<\/td><td>1 \/ 60\.0 s<\/td><td class="n">1<\/td><td class="n">1<\/td>/,
    );

    assert.equal((await get(`${monitor.url}invocations/01NOSUCHINVOCATION`)).status, 404);
    assert.equal((await get(`${monitor.url}nothing-here`)).status, 404);
  });
});

test("arguments, results and errors are escaped on every page that shows them: a <script> in them reaches the page as text", async () => {
  const app = new Nenc({ appId: "monitor-escape" });
  const echo = app.task("echo", ({ text }: { text: string }) => `${text}</pre>${EVIL}`);
  const boom = app.task("boom", ({ text }: { text: string }): string => {
    throw new RangeError(`Cannot boom: ${text}`, { cause: EVIL });
  });
  const send = app.task("send", ({ to }: { to: string }) => to, {
    runningConcurrency: "arguments",
  });
  const done = await echo.call({ text: EVIL });
  const failed = await boom.call({ text: EVIL });
  await app.runner().drain();
  // Live: one send holds its key's slot (picked up, not run), one waits on the other.
  const [holder, waiter] = await send.parallelize([{ to: EVIL }, { to: `${EVIL}2` }]).then((
    group,
  ) => group.invocations);
  await app.orchestrator.getInvocationsToRun(1, { runnerId: "r1" });
  await app.orchestrator.store.waitFor(waiter!.id, [holder!.id], app.clock.now());
  await withMonitor(app, {}, async (monitor) => {
    const pages = [
      `invocations/${done.id}`,
      `invocations/${failed.id}`,
      `invocations/${waiter!.id}`,
      "invocations",
      "graph",
      "concurrency",
    ];
    for (const path of pages) {
      const { text } = await get(`${monitor.url}${path}`);
      assert.ok(!text.includes("<script>alert"), `no script tag from the data on ${path}`);
      assert.ok(text.includes("&lt;script&gt;alert("), `the data shows as text on ${path}`);
      // The page's own script is the only one.
      assert.equal(text.split("<script>").length, 2, path);
    }
  });
});

test("the list filters by task and status (several, comma-separated), newest first, and an unknown status is a 400 that names the statuses", async () => {
  const { app, parentId, childIds } = await fixture();
  await withMonitor(app, {}, async (monitor) => {
    const ids = async (query: string): Promise<string[]> =>
      [...(await get(`${monitor.url}invocations${query}`)).text.matchAll(
        /<tr class="invocation"><td><a class="id" href="\/invocations\/(\w+)">/g,
      )].map((match) => match[1]!);
    assert.deepEqual(await ids("?task=echo"), [...childIds].reverse());
    assert.deepEqual(await ids("?task=parent&status=success"), [parentId]);
    assert.deepEqual(await ids("?task=echo,parent"), [...childIds].reverse().concat(parentId));
    assert.deepEqual(await ids("?status=failed,canceled"), []);
    assert.deepEqual(await ids("?task=echo&status=success"), [...childIds].reverse());
    const bad = await get(`${monitor.url}invocations?status=done`);
    assert.equal(bad.status, 400);
    assert.match(bad.text, /Cannot list invocations: unknown status done \(statuses: registered, /);
  });
});

test("the graph page shows who waits on whom (a paused waiter freed its slot) as a table and as SVG, and the refused cycles with their path; with nothing live it says so", async () => {
  const app = new Nenc({ appId: "monitor-graph" });
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  const child = app.task("child", async ({ i }: { i: number }) => {
    await gate;
    return i;
  });
  const parent = app.task("parent", async (): Promise<number> => {
    const children = await child.parallelize([{ i: 1 }, { i: 2 }]);
    return (await children.results()).reduce((sum, i) => sum + i, 0);
  });
  const loop = app.task("loop", async ({ n }: { n: number }): Promise<string> => {
    try {
      return String(await (await loop.call({ n })).result()); // the same call again: refused
    } catch (error) {
      return (error as Error).name;
    }
  });
  await withMonitor(app, {}, async (monitor) => {
    const empty = await get(`${monitor.url}graph`);
    assert.match(empty.text, /Nothing is live: no invocation waits on another, no call is held/);
    assert.match(empty.text, /No cycle was refused lately/);

    const [invocation, looping] = [await parent.call(), await loop.call({ n: 1 })];
    const runner = app.runner({ concurrency: 3 });
    runner.start();
    try {
      assert.equal(await looping.result(), "CycleDetectedError");
      await waitUntil(
        async () => (await app.orchestrator.store.graphs()).waits.length === 2,
        { message: "the parent waiting on its two children" },
      );
      const { text } = await get(`${monitor.url}graph`);
      assert.match(
        text,
        new RegExp(
          `<tr><td><a class="id" href="/invocations/${invocation.id}">${invocation.id}</a></td>` +
            `<td><code>parent\\(\\{\\}\\)</code></td><td><span class="status s-paused">paused</span></td>` +
            "<td>freed its slot</td><td>waits on 2</td></tr>",
        ),
      );
      assert.match(text, /<div class="graph" id="wait-graph"><svg [^>]*>.*parent\(\{\}\)/);
      assert.match(text, /<div class="graph" id="call-graph"><svg /);
      assert.match(
        text,
        /<ul id="cycles"><li><a href="\/invocations\/\w+"><code>[^<]*loop\(\{&quot;n&quot;:1\}\) → back to loop\(\{&quot;n&quot;:1\}\)<\/code>/,
      );
    } finally {
      open();
      await runner.stop();
    }
    assert.equal(await invocation.result(), 3);
  });
});

test("with a token every route, /events and the cancel POST included, answers 401 without it or with a wrong one, and 200 with it as a Bearer header or ?token=", async () => {
  const { app, parentId } = await fixture();
  await withMonitor(app, { token: TOKEN }, async (monitor) => {
    for (const route of routes(parentId)) {
      const url = new URL(route, monitor.url);
      const without = await get(url.href);
      assert.equal(without.status, 401, `${route} without the token`);
      assert.equal(
        (await get(url.href, { authorization: "Bearer wrong-token-0123456789" })).status,
        401,
      );
      assert.equal((await get(url.href, { authorization: `Bearer ${TOKEN}` })).status, 200, route);
      url.searchParams.set("token", TOKEN);
      assert.equal((await get(url.href)).status, 200, `${route}?token=`);
      url.searchParams.set("token", `${TOKEN}x`);
      assert.equal((await get(url.href)).status, 401, `${route}?token=wrong`);
    }
    const cancel = await fetch(`${monitor.url}invocations/${parentId}/cancel`, { method: "POST" });
    assert.equal(cancel.status, 401);
    await cancel.body?.cancel();
  });
});

test("pages carry the token in their links, event source, filter and cancel forms only when they were requested with ?token=", async () => {
  const app = new Nenc({ appId: "monitor-links" });
  const invocation = await app.task("echo", ({ text }: { text: string }) => text).call({
    text: "a",
  });
  await withMonitor(app, { token: TOKEN }, async (monitor) => {
    const withQuery = await get(`${monitor.url}invocations/${invocation.id}?token=${TOKEN}`);
    assert.ok(withQuery.text.includes(`href="/runners?token=${TOKEN}"`));
    assert.ok(withQuery.text.includes(`data-events="/events?token=${TOKEN}"`));
    const list = await get(`${monitor.url}invocations?token=${TOKEN}`);
    assert.ok(
      list.text.includes(`<input type="hidden" name="token" value="${TOKEN}">`),
      "the filter form",
    );
    assert.ok(
      withQuery.text.includes(`action="/invocations/${invocation.id}/cancel?token=${TOKEN}"`),
    );
    const withHeader = await get(`${monitor.url}invocations/${invocation.id}`, {
      authorization: `Bearer ${TOKEN}`,
    });
    assert.equal(withHeader.status, 200);
    assert.ok(!withHeader.text.includes(TOKEN), "the token is not written into the page");
  });
});

test("without a token, a request that names a host other than loopback is refused (DNS rebinding), and 127.0.0.1, localhost and [::1] are served", async () => {
  const app = new Nenc({ appId: "monitor-host" });
  await withMonitor(app, {}, async (monitor) => {
    const status = (host: string): Promise<number> =>
      new Promise((resolve, reject) => {
        const request = httpRequest(monitor.url, { headers: { host } }, (response) => {
          response.resume();
          resolve(response.statusCode!);
        });
        request.on("error", reject);
        request.end();
      });
    assert.equal(await status(`evil.example:${monitor.port}`), 403);
    assert.equal(await status("127.0.0.2"), 403);
    assert.equal(await status(`127.0.0.1:${monitor.port}`), 200);
    assert.equal(await status(`localhost:${monitor.port}`), 200);
    assert.equal(await status(`[::1]:${monitor.port}`), 200);
  });
});

test("a cancel POST without a token is refused from another origin or without an origin, and cancels from the monitor's own page (same origin), redirecting back to the invocation", async () => {
  const app = new Nenc({ appId: "monitor-cancel" });
  const wait = app.task("wait", () => "never runs: no runner");
  const [first, second] = await Promise.all([wait.call(), wait.call()]);
  await withMonitor(app, {}, async (monitor) => {
    const post = (id: string, headers: Record<string, string>) =>
      fetch(`${monitor.url}invocations/${id}/cancel`, {
        method: "POST",
        headers,
        redirect: "manual",
      });
    for (
      const headers of [
        {},
        { origin: "http://evil.example" },
        { "sec-fetch-site": "cross-site", origin: monitor.url.slice(0, -1) },
      ]
    ) {
      const refused = await post(first.id, headers);
      assert.equal(refused.status, 403, JSON.stringify(headers));
      await refused.body?.cancel();
    }
    assert.equal(await first.status(), "registered");
    const get = await fetch(`${monitor.url}invocations/${first.id}/cancel`);
    assert.equal(get.status, 404, "cancel is a POST");
    await get.body?.cancel();

    const bySite = await post(first.id, { "sec-fetch-site": "same-origin" });
    assert.equal(bySite.status, 303);
    assert.equal(bySite.headers.get("location"), `/invocations/${first.id}`);
    const byOrigin = await post(second.id, { origin: monitor.url.slice(0, -1) });
    assert.equal(byOrigin.status, 303);
    for (const invocation of [first, second]) {
      assert.equal(await invocation.status(), "canceled");
      await assert.rejects(invocation.result(), CanceledError);
    }
  });
});

test("with a token, a cancel POST that carries it cancels from any origin", async () => {
  const app = new Nenc({ appId: "monitor-cancel-token" });
  const invocation = await app.task("wait", () => "never runs").call();
  await withMonitor(app, { token: TOKEN }, async (monitor) => {
    const response = await fetch(`${monitor.url}invocations/${invocation.id}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, origin: "http://elsewhere.example" },
      redirect: "manual",
    });
    assert.equal(response.status, 303);
    await response.body?.cancel();
    await assert.rejects(invocation.result(), /canceled from nenc monitor/);
  });
});

/** Reads server-sent events from a stream: `next()` resolves with the next event. */
function eventReader(body: ReadableStream<Uint8Array>) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  return {
    async next(): Promise<{ event: string; data: string } | undefined> {
      for (;;) {
        const end = buffer.indexOf("\n\n");
        if (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const field = (name: string): string =>
            block.split("\n").find((line) => line.startsWith(`${name}: `))?.slice(
              name.length + 2,
            ) ??
              "";
          return { event: field("event"), data: field("data") };
        }
        // The stream ends with the server: cleanly, or as a reset connection.
        const read = await within(reader.read(), DEADLINE_MS, "an event").catch(() => undefined);
        if (read === undefined || read.done) return undefined;
        const value = read.value;
        buffer += value;
      }
    },
    cancel: () => reader.cancel(),
  };
}

test("/events sends ready, no change while the store stays the same, a change one poll after the store changed, and ends when the monitor closes", async () => {
  const clock = new WatchedClock();
  const app = new Nenc({ appId: "monitor-events", clock });
  const ping = app.task("ping", () => "pong");
  const monitor = await startMonitor(app, { port: 0, pollMs: 500 });
  try {
    const response = await fetch(`${monitor.url}events`);
    assert.equal(response.headers.get("content-type"), "text/event-stream");
    const events = eventReader(response.body!);
    assert.deepEqual(await events.next(), { event: "ready", data: "0" });
    await within(clock.sleeping(500), DEADLINE_MS, "the first poll");
    clock.advance(500); // a poll that finds nothing new
    await within(clock.sleeping(500), DEADLINE_MS, "the second poll");
    await ping.call();
    clock.advance(500);
    assert.deepEqual(await events.next(), { event: "change", data: "1" });
    await within(clock.sleeping(500), DEADLINE_MS, "the third poll");
    clock.advance(500); // nothing new again
    await within(clock.sleeping(500), DEADLINE_MS, "the fourth poll");
    await monitor.close();
    // No event for the polls that found nothing new: the next thing is the end of the stream.
    assert.equal(await events.next(), undefined, "the stream ends with the monitor");
  } finally {
    await monitor.close();
  }
});

test("/events: a runner that appears sends a change, its heartbeats alone do not; a store read that fails is tried again at the next poll, and the change found then is sent", async () => {
  const clock = new WatchedClock();
  const app = new Nenc({ appId: "monitor-pulse", clock });
  const ping = app.task("ping", () => "pong");
  const store = app.orchestrator.store;
  const monitor = await startMonitor(app, { port: 0, pollMs: 500 });
  try {
    const response = await fetch(`${monitor.url}events`);
    const events = eventReader(response.body!);
    assert.deepEqual(await events.next(), { event: "ready", data: "0" });
    await within(clock.sleeping(500), DEADLINE_MS, "the first poll");
    await store.heartbeat("runner-1", clock.now());
    clock.advance(500);
    assert.deepEqual(await events.next(), { event: "change", data: "1" }, "a new runner");
    for (let beat = 0; beat < 3; beat++) {
      await within(clock.sleeping(500), DEADLINE_MS, "the next poll");
      await store.heartbeat("runner-1", clock.now());
      clock.advance(500);
    }
    // A blip: the next read of the counts fails; the poll after it finds the new invocation.
    await within(clock.sleeping(500), DEADLINE_MS, "the poll after the last heartbeat");
    const counts = store.counts.bind(store);
    let reads = 0;
    store.counts = () => ++reads === 1 ? Promise.reject(new Error("blip")) : counts();
    await ping.call();
    clock.advance(500);
    await within(clock.sleeping(500), DEADLINE_MS, "the poll that failed");
    assert.equal(reads, 1, "the poll that failed read the counts");
    clock.advance(500);
    // The heartbeats sent nothing: the next event is the invocation, found after the blip.
    assert.deepEqual(await events.next(), { event: "change", data: "2" });
  } finally {
    await monitor.close();
  }
});

test("a host other than loopback needs a token (TypeError), a token needs 16 characters; on 127.0.0.2 with a token the monitor refuses requests without it", async () => {
  const app = new Nenc({ appId: "monitor-options" });
  await assert.rejects(startMonitor(app, { host: "0.0.0.0", port: 0 }), TypeError);
  await assert.rejects(startMonitor(app, { host: "127.0.0.2", port: 0 }), /needs a token/);
  await assert.rejects(startMonitor(app, { port: 0, token: "short" }), /at least 16/);
  await assert.rejects(startMonitor(app, { port: 70_000 }), RangeError);
  await withMonitor(app, { host: "127.0.0.2", token: TOKEN }, async (monitor) => {
    assert.ok(monitor.url.startsWith("http://127.0.0.2:"));
    assert.equal((await get(monitor.url)).status, 401);
    assert.equal((await get(monitor.url, { authorization: `Bearer ${TOKEN}` })).status, 200);
  });
});

const onlyDeno = (globalThis as { Deno?: unknown }).Deno === undefined
  ? "nenc monitor is a Deno command: this test spawns deno"
  : false;

test(
  "nenc monitor serves the app's KV store on the address it prints, never prints its token, and stops on SIGTERM with exit 0; without --token on another host it exits 2",
  {
    skip: onlyDeno,
  },
  async () => {
    const root = fileURLToPath(new URL("..", import.meta.url));
    const directory = mkdtempSync(join(tmpdir(), "nenc-monitor-"));
    try {
      const kvPath = join(directory, "nenc.db");
      const kv = await Deno.openKv(kvPath);
      const app = new Nenc({ appId: "cli-test" });
      app.useKv(kv);
      await app.task("add", ({ x, y }: { x: number; y: number }) => x + y).call({ x: 1, y: 2 });
      kv.close();
      const cli = (args: string[]) =>
        new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            "cli/mod.ts",
            "monitor",
            "--app",
            "tests/_cli_app.ts",
            "--kv",
            kvPath,
            ...args,
          ],
          cwd: root,
          env: { NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      const refused = await within(cli(["--host", "0.0.0.0"]).output(), DEADLINE_MS, "the refusal");
      assert.equal(refused.code, 2);
      assert.match(new TextDecoder().decode(refused.stderr), /needs a token/);

      const child = cli(["--port", "0", "--token", TOKEN]);
      const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
      let stdout = "";
      const reading = (async () => {
        for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) stdout += text;
      })();
      const stderr = new Response(child.stderr).text();
      await waitUntil(() => /on (http:\S+)/.test(stdout), { message: "the monitor's address" });
      const url = stdout.match(/on (http:\S+)/)![1]!;
      assert.equal((await get(url)).status, 401);
      const page = await get(`${url}?token=${TOKEN}`);
      assert.equal(page.status, 200);
      assert.match(
        page.text,
        /<td><a href="\/invocations\?task=add&amp;token=[^"]+">add<\/a><\/td>/,
      );
      child.kill("SIGTERM");
      const status = await within(child.status, DEADLINE_MS, "the monitor to stop");
      clearTimeout(guard);
      await reading;
      assert.equal(status.code, 0);
      assert.match(stdout, /stopped on SIGTERM/);
      assert.ok(
        !stdout.includes(TOKEN) && !(await stderr).includes(TOKEN),
        "the token is never printed",
      );
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  },
);
