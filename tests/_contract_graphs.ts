import { test } from "node:test";
import assert from "node:assert/strict";
import type { AppFactory } from "./store_contract.ts";
import type { LiveGraphs } from "../core/store.ts";

/** The graphs in a stable order: calls by call id, edges sorted. */
function sorted(graphs: LiveGraphs): LiveGraphs {
  const byText = (a: readonly string[], b: readonly string[]): number =>
    a.join("\n") < b.join("\n") ? -1 : 1;
  return {
    calls: {
      calls: [...graphs.calls.calls]
        .map((call) => ({ ...call, invocationIds: [...call.invocationIds].sort() }))
        .sort((a, b) => a.callId < b.callId ? -1 : 1),
      edges: [...graphs.calls.edges].sort(byText),
    },
    waits: [...graphs.waits].sort(byText),
  };
}

/** The live call graph and wait graph, read through the storage port, on one backend. */
export function graphsContract(backend: string, makeApp: AppFactory): void {
  test(`[${backend}] graphs(): a caller waiting on two running callees shows both call edges and both wait edges; once all are final both graphs are empty`, async () => {
    const app = await makeApp();
    const o = app.orchestrator;
    const job = app.task("job", ({ n }: { n: number }) => n);
    const caller = await job.call({ n: 0 });
    const a = await job.call({ n: 1 });
    const b = await job.call({ n: 2 });
    assert.equal((await o.getInvocationsToRun(3, { runnerId: "r0" })).length, 3);
    const actor = { runnerId: "r0" };
    await o.setInvocationRun(undefined, caller, actor);
    await o.setInvocationRun(caller, a, actor);
    await o.setInvocationRun(caller, b, actor);
    await o.waitingForResults(caller, [a, b]);

    const call = (invocation: { callId: string; id: string }, n: number) => ({
      callId: invocation.callId,
      label: `job({"n":${n}})`,
      invocationIds: [invocation.id],
    });
    assert.deepEqual(
      sorted(await o.store.graphs()),
      sorted({
        calls: {
          calls: [call(caller, 0), call(a, 1), call(b, 2)],
          edges: [[caller.callId, a.callId], [caller.callId, b.callId]],
        },
        waits: [[caller.id, a.id], [caller.id, b.id]],
      }),
    );

    await o.setInvocationResult(a, 1, actor);
    const afterA = await o.store.graphs();
    assert.deepEqual(afterA.calls.edges, [[caller.callId, b.callId]]);
    assert.deepEqual(afterA.waits, [[caller.id, b.id]]);
    await o.setInvocationResult(b, 2, actor);
    await o.setInvocationResult(caller, 3, actor);
    assert.deepEqual(await o.store.graphs(), { calls: { calls: [], edges: [] }, waits: [] });
  });
}
