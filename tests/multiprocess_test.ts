/**
 * Exactness across processes: real `deno` (and `bun`) processes on one Deno KV file in a temp
 * dir, each counting the violations that must stay at 0. Workers stop by themselves; the test
 * kills any that outlive their deadline.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { env } from "node:process";
import { Nenc } from "../core/app.ts";
import type { TaskOptions } from "../core/task.ts";
import { isValidHistory } from "../core/status.ts";
import type { OrchestratorOptions } from "../core/orchestrator.ts";
import { openTestKv, type TestKv } from "./_kv.ts";
import { windowsOverLimit } from "./_pickups.ts";
import { LONG_DEADLINE_MS, waitUntil, within } from "./_deadline.ts";

const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
const onlyDeno = deno === undefined ? "multi-process tests run under deno test" : false;
// The pinned Bun: from PATH (CI installs it), else fetched from npm by npx, so a machine with
// only Node and npm runs this test too.
const bun: readonly string[] = spawnSync("bun", ["--version"]).status === 0
  ? ["bun"]
  : ["npx", "-y", "bun@1.4.5"];
const worker = new URL("./_mp_worker.ts", import.meta.url).pathname;
/** `NENC_TEST_VERBOSE=1` prints what the tests measured. */
const report = env.NENC_TEST_VERBOSE ? (...data: unknown[]) => console.log(...data) : () => {};

interface Exit {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Worker {
  readonly exit: Promise<Exit>;
  kill(signal: NodeJS.Signals): void;
}

function start(runtime: "deno" | "bun", args: readonly string[]): Worker {
  const [command, ...argv] = runtime === "deno"
    ? [deno!.execPath(), "run", "-A", "--no-check", worker, ...args]
    : [...bun, "run", worker, ...args];
  const child = spawn(command!, argv, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => stdout += chunk);
  child.stderr.on("data", (chunk) => stderr += chunk);
  const guard = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const exit = new Promise<Exit>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(guard);
      resolve({ code, stdout, stderr });
    })
  );
  return { exit, kill: (signal) => child.kill(signal) };
}

async function output<T>(worker: Worker): Promise<T> {
  const { code, stdout, stderr } = await worker.exit;
  assert.equal(code, 0, `worker failed:\n${stderr}`);
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as T;
}

async function withKvFile(fn: (path: string) => Promise<void>): Promise<void> {
  const directory = mkdtempSync(join(tmpdir(), "nenc-mp-"));
  try {
    await fn(join(directory, "nenc.db"));
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** The parent's own view of the KV file: the same app id and tasks as the workers. */
async function parentApp(path: string, orchestrator: OrchestratorOptions = {}) {
  const kv = await openTestKv(path);
  const app = new Nenc({ appId: "mp", kv, orchestrator });
  const decoder = new TextDecoder();
  const counter = async (...key: string[]): Promise<number> => {
    const entry = await kv.get(["mp", ...key]);
    return entry.versionstamp === null ? 0 : Number(decoder.decode(entry.value as Uint8Array));
  };
  return { kv, app, counter };
}

test(
  "6 processes (one of them Bun) × 200 calls over 20 idempotency keys create exactly 20 invocations, one per key, and every call of a key got that one",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const runtimes = Array.from({ length: 6 }, (_, i) => i === 0 ? "bun" : "deno");
      const workers = runtimes.map((runtime) =>
        start(runtime as "deno" | "bun", ["idempotent", path])
      );
      const results = await Promise.all(
        workers.map((w) => output<{ ids: Record<string, string[]> }>(w)),
      );
      const perKey = new Map<string, Set<string>>();
      for (const result of results) {
        for (const [key, ids] of Object.entries(result.ids)) {
          const set = perKey.get(key) ?? new Set<string>();
          for (const id of ids) set.add(id);
          perKey.set(key, set);
        }
      }
      assert.equal(perKey.size, 20);
      for (const [key, ids] of perKey) assert.equal(ids.size, 1, `key ${key}: ${[...ids]}`);
      const { kv, app } = await parentApp(path);
      try {
        const pay = app.task("pay", ({ cents }: { cents: number }) => cents);
        const invocations = [];
        for await (const invocation of app.orchestrator.getExistingInvocations(pay)) {
          invocations.push(invocation.id);
        }
        assert.equal(invocations.length, 20, "violations: duplicate invocations were created");
        assert.deepEqual(
          new Set(invocations),
          new Set([...perKey.values()].flatMap((ids) => [...ids])),
        );
      } finally {
        kv.close();
      }
    });
  },
);

