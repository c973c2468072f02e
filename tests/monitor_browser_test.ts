/**
 * The web monitor in a real browser: Debian's Chromium driven by playwright-core (never a
 * downloaded browser), against `nenc monitor` as a real process on the KV file of the demo, which
 * runs as `deno task demo --kv` does (its own process and a CLI worker). Every process here is a
 * deno process, so the test runs alike under Deno, Bun and Node; it needs `deno` (the running
 * Deno, else on the PATH) and Chromium (`CHROMIUM_PATH`, else /usr/bin/chromium), and where one is
 * missing it says so and is skipped. Screenshots go to test-artifacts/monitor/ (git-ignored).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { DEADLINE_MS, LONG_DEADLINE_MS, within } from "./_deadline.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const ARTIFACTS = join(ROOT, "test-artifacts", "monitor");
const TOKEN = "browser-test-token-0123456789";

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno?.execPath() ?? "deno";
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Why the browser tests cannot run here, or `false`. */
function skipReason(): string | false {
  if (!existsSync(chromiumPath)) {
    return `no Chromium at ${chromiumPath} (set CHROMIUM_PATH, or install Debian's chromium)`;
  }
  try {
    execFileSync(deno, ["--version"], { stdio: "ignore" });
  } catch {
    return `no deno to run the monitor and the demo (${deno} --version failed)`;
  }
  return false;
}
const skip = skipReason();
if (skip !== false) console.log(`monitor browser tests skipped: ${skip}`);

/** A deno process with its output collected; killed after 3 minutes at the latest. */
interface Proc {
  readonly child: ChildProcess;
  output(): string;
  /** Resolves with the first match of `pattern` in the output, so far or to come. */
  waitFor(pattern: RegExp, ms?: number): Promise<RegExpMatchArray>;
  readonly exit: Promise<number | null>;
  stop(): Promise<number | null>;
}

function startDeno(args: readonly string[], env: Record<string, string> = {}): Proc {
  const child = spawn(deno, [...args], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  const watchers = new Set<() => void>();
  const collect = (chunk: Buffer): void => {
    text += chunk;
    for (const watcher of [...watchers]) watcher();
  };
  child.stdout!.on("data", collect);
  child.stderr!.on("data", collect);
  const guard = setTimeout(() => child.kill("SIGKILL"), 180_000);
  let exited = false;
  const exit = new Promise<number | null>((resolve) =>
    child.on("close", (code) => {
      exited = true;
      clearTimeout(guard);
      for (const watcher of [...watchers]) watcher();
      resolve(code);
    })
  );
  return {
    child,
    output: () => text,
    exit,
    waitFor: (pattern, ms = LONG_DEADLINE_MS) =>
      within(
        new Promise((resolve, reject) => {
          const watcher = (): void => {
            const match = text.match(pattern);
            if (match !== null || exited) watchers.delete(watcher);
            if (match !== null) resolve(match);
            else if (exited) {
              reject(new Error(`deno ${args[1]} exited without ${pattern}:\n${text}`));
            }
          };
          watchers.add(watcher);
          watcher();
        }),
        ms,
        `${pattern} from deno ${args.join(" ")}`,
      ),
    stop: async () => {
      if (!exited) child.kill("SIGTERM");
      return await within(exit, DEADLINE_MS, `deno ${args[1]} to stop`);
    },
  };
}

/** `nenc monitor` on the demo's app and KV file; resolves with it and its address. */
async function startMonitorProcess(
  kvPath: string,
  options: readonly string[] = [],
): Promise<{ monitor: Proc; url: string }> {
  const monitor = startDeno([
    "run",
    "-A",
    "cli/mod.ts",
    "monitor",
    "--app",
    "examples/demo/app.ts",
    "--kv",
    kvPath,
    "--port",
    "0",
    ...options,
  ]);
  const [, url] = await monitor.waitFor(/ on (http:\/\/\S+\/)/);
  return { monitor, url: url! };
}

async function launchBrowser(profile: string): Promise<BrowserContext> {
  return await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * Saves the whole page, and what the window shows (scrolled to `focus` when given), as test
 * artifacts.
 */
async function screenshot(page: Page, name: string, focus?: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const whole = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: whole, fullPage: true });
  // A live page may re-render the element while it is scrolled to: the locator finds the new one
  // on the next try. The screenshots are pictures of what the assertions before them checked: on a
  // busy machine the live page may have moved on meanwhile (the release stopped waiting, say), and
  // then the window is taken as it is.
  for (let tries = 1; focus !== undefined; tries++) {
    // Gone already: looked for now, not waited for (a wait lets the demo run on past what the
    // steps after this one check).
    if (await page.locator(focus).count() === 0) {
      console.log(`screenshot ${name}: ${focus} is no longer on the live page`);
      break;
    }
    try {
      await page.locator(focus).first().scrollIntoViewIfNeeded({ timeout: 5_000 });
      break;
    } catch (error) {
      if (/Timeout/.test(String(error))) {
        console.log(`screenshot ${name}: ${focus} left the live page while scrolled to`);
        break;
      }
      if (tries >= 3 || !/not attached/.test(String(error))) throw error;
    }
  }
  const window = join(ARTIFACTS, `${name}-window.png`);
  await page.screenshot({ path: window });
  console.log(`screenshots: ${whole}, ${window}`);
}

