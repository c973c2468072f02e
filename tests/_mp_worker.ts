/**
 * A worker process for the multi-process tests: `<runtime> tests/_mp_worker.ts <mode> <kv file>
 * [args]`. Every mode stops by itself (a deadline bounds each one); results go to stdout as one
 * JSON line, and observations that must hold across processes go to the KV file under
 * `["mp", …]`, next to nenc's own keys, or (the `spans` task) to a log file of the process.
 */
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { CycleDetectedError } from "../core/errors.ts";
import { KvStore } from "../kv/store.ts";
import { systemClock } from "../core/clock.ts";
import { interceptKv, openSharedTestKv, type TestKv } from "./_kv.ts";

const [mode, path, ...rest] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ??
  (await import("node:process")).argv.slice(2);
if (mode === undefined || path === undefined) throw new Error("usage: _mp_worker.ts <mode> <kv>");
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const kv = await openSharedTestKv(path);
const deadline = Date.now() + 60_000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Adds `delta` to a counter under ["mp", …] atomically; returns the value before. */
async function add(key: string[], delta: number, db: TestKv = kv): Promise<number> {
  for (;;) {
    const entry = await db.get(["mp", ...key]);
    const before = entry.versionstamp === null
      ? 0
      : Number(decoder.decode(entry.value as Uint8Array));
    const op = db.atomic().check({ key: ["mp", ...key], versionstamp: entry.versionstamp })
      .set(["mp", ...key], encoder.encode(String(before + delta)));
    try {
      if ((await op.commit()).ok) return before;
    } catch (error) {
      if (!/database is locked/i.test(String(error))) throw error;
    }
    await sleep(Math.random() * 5);
  }
}

async function read(key: string[]): Promise<number> {
  const entry = await kv.get(["mp", ...key]);
  return entry.versionstamp === null ? 0 : Number(decoder.decode(entry.value as Uint8Array));
}

/**
 * `run` with a tag and a log dir (its fourth and fifth arguments): the runner's id is the tag,
 * and `spans` and `rated` log to `<log dir>/<tag>.jsonl`.
 */
const [tag, logDir] = mode === "run" ? [rest[3], rest[4]] : [];

/**
 * Appends one line to this process's log: one `write`, before the function goes on, so a process
 * killed with SIGKILL leaves every line it logged (a run's start without its end).
 */
function log(entry: Record<string, unknown>): void {
  if (tag === undefined || logDir === undefined) {
    throw new Error("spans runs need a tag and a log dir");
  }
  appendFileSync(join(logDir, `${tag}.jsonl`), JSON.stringify(entry) + "\n");
}

/** Resolves after `ms`, or at once when `signal` aborts: to whether it aborted. */
function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve(true);
    }, { once: true });
  });
}

function defineTasks(app: Nenc) {
  const dedup = app.task("dedup", ({ k }: { k: number }) => k, {
    registrationConcurrency: "arguments",
  });
  // Each run marks its key active with an atomic counter of its own: a second concurrent run
  // of one key sees a count above zero and records a violation.
  const keyed = app.task("keyed", async ({ key, i }: { key: string; i: number }) => {
    if (await add(["active", key], 1) !== 0) await add(["violations"], 1);
    await add(["runs", String(i)], 1);
    await sleep(2 + Math.random() * 5);
    await add(["active", key], -1);
    return i;
  }, { runningConcurrency: "keys", keyArguments: ["key"] });
  // The same with two of a key at once: a third concurrent run is a violation; a second one
  // shows the limit lets two in.
  // ... and at most 6 of all keys at once, a concurrency group: a seventh is a violation too.
  const pairs = app.task("pairs", async ({ key, i }: { key: string; i: number }) => {
    const before = await add(["active", key], 1);
    const all = await add(["active-all"], 1);
    if (before >= 2 || all >= 6) await add(["violations"], 1);
    if (before === 1) await add(["pairs"], 1);
    if (all === 5) await add(["capped"], 1);
    await add(["runs", String(i)], 1);
    await sleep(20 + Math.random() * 10); // long enough for the group to fill up
    await add(["active-all"], -1);
    await add(["active", key], -1);
    return i;
  }, {
    runningConcurrency: { by: "keys", limit: 2 },
    keyArguments: ["key"],
    concurrencyGroups: [{ name: "cap", limit: 6 }],
  });
  // The limits of `pairs`, each execution logged (its start, then its end: `Date.now()`, one
  // clock for every process of the machine) instead of counted, for a test that kills a process
  // mid-run: its unfinished runs are the starts without an end. It takes `ms` and honours its
  // signal (a fenced execution ends early, marked aborted).
  const spans = app.task(
    "spans",
    async ({ key, i, ms }: { key: string; i: number; ms: number }, ctx) => {
      log({ event: "start", key, i, at: Date.now() });
      const aborted = await sleepUnlessAborted(ms, ctx.signal);
      log({ event: "end", key, i, at: Date.now(), aborted });
      ctx.signal.throwIfAborted();
      return i;
    },
    {
      runningConcurrency: { by: "keys", limit: 2 },
      keyArguments: ["key"],
      concurrencyGroups: [{ name: "cap", limit: 6 }],
    },
  );
  // At most 5 pick-ups per second across every process: each run logs its start and its end
  // (`Date.now()`) as `spans` does.
  const rated = app.task("rated", async ({ i }: { i: number }) => {
    log({ event: "start", key: "rated", i, at: Date.now() });
    await sleep(5);
    log({ event: "end", key: "rated", i, at: Date.now() });
    return i;
  }, { rateLimit: { limit: 5, intervalMs: 1_000 } });
  const slow = app.task("slow", async ({ i }: { i: number }) => {
    if (await add(["started", String(i)], 1) === 0) await sleep(60_000); // the first run hangs
    return i;
  });
  // No registration concurrency: only idempotency keys dedup its calls.
  const pay = app.task("pay", ({ cents }: { cents: number }) => cents);
  return { dedup, keyed, pairs, spans, rated, slow, pay };
}

