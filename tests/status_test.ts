import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ALL_STATUSES,
  allowedTransitions,
  AVAILABLE_FOR_RUN_STATUSES,
  FINAL_STATUSES,
  type HistoryEntry,
  InvocationStatus,
  isFinalStatus,
  isInvocationStatus,
  isValidHistory,
  type StatusRecord,
  transition,
} from "../core/status.ts";
import {
  InvocationStatusOwnershipError,
  InvocationStatusTransitionError,
  NencError,
} from "../core/errors.ts";

// SPEC §3 with §7.1's CANCELED, transcribed independently of core/status.ts.
const SPEC_TABLE = `
registered: pending concurrency_controlled concurrency_controlled_final canceled
concurrency_controlled: rerouted canceled
rerouted: pending concurrency_controlled concurrency_controlled_final canceled
retry: pending concurrency_controlled concurrency_controlled_final canceled
pending: running killed rerouted pending_recovery failed canceled
running: paused killed retry success failed running_recovery canceled
paused: resumed killed running_recovery canceled
resumed: paused killed retry success failed running_recovery canceled
killed: rerouted canceled
pending_recovery: rerouted canceled
running_recovery: rerouted canceled
success:
failed:
concurrency_controlled_final:
canceled:
`;
const specNext = new Map(
  SPEC_TABLE.trim().split("\n").map((line) => {
    const [from, to = ""] = line.split(":");
    return [from!, new Set(to.trim().split(/\s+/).filter(Boolean))];
  }),
);

const record = (status: InvocationStatus, ownerId: string | null = null): StatusRecord => ({
  status,
  ownerId,
  seq: 5,
  updatedAtMs: 0,
});

test("the status table has the fifteen statuses of SPEC §3 and §7.1 with lowercase values", () => {
  assert.equal(ALL_STATUSES.length, 15);
  assert.deepEqual(new Set(ALL_STATUSES), new Set(specNext.keys()));
  for (const [name, value] of Object.entries(InvocationStatus)) {
    assert.equal(value, name.toLowerCase());
  }
});

test("transition() allows exactly the pairs of the SPEC §3 / §7.1 table and throws for every other", () => {
  let allowed = 0;
  for (const from of ALL_STATUSES) {
    for (const to of ALL_STATUSES) {
      const owner = "r1";
      const run = () => transition(record(from, owner), to, { runnerId: owner, nowMs: 1 });
      if (specNext.get(from)!.has(to)) {
        assert.equal(run().record.status, to, `${from} → ${to}`);
        allowed++;
      } else {
        assert.throws(run, InvocationStatusTransitionError, `${from} → ${to}`);
      }
    }
  }
  assert.equal(allowed, 44);
});

test("a new invocation can only become REGISTERED, unowned, with sequence 1", () => {
  const { record: registered, entry } = transition(undefined, "registered", {
    runnerId: null,
    nowMs: 42,
  });
  assert.deepEqual(registered, { status: "registered", ownerId: null, seq: 1, updatedAtMs: 42 });
  assert.deepEqual(entry, { status: "registered", runnerId: null, timestampMs: 42, seq: 1 });
  for (const status of ALL_STATUSES.filter((s) => s !== "registered")) {
    assert.throws(
      () => transition(undefined, status, { runnerId: null, nowMs: 0 }),
      (error: unknown) =>
        error instanceof InvocationStatusTransitionError && error.from === undefined &&
        error.to === status,
    );
  }
});

test("final statuses are final: no transition leaves SUCCESS, FAILED, CONCURRENCY_CONTROLLED_FINAL or CANCELED", () => {
  assert.deepEqual(
    [...FINAL_STATUSES].sort(),
    ["canceled", "concurrency_controlled_final", "failed", "success"],
  );
  for (const status of FINAL_STATUSES) {
    assert.equal(isFinalStatus(status), true);
    assert.deepEqual(allowedTransitions(status), []);
  }
  assert.equal(isFinalStatus("paused"), false);
  assert.deepEqual([...AVAILABLE_FOR_RUN_STATUSES].sort(), ["registered", "rerouted", "retry"]);
});

