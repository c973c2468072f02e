/**
 * The app module the CLI tests load with `--app`: one app, the default export. The test process
 * defines the same tasks on its own app with {@linkcode defineTasks}, on the same KV file.
 */
import { Nenc } from "../core/app.ts";
import type { Task } from "../core/task.ts";

/** The app id of the fixture app. */
export const APP_ID = "cli-test";

/** Options of {@linkcode defineTasks}. */
export interface FixtureOptions {
  /** `child` and `deploy` run only once this settles (the test process holds them running). */
  readonly childGate?: Promise<void>;
}

/** The fixture's tasks. */
export interface FixtureTasks {
  /** Adds two numbers. */
  readonly add: Task<{ x: number; y: number }, number>;
  /** Always fails: a RangeError with a two-level cause chain. */
  readonly pay: Task<{ card: string }, string>;
  /** Returns `i` once the child gate opens. */
  readonly child: Task<{ i: number }, number>;
  /** Calls `n` children and waits for all their results at once (their sum). */
  readonly parent: Task<{ n: number }, number>;
  /** Sends a text: at most one pick-up an hour (a rate limit). */
  readonly notify: Task<{ to: string }, string>;
  /**
   * Deploys to an environment once the child gate opens: one at a time per environment (a
   * running key per `env`).
   */
  readonly deploy: Task<{ env: string }, string>;
}

/** Defines the fixture's tasks on `app`. */
export function defineTasks(app: Nenc, options: FixtureOptions = {}): FixtureTasks {
  const add = app.task("add", ({ x, y }: { x: number; y: number }) => x + y);
  const pay = app.task("pay", ({ card }: { card: string }): string => {
    throw new RangeError(`Cannot pay with card ${card}: declined`, {
      cause: new Error("the bank said no", { cause: "insufficient funds" }),
    });
  });
  const child = app.task("child", async ({ i }: { i: number }) => {
    await options.childGate;
    return i;
  });
  const parent = app.task("parent", async ({ n }: { n: number }): Promise<number> => {
    const children = await Promise.all(Array.from({ length: n }, (_, i) => child.call({ i })));
    const results = await Promise.all(children.map((invocation) => invocation.result()));
    return results.reduce((sum, i) => sum + i, 0);
  });
  const notify = app.task("notify", ({ to }: { to: string }) => `sent to ${to}`, {
    rateLimit: { limit: 1, intervalMs: 3_600_000 },
  });
  const deploy = app.task("deploy", async ({ env }: { env: string }) => {
    await options.childGate;
    return `deployed ${env}`;
  }, {
    runningConcurrency: "keys",
    keyArguments: ["env"],
  });
  return { add, pay, child, parent, notify, deploy };
}

const app = new Nenc({ appId: APP_ID });
defineTasks(app);
export default app;
