// The fault-injection contracts (issues #9, #11, #12, #13) on Deno KV, in memory and on a file: the app's
// KV is an interceptKv view whose hooks refuse commits, report applied ones failed, or take the
// store down.
import { after } from "node:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Nenc } from "../core/app.ts";
import { cycleFaultContract } from "./_faults_cycles.ts";
import { faultContract, type FaultyAppFactory, kvFaultHooks } from "./_faults.ts";
import { scheduleFaultContract } from "./_faults_schedules.ts";
import { upkeepFaultContract } from "./_faults_upkeep.ts";
import { interceptKv, openTestKv, type TestKv } from "./_kv.ts";

const opened: TestKv[] = [];
const directory = mkdtempSync(join(tmpdir(), "nenc-kv-faults-"));
after(() => {
  for (const kv of opened) kv.close();
  rmSync(directory, { recursive: true, force: true });
});

// In memory: a database per scenario. On a file: one file that every scenario's app shares (each
// under its own app id, through its own faulty view), as processes share one file.
let file: Promise<TestKv> | undefined;
const open = async (path: string): Promise<TestKv> => {
  const kv = await openTestKv(path);
  opened.push(kv);
  return kv;
};

const inMemory: FaultyAppFactory = async (plan, options) => {
  const kv = await open(":memory:");
  return new Nenc({ ...options, kv: interceptKv(kv, kvFaultHooks(plan)) });
};
const onFile: FaultyAppFactory = async (plan, options) => {
  const kv = await (file ??= open(join(directory, "faults.db")));
  return new Nenc({ ...options, kv: interceptKv(kv, kvFaultHooks(plan)) });
};
faultContract("kv :memory:", inMemory);
faultContract("kv file", onFile);
scheduleFaultContract("kv :memory:", inMemory);
scheduleFaultContract("kv file", onFile);
upkeepFaultContract("kv :memory:", inMemory);
upkeepFaultContract("kv file", onFile);
cycleFaultContract("kv :memory:", inMemory);
cycleFaultContract("kv file", onFile);
