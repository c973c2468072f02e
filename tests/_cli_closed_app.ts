/**
 * An app module for the CLI tests whose own KV store is closed before any command uses it: every
 * command then meets a closed store.
 */
import { Nenc } from "../core/app.ts";
import { openTestKv } from "./_kv.ts";

const kv = await openTestKv(":memory:");
const app = new Nenc({ appId: "cli-closed", kv });
app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
kv.close();
export default app;
