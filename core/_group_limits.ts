/**
 * The error of `Store.defineGroups()` for a concurrency group stored with another limit: a
 * `TypeError` (the process's definition is wrong), told apart from a network `TypeError` (a store
 * fault, tried again) by this module alone. Private to the core and the backends.
 *
 * @module
 */

const mismatches = new WeakSet<TypeError>();

/** The error for group `name`, stored with limit `stored`, defined here with `defined`. */
export function groupLimitMismatch(name: string, stored: number, defined: number): TypeError {
  const error = new TypeError(
    `Cannot start a runner: concurrency group ${name} has limit ${stored} in the store, not ${defined} as defined here`,
  );
  mismatches.add(error);
  return error;
}

/** Whether `error` came from {@linkcode groupLimitMismatch}. */
export function isGroupLimitMismatch(error: unknown): error is TypeError {
  return error instanceof TypeError && mismatches.has(error);
}