/**
 * The page's globals, for the functions that run in the page (this file is not typed for the DOM):
 * they reach them as `(globalThis as unknown as PageGlobals)`, which runs as `globalThis` there.
 */
interface PageGlobals {
  readonly document: {
    readonly body: { readonly dataset: Record<string, string | undefined> };
    getElementById(id: string): { readonly innerText: string } | null;
  };
}

/** The text of the page's live content, whitespace squeezed. */
async function content(page: Page): Promise<string> {
  return (await page.locator("#content").innerText()).replace(/\s+/g, " ");
}

/** Waits until the live page's content (refreshed by its events) matches `pattern`. */
async function waitForContent(page: Page, pattern: RegExp, what: string): Promise<string> {
  await page.waitForFunction(
    ([source, flags]) =>
      new RegExp(source!, flags).test(
        (globalThis as unknown as PageGlobals).document.getElementById("content")!.innerText
          .replace(/\s+/g, " "),
      ),
    [pattern.source, pattern.flags],
    { timeout: LONG_DEADLINE_MS, polling: 50 },
  ).catch(
    (error: Error) => {
      throw new Error(`Timed out waiting for ${what} (${pattern}): ${error.message}`);
    },
  );
  return await content(page);
}

/** The keys in use, as the concurrency page shows them. */
async function concurrencyKeys(page: Page): Promise<
  { kind: string; name: string; limit: string; holders: string[]; parked: string[]; text: string }[]
> {
  return await page.$$eval("#keys tr:not(:first-child)", (trs) =>
    trs.map((tr) => ({
      kind: tr.cells[0]!.innerText,
      name: tr.cells[1]!.innerText,
      limit: tr.cells[3]!.innerText,
      holders: [...tr.cells[4]!.querySelectorAll("a")].map((a) => a.innerText),
      parked: [...tr.cells[5]!.querySelectorAll("a")].map((a) => a.innerText),
      text: tr.innerText,
    })));
}

/** The cells' texts of a table's rows, the header row left out. */
async function rows(page: Page, table: string): Promise<string[][]> {
  return await page.$$eval(
    `${table} tr:not(:first-child)`,
    (trs) => trs.map((tr) => [...tr.cells].map((cell) => cell.innerText)),
  );
}

