// The fault-injection contract (issue #9) on the memory backend: a MemoryStore behind a faulty
// Proxy wrapper, given to the app as its store.
import { Nenc } from "../core/app.ts";
import { MemoryStore } from "../core/memory_store.ts";
import { faultContract, faultyStore } from "./_faults.ts";

faultContract(
  "memory",
  (plan, options) => new Nenc({ ...options, store: faultyStore(new MemoryStore(), plan) }),
);
