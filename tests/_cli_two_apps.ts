/** An app module for the CLI tests that exports two Nenc apps. */
import { Nenc } from "../core/app.ts";

/** One app. */
export const shop = new Nenc({ appId: "shop" });
/** Another app. */
export const billing = new Nenc({ appId: "billing" });
