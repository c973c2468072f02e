/**
 * An execution's end and the claim that refills its slot in one commit (issue #12).
 *
 * A runner picks up for the slots its ending executions are about to give back
 * (`ClaimRequest.ready` and `freedBy`): the pick-up reads while the ends are written, and used to
 * claim once they were committed — two commits in turn per slot, the end's then the claim's. A
 * ride lets each claim of the pick-up's first batch go in the commit of one of those ends: the
 * commit that records an execution's end gives its slot back and takes it again for the next
 * invocation, which the slot rule allows (a slot is held until the commit that records the end).
 * A one-slot runner makes one commit per invocation instead of two.
 *
 * An end waits, before its commit, for the claims that may board it: those joined while the
 * pick-up began its first batch, until each offers its draft or leaves. That cannot deadlock: a
 * joined claim awaits nothing that waits for an end — it leaves before it would (a slot key to
 * read, a call edge, a later attempt, its pick-up's end), and its pick-up seals the ride (no seat
 * joins any more) once that batch began, or when it ends.
 *
 * @module
 */

import type { InvocationRecord } from "../core/store.ts";
import type { AtomicDraft } from "./_batching.ts";

/** The claims of one pick-up that may go in the commits of the ends freeing its slots. */
export class Ride {
  /** The runner whose ends it waits for: only an end of that runner's execution boards it. */
  readonly runnerId: string;
  #open = true;
  #canceled = false;
  /** Seats joined that neither offered a draft nor left. */
  #pending = 0;
  #offered: Seat[] = [];
  #boarding: (() => void)[] = [];

  constructor(runnerId: string) {
    this.runnerId = runnerId;
  }

  /**
   * A seat for a claim about to read its candidate, which takes it if `wants` the record it
   * reads; `undefined` once sealed.
   */
  join(wants: (record: InvocationRecord) => boolean): Seat | undefined {
    if (!this.#open) return undefined;
    this.#pending++;
    return new Seat(this, wants);
  }

  /** No seat joins any more. */
  seal(): void {
    this.#open = false;
    this.#wake();
  }

  /**
   * The slots will not be given back to its pick-up (the runner stops): no end takes a seat any
   * more, and what was offered is withdrawn; a seat already taken goes with its end.
   */
  cancel(): void {
    this.#canceled = true;
    this.#open = false;
    for (const seat of this.#offered.splice(0)) seat.withdraw();
    this.#wake();
  }

  /** Whether it was canceled. */
  get canceled(): boolean {
    return this.#canceled;
  }

  /**
   * For an end about to commit: a seat whose claim draft it may take into its commit, once one is
   * offered; `undefined` when none will be (sealed, and every seat offered to another end or left).
   */
  async board(): Promise<Seat | undefined> {
    for (;;) {
      if (this.#canceled) return undefined;
      const seat = this.#offered.shift();
      if (seat !== undefined) return seat;
      if (!this.#open && this.#pending === 0) return undefined;
      await new Promise<void>((resolve) => this.#boarding.push(resolve));
    }
  }

  /** @internal A seat's claim offered its draft (`false`: canceled, the seat is left). */
  offered(seat: Seat): boolean {
    this.#pending--;
    if (!this.#canceled) this.#offered.push(seat);
    this.#wake();
    return !this.#canceled;
  }

  /** @internal A seat's claim left without a draft, or withdrew its offer. */
  left(seat: Seat, offered: boolean): void {
    if (offered) this.#offered = this.#offered.filter((other) => other !== seat);
    else this.#pending--;
    this.#wake();
  }

  #wake(): void {
    const boarding = this.#boarding;
    this.#boarding = [];
    for (const resume of boarding) resume();
  }
}

/**
 * One claim's place on a ride. Its claim either leaves (and commits on its own once its slot is
 * given back), or offers its draft: an end takes it into its commit ({@linkcode Seat.take}), then
 * settles it with that commit's verdict; or no end takes it before the slots are given back, and
 * the claim commits on its own.
 */
export class Seat {
  readonly #ride: Ride;
  /** Whether its claim may ride, given its candidate's record. */
  readonly wants: (record: InvocationRecord) => boolean;
  #state: "joined" | "offered" | "taken" | "done" = "joined";
  #draft: AtomicDraft | undefined;
  #settle!: (verdict: boolean | undefined) => void;
  #fail!: (error: unknown) => void;
  readonly #verdict: Promise<boolean | undefined>;

  constructor(ride: Ride, wants: (record: InvocationRecord) => boolean) {
    this.#ride = ride;
    this.wants = wants;
    this.#verdict = new Promise((resolve, reject) => {
      this.#settle = resolve;
      this.#fail = reject;
    });
  }

  /** Whether its claim may still go with an end (joined, nothing offered yet). */
  get joined(): boolean {
    return this.#state === "joined";
  }

  /** Its claim will not go with an end. */
  leave(): void {
    if (this.#state !== "joined") return;
    this.#state = "done";
    this.#ride.left(this, false);
  }

  /**
   * Offers `draft` to the ends and waits: the verdict of the end's commit that took it (`true`:
   * committed with it), or `undefined` once `ready` resolved with no end having taken it (the
   * claim commits on its own). Rejects as `ready` does when no end took it, and as the end's commit
   * when it threw.
   */
  async offer(draft: AtomicDraft, ready: Promise<void>): Promise<boolean | undefined> {
    if (this.#state !== "joined") return undefined;
    this.#state = "offered";
    this.#draft = draft;
    if (!this.#ride.offered(this)) {
      this.#state = "done";
      await ready; // rejected: the runner stops
      return undefined;
    }
    try {
      await Promise.race([ready, this.#verdict]);
    } catch (error) {
      // `ready` rejected (the runner is stopping): the claim goes only if an end took it.
      if (!this.#taken()) {
        if (this.#state === "offered") this.#withdraw();
        throw error;
      }
    }
    // Taken: the end's verdict. Declined, or not taken before the slots were given back:
    // `undefined`.
    if (this.#taken()) return await this.#verdict;
    if (this.#state === "offered") this.#withdraw();
    return undefined;
  }

  /**
   * For the end that boarded: the offered draft, now its to commit; `undefined` if withdrawn (or
   * its ride canceled since).
   */
  take(): AtomicDraft | undefined {
    if (this.#state !== "offered" || this.#ride.canceled) return undefined;
    this.#state = "taken";
    return this.#draft;
  }

  /** The versionstamp of the end's commit that took it, once committed (where the store tells). */
  versionstamp: string | undefined;

  /**
   * For the end that took it: the verdict of its commit (`undefined`: it could not take it), and
   * that commit's versionstamp.
   */
  settle(verdict: boolean | undefined, versionstamp?: string): void {
    if (verdict === undefined) this.#state = "done";
    this.versionstamp = versionstamp;
    this.#settle(verdict);
  }

  /** For the end that took it: its commit threw. */
  fail(error: unknown): void {
    this.#fail(error);
  }

  /** A method, not a comparison in place: the state moves while `offer` awaits. */
  #taken(): boolean {
    return this.#state === "taken";
  }

  /** @internal Its offer is withdrawn: no end takes it (its ride canceled). */
  withdraw(): void {
    if (this.#state !== "offered") return;
    this.#state = "done";
    this.#settle(undefined);
  }

  #withdraw(): void {
    this.#state = "done";
    this.#ride.left(this, true);
  }
}
