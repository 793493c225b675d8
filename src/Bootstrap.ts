/**
 * Makes a target ready: its role, database, schema, `state` type, task table,
 * indexes and wake-up trigger, each created only when missing. The admin
 * connection creates the role and the database; everything inside the
 * database is created by the target's own role, which so owns it. Creating
 * twice, or from two instances at once, is harmless.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import Pg from "pg"
import { describeTarget, type Target } from "./Config.js"
import { TargetError } from "./Errors.js"
import type { Session } from "./internal/session.js"

/** A target's task table, ready for use. */
export interface TaskTable {
  readonly target: Target
  readonly schema: string
  /** The quoted, schema-qualified name: `"public"."task"`. */
  readonly name: string
  readonly oid: number
  /** The channel the table's trigger notifies on inserts, plan changes and STOP. */
  readonly channel: string
  /** Quoted columns a repeat copies as they are, user-added ones included. */
  readonly copied: ReadonlyArray<string>
  /** The type of the `state` column, schema-qualified: `"public".state`. */
  readonly stateType: string
  /** `database/schema.table as role`, for logs. */
  readonly label: string
}

export const quote = (name: string) => Pg.escapeIdentifier(name)
const literal = (text: string) => Pg.escapeLiteral(text)

/** Columns pg-task reads and writes; a table missing one cannot be used. */
export const requiredColumns = [
  "id", "parent", "plan", "start", "stop", "group", "max", "pid", "input", "output", "error",
  "state", "timeout", "delete", "repeat", "drift", "count", "live", "remote"
] as const

/** Columns a repeat sets anew instead of copying. */
const renewed = new Set(["id", "parent", "plan", "start", "stop", "pid", "output", "error", "state"])

const code = (error: unknown) => (error as { cause?: { code?: string } }).cause?.code

/**
 * Another instance created it first: duplicate object or database, or the
 * unique index of the catalog when both got there at the same instant.
 */
const alreadyThere = (error: unknown) => ["42710", "42P04", "23505"].includes(code(error) ?? "")

/** Creates the target's role and database when missing, on the admin connection. */
export const ensureDatabase = (admin: SqlClient.SqlClient, target: Target) => {
  /** Runs `create` when `exists` finds nothing, and logs it when this instance was the one. */
  const ensure = (
    exists: Effect.Effect<ReadonlyArray<unknown>, SqlError>,
    create: string,
    what: string,
    name: string
  ) =>
    Effect.gen(function*() {
      if ((yield* exists).length > 0) return
      const created = yield* admin.unsafe(create).pipe(
        Effect.as(true),
        Effect.catchIf(alreadyThere, () => Effect.succeed(false))
      )
      if (created) yield* Effect.logInfo(`created ${what}`).pipe(Effect.annotateLogs(what, name))
    })
  return Effect.gen(function*() {
    yield* ensure(
      admin`SELECT 1 FROM pg_roles WHERE rolname = ${target.user}`,
      `CREATE ROLE ${quote(target.user)} LOGIN`,
      "role",
      target.user
    )
    yield* ensure(
      admin`SELECT 1 FROM pg_database WHERE datname = ${target.data}`,
      `CREATE DATABASE ${quote(target.data)} OWNER ${quote(target.user)}`,
      "database",
      target.data
    )
  }).pipe(
    Effect.mapError((error) =>
      new TargetError({ target: describeTarget(target), reason: (error.cause as Error)?.message ?? error.message })
    )
  )
}

/** The key of the lock that serialises set-up of one database's targets. */
const bootstrapLock = 1885823861

/**
 * Creates what is missing inside the target's database, as the target's role,
 * and reads back what the scheduler needs to know about the table.
 */
