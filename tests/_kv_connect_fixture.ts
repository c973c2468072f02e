/**
 * A small KV Connect server for tests (not shipped): the protocol that `Deno.openKv("http://…")`
 * and `@deno/kv`'s `openKv("http://…")` speak to Deno Deploy KV and to denokv, over an in-memory
 * sorted map, on 127.0.0.1. It implements what nenc uses — metadata exchange (protocol version
 * 2), snapshot reads of key ranges, and atomic writes with checks, set and delete — so nenc's
 * remote path runs the same code as its local one. The protobuf codecs come from `@deno/kv`.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  decodeBinary as decodeSnapshotRead,
} from "../node_modules/@deno/kv/esm/proto/messages/com/deno/kv/datapath/SnapshotRead.js";
import {
  encodeBinary as encodeSnapshotReadOutput,
} from "../node_modules/@deno/kv/esm/proto/messages/com/deno/kv/datapath/SnapshotReadOutput.js";
import {
  decodeBinary as decodeAtomicWrite,
} from "../node_modules/@deno/kv/esm/proto/messages/com/deno/kv/datapath/AtomicWrite.js";
import {
  encodeBinary as encodeAtomicWriteOutput,
} from "../node_modules/@deno/kv/esm/proto/messages/com/deno/kv/datapath/AtomicWriteOutput.js";

// The shapes of the protobuf messages used here (the codecs' own typings do not resolve through
// a relative import into node_modules, so they are restated).
interface ReadRange {
  readonly start: Uint8Array;
  readonly end: Uint8Array;
  readonly limit: number;
  readonly reverse: boolean;
}
interface AtomicWrite {
  readonly checks: readonly { key: Uint8Array; versionstamp: Uint8Array }[];
  readonly mutations: readonly {
    key: Uint8Array;
    value?: { data: Uint8Array; encoding: string };
    mutationType: string;
    expireAtMs: string;
  }[];
  readonly enqueues: readonly unknown[];
}

interface Entry {
  readonly key: Uint8Array;
  readonly value: Uint8Array;
  readonly encoding: "VE_BYTES" | "VE_V8" | "VE_LE64";
  readonly versionstamp: Uint8Array;
  readonly expireAtMs: number;
}

/** A running fixture: its URL, the access token it expects, and close(). */
export interface KvConnectFixture {
  readonly url: string;
  readonly accessToken: string;
  close(): Promise<void>;
}

