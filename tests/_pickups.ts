/**
 * Pick-ups and runs by hand, as a runner makes them, for the contract tests that drive the
 * orchestrator step by step.
 */
import assert from "node:assert/strict";
import type { Nenc } from "../core/app.ts";
import type { Invocation } from "../core/invocation.ts";
import type { InvocationStatus } from "../core/status.ts";

/** The statuses of an invocation's history, oldest first. */
export async function statusPath(invocation: Invocation<unknown>): Promise<InvocationStatus[]> {
  return (await invocation.history()).map((entry) => entry.status);
}

/** A pick-up of up to `max` for `runnerId`: the ids claimed, in order. */
export async function claimIds(app: Nenc, max: number, runnerId: string): Promise<string[]> {
  return (await app.orchestrator.getInvocationsToRun(max, { runnerId })).map(({ id }) => id);
}

/** Claims exactly one invocation and checks it is `expected`. */
export async function claimOne(
  app: Nenc,
  runnerId: string,
  expected: { id: string },
): Promise<void> {
  assert.deepEqual(await claimIds(app, 1, runnerId), [expected.id]);
}

/** PENDING (owned by `runnerId`) → RUNNING → SUCCESS. */
export async function runToSuccess(
  app: Nenc,
  invocation: { id: string },
  runnerId: string,
  result: unknown = null,
): Promise<void> {
  await app.orchestrator.setInvocationRun(undefined, invocation, { runnerId });
  await app.orchestrator.setInvocationResult(invocation, result, { runnerId });
}

/**
 * How many windows of `intervalMs` hold more than `limit` of `times` (pick-up times, in any
 * order): a window holds `limit + 1` of them exactly when, sorted, some
 * `times[i + limit] - times[i] < intervalMs` (windows are half-open: a time leaves the window
 * `intervalMs` after it). With `limit - 1` for `limit`, the windows that a rate limit filled.
 */
export function windowsOverLimit(
  times: readonly number[],
  limit: number,
  intervalMs: number,
): number {
  const sorted = [...times].sort((a, b) => a - b);
  let over = 0;
  for (let i = 0; i + limit < sorted.length; i++) {
    if (sorted[i + limit]! - sorted[i]! < intervalMs) over++;
  }
  return over;
}
