import { Nenc } from "../core/app.ts";
import { storeContract } from "./store_contract.ts";

storeContract("memory", (options, shareWith) =>
  new Nenc({
    ...options,
    ...(shareWith !== undefined ? { store: shareWith.orchestrator.store } : {}),
  }));