function compare(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** The checks one atomic write may hold over KV Connect (denokv's limit). */
const MAX_CHECKS = 10;

const hex = (bytes: Uint8Array): string =>
  [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");

/** Starts a KV Connect server on 127.0.0.1 with an empty database. */
export async function startKvConnectFixture(): Promise<KvConnectFixture> {
  const accessToken = "nenc-test-token";
  const databaseId = crypto.randomUUID();
  const entries = new Map<string, Entry>(); // by hex key
  let version = 0n;
  const live = (entry: Entry | undefined): Entry | undefined =>
    entry !== undefined && (entry.expireAtMs === 0 || entry.expireAtMs > Date.now())
      ? entry
      : undefined;

  const snapshotRead = (body: Uint8Array): Uint8Array => {
    const request = decodeSnapshotRead(body) as unknown as { ranges: readonly ReadRange[] };
    const sorted = [...entries.values()].filter((entry) => live(entry) !== undefined)
      .sort((a, b) => compare(a.key, b.key));
    const ranges = request.ranges.map((range) => {
      let values = sorted.filter((entry) =>
        compare(entry.key, range.start) >= 0 && compare(entry.key, range.end) < 0
      );
      if (range.reverse) values = values.reverse();
      return { values: values.slice(0, range.limit) };
    });
    return encodeSnapshotReadOutput({
      ranges,
      readDisabled: false,
      readIsStronglyConsistent: true,
      status: "SR_SUCCESS",
    } as never);
  };

  const atomicWrite = (body: Uint8Array): Uint8Array => {
    const write = decodeAtomicWrite(body) as unknown as AtomicWrite;
    // As denokv does (the Deno CLI allows 100): nenc's transitions must stay within it.
    if (write.checks.length > MAX_CHECKS) {
      throw new Error(`too many checks: ${write.checks.length}, at most ${MAX_CHECKS}`);
    }
    const failedChecks = write.checks.flatMap((check, index) => {
      const current = live(entries.get(hex(check.key)))?.versionstamp ?? new Uint8Array();
      return compare(current, check.versionstamp) === 0 ? [] : [index];
    });
    if (failedChecks.length > 0) {
      return encodeAtomicWriteOutput({
        status: "AW_CHECK_FAILURE",
        versionstamp: new Uint8Array(),
        failedChecks,
      } as never);
    }
    if (write.enqueues.length > 0) throw new Error("the fixture has no queues");
    version++;
    const versionstamp = new Uint8Array(10);
    new DataView(versionstamp.buffer).setBigUint64(0, version);
    for (const mutation of write.mutations) {
      if (mutation.mutationType === "M_SET" && mutation.value !== undefined) {
        entries.set(hex(mutation.key), {
          key: mutation.key,
          value: mutation.value.data,
          encoding: mutation.value.encoding as Entry["encoding"],
          versionstamp,
          expireAtMs: Number(mutation.expireAtMs || 0),
        });
      } else if (mutation.mutationType === "M_DELETE") {
        entries.delete(hex(mutation.key));
      } else {
        throw new Error(`the fixture does not support ${mutation.mutationType}`);
      }
    }
    return encodeAtomicWriteOutput(
      { status: "AW_SUCCESS", versionstamp, failedChecks: [] } as never,
    );
  };

  /** Answers one request: the metadata exchange or a data-path call. */
  const handle = (
    path: string,
    authorization: string | undefined,
    body: Uint8Array,
    origin: string,
  ): { status: number; type?: string; body: string | Uint8Array } => {
    if (authorization !== `Bearer ${accessToken}`) return { status: 401, body: "bad token" };
    try {
      if (path === "/") {
        return {
          status: 200,
          type: "application/json",
          body: JSON.stringify({
            version: 2,
            databaseId,
            endpoints: [{ url: `${origin}/v2`, consistency: "strong" }],
            token: accessToken,
            expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
          }),
        };
      }
      if (path === "/v2/snapshot_read") {
        return { status: 200, type: "application/x-protobuf", body: snapshotRead(body) };
      }
      if (path === "/v2/atomic_write") {
        return { status: 200, type: "application/x-protobuf", body: atomicWrite(body) };
      }
      return { status: 404, body: "" };
    } catch (error) {
      return { status: 400, body: String(error) };
    }
  };

  // Deno's own KV client speaks HTTP/2 to an http:// URL (cleartext, prior knowledge), which
  // Deno.serve answers; @deno/kv (Bun, Node) uses fetch over HTTP/1.1, which node:http answers.
  const deno = (globalThis as {
    Deno?: {
      serve(
        options: { hostname: string; port: number; onListen(): void },
        handler: (request: Request) => Promise<Response>,
      ): { addr: { port: number }; shutdown(): Promise<void> };
    };
  }).Deno;
  if (deno !== undefined) {
    const server = deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      async (request) => {
        const url = new URL(request.url);
        const answer = handle(
          url.pathname,
          request.headers.get("authorization") ?? undefined,
          new Uint8Array(await request.arrayBuffer()),
          url.origin,
        );
        return new Response(answer.body as BodyInit, {
          status: answer.status,
          headers: answer.type === undefined ? {} : { "content-type": answer.type },
        });
      },
    );
    return {
      url: `http://127.0.0.1:${server.addr.port}`,
      accessToken,
      close: () => server.shutdown(),
    };
  }
  const server: Server = createServer((request, response) => {
    const chunks: Uint8Array[] = [];
    request.on("data", (chunk: Uint8Array) => chunks.push(chunk));
    request.on("end", () => {
      const { port } = server.address() as AddressInfo;
      const answer = handle(
        request.url ?? "/",
        request.headers.authorization,
        new Uint8Array(Buffer.concat(chunks)),
        `http://127.0.0.1:${port}`,
      );
      response.writeHead(
        answer.status,
        answer.type === undefined ? {} : {
          "content-type": answer.type,
        },
      ).end(answer.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    accessToken,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
