/**
 * Validation of `app.schedule(name, options)` (`ScheduleOptions` of `schedules.ts`), used by
 * `Orchestrator.schedule`. Private to `core/`.
 *
 * @module
 */

import { cronOf } from "./_cron.ts";
import type { CatchUp, Schedule, ScheduleOptions } from "./schedules.ts";
import type { Task } from "./task.ts";

const SCHEDULE_OPTION_NAMES: ReadonlySet<string> = new Set([
  "cron",
  "task",
  "args",
  "timezone",
  "catchUp",
  "misfireMs",
]);

const CATCH_UPS: readonly CatchUp[] = ["none", "latest", "all"];

/**
 * Checks the options of schedule `name` and builds the schedule to store, holding from `nowMs`;
 * `getTask` finds the app's tasks.
 *
 * @throws {TypeError} naming the schedule, for a name that is not a non-empty string, options that
 * are not an object, an unknown option, a cron expression or timezone croner refuses, a task the
 * app does not define, arguments that are not plain JSON, an unknown `catchUp`, or a `misfireMs`
 * that is not a positive finite number.
 */
export function resolveSchedule(
  name: unknown,
  options: unknown,
  context: {
    readonly nowMs: number;
    readonly getTask: (taskId: string) => Task<never, unknown> | undefined;
  },
): { readonly schedule: Schedule; readonly task: Task<never, unknown> } {
  if (typeof name !== "string" || name === "") {
    throw new TypeError(
      `Cannot schedule: the name must be a non-empty string, got ${JSON.stringify(name) ?? name}`,
    );
  }
  const fail = (message: string, cause?: unknown): never => {
    throw new TypeError(`Cannot schedule ${name}: ${message}`, { cause });
  };
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    fail("the options must be an object");
  }
  const given = options as Partial<Record<keyof ScheduleOptions, unknown>>;
  for (const option of Object.keys(given)) {
    if (!SCHEDULE_OPTION_NAMES.has(option)) fail(`unknown option "${option}"`);
  }
  const { cron, task: taskOrName, args, timezone = "UTC", catchUp = "none" } = given;
  const misfireMs = given.misfireMs ?? 60_000;
  if (typeof cron !== "string") fail(`cron must be a string, got ${String(cron)}`);
  if (typeof timezone !== "string") fail(`timezone must be a string, got ${String(timezone)}`);
  try {
    cronOf(cron as string, timezone as string).nextRun(new Date(context.nowMs));
  } catch (error) {
    fail(
      `croner refuses cron "${cron}" in timezone ${timezone}: ${(error as Error).message}`,
      error,
    );
  }
  const taskId = typeof taskOrName === "string"
    ? taskOrName
    : (taskOrName as { id?: unknown } | undefined)?.id;
  const task = typeof taskId === "string" ? context.getTask(taskId) : undefined;
  if (task === undefined || (typeof taskOrName !== "string" && task !== taskOrName)) {
    fail(
      `task must be a task of this app or its name, got ${
        typeof taskId === "string" ? `task ${taskId}, which this app does not define` : "none"
      }`,
    );
  }
  if (!CATCH_UPS.includes(catchUp as CatchUp)) {
    fail(`catchUp must be one of ${CATCH_UPS.join(", ")}, got ${String(catchUp)}`);
  }
  if (typeof misfireMs !== "number" || !Number.isFinite(misfireMs) || misfireMs <= 0) {
    fail(`misfireMs must be a positive finite number of ms, got ${String(misfireMs)}`);
  }
  let serialized;
  try {
    serialized = task!.serializeArgs(args as never);
  } catch (error) {
    fail((error as Error).message, error);
  }
  return {
    task: task!,
    schedule: {
      name,
      cron: cron as string,
      taskId: task!.id,
      args: serialized!,
      timezone: timezone as string,
      catchUp: catchUp as CatchUp,
      misfireMs: misfireMs as number,
      sinceMs: context.nowMs,
      lastTickMs: null,
      lastInvocationId: null,
    },
  };
}
