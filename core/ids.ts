/**
 * Identity: ULID invocation ids, canonical JSON and call ids (SPEC §4.1). Equal arguments give
 * equal call ids in any process and on any runtime (Deno, Bun, Node).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { decodeTime, monotonicFactory } from "ulid";

/**
 * The separator between a task id and the argument hash in a call id; a task id may not contain
 * it.
 *
 * @example Splitting a call id
 * ```ts
 * import { callId } from "@nenc/nenc";
 * import { KEY_SEPARATOR, serializeArguments } from "@nenc/nenc/core";
 *
 * const id = callId("add", serializeArguments({ x: 1, y: 2 }));
 * const [taskId, hash] = id.split(KEY_SEPARATOR);
 * console.log(taskId, hash?.length); // "add" 64
 * ```
 */
export const KEY_SEPARATOR = "#";

const nextUlid = monotonicFactory();

/**
 * A new invocation id: a ULID, so ids sort by creation time. Monotonic within a process, even
 * when `nowMs` repeats or goes back.
 *
 * @example
 * ```ts
 * import { newInvocationId } from "@nenc/nenc";
 *
 * const first = newInvocationId(1_700_000_000_000);
 * const second = newInvocationId(1_700_000_000_000);
 * console.log(first < second); // true
 * ```
 */
export function newInvocationId(nowMs: number = Date.now()): string {
  return nextUlid(nowMs);
}

/**
 * The creation time encoded in an invocation id, in epoch milliseconds.
 *
 * @example
 * ```ts
 * import { invocationIdTime, newInvocationId } from "@nenc/nenc";
 *
 * console.log(invocationIdTime(newInvocationId(1_700_000_000_000))); // 1700000000000
 * ```
 */
export function invocationIdTime(invocationId: string): number {
  return decodeTime(invocationId);
}

/**
 * Canonical JSON: object keys sorted by UTF-16 code units, numbers in ECMAScript's shortest
 * round-trip form, no whitespace (the RFC 8785 shape). Only plain JSON data is accepted:
 * `null`, booleans, finite numbers, strings, arrays and plain objects. Object properties whose
 * value is `undefined` are left out, as `JSON.stringify` does.
 *
 * @throws {TypeError} naming the path of the first value that is not plain JSON (a function,
 * `NaN`, a `Date`, a `Map`, a circular reference, …).
 *
 * @example
 * ```ts
 * import { canonicalJson } from "@nenc/nenc";
 *
 * console.log(canonicalJson({ b: [1, 2.5], a: "x" })); // {"a":"x","b":[1,2.5]}
 * ```
 */
export function canonicalJson(value: unknown, path = "value"): string {
  return write(value, path, []);
}

function write(value: unknown, path: string, ancestors: object[]): string {
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "number":
      if (!Number.isFinite(value)) throw notJson(path, `${value} is not a finite number`);
      return JSON.stringify(value);
    case "object": {
      if (value === null) return "null";
      if (ancestors.includes(value)) throw notJson(path, "it is a circular reference");
      ancestors.push(value);
      let text: string;
      if (Array.isArray(value)) {
        const items: string[] = [];
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === undefined) throw notJson(`${path}[${i}]`, "undefined is not JSON");
          items.push(write(item, `${path}[${i}]`, ancestors));
        }
        text = `[${items.join(",")}]`;
      } else {
        const prototype = Object.getPrototypeOf(value);
        if (prototype !== Object.prototype && prototype !== null) {
          throw notJson(path, `${value.constructor?.name ?? "this object"} is not a plain object`);
        }
        const record = value as Record<string, unknown>;
        const members: string[] = [];
        for (const key of Object.keys(record).sort()) {
          const member = record[key];
          if (member === undefined) continue;
          members.push(`${JSON.stringify(key)}:${write(member, memberPath(path, key), ancestors)}`);
        }
        text = `{${members.join(",")}}`;
      }
      ancestors.pop();
      return text;
    }
    default:
      throw notJson(
        path,
        `${typeof value === "undefined" ? "undefined" : `a ${typeof value}`} is not JSON`,
      );
  }
}

