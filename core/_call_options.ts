/**
 * Validation of the options of one call (`CallOptions` of `task.ts`), used by
 * `Orchestrator.routeCall`, and by the batch paths (`parallelize`, `routeCalls`) that refuse
 * idempotency keys. Private to `core/`.
 *
 * @module
 */

/** The default time to live of an idempotency key: 24 h. */
export const DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 3_600_000;

const CALL_OPTION_NAMES: ReadonlySet<string> = new Set(["idempotencyKey", "idempotencyTtlMs"]);

/** Call options checked and with defaults filled in. */
export interface ResolvedCallOptions {
  /** The idempotency key and its time to live, when the call gives a key. */
  readonly idempotency?: { readonly key: string; readonly ttlMs: number };
}

/**
 * Checks the options of a call of `taskId`.
 *
 * @throws {TypeError} for options that are not an object, an unknown option, an empty or
 * non-string `idempotencyKey`, a non-positive or non-finite `idempotencyTtlMs`, or a TTL without
 * a key.
 */
export function resolveCallOptions(taskId: string, options: unknown): ResolvedCallOptions {
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
  const { idempotencyKey: key, idempotencyTtlMs: ttlMs } = given;
  if (key === undefined) {
    if (ttlMs !== undefined) fail("idempotencyTtlMs needs an idempotencyKey");
    return {};
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
    idempotency: {
      key: key as string,
      ttlMs: (ttlMs as number | undefined) ?? DEFAULT_IDEMPOTENCY_TTL_MS,
    },
  };
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
