/**
 * Results and errors as stored data. Results are canonical JSON; errors keep their `name`,
 * `message`, `stack`, data fields and `cause` chain, and come back as the same class when the
 * class is registered with the app. Nothing read back is ever evaluated as code: a class is only
 * looked up by name in the registry.
 *
 * @module
 */

import * as errors from "./errors.ts";
import { canonicalJson } from "./ids.ts";
import type { SerializedError } from "./store.ts";

/**
 * A class of errors that can be rehydrated: any `Error` subclass. A stored error is matched to a
 * class by its class name (`constructor.name`), then by its `name`.
 *
 * @example An app's own error comes back as its class
 * ```ts
 * import { type ErrorClass, Nenc } from "@nenc/nenc";
 *
 * class PaymentDeclined extends Error {
 *   override name = "PaymentDeclined";
 * }
 * const errorClasses: ErrorClass[] = [PaymentDeclined];
 * const app = new Nenc({ errorClasses });
 * const pay = app.task("pay", (): number => {
 *   throw new PaymentDeclined("Cannot pay: the card was declined");
 * });
 * const invocation = await pay.call();
 * await app.runner().drain();
 * console.log(await invocation.result().catch((error: unknown) => error instanceof PaymentDeclined)); // true
 * ```
 */
export type ErrorClass = abstract new (...args: never[]) => Error;

/**
 * The error classes every app rehydrates: the built-in ones and nenc's own.
 *
 * @example
 * ```ts
 * import { DEFAULT_ERROR_CLASSES } from "@nenc/nenc";
 *
 * const names = DEFAULT_ERROR_CLASSES.map((errorClass) => errorClass.name);
 * console.log(names.includes("TypeError"), names.includes("CycleDetectedError")); // true true
 * ```
 */
export const DEFAULT_ERROR_CLASSES: readonly ErrorClass[] = [
  Error,
  TypeError,
  RangeError,
  SyntaxError,
  ReferenceError,
  EvalError,
  URIError,
  AggregateError,
  ...Object.values(errors),
];

const MAX_CAUSE_DEPTH = 16;

/**
 * Serializes a thrown value: an `Error` with its name, message, stack, own data fields (those
 * that are plain JSON) and cause chain; anything else as an `Error` whose message is its text.
 *
 * @example
 * ```ts
 * import { serializeError } from "@nenc/nenc/core";
 *
 * const stored = serializeError(new RangeError("Cannot go: too far", { cause: "gps" }));
 * console.log(stored.name, stored.cause); // "RangeError" { value: '"gps"' }
 * ```
 */
export function serializeError(thrown: unknown): SerializedError {
  return serializeErrorAt(thrown, 0);
}

function serializeErrorAt(thrown: unknown, depth: number): SerializedError {
  if (!(thrown instanceof Error)) {
    return { name: "Error", message: describe(thrown), data: {} };
  }
  const data: Record<string, string> = {};
  for (const [field, value] of Object.entries(thrown)) {
    if (field === "name" || field === "message" || field === "stack" || field === "cause") continue;
    try {
      data[field] = canonicalJson(value);
    } catch {
      // A data field that is not plain JSON (a socket, a function) is left out of the record.
    }
  }
  const serialized: {
    name: string;
    className?: string;
    message: string;
    data: Record<string, string>;
    stack?: string;
    cause?: SerializedError | { value: string };
  } = { name: thrown.name, message: thrown.message, data };
  const className = thrown.constructor?.name;
  if (typeof className === "string" && className !== "" && className !== thrown.name) {
    serialized.className = className;
  }
  if (typeof thrown.stack === "string") serialized.stack = thrown.stack;
  if ("cause" in thrown && thrown.cause !== undefined && depth < MAX_CAUSE_DEPTH) {
    serialized.cause = thrown.cause instanceof Error
      ? serializeErrorAt(thrown.cause, depth + 1)
      : { value: jsonOrText(thrown.cause) };
  }
  return serialized;
}

/**
 * Rebuilds an error from its stored form: the registered class of the same class name or name
 * (else `Error`), with the same name, message, stack, data fields and cause chain. The class's constructor is
 * not called.
 *
 * @example
 * ```ts
 * import { CycleDetectedError } from "@nenc/nenc";
 * import { deserializeError, serializeError } from "@nenc/nenc/core";
 *
 * const error = deserializeError(serializeError(new CycleDetectedError(["a#1"], ["a()"])));
 * console.log(error instanceof CycleDetectedError, (error as CycleDetectedError).callIds); // true ["a#1"]
 * ```
 */
export function deserializeError(
  stored: SerializedError,
  classes: ReadonlyMap<string, ErrorClass> = DEFAULT_ERROR_CLASS_MAP,
): Error {
  // By class name first: `class PaymentDeclined extends Error {}` keeps the name "Error". Only
  // when it is at least as specific as the class of the name: an `Error` named "PaymentDeclined"
  // (set by hand, or relayed through a process without the class) stays a PaymentDeclined.
  const byClassName = stored.className === undefined ? undefined : classes.get(stored.className);
  const byName = classes.get(stored.name);
  const errorClass = byClassName !== undefined &&
      (byName === undefined || byClassName === byName || byClassName.prototype instanceof byName)
    ? byClassName
    : byName ?? Error;
  const prototype = errorClass.prototype;
  const error = Object.create(prototype) as Error;
  const hidden = (field: string, value: unknown): void => {
    Object.defineProperty(error, field, { value, writable: true, configurable: true });
  };
  hidden("message", stored.message);
  hidden("name", stored.name);
  if (stored.stack !== undefined) hidden("stack", stored.stack);
  for (const [field, json] of Object.entries(stored.data)) {
    Object.defineProperty(error, field, {
      value: deepFreeze(JSON.parse(json)),
      enumerable: true,
      configurable: true,
    });
  }
  if (stored.cause !== undefined) {
    hidden(
      "cause",
      "value" in stored.cause
        ? JSON.parse(stored.cause.value)
        : deserializeError(stored.cause, classes),
    );
  }
  return error;
}

/**
 * Maps class names to classes, for {@linkcode deserializeError}.
 *
 * @example
 * ```ts
 * import { DEFAULT_ERROR_CLASSES } from "@nenc/nenc";
 * import { deserializeError, errorClassMap, serializeError } from "@nenc/nenc/core";
 *
 * class PaymentDeclined extends Error {
 *   override name = "PaymentDeclined";
 * }
 * const classes = errorClassMap([...DEFAULT_ERROR_CLASSES, PaymentDeclined]);
 * const error = deserializeError(serializeError(new PaymentDeclined("Cannot pay")), classes);
 * console.log(error instanceof PaymentDeclined, error.message); // true "Cannot pay"
 * ```
 */
export function errorClassMap(classes: readonly ErrorClass[]): Map<string, ErrorClass> {
  return new Map(classes.map((errorClass) => [errorClass.name, errorClass]));
}

const DEFAULT_ERROR_CLASS_MAP = errorClassMap(DEFAULT_ERROR_CLASSES);

function describe(thrown: unknown): string {
  if (typeof thrown === "string") return thrown;
  return `A non-error value was thrown: ${jsonOrText(thrown)}`;
}

function jsonOrText(value: unknown): string {
  try {
    return canonicalJson(value);
  } catch {
    return JSON.stringify(String(value));
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const member of Object.values(value)) deepFreeze(member);
    Object.freeze(value);
  }
  return value;
}