test("PENDING is owned by the runner that sets it, and only that runner may run it", () => {
  const pending = transition(record("registered"), "pending", { runnerId: "r1", nowMs: 1 }).record;
  assert.equal(pending.ownerId, "r1");
  assert.throws(
    () => transition(pending, "running", { runnerId: "r2", nowMs: 2, invocationId: "inv" }),
    (error: unknown) =>
      error instanceof InvocationStatusOwnershipError && error.ownerId === "r1" &&
      error.runnerId === "r2" && error.invocationId === "inv" && error instanceof NencError,
  );
  const running = transition(pending, "running", { runnerId: "r1", nowMs: 2 }).record;
  assert.equal(running.ownerId, "r1");
  const paused = transition(running, "paused", { runnerId: "r1", nowMs: 3 }).record;
  assert.equal(paused.ownerId, "r1");
  assert.throws(
    () => transition(paused, "resumed", { runnerId: null, nowMs: 4 }),
    InvocationStatusOwnershipError,
  );
});

test("entering PENDING without a runner id is refused: ownership needs an owner", () => {
  assert.throws(
    () =>
      transition(record("registered"), "pending", { runnerId: null, nowMs: 1, invocationId: "i" }),
    (error: unknown) =>
      error instanceof InvocationStatusOwnershipError && error.runnerId === null &&
      error.to === "pending" && error.invocationId === "i",
  );
});

test("anyone cancels any non-final invocation; a running one keeps its owner (the runner still executing it)", () => {
  const running = record("running", "r1");
  const canceled = transition(running, "canceled", { runnerId: null, nowMs: 1 }).record;
  assert.equal(canceled.status, "canceled");
  assert.equal(canceled.ownerId, "r1");
  const queued = transition(record("registered"), "canceled", { runnerId: "ops", nowMs: 1 });
  assert.equal(queued.record.ownerId, null);
  assert.equal(queued.entry.runnerId, "ops");
});

test("recovery statuses override ownership and leave the invocation unowned", () => {
  const pending = record("pending", "dead");
  const recovered = transition(pending, "pending_recovery", { runnerId: "r2", nowMs: 1 }).record;
  assert.equal(recovered.ownerId, null);
  const running = record("running", "dead");
  const runningRecovered = transition(running, "running_recovery", { runnerId: "r2", nowMs: 1 });
  assert.equal(runningRecovered.record.ownerId, null);
  const rerouted = transition(runningRecovered.record, "rerouted", { runnerId: "r3", nowMs: 2 });
  assert.equal(rerouted.record.status, "rerouted");
});

test("KILLED is set only by the owner, then any runner may re-route it", () => {
  const running = record("running", "r1");
  assert.throws(
    () => transition(running, "killed", { runnerId: "r2", nowMs: 1 }),
    InvocationStatusOwnershipError,
  );
  const killed = transition(running, "killed", { runnerId: "r1", nowMs: 1 }).record;
  assert.equal(killed.ownerId, null);
  assert.equal(transition(killed, "rerouted", { runnerId: "r2", nowMs: 2 }).record.ownerId, null);
});

test("finishing releases ownership and the sequence grows by one per transition", () => {
  const running = record("running", "r1");
  const { record: done, entry } = transition(running, "success", { runnerId: "r1", nowMs: 9 });
  assert.deepEqual(done, { status: "success", ownerId: null, seq: 6, updatedAtMs: 9 });
  assert.deepEqual(entry, { status: "success", runnerId: "r1", timestampMs: 9, seq: 6 });
});

test("isValidHistory() accepts a recorded path and rejects gaps, bad steps and bad sequences", () => {
  const path: InvocationStatus[] = [
    "registered",
    "pending",
    "running",
    "paused",
    "resumed",
    "success",
  ];
  const history: HistoryEntry[] = path.map((status, i) => ({
    status,
    runnerId: "r1",
    timestampMs: i,
    seq: i + 1,
  }));
  assert.equal(isValidHistory(history), true);
  assert.equal(isValidHistory([]), false);
  // A gap (pending → paused) with the sequence renumbered, so that only the step is wrong.
  const gap = history.filter((entry) => entry.status !== "running")
    .map((entry, i) => ({ ...entry, seq: i + 1 }));
  assert.equal(isValidHistory(gap), false);
  assert.equal(isValidHistory(history.map((entry) => ({ ...entry, seq: entry.seq * 2 }))), false);
  assert.equal(isValidHistory(history.slice(1).map((e, i) => ({ ...e, seq: i + 1 }))), false);
});

test("isInvocationStatus() accepts only the lowercase status values", () => {
  assert.equal(isInvocationStatus("running"), true);
  assert.equal(isInvocationStatus("RUNNING"), false);
  assert.equal(isInvocationStatus("toString"), false);
  assert.equal(isInvocationStatus(3), false);
});
