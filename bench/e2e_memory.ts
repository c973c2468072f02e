/**
 * End-to-end load on the in-memory backend (`deno task bench:e2e`): call → orchestrator → runner
 * → result, in one process. Prints a table and one JSON line per scenario.
 *
 * - noop cN: 10,000 no-op invocations through a runner with N slots (1, 10, 32);
 * - fan-out: one parent calls 1,000 children and waits for all of them (10 slots);
 * - dedup: 10,000 calls over 100 argument sets with registration concurrency "arguments"
 *   → 100 invocations.
 *
 * Usage: deno run -A bench/e2e_memory.ts [--invocations N]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Nenc } from "../core/app.ts";

interface Row {
  readonly scenario: string;
  readonly invocations: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly note: string;
}

const { values } = parseArgs({ options: { invocations: { type: "string", default: "10000" } } });
const INVOCATIONS = Number(values.invocations);

async function noop(concurrency: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  const task = app.task("noop", ({ i }: { i: number }) => i);
  await using runner = app.runner({ concurrency });
  runner.start();
  const start = performance.now();
  const invocations = [];
  for (let i = 0; i < INVOCATIONS; i++) invocations.push(await task.call({ i }));
  const results = await Promise.all(invocations.map((invocation) => invocation.result()));
  const seconds = (performance.now() - start) / 1000;
  if (results.some((result, i) => result !== i)) throw new Error("Cannot bench: wrong results");
  return row(`noop c${concurrency}`, INVOCATIONS, seconds, "call → run → result");
}

async function fanOut(children: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  const child = app.task("child", ({ i }: { i: number }) => i);
  const parent = app.task("parent", async ({ n }: { n: number }) => {
    const group = await child.parallelize(Array.from({ length: n }, (_, i) => ({ i })));
    const results = await group.results();
    return results.reduce((sum, value) => sum + value, 0);
  });
  await using runner = app.runner({ concurrency: 10 });
  runner.start();
  const start = performance.now();
  const total = await (await parent.call({ n: children })).result();
  const seconds = (performance.now() - start) / 1000;
  if (total !== (children * (children - 1)) / 2) throw new Error("Cannot bench: wrong sum");
  return row(`fan-out ${children}`, children + 1, seconds, "parent waits PAUSED on all children");
}

async function dedup(calls: number, argumentSets: number): Promise<Row> {
  const app = new Nenc({ appId: "bench" });
  const task = app.task("dedup", ({ k }: { k: number }) => k, {
    registrationConcurrency: "arguments",
  });
  const start = performance.now();
  const ids = new Set<string>();
  for (let i = 0; i < calls; i++) ids.add((await task.call({ k: i % argumentSets })).id);
  await using runner = app.runner({ concurrency: 32 });
  runner.start();
  await Promise.all([...ids].map((id) => app.orchestrator.waitForResults([{ id }])));
  const seconds = (performance.now() - start) / 1000;
  if (ids.size !== argumentSets) {
    throw new Error(`Cannot bench: ${ids.size} invocations, expected ${argumentSets}`);
  }
  return row(`dedup ${calls}→${argumentSets}`, calls, seconds, `${ids.size} invocations created`);
}

function row(scenario: string, invocations: number, seconds: number, note: string): Row {
  return { scenario, invocations, seconds, perSecond: Math.round(invocations / seconds), note };
}

const rows: Row[] = [];
for (const concurrency of [1, 10, 32]) rows.push(await noop(concurrency));
rows.push(await fanOut(1_000));
rows.push(await dedup(INVOCATIONS, 100));

console.log("| scenario | invocations | seconds | invocations/s | note |");
console.log("| --- | ---: | ---: | ---: | --- |");
for (const r of rows) {
  console.log(
    `| ${r.scenario} | ${r.invocations} | ${r.seconds.toFixed(3)} | ${r.perSecond} | ${r.note} |`,
  );
}
for (const r of rows) console.log(JSON.stringify({ bench: "e2e_memory", ...r }));
