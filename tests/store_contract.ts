/**
 * The storage contract: the behaviour every backend must show through the public API and the
 * orchestrator. Each backend's test file calls {@linkcode storeContract} once with a factory.
 */
import { cyclesContract } from "./_contract_cycles.ts";
import { fairnessContract } from "./_contract_fairness.ts";
import { graphsContract } from "./_contract_graphs.ts";
import { idempotencyContract } from "./_contract_idempotency.ts";
import { inspectContract } from "./_contract_inspect.ts";
import { fencingContract, lifecycleContract } from "./_contract_lifecycle.ts";
import { groupsContract, limitsContract } from "./_contract_limits.ts";
import { parkingContract } from "./_contract_parking.ts";
import { ratesContract } from "./_contract_rates.ts";
import { routingContract } from "./_contract_routing.ts";
import { runningContract } from "./_contract_running.ts";
import { schedulesContract } from "./_contract_schedules.ts";
import { timeContract } from "./_contract_time.ts";
import { upkeepContract } from "./_contract_upkeep.ts";
import type { Nenc, NencOptions } from "../core/app.ts";

/**
 * Makes a fresh app on the backend under test (`options` never contains `store`). With
 * `shareWith`, the new app uses the same backend as that app: two processes' view of one store.
 */
export type AppFactory = (
  options?: Omit<NencOptions, "store">,
  shareWith?: Nenc,
) => Nenc | Promise<Nenc>;

/** Registers the whole contract suite for one backend. */
export function storeContract(backend: string, makeApp: AppFactory): void {
  routingContract(backend, makeApp);
  idempotencyContract(backend, makeApp);
  runningContract(backend, makeApp);
  graphsContract(backend, makeApp);
  cyclesContract(backend, makeApp);
  lifecycleContract(backend, makeApp);
  fencingContract(backend, makeApp);
  limitsContract(backend, makeApp);
  groupsContract(backend, makeApp);
  parkingContract(backend, makeApp);
  fairnessContract(backend, makeApp);
  timeContract(backend, makeApp);
  schedulesContract(backend, makeApp);
  ratesContract(backend, makeApp);
  upkeepContract(backend, makeApp);
  inspectContract(backend, makeApp);
}