async function withTempDir(fn: (directory: string) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-monitor-browser-"));
  try {
    await fn(directory);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** Creates an empty KV file, so the monitor (a reader) can open it before the demo writes. */
function createKvFile(path: string): void {
  execFileSync(deno, [
    "eval",
    "--unstable-kv",
    `(await Deno.openKv(${JSON.stringify(path)})).close();`,
  ], { cwd: ROOT, stdio: "inherit" });
}

/** What a test gets from {@linkcode withMonitorInBrowser}. */
interface MonitorInBrowser {
  /** The demo's KV file. */
  readonly kvPath: string;
  /** The monitor's address. */
  readonly url: string;
  /** The `nenc monitor` process. */
  readonly monitor: Proc;
  /** A page in Chromium. */
  readonly page: Page;
  /** Starts another deno process, stopped when the test ends. */
  start(args: readonly string[], env?: Record<string, string>): Proc;
}

/**
 * Runs `fn` with `nenc monitor` (and `options`) on an empty KV file in a temp dir, and a page in
 * a fresh Chromium profile; then closes the browser and stops every process, the monitor last.
 */
async function withMonitorInBrowser(
  options: readonly string[],
  fn: (context: MonitorInBrowser) => Promise<void>,
): Promise<void> {
  await withTempDir(async (directory) => {
    const kvPath = join(directory, "demo.db");
    createKvFile(kvPath);
    const { monitor, url } = await startMonitorProcess(kvPath, options);
    const processes: Proc[] = [monitor];
    try {
      const browser = await launchBrowser(join(directory, "profile"));
      try {
        const start = (args: readonly string[], env?: Record<string, string>): Proc => {
          const proc = startDeno(args, env);
          processes.push(proc);
          return proc;
        };
        await fn({ kvPath, url, monitor, page: await browser.newPage(), start });
      } finally {
        await browser.close();
      }
    } finally {
      for (const proc of processes.reverse()) await proc.stop();
    }
  });
}

test(
  "in Chromium, the monitor of a live demo run shows every page's live data: a paused parent waiting on its children on the graph page, the runners, the refused plugin cycle with its path, the counts, the invocation lists and pages; the concurrency page shows the holders and parked deploys of one environment while they run, and a cancel from an invocation's page cancels a running deploy",
  {
    skip,
    timeout: 600_000,
  },
  async () => {
    await withMonitorInBrowser([], async ({ kvPath, url, page, start }) => {
      await page.goto(`${url}graph`);
      await page.waitForFunction(() =>
        (globalThis as unknown as PageGlobals).document.body.dataset.live === "on"
      );

      // The demo, slowed down threefold, on the KV file: its own process and a CLI worker.
      const demo = start(["run", "-A", "examples/demo/main.ts", "--kv", kvPath], {
        NENC_DEMO_SLOWDOWN: "3",
      });

      // The release waits on its builds (48, fewer as they end), paused: its slot freed. The page
      // follows the store by its events.
      await waitForContent(
        page,
        /release\(\{"version":"2024\.11\.0"\}\) paused freed its slot waits on (\d\d|[2-9])\b/,
        "the paused release on the graph page",
      );
      const svg = await page.locator("#wait-graph svg").textContent();
      assert.match(svg!, /release\(\{"version":"2024\.11\.0"\}\)/, "the waiter in the SVG");
      assert.match(svg!, /build\(\{"pkg":"[^"]+"\}\)/, "the builds it waits on, in the SVG");
      assert.ok(
        Number(
          await page.evaluate(() =>
            (globalThis as unknown as PageGlobals).document.body.dataset.version
          ),
        ) > 0,
        "refreshed live",
      );
      await screenshot(page, "graph-live", "#wait-graph text:has-text('release(')");

      // The demo's runner and the CLI worker, each defining the demo's tasks.
      await page.goto(`${url}runners`);
      const runners = await rows(page, "#runners");
      assert.ok(
        runners.filter((row) => /^runner-/.test(row[0]!) && /\bbuild\b/.test(row[2]!)).length >=
          2,
        JSON.stringify(runners),
      );
      await screenshot(page, "runners-live");

      assert.equal(await within(demo.exit, LONG_DEADLINE_MS, "the demo"), 0, demo.output());

      await page.goto(`${url}graph`);
      const cycles = await content(page);
      assert.match(
        cycles,
        /build\(\{"pkg":"(mdx|remark)-plugin"\}\) → build\(\{"pkg":"(remark|mdx)-plugin"\}\) → back to build\(\{"pkg":"\1-plugin"\}\)/,
        "the refused cycle with its path",
      );
      assert.match(cycles, /Nothing is live/, "the empty state");
      await screenshot(page, "graph-cycle");

      await page.goto(url);
      const overview = await content(page);
      // With a second process, a dependency it picked up before its dependents called it is
      // built again: at least one build per package, and the three of the plugin cycle failed.
      const [, built, total] = overview.match(/build (\d+) 3 (\d+)/) ?? [];
      assert.ok(Number(built) >= 48 && Number(total) === Number(built) + 3, overview);
      assert.match(overview, /release 1 1/);
      await screenshot(page, "overview");

      await page.locator("#counts tr", { has: page.locator("a:text-is('build')") })
        .locator("a:text-is('3')").click();
      assert.match(page.url(), /\/invocations\?task=build&status=failed$/);
      const failed = await content(page);
      assert.equal(await page.locator("#list tr.invocation").count(), 3, failed);
      assert.match(failed, /build\(\{"pkg":"mdx-plugin"\}\) failed/);
      await page.click("#list tr.invocation a.id >> nth=0");
      const failure = await content(page);
      assert.match(failure, /CycleDetectedError: .*Cycle detected/);
      assert.match(failure, /History .*registered .*failed/);
      await screenshot(page, "invocation-failed");

      await page.goto(`${url}invocations?task=release`);
      await page.click("#list tr.invocation a.id >> nth=0");
      const release = await content(page);
      assert.match(release, /version "2024\.11\.0"/);
      assert.match(release, /Result \{"bytes":\d+,"packages":48,/);
      // Its children: the toolchain and the builds it registered (a build the worker process
      // had already called as a dependency is reused, and is that build's child).
      assert.match(
        release,
        /Children \(\d+\) \S+ fetchToolchain\(\{"node":"22\.11\.0"\}\) success/,
      );
      assert.match(release, /build\(\{"pkg":"[^"]+"\}\) success/);

      // Four deploys to one environment (limit 2), slowed down until canceled: two hold its
      // slots, two wait parked.
      const deploys = start(["run", "-A", "tests/_monitor_deploys.ts", kvPath], {
        NENC_DEMO_SLOWDOWN: "1000000",
      });
      const ids = JSON.parse((await deploys.waitFor(/ready (\[.*\])/))[1]!) as string[];
      await page.goto(`${url}concurrency`);
      const keys = await concurrencyKeys(page);
      const qa = keys.find((key) => key.kind === "task" && key.name === "deploy");
      assert.ok(qa !== undefined, JSON.stringify(keys));
      assert.equal(qa.limit, "2");
      assert.equal(qa.holders.length, 2, "two deploys hold the environment's slots");
      assert.equal(qa.parked.length, 2, "two wait parked");
      assert.match(qa.text, /2 parked/);
      assert.deepEqual([...qa.holders, ...qa.parked].sort(), [...ids].sort());
      assert.match(qa.text, /"env":"qa"/);
      const group = keys.find((key) => key.kind === "group" && key.name === "deploys");
      assert.deepEqual(
        { limit: group?.limit, holders: group?.holders.sort() },
        { limit: "5", holders: [...qa.holders].sort() },
        "the group they share",
      );
      await screenshot(page, "concurrency");
      const holder = qa.holders[0]!;

      await page.click(`#keys a:text-is('${holder}')`);
      assert.match(await content(page), /running/);
      await Promise.all([page.waitForEvent("load"), page.click("#cancel")]);
      assert.equal(page.url(), `${url}invocations/${holder}`);
      assert.match(await content(page), /^Invocation \S+ canceled/);
      await deploys.waitFor(
        new RegExp(`settled ${holder} CanceledError: .*canceled from nenc monitor`),
      );
      await screenshot(page, "invocation-canceled");
      // Its function stopped on its signal and gave the slot back: a parked deploy took it.
      await page.goto(`${url}concurrency`);
      await waitForContent(page, /1 parked/, "one deploy left parked");
      const after = (await concurrencyKeys(page)).find((key) => key.name === "deploy")!;
      assert.equal(after.holders.length, 2, JSON.stringify(after));
      assert.ok(!after.holders.includes(holder), "the canceled deploy holds no slot");
      assert.ok(after.holders.some((id) => qa.parked.includes(id)), "a parked deploy runs");
      await deploys.stop();
      assert.equal(deploys.output().match(/settled /g)?.length, 4, deploys.output());
    });
  },
);

test(
  "in Chromium, a monitor listening on 127.0.0.2 with a token refuses a page without it (401), serves it with ?token=, keeps the token in its links and live events, and never prints it",
  {
    skip,
    timeout: 120_000,
  },
  async () => {
    let printed = "";
    await withMonitorInBrowser(["--host", "127.0.0.2", "--token", TOKEN], async (context) => {
      const { url, page } = context;
      assert.match(url, /^http:\/\/127\.0\.0\.2:\d+\/$/);
      const refused = await page.goto(`${url}runners`);
      assert.equal(refused!.status(), 401);
      assert.match(await page.innerText("body"), /needs its token/);

      const served = await page.goto(`${url}?token=${TOKEN}`);
      assert.equal(served!.status(), 200);
      await page.waitForFunction(() =>
        (globalThis as unknown as PageGlobals).document.body.dataset.live === "on"
      );
      await page.click("header a:text-is('Runners')");
      assert.equal(page.url(), `${url}runners?token=${TOKEN}`);
      assert.match(await content(page), /No runners/);
      await context.monitor.stop();
      printed = context.monitor.output();
    });
    assert.match(printed, /on http:\/\/127\.0\.0\.2:\d+\/ \(every request needs the token\)/);
    assert.ok(!printed.includes(TOKEN), "the token is never printed");
  },
);
