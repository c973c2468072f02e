/**
 * The demo app: the release pipeline of a monorepo with 48 packages. `release` fetches the
 * toolchain from a flaky mirror (retries), then builds every package; each `build` first builds
 * its dependencies (calls and awaits them: a fan-out/fan-in six levels deep); `deploy` ships a
 * service to an environment, at most two at once to one environment, and `rollback` puts one
 * back: at most five deploys and rollbacks at once in all; `announce` posts each deploy to a
 * status page whose API takes five requests a second (a rate limit), and `probe` checks the live
 * services, fired by a schedule every second while they deploy. A pull request adds two plugins
 * that depend on each other: building them fails with a `CycleDetectedError`.
 *
 * The app is created without a KV store, so a worker can move it onto one with `app.useKv(kv)`
 * (`deno run -A cli/mod.ts worker --app examples/demo/app.ts --kv demo.db`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import process from "node:process";
import { Nenc, type TaskContext } from "../../mod.ts";

/** The mirror did not answer in time: worth a retry. */
export class MirrorTimeoutError extends Error {
  override name = "MirrorTimeoutError";
}

/** The app. */
export const app: Nenc = new Nenc({ appId: "nenc-demo", errorClasses: [MirrorTimeoutError] });

const LIBRARIES: Readonly<Record<string, readonly string[]>> = {
  tsconfig: [],
  utils: ["tsconfig"],
  logger: ["utils"],
  config: ["utils"],
  http: ["logger", "config"],
  db: ["logger", "config"],
  auth: ["http", "db"],
  "ui-kit": ["utils"],
};

const DOMAINS = [
  "accounts",
  "billing",
  "cart",
  "catalog",
  "checkout",
  "coupons",
  "email",
  "fraud",
  "inventory",
  "invoices",
  "ledger",
  "loyalty",
  "orders",
  "payments",
  "pricing",
  "reviews",
  "search",
  "shipping",
  "tax",
  "wishlist",
];

/** The monorepo: each package and the packages it depends on (8 libraries, 40 services). */
export const workspace: Readonly<Record<string, readonly string[]>> = {
  ...LIBRARIES,
  ...Object.fromEntries(DOMAINS.flatMap((domain) => [
    [`${domain}-api`, ["auth", "http", "ui-kit"]],
    [`${domain}-worker`, ["db", "logger"]],
  ])),
};

/** The packages an open pull request adds: two plugins that depend on each other. */
export const pullRequest: Readonly<Record<string, readonly string[]>> = {
  "mdx-plugin": ["remark-plugin"],
  "remark-plugin": ["mdx-plugin"],
};

/** The packages a package depends on. */
export function dependenciesOf(pkg: string): readonly string[] {
  const dependencies = workspace[pkg] ?? pullRequest[pkg];
  if (dependencies === undefined) throw new TypeError(`Cannot build ${pkg}: no such package`);
  return dependencies;
}

/**
 * The workspace's packages, every package before its dependencies. `release` schedules them in
 * this order: a dependency is then still queued (REGISTERED) when its dependents call it, and
 * registration concurrency folds their calls into that one invocation. (It merges calls into
 * queued invocations only: a call made after the build started would build the package again.)
 */
export function dependentsFirst(): string[] {
  const order: string[] = [];
  const visit = (pkg: string): void => {
    if (order.includes(pkg)) return;
    for (const dependency of dependenciesOf(pkg)) visit(dependency);
    order.push(pkg);
  };
  for (const pkg of Object.keys(workspace)) visit(pkg);
  return order.reverse();
}

/**
 * How many times slower the simulated work runs: the environment variable `NENC_DEMO_SLOWDOWN` (a
 * number ≥ 1), read at each step, else 1. A slowed-down run is one to watch in `nenc monitor`.
 */
export function slowdown(): number {
  const factor = Number(process.env.NENC_DEMO_SLOWDOWN ?? 1);
  return Number.isFinite(factor) && factor >= 1 ? factor : 1;
}

/** Simulated work: `ms` times the slowdown; stops with the signal's reason when it aborts (a cancel). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const stop = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", stop);
      resolve();
    }, ms * slowdown());
    signal.addEventListener("abort", stop, { once: true });
  });
}
const sha256 = (text: string): string => createHash("sha256").update(text).digest("hex");

/** A built package. */
export interface Artifact {
  /** The package. */
  readonly pkg: string;
  /** The tarball, named by a hash of the package and its dependencies' tarballs. */
  readonly file: string;
  /** Its size. */
  readonly bytes: number;
}

/** The toolchain tarball the mirror serves. */
export interface Toolchain {
  /** The file. */
  readonly file: string;
  /** Its checksum. */
  readonly sha256: string;
}

/** What a release built. */
export interface ReleaseReport {
  /** The release version. */
  readonly version: string;
  /** The toolchain it built with. */
  readonly toolchain: string;
  /** How many packages it built. */
  readonly packages: number;
  /** The total size of the tarballs. */
  readonly bytes: number;
}