function memberPath(path: string, key: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

function notJson(path: string, reason: string): TypeError {
  return new TypeError(`Cannot serialize ${path}: ${reason}`);
}

/**
 * Arguments serialized one by one with {@linkcode canonicalJson}, keys in sorted order.
 *
 * @example
 * ```ts
 * import { callLabel, type SerializedArguments } from "@nenc/nenc";
 * import { serializeArguments } from "@nenc/nenc/core";
 *
 * const args: SerializedArguments = serializeArguments({ tags: ["b", "a"], n: 3 });
 * console.log(args); // { n: "3", tags: '["b","a"]' }
 * console.log(callLabel("fib", args)); // fib({"n":3,"tags":["b","a"]})
 * ```
 */
export type SerializedArguments = Readonly<Record<string, string>>;

/**
 * Serializes each argument with {@linkcode canonicalJson}; arguments whose value is `undefined`
 * are left out. `args` itself must be a plain object (or `undefined`: no arguments).
 *
 * @throws {TypeError} naming the argument that is not plain JSON.
 *
 * @example
 * ```ts
 * import { serializeArguments } from "@nenc/nenc/core";
 *
 * console.log(serializeArguments({ y: { b: 1, a: 2 }, x: 1 })); // { x: "1", y: '{"a":2,"b":1}' }
 * ```
 */
export function serializeArguments(args: unknown): SerializedArguments {
  if (args === undefined) return {};
  if (typeof args !== "object" || args === null || Array.isArray(args)) {
    throw new TypeError(
      `Cannot serialize args: expected a plain object of named arguments, got ${
        args === null ? "null" : Array.isArray(args) ? "an array" : `a ${typeof args}`
      }`,
    );
  }
  const prototype = Object.getPrototypeOf(args);
  if (prototype !== Object.prototype && prototype !== null) {
    throw new TypeError(
      `Cannot serialize args: ${args.constructor?.name ?? "this object"} is not a plain object`,
    );
  }
  const record = args as Record<string, unknown>;
  const serialized: Record<string, string> = {};
  for (const name of Object.keys(record).sort()) {
    const value = record[name];
    if (value !== undefined) serialized[name] = canonicalJson(value, memberPath("args", name));
  }
  return serialized;
}

/**
 * Checks that `taskId` can name a task: a non-empty string without
 * {@linkcode KEY_SEPARATOR}.
 *
 * @throws {TypeError} when it cannot.
 *
 * @example
 * ```ts
 * import { assertTaskId } from "@nenc/nenc/core";
 *
 * assertTaskId("emails.send"); // fine
 * ```
 */
export function assertTaskId(taskId: string): void {
  if (typeof taskId !== "string" || taskId.length === 0) {
    throw new TypeError("Cannot use the task id: it must be a non-empty string");
  }
  if (taskId.includes(KEY_SEPARATOR)) {
    throw new TypeError(
      `Cannot use the task id ${
        JSON.stringify(taskId)
      }: it contains the key separator "${KEY_SEPARATOR}"`,
    );
  }
}

/**
 * The call id of `taskId` with these serialized arguments: the task id, the separator, and the
 * hex SHA-256 of the canonical JSON of the arguments.
 *
 * @example
 * ```ts
 * import { callId } from "@nenc/nenc";
 * import { serializeArguments } from "@nenc/nenc/core";
 *
 * const a = callId("add", serializeArguments({ x: 1, y: 2 }));
 * const b = callId("add", serializeArguments({ y: 2, x: 1 }));
 * console.log(a === b, a.startsWith("add#")); // true true
 * ```
 */
export function callId(taskId: string, args: SerializedArguments): string {
  assertTaskId(taskId);
  const hash = createHash("sha256").update(serializedArgumentsJson(args)).digest("hex");
  return `${taskId}${KEY_SEPARATOR}${hash}`;
}

/**
 * How a call is rendered in messages: `task(canonical JSON of the arguments)`.
 *
 * @example
 * ```ts
 * import { callLabel } from "@nenc/nenc";
 * import { serializeArguments } from "@nenc/nenc/core";
 *
 * console.log(callLabel("fib", serializeArguments({ n: 3 }))); // fib({"n":3})
 * ```
 */
export function callLabel(taskId: string, args: SerializedArguments): string {
  return `${taskId}(${serializedArgumentsJson(args)})`;
}

// The serialized values are already canonical JSON, so the arguments object is rebuilt from them
// in sorted key order without parsing anything.
function serializedArgumentsJson(args: SerializedArguments): string {
  const members = Object.keys(args).sort().map((name) => `${JSON.stringify(name)}:${args[name]}`);
  return `{${members.join(",")}}`;
}
