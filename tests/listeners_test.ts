import { test } from "node:test";
import assert from "node:assert/strict";
import {
  abortQuietly,
  listen,
  type Listener,
  listenFor,
  notify,
  quietController,
} from "../core/_listeners.ts";

test("listenFor() rejects its waiters with the error notify() passes, and drops the emptied listener set", async () => {
  const index = new Map<string, Set<Listener>>();
  const first = listenFor(index, "a");
  const second = listenFor(index, "a");
  const error = new Error("closed");
  notify(index.get("a"), error);
  await assert.rejects(first, (thrown) => thrown === error);
  await assert.rejects(second, (thrown) => thrown === error);
  assert.equal(index.has("a"), false);
});

test("listenFor() resolves its waiters with the value notify() passes, and with undefined on abort", async () => {
  const index = new Map<string, Set<Listener<string>>>();
  const controller = new AbortController();
  const first = listenFor(index, "a");
  const aborted = listenFor(index, "a", controller.signal);
  controller.abort();
  assert.equal(await aborted, undefined);
  notify(index.get("a"), undefined, "final");
  assert.equal(await first, "final");
  assert.equal(index.has("a"), false);
});

test("listen() resolves on notify() without an error, and on abort; an aborted listener is removed", async () => {
  const listeners = new Set<Listener>();
  const woken = listen(listeners);
  notify(listeners);
  await woken;
  const controller = new AbortController();
  const aborted = listen(listeners, controller.signal);
  controller.abort();
  await aborted;
  assert.equal(listeners.size, 0);
});

test("waits on a quiet controller's signal add no event listener to it; abortQuietly() wakes them, and its other listeners hear the abort", async () => {
  const controller = quietController();
  const signal = controller.signal;
  let added = 0;
  const addEventListener = signal.addEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<AbortSignal["addEventListener"]>): void => {
    added++;
    addEventListener(...args);
  };
  const index = new Map<string, Set<Listener>>();
  const listeners = new Set<Listener>();
  const waits = [
    listenFor(index, "a", signal),
    listenFor(index, "b", signal),
    listen(listeners, signal),
  ];
  assert.equal(added, 0);
  let heard: unknown;
  signal.addEventListener("abort", () => heard = signal.reason, { once: true });
  const reason = new Error("canceled");
  abortQuietly(controller, reason);
  await Promise.all(waits);
  assert.equal(heard, reason);
  assert.equal(signal.reason, reason);
  assert.equal(index.size, 0);
  assert.equal(listeners.size, 0);
  // Once aborted, a wait on it ends at once.
  await listenFor(index, "c", signal);
  assert.equal(index.size, 0);
});
