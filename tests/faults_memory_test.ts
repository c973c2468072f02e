// The fault-injection contracts (issues #9, #11, #12, #13) on the memory backend: a MemoryStore behind a faulty
// Proxy wrapper, given to the app as its store.
import { Nenc } from "../core/app.ts";
import { MemoryStore } from "../core/memory_store.ts";
import { cycleFaultContract } from "./_faults_cycles.ts";
import { faultContract, type FaultyAppFactory, faultyStore } from "./_faults.ts";
import { scheduleFaultContract } from "./_faults_schedules.ts";
import { upkeepFaultContract } from "./_faults_upkeep.ts";

const makeApp: FaultyAppFactory = (plan, options) =>
  new Nenc({ ...options, store: faultyStore(new MemoryStore(), plan) });
faultContract("memory", makeApp);
scheduleFaultContract("memory", makeApp);
upkeepFaultContract("memory", makeApp);
cycleFaultContract("memory", makeApp);