test(
  "8 processes (one of them Bun) × 500 calls over 50 argument sets with registration concurrency create exactly 50 invocations",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const runtimes = Array.from({ length: 8 }, (_, i) => i === 0 ? "bun" : "deno");
      const workers = runtimes.map((runtime) =>
        start(runtime as "deno" | "bun", ["register", path])
      );
      const results = await Promise.all(workers.map((w) => output<{ ids: string[] }>(w)));
      const ids = new Set(results.flatMap((result) => result.ids));
      const { kv, app } = await parentApp(path);
      try {
        const dedup = app.task("dedup", ({ k }: { k: number }) => k, {
          registrationConcurrency: "arguments",
        });
        const invocations = [];
        for await (const invocation of app.orchestrator.getExistingInvocations(dedup)) {
          invocations.push(invocation);
        }
        assert.equal(invocations.length, 50, "violations: duplicate invocations were created");
        assert.equal(ids.size, 50);
        assert.deepEqual(new Set(invocations.map((i) => i.id)), ids);
        assert.deepEqual(new Set(invocations.map((i) => i.args.k)).size, 50);
      } finally {
        kv.close();
      }
    });
  },
);

/**
 * 4 runner processes run 200 invocations of the worker's task `taskId` (over 5 keys) on one KV
 * file; the task counts what overlaps in its own atomic counters. Checks no violation, every
 * invocation run and succeeded exactly once, and returns the counter reader for more.
 */
async function runKeyed(
  path: string,
  taskId: string,
  options: TaskOptions<{ key: string; i: number }>,
  runtimes: readonly ("deno" | "bun")[],
  check: (counter: (...key: string[]) => Promise<number>) => Promise<void>,
): Promise<void> {
  const { kv, app, counter } = await parentApp(path);
  try {
    const keyed = app.task(taskId, ({ i }: { key: string; i: number }) => i, options);
    const group = await keyed.parallelize(
      Array.from({ length: 200 }, (_, i) => ({ key: `k${i % 5}`, i })),
    );
    // A runner timeout of 60 s, not the workers' 2 s: under load a live worker can go 2 s
    // without a heartbeat, and another would recover its running invocations and run them
    // again (2 runs of one invocation), which is recovery, not what this test is about.
    const workers = runtimes.map((runtime) => start(runtime, ["run", path, "200", taskId, "60"]));
    await Promise.all(workers.map((w) => output(w)));
    assert.equal(await counter("violations"), 0, "a key or a group ran over its limit");
    for (let i = 0; i < 200; i++) {
      assert.equal(await counter("runs", String(i)), 1, `runs of ${i}`);
    }
    for (const invocation of group.invocations) {
      const history = await invocation.history();
      assert.equal(await invocation.status(), "success");
      assert.ok(isValidHistory(history));
      assert.equal(history.filter((entry) => entry.status === "success").length, 1);
    }
    await check(counter);
  } finally {
    kv.close();
  }
}

test(
  "4 runner processes × 4 slots run 200 invocations of a keys-concurrency task over 5 keys with 0 overlapping runs of a key, each exactly once",
  { skip: onlyDeno },
  async () => {
    await withKvFile((path) =>
      runKeyed(
        path,
        "keyed",
        { runningConcurrency: "keys", keyArguments: ["key"] },
        ["deno", "deno", "deno", "deno"],
        async () => {},
      )
    );
  },
);

test(
  "4 runner processes (one of them Bun) × 4 slots run 200 invocations of a keys task with limit 2 over 5 keys and a group cap of 6: two of a key and six in all run at once, never more (0 violations), each exactly once",
  { skip: onlyDeno },
  async () => {
    await withKvFile((path) =>
      runKeyed(
        path,
        "pairs",
        {
          runningConcurrency: { by: "keys", limit: 2 },
          keyArguments: ["key"],
          concurrencyGroups: [{ name: "cap", limit: 6 }],
        },
        ["bun", "deno", "deno", "deno"],
        async (counter) => {
          assert.ok(await counter("pairs") > 0, "two runs of one key never overlapped");
          assert.ok(await counter("capped") > 0, "the group never had six at once");
        },
      )
    );
  },
);

