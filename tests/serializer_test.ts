import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DEFAULT_ERROR_CLASSES,
  deserializeError,
  errorClassMap,
  serializeError,
} from "../core/serializer.ts";

class PaymentDeclined extends Error {
  override name = "PaymentDeclined";
}
class Declined extends Error {}
class HttpError extends TypeError {}

const registered = errorClassMap([...DEFAULT_ERROR_CLASSES, PaymentDeclined, Declined, HttpError]);
const bare = errorClassMap(DEFAULT_ERROR_CLASSES);

test("an Error named after a registered class still comes back as that class (the class name Error does not outrank it)", () => {
  const error = new Error("Cannot pay: declined");
  error.name = "PaymentDeclined";
  const back = deserializeError(serializeError(error), registered);
  assert.ok(back instanceof PaymentDeclined, `got ${Object.getPrototypeOf(back).constructor.name}`);
});

test("an error relayed through a process that lacks its class comes back as its class where it is registered", () => {
  // A parent task in a process without PaymentDeclined rethrows its child's error: there it is
  // an Error named "PaymentDeclined", and its record is written again from that.
  const relayed = deserializeError(serializeError(new PaymentDeclined("Cannot pay")), bare);
  const back = deserializeError(serializeError(relayed), registered);
  assert.ok(back instanceof PaymentDeclined, `got ${Object.getPrototypeOf(back).constructor.name}`);
  assert.equal(back.name, "PaymentDeclined");
});

test("class names still win where they are more specific than the name", () => {
  assert.ok(deserializeError(serializeError(new Declined("x")), registered) instanceof Declined);
  const http = deserializeError(serializeError(new HttpError("x")), registered);
  assert.ok(http instanceof HttpError);
  assert.equal(http.name, "TypeError");
  // Unregistered: by name, as before.
  assert.ok(deserializeError(serializeError(new HttpError("x")), bare) instanceof TypeError);
});
