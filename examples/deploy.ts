/**
 * nenc on Deno Deploy: isolates live only while they serve a request or a cron tick, and Deno
 * Deploy KV is the shared store. Work is drained in bounded slices — from `Deno.cron` every
 * minute, and right after a request that adds work. A drain's runner also fires the due ticks of
 * the app's cron schedules, so the `Deno.cron` drain is what runs nenc's schedules here. Each slice stops by itself: it picks up work
 * for at most `maxMs`, then lets what runs finish for `graceMs`, then aborts what still runs
 * through its task's signal and hands it back (re-queued for the next slice) once its function
 * has returned, or `graceMs` after the abort. So a slice ends within about `maxMs + 2 × graceMs`,
 * and its work is finished or re-queued, not lost; if the isolate is killed mid-slice anyway,
 * another runner recovers what it held after the orchestrator's `runnerTimeoutSeconds`.
 *
 * Deploy: `deployctl deploy --project=<name> examples/deploy.ts` (from a copy that imports
 * `jsr:@nenc/nenc` instead of `../mod.ts`). Locally: `deno run -A --unstable-cron examples/deploy.ts`.
 *
 * @module
 */

import { Nenc } from "../mod.ts";

const kv = await Deno.openKv(); // Deno Deploy KV on Deploy; a local file when run locally
export const app = new Nenc({ appId: "deploy-demo", kv });

export const wordCount = app.task(
  "wordCount",
  ({ text }: { text: string }) => text.split(/\s+/).filter(Boolean).length,
  // Calls of the same text share one invocation until it starts running (queued, re-routed or
  // claimed but not started); once it runs, the same text is counted again. A client retrying one
  // request sends the same Idempotency-Key header and gets the same invocation, even after it ran.
  { registrationConcurrency: "arguments" },
);

// Every hour: how many texts were counted by then (those not purged yet).
export const digest = app.task("digest", async (_args: undefined, ctx) => {
  const counted = (await app.orchestrator.store.counts()).get("wordCount")?.get("success") ?? 0;
  return `${counted} texts counted by ${new Date(ctx.scheduledAt!).toISOString()}`;
});

// Stored with the app's data at every isolate start: an idempotent upsert. The first drain that
// sees a tick fires it, exactly once, so ticks get a misfire window longer than the minute between
// two drains.
await app.schedule("hourly-digest", { cron: "0 * * * *", task: digest, misfireMs: 120_000 });

/**
 * One bounded slice of work: at most 8 at once, picking up for at most `maxMs`, then a graceful
 * stop with `graceMs`.
 */
function drain(maxMs: number, graceMs: number) {
  return app.runner({ concurrency: 8 }).drain({ maxMs, graceMs });
}

// A tick comes every minute: end the slice well before the next one (about 40 s + 2 × 3 s). The
// slice's runner fires the schedules' due ticks first, then runs them with the rest.
Deno.cron("nenc drain", "* * * * *", async () => {
  await drain(40_000, 3_000);
});

Deno.serve(async (request) => {
  const url = new URL(request.url);
  if (request.method === "POST" && url.pathname === "/count") {
    const key = request.headers.get("Idempotency-Key");
    const invocation = await wordCount.call(
      { text: await request.text() },
      key ? { idempotencyKey: key } : {},
    );
    // Run what is queued now, for a few seconds at most; the cron picks up what is left.
    await drain(5_000, 1_000);
    return Response.json({ id: invocation.id, status: await invocation.status() });
  }
  if (url.pathname.startsWith("/invocations/")) {
    const invocation = await app.orchestrator.getInvocation(url.pathname.split("/")[2]!);
    if (invocation === undefined) return new Response("not found", { status: 404 });
    const status = await invocation.status();
    return Response.json({
      id: invocation.id,
      status,
      result: status === "success" ? await invocation.result() : undefined,
    });
  }
  return new Response("POST /count with a text body; GET /invocations/<id>\n");
});
