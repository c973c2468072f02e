import { test } from "node:test";
import assert from "node:assert/strict";
import { listen, type Listener, listenFor, notify } from "../core/_listeners.ts";

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
