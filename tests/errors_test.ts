import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BatchProcessingError,
  CanceledError,
  ConcurrencyControlledError,
  CycleDetectedError,
  InvocationConcurrencyWithDifferentArgumentsError,
  InvocationStatusOwnershipError,
  InvocationStatusTransitionError,
  NencError,
  RetryError,
  SerializationError,
  StoreClosedError,
  TaskNotFoundError,
  TaskTimeoutError,
} from "../core/errors.ts";

test("every nenc error sets its name, extends NencError and chains its cause", () => {
  const cause = new Error("root");
  const errors: [Error, string][] = [
    [new NencError("Cannot x: y", { cause }), "NencError"],
    [new CycleDetectedError(["a"], ["a()"], { cause }), "CycleDetectedError"],
    [
      new InvocationConcurrencyWithDifferentArgumentsError("t", "i", {}, { cause }),
      "InvocationConcurrencyWithDifferentArgumentsError",
    ],
    [new BatchProcessingError("Cannot x: y", { cause }), "BatchProcessingError"],
    [
      new InvocationStatusTransitionError("success", "running", "i", { cause }),
      "InvocationStatusTransitionError",
    ],
    [
      new InvocationStatusOwnershipError("pending", "running", "r1", "r2", "i", { cause }),
      "InvocationStatusOwnershipError",
    ],
    [new ConcurrencyControlledError("t", "i", { cause }), "ConcurrencyControlledError"],
    [new RetryError("Cannot x: y", { cause }), "RetryError"],
    [new TaskNotFoundError("t", { cause }), "TaskNotFoundError"],
    [new SerializationError("Cannot x: y", { cause, path: "args.x" }), "SerializationError"],
    [new CanceledError("i", "the customer left", { cause }), "CanceledError"],
    [new TaskTimeoutError("t", "i", 5_000, { cause }), "TaskTimeoutError"],
    [new StoreClosedError("Cannot x: y", { cause }), "StoreClosedError"],
  ];
  for (const [error, name] of errors) {
    assert.equal(error.name, name);
    assert.ok(error instanceof NencError, name);
    assert.ok(error instanceof Error, name);
    assert.equal(error.cause, cause, name);
    assert.match(error.message, /^(Cannot|A cycle was detected)/, name);
  }
});

test("CycleDetectedError keeps its data frozen and refuses mismatched labels", () => {
  const error = new CycleDetectedError(["a", "b"], ["a()", "b()"]);
  assert.ok(Object.isFrozen(error.callIds));
  assert.ok(Object.isFrozen(error.labels));
  assert.deepEqual(new CycleDetectedError(["a"]).labels, ["a"]);
  assert.throws(() => new CycleDetectedError(["a", "b"], ["a()"]), RangeError);
  assert.throws(() => new CycleDetectedError([]), RangeError);
});

test("the errors carry their data as fields", () => {
  const diff = { body: { existing: '"hi"', requested: '"hello"' } };
  const concurrency = new InvocationConcurrencyWithDifferentArgumentsError("send", "inv1", diff);
  assert.equal(concurrency.taskId, "send");
  assert.equal(concurrency.existingInvocationId, "inv1");
  assert.deepEqual(concurrency.diff, diff);
  assert.match(concurrency.message, /\(body\)$/);

  const ownership = new InvocationStatusOwnershipError("running", "paused", "r1", null);
  assert.equal(ownership.runnerId, null);
  assert.match(ownership.message, /owned by runner r1, not by a caller without a runner/);

  const transition = new InvocationStatusTransitionError(undefined, "pending");
  assert.equal(transition.from, undefined);
  assert.match(transition.message, /\(new\) → pending is not allowed/);

  assert.equal(new TaskNotFoundError("resize").taskId, "resize");
  assert.equal(new SerializationError("Cannot x: y").path, undefined);
  const controlled = new ConcurrencyControlledError("sync", "inv2");
  assert.deepEqual([controlled.taskId, controlled.invocationId], ["sync", "inv2"]);
});