test(
  "kill -9 of a runner mid-task loses nothing: another runner recovers its invocations and finishes them",
  {
    skip: onlyDeno,
  },
  async () => {
    await withKvFile(async (path) => {
      const { kv, app, counter } = await parentApp(path);
      try {
        const slow = app.task("slow", ({ i }: { i: number }) => i);
        const group = await slow.parallelize([{ i: 0 }, { i: 1 }, { i: 2 }]);
        const doomed = start("deno", ["hang", path]);
        await waitUntil(async () => {
          const started = await Promise.all([0, 1, 2].map((i) => counter("started", String(i))));
          return started.every((count) => count === 1);
        }, { intervalMs: 20, message: "the doomed runner never started all three invocations" });
        doomed.kill("SIGKILL");
        await doomed.exit;
        for (const invocation of group.invocations) {
          assert.equal(await invocation.status(), "running");
        }
        const killedAt = Date.now();
        await output(start("deno", ["run", path, "3", "slow"]));
        const seconds = (Date.now() - killedAt) / 1000;
        for (const invocation of group.invocations) {
          assert.equal(await invocation.status(), "success");
          const statuses = (await invocation.history()).map((entry) => entry.status);
          assert.ok(statuses.includes("running_recovery"), statuses.join(" → "));
          assert.ok(isValidHistory(await invocation.history()));
        }
        // runnerTimeoutSeconds is 2 in the workers; allow for process start-up.
        assert.ok(seconds < 20, `recovery took ${seconds} s`);
      } finally {
        kv.close();
      }
    });
  },
);

/** One execution of `spans` as its process logged it; `end` is missing if it never returned. */
interface Span {
  readonly process: string;
  readonly key: string;
  readonly i: number;
  readonly start: number;
  readonly end?: number;
  readonly aborted?: boolean;
}

/** The executions a `spans` worker logged to `<directory>/<tag>.jsonl`, in the order they began. */
function spansOf(directory: string, tag: string): Span[] {
  const file = join(directory, `${tag}.jsonl`);
  if (!existsSync(file)) return [];
  type Line = { event: "start" | "end"; key: string; i: number; at: number; aborted?: boolean };
  const spans: Span[] = [];
  const open = new Map<number, number>(); // i → its open span's index in spans
  for (const text of readFileSync(file, "utf8").split("\n").filter(Boolean)) {
    const line = JSON.parse(text) as Line;
    if (line.event === "start") {
      assert.ok(!open.has(line.i), `${tag} started #${line.i} twice at once`);
      open.set(line.i, spans.length);
      spans.push({ process: tag, key: line.key, i: line.i, start: line.at });
    } else {
      const index = open.get(line.i);
      assert.ok(index !== undefined, `${tag} ended #${line.i}, never started`);
      open.delete(line.i);
      spans[index] = { ...spans[index]!, end: line.at, aborted: line.aborted === true };
    }
  }
  return spans;
}

/**
 * How many executions began while `limit` others were running (from their own start and end
 * times; at one millisecond, an end goes before a start: a slot is given back after its run
 * ended and taken before the next began).
 */