export const ensureTable = (session: Session, target: Target) =>
  Effect.gen(function*() {
    yield* session.query("BEGIN")
    yield* session.query("SELECT pg_advisory_xact_lock($1, 0)", [bootstrapLock])
    const schema = target.schema ?? (yield* defaultSchema(session, target))
    const name = `${quote(schema)}.${quote(target.table)}`
    // Each object is looked up before it is created: CREATE ... IF NOT EXISTS
    // still asks for the privilege to create, which a role may lack on a
    // database or schema that a DBA prepared for it.
    const [found] = yield* session.query<{ schema: boolean; type: boolean; table: boolean }>(
      `SELECT to_regnamespace($1) IS NOT NULL AS schema, to_regtype($2) IS NOT NULL AS type,
              to_regclass($3) IS NOT NULL AS table`,
      [quote(schema), `${quote(schema)}.state`, name]
    )
    if (!found!.schema) yield* session.query(`CREATE SCHEMA ${quote(schema)}`)
    if (!found!.type) {
      yield* session.query(
        `CREATE TYPE ${quote(schema)}.state AS ENUM ('PLAN', 'TAKE', 'WORK', 'DONE', 'FAIL', 'STOP')`
      )
    }
    if (!found!.table) yield* session.query(createTable(schema, target.table))
    const [row] = yield* session.query<{ oid: number; owned: boolean }>(
      `SELECT oid::int AS oid, pg_has_role(relowner, 'USAGE') AS owned FROM pg_class WHERE oid = $1::regclass`,
      [name]
    )
    const oid = row!.oid
    const columns = yield* session.query<{ name: string; copied: boolean; type: string }>(
      `SELECT attname AS name, attgenerated = '' AND attidentity = '' AS copied,
              atttypid::regtype::text AS type
       FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
      [oid]
    )
    const present = new Set(columns.map((column) => column.name))
    const missing = requiredColumns.filter((column) => !present.has(column))
    if (missing.length > 0) {
      return yield* Effect.fail(`table ${name} has no column ${missing.map((c) => `"${c}"`).join(", ")}`)
    }
    const channel = `pg_task_${oid}`
    if (row!.owned) {
      for (const statement of indexesAndTrigger(schema, target.table, channel)) {
        yield* session.query(statement)
      }
    } else {
      yield* Effect.logWarning("the table belongs to another role: its indexes and wake-up trigger are left as they are")
        .pipe(Effect.annotateLogs("table", name))
    }
    yield* session.query("COMMIT")
    const table: TaskTable = {
      target,
      schema,
      name,
      oid,
      channel,
      copied: columns.filter((c) => c.copied && !renewed.has(c.name)).map((c) => quote(c.name)),
      stateType: columns.find((c) => c.name === "state")!.type,
      label: describeTarget(target, schema)
    }
    return table
  }).pipe(
    Effect.tapError(() => session.query("ROLLBACK").pipe(Effect.ignore)),
    Effect.mapError((error) =>
      new TargetError({
        target: describeTarget(target),
        reason: typeof error === "string" ? error : error.reason
      })
    )
  )

const defaultSchema = (session: Session, target: Target) =>
  Effect.flatMap(
    session.query<{ schema: string | null }>("SELECT current_schema() AS schema"),
    ([row]) =>
      row?.schema
        ? Effect.succeed(row.schema)
        : Effect.fail(`role ${target.user} has no existing schema in its search_path; name one with "schema"`)
  )

/**
 * The task table of SPEC section 2. `parent` defaults to the id of the task
 * whose SQL inserts the row, which the task's session sets as `pg_task.id`.
 */
const createTable = (schema: string, table: string) => {
  const name = `${quote(schema)}.${quote(table)}`
  return `CREATE TABLE IF NOT EXISTS ${name} (
    id bigserial PRIMARY KEY,
    parent bigint DEFAULT NULLIF(current_setting('pg_task.id', true), '')::bigint
      REFERENCES ${name} (id) ON DELETE SET NULL,
    plan timestamptz NOT NULL DEFAULT now(),
    start timestamptz,
    stop timestamptz,
    "group" text NOT NULL DEFAULT 'group',
    max int NOT NULL DEFAULT 2147483647 CHECK (max > 0),
    pid int,
    input text NOT NULL,
    output text,
    error text,
    state ${quote(schema)}.state NOT NULL DEFAULT 'PLAN',
    timeout interval CHECK (timeout >= '0'),
    delete boolean NOT NULL DEFAULT false,
    repeat interval CHECK (repeat >= '0'),
    drift boolean NOT NULL DEFAULT true,
    count int NOT NULL DEFAULT 0 CHECK (count >= 0),
    live interval NOT NULL DEFAULT '0' CHECK (live >= '0'),
    remote text
  )`
}

const indexName = (table: string, suffix: string) => quote(`${table.slice(0, 63 - suffix.length - 1)}_${suffix}`)

/**
 * Partial indexes keep claiming cheap however many finished rows pile up:
 * the due index holds only planned rows, in the order the claim reads them
 * (see Claimer), the plan index finds the next planned time, and the
 * running index holds only claimed and running rows. The parent index keeps deletes from scanning the table
 * for children. The trigger wakes the workers once per transaction, since
 * PostgreSQL folds identical notifications.
 */
const indexesAndTrigger = (schema: string, table: string, channel: string) => {
  const name = `${quote(schema)}.${quote(table)}`
  const wake = `${quote(schema)}.${indexName(table, "wake")}`
  return [
    `CREATE INDEX IF NOT EXISTS ${indexName(table, "due")} ON ${name} ("group", max, plan, id)
      WHERE state = 'PLAN'`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, "plan")} ON ${name} (plan) WHERE state = 'PLAN'`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, "running")} ON ${name} ("group")
      WHERE state IN ('TAKE', 'WORK')`,
    `CREATE INDEX IF NOT EXISTS ${indexName(table, "parent")} ON ${name} (parent) WHERE parent IS NOT NULL`,
    `CREATE OR REPLACE FUNCTION ${wake}() RETURNS trigger LANGUAGE plpgsql AS $wake$
    BEGIN
      PERFORM pg_notify(${literal(channel)}, NEW.state::text);
      RETURN NULL;
    END
    $wake$`,
    `CREATE OR REPLACE TRIGGER ${indexName(table, "wake_insert")} AFTER INSERT ON ${name}
      FOR EACH ROW WHEN (NEW.state = 'PLAN') EXECUTE FUNCTION ${wake}()`,
    `CREATE OR REPLACE TRIGGER ${indexName(table, "wake_update")} AFTER UPDATE OF state, plan ON ${name}
      FOR EACH ROW WHEN (NEW.state = 'STOP' AND OLD.state <> 'STOP'
        OR NEW.state = 'PLAN' AND (OLD.state <> 'PLAN' OR NEW.plan <> OLD.plan))
      EXECUTE FUNCTION ${wake}()`
  ]
}
