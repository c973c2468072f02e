/**
 * What a `--kv` path is, found without changing it: `Deno.openKv` creates a missing file, turns
 * an empty file into a database, and adds its tables to any other SQLite database, so the
 * commands that must not create or change a store look first. Private to `cli/`.
 *
 * @module
 */

import { copyFileSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

/** The tables every Deno KV SQLite file has. */
const KV_TABLES = ["data_version", "kv", "migration_state"];

/**
 * What is at `path`: `"missing"`, `"kv"` (a Deno KV file), or `"other"` (a directory, or a file
 * that is not a Deno KV file). It reads the file as SQLite with `immutable=1` (no lock, no
 * `-wal` or `-shm` file created, nothing written). A Deno KV file whose tables are still only in
 * its write-ahead log (a new file that a process keeps open) is read from a copy of both, in a
 * temp dir, deleted at once.
 */
export async function kvFileKind(path: string): Promise<"missing" | "kv" | "other"> {
  if (!existsSync(path)) return "missing";
  if (!statSync(path).isFile()) return "other";
  if (await hasKvTables(path, true)) return "kv";
  const wal = `${path}-wal`;
  if (!existsSync(wal)) return "other";
  const directory = mkdtempSync(join(tmpdir(), "nenc-kv-check-"));
  try {
    const copy = join(directory, "copy.db");
    copyFileSync(path, copy);
    copyFileSync(wal, `${copy}-wal`);
    return await hasKvTables(copy, false) ? "kv" : "other";
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** Whether the SQLite file at `path` has the tables of a Deno KV (false: not SQLite, or not KV). */
async function hasKvTables(path: string, immutable: boolean): Promise<boolean> {
  const { DatabaseSync } = await import("node:sqlite");
  const url = pathToFileURL(resolve(path)).href + (immutable ? "?immutable=1" : "");
  let db;
  try {
    db = new DatabaseSync(url, { readOnly: immutable });
    const rows = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all();
    const tables = new Set(rows.map((row) => String(row.name)));
    return KV_TABLES.every((table) => tables.has(table));
  } catch {
    return false; // not a database (or an unreadable one)
  } finally {
    db?.close();
  }
}
