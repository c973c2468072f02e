/**
 * Which side indexes a pick-up reads (issue #12). Beside the ready queue a pick-up reads the wake
 * markers, the due delayed entries with the due time-ordered wake markers, and the blocking index;
 * under flat work all three are empty, and on a KV file their range reads were most of what an
 * invocation cost at concurrency 1. Each index has a hint key that every commit adding an entry to
 * it sets blind (`AtomicDraft.signal`): while the hint's versionstamp has not moved since an index
 * was read and found quiet — empty, or with nothing due before a known time — nothing was added,
 * and the pick-up does not read it again.
 *
 * Why skipping is exact: a read covers the hint's versionstamp that was read *before* the index
 * was (a hint read that had returned when the range read was issued). Every entry committed
 * before that hint read is seen by the range read; every entry committed after it moved the hint.
 * So "hint unchanged and the index quiet as read" means the index has no entry it did not have
 * then. Deletions move no hint: they only take candidates away. A hint is read together with the
 * ready queue; a pick-up waits for it (one round trip beside the queue's) only when the hint last
 * seen still equals the covered one — the steady state of flat work — and otherwise reads the
 * index at once as before, so work that keeps adding entries (nested waits) pays no round trip.
 *
 * @module
 */

/** The side indexes, each with its hint key (see `Keys.hint`). */
export type HintKind = "wake" | "time" | "blocking";

/** The hint kinds, in the order a pick-up reads their keys. */
export const HINT_KINDS: readonly HintKind[] = ["wake", "time", "blocking"];

/**
 * A covered read is trusted this long, then the index is read whatever its hint says: a process of
 * an older nenc on the same store adds entries without moving any hint, and what it adds is
 * read within this long rather than missed.
 */
export const HINT_TRUST_MS = 1_000;

/** What the last read of an index covered. */
interface Covered {
  /** The hint's versionstamp read before the index was (`null`: the hint did not exist). */
  readonly stamp: string | null;
  /** Until when the index, as read, holds nothing for a pick-up (`-Infinity`: read it again). */
  readonly quietUntilMs: number;
  /** When it was read (by the reading pick-up's clock). */
  readonly atMs: number;
}

/**
 * How a pick-up goes about one index: `ask` false, read it at once (the hint last seen, if any,
 * covers that read); `ask` true, read it only if its hint has moved from `covered`.
 */
export type SidePlan =
  | { readonly ask: false; readonly stamp: string | null | undefined }
  | { readonly ask: true; readonly covered: string | null };

/** The side index hints of one store in this process: what its pick-ups read last. */
export class SideHints {
  readonly #covered = new Map<HintKind, Covered>();
  /** Each hint's versionstamp at the last read of it that returned. */
  readonly #seen = new Map<HintKind, string | null>();

  /** Notes the hints' versionstamps a read returned. */
  saw(stamps: ReadonlyMap<HintKind, string | null>): void {
    for (const [kind, stamp] of stamps) this.#seen.set(kind, stamp);
  }

  /** How a pick-up at `nowMs` goes about `kind`'s index. */
  plan(kind: HintKind, nowMs: number): SidePlan {
    const covered = this.#covered.get(kind);
    const seen = this.#seen.get(kind);
    if (
      covered !== undefined && seen === covered.stamp && nowMs < covered.quietUntilMs &&
      nowMs - covered.atMs < HINT_TRUST_MS
    ) return { ask: true, covered: covered.stamp };
    return { ask: false, stamp: seen };
  }

  /**
   * After a read of `kind`'s index that `stamp` covers (`undefined`: no hint known, nothing
   * covered): it holds nothing for a pick-up until `quietUntilMs`.
   */
  read(
    kind: HintKind,
    stamp: string | null | undefined,
    quietUntilMs: number,
    nowMs: number,
  ): void {
    if (stamp === undefined) return;
    this.#covered.set(kind, { stamp, quietUntilMs, atMs: nowMs });
  }
}
