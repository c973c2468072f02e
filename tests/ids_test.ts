import { test } from "node:test";
import assert from "node:assert/strict";
import {
  assertTaskId,
  callId,
  callLabel,
  canonicalJson,
  invocationIdTime,
  KEY_SEPARATOR,
  newInvocationId,
  serializeArguments,
} from "../core/ids.ts";

test("canonicalJson() sorts object keys at every depth and writes no whitespace", () => {
  assert.equal(
    canonicalJson({ b: { d: [3, { z: 1, y: 2 }], c: null }, a: "x" }),
    '{"a":"x","b":{"c":null,"d":[3,{"y":2,"z":1}]}}',
  );
  // UTF-16 code unit order, also for integer-like keys that JavaScript itself iterates first.
  assert.equal(
    canonicalJson({ "é": 1, "e": 2, "Z": 3, "10": 4, "9": 5 }),
    '{"10":4,"9":5,"Z":3,"e":2,"é":1}',
  );
});

test("canonicalJson() writes numbers in their shortest round-trip form", () => {
  assert.equal(
    canonicalJson([1.0, -0, 1e21, 0.1 + 0.2, 5e-7, 2 ** 53]),
    "[1,0,1e+21,0.30000000000000004,5e-7,9007199254740992]",
  );
});

test("canonicalJson() leaves out undefined object members, as JSON does", () => {
  assert.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
});

test("canonicalJson() rejects values that are not plain JSON, naming the path", () => {
  const circular: Record<string, unknown> = {};
  circular.self = circular;
  const cases: [unknown, RegExp][] = [
    [{ a: [1, Number.NaN] }, /value\.a\[1\]: NaN is not a finite number/],
    [{ a: Infinity }, /value\.a: Infinity/],
    [[1, undefined], /value\[1\]: undefined is not JSON/],
    [{ f: () => 1 }, /value\.f: a function is not JSON/],
    [{ n: 1n }, /value\.n: a bigint is not JSON/],
    [{ s: Symbol("s") }, /value\.s: a symbol is not JSON/],
    [{ when: new Date(0) }, /value\.when: Date is not a plain object/],
    [{ "a b": new Map() }, /value\["a b"\]: Map is not a plain object/],
    [circular, /value\.self: it is a circular reference/],
    [undefined, /value: undefined is not JSON/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => canonicalJson(value), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /^Cannot serialize /);
      assert.match(error.message, message);
      return true;
    });
  }
});

test("canonicalJson() accepts a shared, non-circular sub-object twice", () => {
  const shared = { x: 1 };
  assert.equal(canonicalJson({ a: shared, b: shared }), '{"a":{"x":1},"b":{"x":1}}');
  assert.equal(canonicalJson(Object.assign(Object.create(null), { k: true })), '{"k":true}');
});

test("serializeArguments() serializes each argument canonically and drops undefined ones", () => {
  assert.deepEqual(serializeArguments({ y: { b: 1, a: 2 }, x: 1, z: undefined }), {
    x: "1",
    y: '{"a":2,"b":1}',
  });
  assert.deepEqual(serializeArguments(undefined), {});
  assert.deepEqual(Object.keys(serializeArguments({ b: 1, a: 1 })), ["a", "b"]);
});

test("serializeArguments() rejects non-object arguments and names a bad argument", () => {
  assert.throws(
    () => serializeArguments([1]),
    /Cannot serialize args: expected a plain object of named arguments, got an array/,
  );
  assert.throws(() => serializeArguments(3), /got a number/);
  assert.throws(() => serializeArguments(null), /got null/);
  assert.throws(() => serializeArguments(new Date()), /Date is not a plain object/);
  assert.throws(() => serializeArguments({ at: new Date() }), /Cannot serialize args\.at: Date/);
});

test("callId() is equal for equal arguments in any key order and differs otherwise", () => {
  const a = callId("add", serializeArguments({ x: 1, y: { p: [1, 2], q: "s" } }));
  const b = callId("add", serializeArguments({ y: { q: "s", p: [1, 2] }, x: 1 }));
  assert.equal(a, b);
  assert.match(a, new RegExp(`^add${KEY_SEPARATOR}[0-9a-f]{64}$`));
  assert.notEqual(a, callId("add", serializeArguments({ x: 1, y: { p: [2, 1], q: "s" } })));
  assert.notEqual(a, callId("sum", serializeArguments({ x: 1, y: { p: [1, 2], q: "s" } })));
  // A string "1" and a number 1 are different arguments.
  assert.notEqual(
    callId("t", serializeArguments({ x: 1 })),
    callId("t", serializeArguments({ x: "1" })),
  );
});

test("callId() hashes the canonical JSON of the arguments with SHA-256, the same on every runtime", async () => {
  // Golden value: sha256 of '{"n":3}' (computed with sha256sum), and Web Crypto as a second implementation.
  const golden = "215ddd5567ca2590efd4ea109b4e56cbe591e2676fbf54a9262692c539166da6";
  assert.equal(callId("fib", serializeArguments({ n: 3 })), `fib#${golden}`);
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode('{"a":[1,"x"],"b":{"c":null}}'),
  );
  const hex = [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join(
    "",
  );
  assert.equal(callId("t", serializeArguments({ b: { c: null }, a: [1, "x"] })), `t#${hex}`);
});

test("callLabel() renders the task and its canonical arguments", () => {
  assert.equal(callLabel("fib", serializeArguments({ n: 3 })), 'fib({"n":3})');
  assert.equal(callLabel("now", serializeArguments(undefined)), "now({})");
});

test("assertTaskId() rejects empty ids and ids containing the key separator", () => {
  assertTaskId("emails.send");
  assert.throws(() => assertTaskId(""), TypeError);
  assert.throws(() => assertTaskId("a#b"), /contains the key separator "#"/);
  assert.throws(() => callId("a#b", {}), TypeError);
});

test("newInvocationId() is a ULID, monotonic within a process even when time repeats or goes back", () => {
  // Times ahead of any id this process made before (test files may share one process).
  const base = Date.now() + 1_000_000;
  const ids = [
    newInvocationId(base + 2_000),
    newInvocationId(base + 2_000),
    newInvocationId(base + 1_000),
    newInvocationId(base + 3_000),
  ];
  for (const id of ids) assert.match(id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.deepEqual([...ids].sort(), ids);
  assert.equal(new Set(ids).size, ids.length);
  assert.equal(invocationIdTime(ids[0]!), base + 2_000);
  assert.equal(invocationIdTime(ids[2]!), base + 2_000, "time going back keeps the last time");
  assert.equal(invocationIdTime(ids[3]!), base + 3_000);
});