function overruns(spans: readonly Span[], limit: number): number {
  const events = spans.flatMap((span) => [[span.start, 1], [span.end!, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let running = 0;
  let over = 0;
  for (const [, delta] of events) {
    running += delta;
    if (delta > 0 && running > limit) over++;
  }
  return over;
}

interface SlotState {
  readonly key: string;
  readonly holders: readonly string[];
  readonly parked: number;
  readonly woken: number;
}

/** Every slot key of the app as stored: `{holders, parked, woken}`, or a plain holders array. */
async function slotStates(kv: TestKv): Promise<SlotState[]> {
  const decoder = new TextDecoder();
  const states: SlotState[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", "mp", "slot"] })) {
    const value = JSON.parse(decoder.decode(entry.value as Uint8Array)) as
      | string
      | string[]
      | { holders: string[]; parked: number; woken: number };
    const key = String(entry.key.at(-1));
    states.push(
      typeof value === "string"
        ? { key, holders: [value], parked: 0, woken: 0 }
        : Array.isArray(value)
        ? { key, holders: value, parked: 0, woken: 0 }
        : { key, ...value },
    );
  }
  return states;
}

/** The keys under `["nenc", "mp", kind]`, after that prefix. */
async function keysUnder(kv: TestKv, kind: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const entry of kv.list({ prefix: ["nenc", "mp", kind] })) {
    keys.push(entry.key.slice(2).map(String).join("/"));
  }
  return keys;
}

test(
  "kill -9 of one of 4 runner processes (one of them Bun) while it runs invocations of a keys task with limit 2 and a group cap of 6 leaks no slot: the other 3 recover its runs and finish all 200 (each SUCCESS, run to completion once, 0 runs over either limit), and leave every slot key empty, nothing parked, woken or marked",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const directory = dirname(path);
      // Every process takes a runner for dead after 3 s without a heartbeat: the killed one is
      // recovered soon. (A live one slowed down past it would fence itself and its runs would be
      // run again: the exactly-once count below fails then, naming them "aborted".)
      const runnerTimeoutSeconds = 3;
      const { kv, app } = await parentApp(path, { runnerTimeoutSeconds });
      const workers: Worker[] = [];
      try {
        const spans = app.task("spans", ({ i }: { key: string; i: number; ms: number }) => i, {
          runningConcurrency: { by: "keys", limit: 2 },
          keyArguments: ["key"],
          concurrencyGroups: [{ name: "cap", limit: 6 }],
        });
        // 200 runs of 60–209 ms over 5 keys: 6 at once at most, so the 4 runners × 4 slots park
        // most of what they pick up.
        const count = 200;
        const group = await spans.parallelize(
          Array.from(
            { length: count },
            (_, i) => ({ key: `k${i % 5}`, i, ms: 60 + (i * 37) % 150 }),
          ),
        );
        const tags = ["doomed", "bun", "deno-1", "deno-2"] as const;
        for (const tag of tags) {
          const args = ["run", path, String(count), "spans", String(runnerTimeoutSeconds), tag];
          workers.push(start(tag === "bun" ? "bun" : "deno", [...args, directory]));
        }
        const [doomed, ...survivors] = workers as [Worker, ...Worker[]];

        // Mid-run: 40 runs done, and the doomed runner began one within the last 20 ms (it has
        // 40 ms or more to go: the kill lands while it runs).
        await waitUntil(() => {
          const logged = tags.flatMap((tag) => spansOf(directory, tag));
          if (logged.filter((span) => span.end !== undefined).length < 40) return false;
          const now = Date.now();
          return spansOf(directory, "doomed").some((span) =>
            span.end === undefined && now - span.start < 20
          );
        }, {
          intervalMs: 5,
          timeoutMs: LONG_DEADLINE_MS,
          message: "40 runs never ended with one just begun in the doomed runner",
        });
        doomed.kill("SIGKILL");
        const killed = await within(doomed.exit, 10_000, "the killed runner's exit");
        const killedAt = Date.now();
        assert.equal(killed.code, null, "the doomed runner exited by itself");

        // What it held when it died (its runner timeout has not passed: nothing recovered yet):
        // each run it had begun holds its key's slot and the group's.
        const atKill = await slotStates(kv);
        const executing = new Set(await app.orchestrator.store.executions("doomed"));
        const cut = spansOf(directory, "doomed").filter((span) => span.end === undefined);
        assert.ok(cut.length > 0, "the doomed runner was running nothing when killed");
        for (const { i } of cut) {
          const id = group.invocations[i]!.id;
          assert.ok(executing.has(id), `#${i} is not among the doomed runner's executions`);
          const holding = atKill.filter((state) => state.holders.includes(id));
          assert.equal(holding.length, 2, `#${i} holds ${holding.map((state) => state.key)}`);
        }
        const parkedAtKill = atKill.reduce((sum, state) => sum + state.parked, 0);

        await within(
          Promise.all(survivors.map((survivor) => output(survivor))),
          LONG_DEADLINE_MS,
          "the surviving runners to finish every invocation",
        );
        const doneAt = Date.now();

        let parked = 0;
        for (const invocation of group.invocations) {
          assert.equal(await invocation.status(), "success");
          const history = await invocation.history();
          const statuses = history.map((entry) => entry.status);
          assert.ok(isValidHistory(history), statuses.join(" → "));
          assert.equal(statuses.filter((status) => status === "success").length, 1);
          if (statuses.includes("concurrency_controlled")) parked++;
        }
        assert.ok(parked > 0, "nothing was ever parked: the test proves nothing about parking");
        for (const { i } of cut) {
          const statuses = (await group.invocations[i]!.history()).map((entry) => entry.status);
          assert.ok(statuses.includes("running_recovery"), `#${i}: ${statuses.join(" → ")}`);
        }

        // Runs, from the functions' own logs; the killed runner's unfinished ones ran until it
        // was gone.
        const all = tags.flatMap((tag) => spansOf(directory, tag)).map((span) =>
          span.end === undefined ? { ...span, end: killedAt } : span
        );
        const wrong: string[] = [];
        for (let i = 0; i < count; i++) {
          const runs = all.filter((span) => span.i === i);
          const inDoomed = runs.filter((span) => span.process === "doomed");
          const elsewhere = runs.filter((span) => span.process !== "doomed");
          const completed = elsewhere.filter((span) => !span.aborted).length;
          const cutHere = cut.some((span) => span.i === i);
          // Not run by the doomed runner: once, to completion. Cut by the kill: once more, to
          // completion, elsewhere. Run to its end there: at most once more (its success may not
          // have landed before the kill).
          const ok = inDoomed.length === 0
            ? runs.length === 1 && completed === 1
            : inDoomed.length === 1 &&
              (cutHere ? elsewhere.length === 1 : elsewhere.length <= 1) &&
              completed === elsewhere.length;
          if (!ok) {
            wrong.push(
              `#${i}: ${
                runs.map((span) => `${span.process}${span.aborted ? " (aborted)" : ""}`).join(", ")
              }`,
            );
          }
        }
        assert.deepEqual(wrong, [], "invocations not run to completion exactly once");
        const perKey = Array.from(
          { length: 5 },
          (_, k) => overruns(all.filter((span) => span.key === `k${k}`), 2),
        );
        assert.deepEqual(perKey, [0, 0, 0, 0, 0], "runs of a key over its limit of 2");
        assert.equal(overruns(all, 6), 0, "runs over the group cap of 6");

        // Nothing leaked: no slot key left (an empty one is deleted, so any left holds a slot or
        // counts something parked or woken: the diff shows it), no wake marker, no parked or
        // queued entry, no execution of any runner.
        assert.deepEqual(await slotStates(kv), [], "slot keys left");
        assert.deepEqual(await keysUnder(kv, "wake"), [], "wake markers left");
        assert.deepEqual(await keysUnder(kv, "park"), [], "parked entries left");
        assert.deepEqual(await keysUnder(kv, "lane"), [], "lane entries left");
        assert.deepEqual(await keysUnder(kv, "q"), [], "ready queue entries left");
        assert.deepEqual(await keysUnder(kv, "qd"), [], "delayed queue entries left");
        assert.deepEqual(await keysUnder(kv, "exec"), [], "executions left");
        report(
          `kill -9: cut ${cut.length} run(s) of the doomed runner (${parkedAtKill} parked at the kill, ` +
            `${parked} invocations parked at some time); ` +
            `${all.length} runs, ${all.filter((span) => span.aborted).length} aborted; ` +
            `the survivors finished ${((doneAt - killedAt) / 1000).toFixed(1)} s after the kill`,
        );
      } finally {
        // A failed test still ends its workers.
        for (const worker of workers) worker.kill("SIGKILL");
        await Promise.all(workers.map((worker) => worker.exit));
        kv.close();
      }
    });
  },
);