/** How many requests of this process the mirror lets time out before it answers. */
export const MIRROR_COLD_REQUESTS = 2;
let coldRequests = MIRROR_COLD_REQUESTS;

/**
 * Downloads the Node.js toolchain. The mirror's edge cache is cold: the first
 * {@linkcode MIRROR_COLD_REQUESTS} requests of each process time out, and the retries get through.
 */
export const fetchToolchain = app.task(
  "fetchToolchain",
  async ({ node }: { node: string }, ctx: TaskContext): Promise<Toolchain> => {
    await sleep(20, ctx.signal);
    if (coldRequests > 0) {
      coldRequests--;
      throw new MirrorTimeoutError(`Cannot download node v${node}: the mirror timed out`);
    }
    const file = `node-v${node}-linux-x64.tar.xz`;
    return { file, sha256: sha256(file) };
  },
  { maxRetries: 4, retryFor: [MirrorTimeoutError], retryBackoffMs: (attempt) => 50 * attempt },
);

/** Builds a package after its dependencies; equal calls still queued are one invocation. */
export const build = app.task(
  "build",
  async ({ pkg }: { pkg: string }, ctx: TaskContext): Promise<Artifact> => {
    const dependencies = await build.parallelize(
      dependenciesOf(pkg).map((name) => ({ pkg: name })),
    );
    const inputs = await dependencies.results(); // PAUSED meanwhile: the slot builds them
    await sleep(5 + pkg.length, ctx.signal); // compile, bundle, pack
    const hash = sha256([pkg, ...inputs.map((input) => input.file)].join("\n"));
    return {
      pkg,
      file: `${pkg}-${hash.slice(0, 8)}.tgz`,
      bytes: 10_000 + parseInt(hash.slice(0, 4), 16),
    };
  },
  { registrationConcurrency: "arguments" },
);

/** Fetches the toolchain, then builds every package of the workspace. */
export const release = app.task(
  "release",
  async ({ version }: { version: string }): Promise<ReleaseReport> => {
    const toolchain = await (await fetchToolchain.call({ node: "22.11.0" })).result();
    const group = await build.parallelize(dependentsFirst().map((pkg) => ({ pkg })));
    const artifacts = await group.results();
    return {
      version,
      toolchain: toolchain.file,
      packages: artifacts.length,
      bytes: artifacts.reduce((sum, artifact) => sum + artifact.bytes, 0),
    };
  },
);

/** A service live on an environment. */
export interface Deployment {
  /** Where it is live. */
  readonly url: string;
}

/** Deploys at once per environment: `deploy`'s running concurrency by its `env` key. */
export const DEPLOYS_PER_ENV = 2;
/** Deploys and rollbacks at once in all: the `deploys` concurrency group they share. */
export const DEPLOYS_IN_ALL = 5;
const deploysGroup = { name: "deploys", limit: DEPLOYS_IN_ALL } as const;

/**
 * Ships a service to an environment: at most {@linkcode DEPLOYS_PER_ENV} deploys per environment
 * at a time, and at most {@linkcode DEPLOYS_IN_ALL} deploys and rollbacks in all.
 */
export const deploy = app.task(
  "deploy",
  async ({ env, pkg }: { env: string; pkg: string }, ctx: TaskContext): Promise<Deployment> => {
    await sleep(40, ctx.signal); // upload, switch traffic, health check
    return { url: `https://${env}.shop.example/${pkg}` };
  },
  {
    runningConcurrency: { by: "keys", limit: DEPLOYS_PER_ENV },
    keyArguments: ["env"],
    concurrencyGroups: [deploysGroup],
  },
);

/** Puts a service back on its previous release: shares the `deploys` group with `deploy`. */
export const rollback = app.task(
  "rollback",
  async ({ env, pkg }: { env: string; pkg: string }, ctx: TaskContext): Promise<Deployment> => {
    await sleep(40, ctx.signal); // switch traffic back, health check
    return { url: `https://${env}.shop.example/${pkg}` };
  },
  { concurrencyGroups: [deploysGroup] },
);

/** Requests per second the status page's API takes: `announce`'s rate limit. */
export const ANNOUNCES_PER_SECOND = 5;

/**
 * Posts a deployment to the status page. Its API answers 429 past
 * {@linkcode ANNOUNCES_PER_SECOND} requests in any second: the rate limit keeps every window of
 * 1,000 ms within that, so no request is refused and none is retried.
 */
export const announce = app.task(
  "announce",
  async ({ env, pkg }: { env: string; pkg: string }, ctx: TaskContext): Promise<string> => {
    await sleep(5, ctx.signal); // POST /api/v1/incidents
    return `${pkg} is live on ${env}`;
  },
  { rateLimit: { limit: ANNOUNCES_PER_SECOND, intervalMs: 1_000 } },
);

/** Checks the health of the live services: fired by a schedule, it sees its tick. */
export const probe = app.task(
  "probe",
  async (_: undefined, ctx: TaskContext): Promise<number> => {
    await sleep(2, ctx.signal); // GET /healthz of each service
    return ctx.scheduledAt!;
  },
);
