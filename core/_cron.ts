/**
 * The one place nenc reads cron expressions: croner, paused (no timer of its own), 5 or 6 fields
 * (seconds first), in a timezone. Private to `core/`.
 *
 * @module
 */

import { Cron } from "croner";

/**
 * Croner's reading of `cron` in `timezone`.
 *
 * @throws {TypeError | RangeError} for an expression croner refuses (a timezone it cannot read
 * throws only when a time is computed).
 */
export function cronOf(cron: string, timezone: string): Cron {
  return new Cron(cron, { paused: true, mode: "5-or-6-parts", timezone });
}