// A runner is presumed dead after 2 s without a heartbeat, so that the kill -9 test sees its
// recovery soon; `run` takes a longer timeout as its third argument where nothing is meant to be
// recovered: on a loaded machine a live runner's pick-up pass can hold its next heartbeat back
// past 2 s, and another runner would recover and run again what it is still running.
const runnerTimeoutSeconds = mode === "run" && rest[2] !== undefined ? Number(rest[2]) : 2;
const appOptions = {
  appId: "mp",
  kv,
  orchestrator: { maxPendingSeconds: 2, runnerTimeoutSeconds },
};
const app = new Nenc(appOptions);
const tasks = defineTasks(app);
let output: unknown = null;

switch (mode) {
  case "register": {
    // 500 calls over 50 argument sets; prints the invocation ids it got.
    const ids = new Set<string>();
    for (let call = 0; call < 500; call++) ids.add((await tasks.dedup.call({ k: call % 50 })).id);
    output = { ids: [...ids] };
    break;
  }
  case "idempotent": {
    // 200 calls over 20 idempotency keys, 10 at once; prints the invocation ids it got per key.
    const ids: Record<string, string[]> = {};
    for (let call = 0; call < 200; call += 10) {
      const batch = Array.from({ length: 10 }, (_, i) => `key-${(call + i) % 20}`);
      const got = await Promise.all(
        batch.map((key) => tasks.pay.call({ cents: 100 }, { idempotencyKey: key })),
      );
      batch.forEach((key, i) => (ids[key] ??= []).push(got[i]!.id));
    }
    output = { ids };
    break;
  }
  case "run": {
    // A runner until `rest[0]` invocations of `rest[1]` are final, or the deadline (`rest[2]`:
    // its runner timeout in seconds, see above; `rest[3]`: its runner id, see `tag`).
    const [count, taskId] = [Number(rest[0]), rest[1]!];
    await using runner = app.runner({
      concurrency: 4,
      heartbeatMs: 200,
      pollMs: 20,
      ...(tag !== undefined ? { runnerId: tag } : {}),
    });
    runner.start();
    while (Date.now() < deadline) {
      const finals = (await app.orchestrator.store.counts()).get(taskId)?.get("success") ?? 0;
      if (finals >= count) break;
      await sleep(50);
    }
    output = { done: true };
    break;
  }
  case "hang": {
    // A runner that picks up `slow` and hangs in it until the test kills this process.
    const runner = app.runner({ concurrency: 4, heartbeatMs: 200, pollMs: 20 });
    runner.start();
    await sleep(60_000);
    break;
  }
  case "cycle": {
    // Races `rest[0]` times: this process adds X_i → Y_i, the other Y_i → X_i, at one moment.
    // With `wide` (`rest[3]`), X_i first calls 9 other calls, so the other process's insertion
    // has a region of 10 calls (commit, then verify) while this one's has 1 (one walk).
    const [races, me, other, wide] = [Number(rest[0]), rest[1]!, rest[2]!, rest[3] === "wide"];
    // Commits are delayed by 5–25 ms, as over a network (KV Connect): both processes then pass
    // the walk of a race, and only the commit's checks or the post-commit verification decide.
    const slowCommits = interceptKv(kv, { beforeCommit: () => sleep(5 + Math.random() * 20) });
    const store = new KvStore(slowCommits, { appId: "mp", clock: systemClock });
    const prepare = new KvStore(kv, { appId: "mp", clock: systemClock });
    const outcomes: string[] = [];
    for (let i = 0; i < races && Date.now() < deadline; i++) {
      for (let callee = 0; wide && callee < 9; callee++) {
        await prepare.addCall(
          { callId: `${me}${i}`, invocationId: `${me}-wide-${i}` },
          { callId: `${me}${i}.${callee}`, invocationId: `${me}-wide-${i}.${callee}` },
        );
      }
      await add(["arrived", String(i), me], 1);
      while (await read(["arrived", String(i), other]) === 0 && Date.now() < deadline) {
        await sleep(1);
      }
      try {
        await store.addCall(
          { callId: `${me}${i}`, invocationId: `${me}-inv-${i}` },
          { callId: `${other}${i}`, invocationId: `${other}-callee-${i}` },
        );
        outcomes.push("ok");
      } catch (error) {
        if (!(error instanceof CycleDetectedError)) throw error;
        outcomes.push("cycle");
      }
    }
    output = { outcomes };
    break;
  }
  default:
    throw new Error(`unknown mode ${mode}`);
}

console.log(JSON.stringify(output));
kv.close();
