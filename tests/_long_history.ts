import type { Store } from "../core/store.ts";
import type { InvocationStatus } from "../core/status.ts";

/**
 * Gives invocation `id` a long history: `pickUps` pick-ups handed back (a runner stopping, say),
 * a PENDING and a REROUTED entry each, 50 pick-ups per change. It leaves the invocation REROUTED,
 * available for run.
 */
export async function refusePickUps(
  store: Store,
  id: string,
  pickUps: number,
  nowMs: number,
): Promise<void> {
  for (let done = 0; done < pickUps; done += 50) {
    const path = Array.from(
      { length: 2 * Math.min(50, pickUps - done) },
      (_, i): InvocationStatus => i % 2 === 0 ? "pending" : "rerouted",
    );
    const outcome = await store.change(id, { path, runnerId: "r1", nowMs });
    if (!outcome.ok) throw new Error(`Cannot reroute invocation ${id}: ${outcome.reason}`);
  }
}
