/**
 * Validation of the options of one call (`CallOptions` of `task.ts`), used by
 * `Orchestrator.routeCall`, and by the batch paths (`parallelize`, `routeCalls`) that refuse
 * idempotency keys. Private to `core/`.
 *
 * @module
 */

/** The default time to live of an idempotency key: 24 h. */
export const DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3_600_000;

const CALL_OPTION_NAMES: ReadonlySet<string> = new Set([
  "idempotencyKey",
  "idempotencyTtlMs",
  "delayMs",
  "runAt",
  "priority",
]);

/**
 * Priorities are integers from `-PRIORITY_LIMIT` to `PRIORITY_LIMIT`: the memory queue orders by
 * one number, the time less the priority times 2^42 ms (about 139 years), and a priority this
 * bounded keeps that number exact.
 */
export const PRIORITY_LIMIT = 1_000;

/**
 * Checks a priority (of a call, or a task's default) for the message "Cannot `what`: ...": an
 * integer within ±{@linkcode PRIORITY_LIMIT}.
 *
 * @throws {TypeError} for a value that is not an integer; {RangeError} for one out of range.
 */
export function checkPriority(value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(`Cannot ${what}: priority must be an integer, got ${String(value)}`);
  }
  if (Math.abs(value) > PRIORITY_LIMIT) {
    throw new RangeError(
      `Cannot ${what}: priority must be from -${PRIORITY_LIMIT} to ${PRIORITY_LIMIT}, got ${value}`,
    );
  }
  return value;
}

/** Call options checked and with defaults filled in. */
export interface ResolvedCallOptions {
  /** The idempotency key and its time to live, when the call gives a key. */
  readonly idempotency?: { readonly key: string; readonly ttlMs: number };
  /**
   * When the invocation may first be picked up, epoch ms: `runAt`, or `delayMs` after `nowMs`;
   * absent: at once.
   */
  readonly availableAtMs?: number;
  /** The call's priority, when it gives one. */
  readonly priority?: number;
}

/**
 * Checks the options of a call of `taskId`.
 *
 * @throws {TypeError} for options that are not an object, an unknown option, an empty or
 * non-string `idempotencyKey`, a non-positive or non-finite `idempotencyTtlMs`, a TTL without
 * a key, a bad time, or a priority that is not an integer ({RangeError}: out of range).
 */
export function resolveCallOptions(
  taskId: string,
  options: unknown,
  nowMs: number,
): ResolvedCallOptions {
  const fail = (message: string): never => {
    throw new TypeError(`Cannot call task ${taskId}: ${message}`);
  };
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    fail("call options must be an object");
  }
  const given = options as Record<string, unknown>;
  for (const name of Object.keys(given)) {
    if (!CALL_OPTION_NAMES.has(name)) fail(`unknown call option "${name}"`);
  }
  const priority = given.priority === undefined
    ? {}
    : { priority: checkPriority(given.priority, `call task ${taskId}`) };
  const timeAndPriority = {
    ...resolveTime(given, nowMs, fail),
    ...priority,
  };
  const { idempotencyKey: key, idempotencyTtlMs: ttlMs } = given;
  if (key === undefined) {
    if (ttlMs !== undefined) fail("idempotencyTtlMs needs an idempotencyKey");
    return timeAndPriority;
  }
  if (typeof key !== "string" || key.length === 0) {
    fail(`idempotencyKey must be a non-empty string, got ${JSON.stringify(key) ?? String(key)}`);
  }
  if (
    ttlMs !== undefined && (typeof ttlMs !== "number" || !Number.isFinite(ttlMs) || ttlMs <= 0)
  ) {
    fail(`idempotencyTtlMs must be a positive finite number of ms, got ${String(ttlMs)}`);
  }
  return {
    ...timeAndPriority,
    idempotency: {
      key: key as string,
      ttlMs: (ttlMs as number | undefined) ?? DEFAULT_IDEMPOTENCY_TTL_MS,
    },
  };
}

/**
 * The time fields of call options: `delayMs` (a finite number ≥ 0) or `runAt` (a valid `Date` or
 * finite epoch ms; one in the past means at once), not both.
 */
function resolveTime(
  given: Record<string, unknown>,
  nowMs: number,
  fail: (message: string) => never,
): Pick<ResolvedCallOptions, "availableAtMs"> {
  const { delayMs, runAt } = given;
  if (delayMs !== undefined && runAt !== undefined) fail("give delayMs or runAt, not both");
  if (delayMs !== undefined) {
    if (typeof delayMs !== "number" || !Number.isFinite(delayMs) || delayMs < 0) {
      fail(`delayMs must be a finite number of ms ≥ 0, got ${String(delayMs)}`);
    }
    return delayMs === 0 ? {} : { availableAtMs: nowMs + (delayMs as number) };
  }
  if (runAt !== undefined) {
    const atMs = runAt instanceof Date ? runAt.getTime() : runAt;
    if (typeof atMs !== "number" || !Number.isFinite(atMs)) {
      fail(`runAt must be a Date or epoch ms, got ${String(runAt)}`);
    }
    return (atMs as number) > nowMs ? { availableAtMs: atMs as number } : {};
  }
  return {};
}

/**
 * Refuses idempotency keys on a path that routes many calls (`parallelize`, `routeCalls`): a key
 * names one call.
 *
 * @throws {TypeError} when `options` holds `idempotencyKey` or `idempotencyTtlMs`.
 */
export function refuseIdempotencyInBatch(what: string, options: object | undefined): void {
  if (options === undefined) return;
  for (const name of ["idempotencyKey", "idempotencyTtlMs"]) {
    if (Object.hasOwn(options, name)) {
      throw new TypeError(
        `Cannot ${what}: ${name} names one call; give each call its key with call()`,
      );
    }
  }
}
