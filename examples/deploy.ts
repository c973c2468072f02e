/**
 * nenc on Deno Deploy: isolates live only while they serve a request or a cron tick, and Deno
 * Deploy KV is the shared store. Work is drained in bounded slices — from `Deno.cron` every
 * minute, and right after a request that adds work — and each slice stops by itself, handing back
 * whatever still runs, so nothing is left half-done when the isolate goes away.
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
  { registrationConcurrency: "arguments" }, // the same text counted twice is one invocation
);

/** One bounded slice of work: at most 8 at once, for at most `maxMs`. */
function drain(maxMs: number) {
  return app.runner({ concurrency: 8 }).drain({ maxMs });
}

// A cron tick has about a minute: leave a margin.
Deno.cron("nenc drain", "* * * * *", async () => {
  await drain(50_000);
});

Deno.serve(async (request) => {
  const url = new URL(request.url);
  if (request.method === "POST" && url.pathname === "/count") {
    const invocation = await wordCount.call({ text: await request.text() });
    await drain(5_000); // run it now if the isolate can; the cron picks up what is left
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
