/**
 * A process for the closed-store test: `<runtime> tests/_closed_exit.ts <kv file>` calls a task
 * that no runner runs, awaits its result, closes the KV and catches the rejection, then prints
 * one JSON line and returns — it must then exit by itself (no timer of nenc keeps it alive).
 */
import { Nenc } from "../core/app.ts";
import { openTestKv } from "./_kv.ts";

const args = (globalThis as { Deno?: { args: string[] } }).Deno?.args ??
  (await import("node:process")).argv.slice(2);
const kv = await openTestKv(args[0] ?? ":memory:");
const app = new Nenc({ appId: "closed-exit", kv });
const invocation = await app.task("never-run", () => 1).call();
const outcome = invocation.result().then(
  () => ({ name: "resolved" }),
  (error: Error) => ({ name: error.name, message: error.message }),
);
// Let the waiter's first read and a poll or two pass, so the poller is running when the KV closes.
await new Promise((resolve) => setTimeout(resolve, 50));
kv.close();
console.log(JSON.stringify(await outcome));