test(
  "4 runner processes (one of them Bun) run 60 invocations of a task limited to 5 pick-ups per 1,000 ms: no window of 1,000 ms holds 6 pick-ups (PENDING times), nor 6 function starts once their varying delay after the pick-up is allowed for, and windows fill to 5",
  { skip: onlyDeno },
  async () => {
    await withKvFile(async (path) => {
      const directory = dirname(path);
      const { kv, app } = await parentApp(path);
      const workers: Worker[] = [];
      try {
        const rated = app.task("rated", ({ i }: { i: number }) => i, {
          rateLimit: { limit: 5, intervalMs: 1_000 },
        });
        const count = 60;
        const group = await rated.parallelize(Array.from({ length: count }, (_, i) => ({ i })));
        const tags = ["bun", "deno-1", "deno-2", "deno-3"] as const;
        for (const tag of tags) {
          // A runner timeout of 60 s: nothing here is meant to be recovered (see runKeyed).
          const args = ["run", path, String(count), "rated", "60", tag, directory];
          workers.push(start(tag === "bun" ? "bun" : "deno", args));
        }
        await within(
          Promise.all(workers.map((worker) => output(worker))),
          LONG_DEADLINE_MS,
          "the runners to finish every invocation",
        );
        // Pick-ups: the PENDING entries, stamped by the claiming process's clock in the step that
        // checked the window (one clock for every process of this machine).
        const pickUps = new Map<number, number>();
        let parked = 0;
        for (const [i, invocation] of group.invocations.entries()) {
          assert.equal(await invocation.status(), "success");
          const history = await invocation.history();
          assert.ok(isValidHistory(history), history.map((entry) => entry.status).join(" → "));
          const pending = history.filter((entry) => entry.status === "pending");
          assert.equal(pending.length, 1, `#${i} was picked up ${pending.length} times`);
          pickUps.set(i, pending[0]!.timestampMs);
          if (history.some((entry) => entry.status === "concurrency_controlled")) parked++;
        }
        const times = [...pickUps.values()];
        assert.equal(windowsOverLimit(times, 5, 1_000), 0, "windows of 1,000 ms with 6 pick-ups");
        const starts = tags.flatMap((tag) => spansOf(directory, tag));
        assert.equal(starts.length, count, "runs logged");
        // The functions' own start times. Each start comes some delay after its pick-up (the
        // commit's answer, the hand-over to a slot), and the delay varies: six starts can lie
        // closer together than their six pick-ups by up to the spread of the delays (the largest
        // less the smallest, measured here), never by more. So six starts within 1,000 ms less
        // that spread would mean six pick-ups within 1,000 ms: counted over windows that short,
        // the starts give no false positive. The shortening can hide an overrun smaller than the
        // spread — the pick-ups above are counted exactly for that — but not a gross one: the
        // spread must stay under 500 ms, and without the limit the 60 starts would all fall in a
        // fraction of a second.
        const delays = starts.map((span) => span.start - pickUps.get(span.i)!);
        const spreadMs = Math.max(...delays) - Math.min(...delays);
        const startTimes = starts.map((span) => span.start);
        assert.equal(
          windowsOverLimit(startTimes, 5, 1_000 - spreadMs),
          0,
          `windows of ${1_000 - spreadMs} ms with 6 function starts`,
        );
        assert.ok(spreadMs < 500, `pick-up to start delays spread over ${spreadMs} ms`);
        // Not starved: the limit was reached (5 in some window) and work waited for it, parked.
        const full = windowsOverLimit(times, 4, 1_000);
        assert.ok(full > 0, "no window ever held 5 pick-ups");
        assert.ok(parked > 0, "nothing was ever parked on the rate limit");
        const seconds = (Math.max(...times) - Math.min(...times)) / 1_000;
        report(
          `rate limit: ${count} runs over ${seconds.toFixed(1)} s, ` +
            `${full} windows at 5, ${parked} parked, pick-up to start ${Math.min(...delays)}–${
              Math.max(...delays)
            } ms`,
        );
      } finally {
        for (const worker of workers) worker.kill("SIGKILL");
        await Promise.all(workers.map((worker) => worker.exit));
        kv.close();
      }
    });
  },
);

for (
  const [wide, what] of [
    [false, ""],
    [true, " (B calls 9 other calls first: a region of 10 calls against one of 1)"],
  ] as const
) {
  test(
    `two processes racing A→B and B→A 100 times get exactly one CycleDetectedError per race${what}`,
    {
      skip: onlyDeno,
    },
    async () => {
      await withKvFile(async (path) => {
        const [a, b] = await Promise.all([
          output<{ outcomes: string[] }>(start("deno", ["cycle", path, "100", "A", "B"])),
          output<{ outcomes: string[] }>(
            start("deno", ["cycle", path, "100", "B", "A", ...wide ? ["wide"] : []]),
          ),
        ]);
        assert.equal(a.outcomes.length, 100);
        assert.equal(b.outcomes.length, 100);
        let violations = 0;
        for (let i = 0; i < 100; i++) {
          const cycles = [a.outcomes[i], b.outcomes[i]].filter((outcome) =>
            outcome === "cycle"
          ).length;
          if (cycles !== 1) violations++;
        }
        assert.equal(violations, 0, `races without exactly one cycle error: ${violations}`);
      });
    },
  );
}
