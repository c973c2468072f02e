/**
 * A process for the monitor's browser test: on the demo's KV file (the first argument), it
 * deploys the demo's four services to the environment `qa` at once, on a runner with more slots
 * than the environment's limit (2), with `NENC_DEMO_SLOWDOWN` set high by the test — so two
 * deploys hold the environment's slots and two wait parked, until canceled (their work stops on
 * its signal). It prints
 * `ready <ids as JSON>` once they do, then one line `settled <id> <outcome>` per deploy as it
 * ends. On SIGTERM it cancels what is left, waits for it, stops its runner and exits 0.
 */
import { app, deploy } from "../examples/demo/app.ts";
import { SERVICES } from "../examples/demo/scenario.ts";

const kv = await Deno.openKv(Deno.args[0]!);
app.useKv(kv);
// A long grace: a canceled deploy gives its slots back only once its function has returned (on
// its signal), not because a grace ran out.
const runner = app.runner({ concurrency: 8, graceMs: 600_000 });
const group = await deploy.parallelize(SERVICES.map((pkg) => ({ env: "qa", pkg })));
const ids = group.invocations.map((invocation) => invocation.id);
const settled = Promise.all(group.invocations.map((invocation) =>
  invocation.result().then(
    () => console.log(`settled ${invocation.id} success`),
    (error: Error) => console.log(`settled ${invocation.id} ${error.name}: ${error.message}`),
  )
));
runner.start();
const deadline = Date.now() + 60_000;
for (;;) {
  const statuses = (await app.orchestrator.store.getMany(ids)).map((record) => record.status);
  const running = statuses.filter((status) => status === "running").length;
  const parked = statuses.filter((status) => status === "concurrency_controlled").length;
  if (running === 2 && parked === 2) break;
  if (Date.now() > deadline) throw new Error(`Cannot hold the deploys: ${statuses.join(", ")}`);
  await new Promise((resolve) => setTimeout(resolve, 20));
}
console.log(`ready ${JSON.stringify(ids)}`);
const stop = Promise.withResolvers<void>();
Deno.addSignalListener("SIGTERM", () => stop.resolve());
await Promise.race([stop.promise, settled]);
await app.orchestrator.cancel(group.invocations, { reason: "the test ended" });
await settled;
await runner.stop();
kv.close();
Deno.exit(0);
