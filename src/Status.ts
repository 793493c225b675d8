/**
 * What an operator asks of a running installation: `pg-task status` reads
 * each target's table, `pg-task check` says whether pg-task could run.
 * Both connect as each target's role, as the scheduler does.
 */
import * as Effect from "effect/Effect"
import { quote, requiredColumns } from "./Bootstrap.js"
import { describeTarget, PgTaskConfig, type Target } from "./Config.js"
import { Database } from "./Database.js"
import * as Session from "./internal/session.js"

/** The target's table, quoted, or undefined when it does not exist yet. */
const findTable = (session: Session.Session, target: Target) =>
  Effect.map(
    session.query<{ name: string | null }>(
      `SELECT to_regclass(format('%I.%I', coalesce($1, current_schema()), $2::text))::text AS name`,
      [target.schema ?? null, target.table]
    ),
    ([row]) => row?.name ?? undefined
  )

const openAs = (target: Target) =>
  Effect.flatMap(Database, (database) =>
    Session.open(database.clientConfig(target.data, target.user), `connect to ${target.data} as ${target.user}`))

/** Counts by state, lateness of the oldest due task, running tasks and recent failures, per target. */
export const status = Effect.gen(function*() {
  const { targets } = yield* PgTaskConfig
  const parts: Array<string> = []
  for (const target of targets) {
    parts.push(yield* targetStatus(target).pipe(
      Effect.scoped,
      Effect.catchAll((error) => Effect.succeed(`${describeTarget(target)}\n  unreachable: ${error.message}`))
    ))
  }
  return parts.join("\n\n")
})

const targetStatus = (target: Target) =>
  Effect.gen(function*() {
    const session = yield* openAs(target)
    const table = yield* findTable(session, target)
    const heading = describeTarget(target)
    if (table === undefined) return `${heading}\n  no task table yet: pg-task creates it when it starts`
    const states = yield* session.query<{ state: string; n: string }>(
      `SELECT state::text, count(*) AS n FROM ${table} GROUP BY state ORDER BY state`
    )
    const [due] = yield* session.query<{ n: string; late: number | null }>(
      `SELECT count(*) AS n, extract(epoch FROM now() - min(plan))::float8 AS late
       FROM ${table} WHERE state = 'PLAN' AND plan <= now()`
    )
    const running = yield* session.query<{ id: string; group: string; pid: number; age: number; input: string }>(
      `SELECT id::text, "group", pid, extract(epoch FROM now() - start)::float8 AS age, left(input, 60) AS input
       FROM ${table} WHERE state = 'WORK' ORDER BY start LIMIT 10`
    )
    const failures = yield* session.query<{ id: string; stop: Date; error: string }>(
      `SELECT id::text, stop, split_part(error, E'\\n', 1) AS error
       FROM ${table} WHERE state = 'FAIL' ORDER BY stop DESC NULLS LAST LIMIT 5`
    )
    const lines = [
      `${heading} (${table})`,
      `  tasks: ${states.length === 0 ? "none" : states.map((row) => `${row.state} ${row.n}`).join(", ")}`,
      `  due now: ${due!.n}${due!.late === null ? "" : `, oldest ${seconds(due!.late)} late`}`,
      `  running: ${running.length === 0 ? "none" : ""}`.trimEnd(),
      ...running.map((row) => `    ${row.id} [${row.group}] pid ${row.pid}, ${seconds(row.age)}: ${row.input}`),
      `  recent failures: ${failures.length === 0 ? "none" : ""}`.trimEnd(),
      ...failures.map((row) => `    ${row.id} at ${row.stop?.toISOString() ?? "?"}: ${row.error}`)
    ]
    return lines.join("\n")
  })

const seconds = (value: number) => `${value.toFixed(1)} s`

/** One finding of `check`: the target and what is wrong, or undefined when all is well. */
export interface Finding {
  readonly target: string
  readonly problem: string | undefined
}

/**
 * Whether each target could run: the admin connection works, the role and
 * database exist or the admin role may create them, the role can connect,
 * and an existing table has every column pg-task needs.
 */
export const check = Effect.gen(function*() {
  const { targets } = yield* PgTaskConfig
  const database = yield* Database
  const [admin] = yield* database.admin<{ superuser: boolean; createrole: boolean; createdb: boolean }>`
    SELECT rolsuper AS superuser, rolcreaterole AS createrole, rolcreatedb AS createdb
    FROM pg_roles WHERE rolname = current_user`
  const findings: Array<Finding> = []
  for (const target of targets) {
    const problem = yield* checkTarget(target, admin!).pipe(
      Effect.scoped,
      Effect.catchAll((error) => Effect.succeed(error.message))
    )
    findings.push({ target: describeTarget(target), problem })
  }
  return findings
})

const checkTarget = (target: Target, admin: { superuser: boolean; createrole: boolean; createdb: boolean }) =>
  Effect.gen(function*() {
    const { admin: sql } = yield* Database
    const [found] = yield* sql<{ role: boolean; database: boolean }>`
      SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = ${target.user}) AS role,
             EXISTS (SELECT FROM pg_database WHERE datname = ${target.data}) AS database`
    if (!found!.role && !admin.superuser && !admin.createrole) {
      return `role ${target.user} does not exist and the admin connection may not create roles`
    }
    if (!found!.database && !admin.superuser && !admin.createdb) {
      return `database ${target.data} does not exist and the admin connection may not create databases`
    }
    if (!found!.role || !found!.database) return undefined
    const session = yield* openAs(target)
    const table = yield* findTable(session, target)
    if (table === undefined) return undefined
    const columns = yield* session.query<{ name: string }>(
      `SELECT attname AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`,
      [table]
    )
    const present = new Set(columns.map((column) => column.name))
    const missing = requiredColumns.filter((column) => !present.has(column))
    return missing.length === 0
      ? undefined
      : `table ${table} has no column ${missing.map((column) => quote(column)).join(", ")}`
  }).pipe(Effect.mapError((error) => ({ message: "reason" in error ? error.reason : String(error) })))
