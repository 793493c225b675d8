/**
 * The database side of the tests: every test file works in databases of its
 * own on the run's server, and reads task rows the way a user would.
 */
import { Effect, Layer } from "effect"
import pg from "pg"
import { inject } from "vitest"
import * as PgTask from "../../src/PgTask.js"

/** The admin URL of the run's server. */
export const serverUrl = () => inject("pgUrl")

/** The run's server, connected to `database`, as `user` when given. */
export const urlOf = (database: string, user?: string) => {
  const url = new URL(serverUrl())
  url.pathname = `/${encodeURIComponent(database)}`
  if (user !== undefined) {
    url.username = encodeURIComponent(user)
    url.password = ""
  }
  return url.toString()
}

const adminDatabase = () => decodeURIComponent(new URL(serverUrl()).pathname.slice(1)) || "postgres"

const pools = new Map<string, pg.Pool>()

const poolOf = (database: string) => {
  let pool = pools.get(database)
  if (pool === undefined) {
    pool = new pg.Pool({ connectionString: urlOf(database), max: 3, idleTimeoutMillis: 1000, allowExitOnIdle: true })
    pool.on("error", () => undefined)
    pools.set(database, pool)
  }
  return pool
}

/** Runs one statement on `database` as the admin user. */
export const query = async <A = Record<string, any>>(
  database: string,
  text: string,
  params: ReadonlyArray<unknown> = []
): Promise<Array<A>> => (await poolOf(database).query(text, params as Array<unknown>)).rows as Array<A>

/** The same as an Effect, for tests written with `it.effect` and `it.live`. */
export const sql = <A = Record<string, any>>(database: string, text: string, params?: ReadonlyArray<unknown>) =>
  Effect.promise(() => query<A>(database, text, params))

const unique = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`

/** A name no other test uses, for databases, roles and schemas. */
export const uniqueName = (prefix: string) => `pgt_${prefix}_${unique()}`

/** A new empty database, dropped with everything in it by `dropDatabase`. */
export const createDatabase = async (prefix: string) => {
  const name = uniqueName(prefix)
  await query(adminDatabase(), `CREATE DATABASE "${name}"`)
  return name
}

export const dropDatabase = async (name: string) => {
  await pools.get(name)?.end()
  pools.delete(name)
  await query(adminDatabase(), `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
}

/**
 * The scheduler against the test server, with the given settings and none
 * from the environment. Its clock is Effect's, so `TestClock` drives it
 * under `it.effect` and real time under `it.live`.
 */
export const scheduler = (
  database: string,
  settings: PgTask.PgTaskOptions["settings"] = {},
  options: Omit<PgTask.PgTaskOptions, "url" | "settings"> = {}
) =>
  PgTask.layer({
    url: urlOf(database),
    env: false,
    clock: "effect",
    settings: { default_timeout: "100", ...settings },
    ...options
  })

/** A scheduler whose only target is the default table of `database`, as the admin user. */
export const localScheduler = (database: string, settings: PgTask.PgTaskOptions["settings"] = {}) =>
  scheduler(database, { json: JSON.stringify([{ data: database }]), ...settings })

export interface TaskRow {
  readonly id: string
  readonly parent: string | null
  readonly state: string
  readonly output: string | null
  readonly error: string | null
  readonly pid: number | null
  readonly start: Date | null
  readonly stop: Date | null
  readonly plan: Date
  readonly group: string
  readonly [column: string]: unknown
}

const finished = new Set(["DONE", "FAIL", "STOP"])

/** Polls in real time until `check` holds, failing after `seconds`. */
export const eventually = async <A>(
  read: () => Promise<A>,
  check: (value: A) => boolean,
  seconds = 20
): Promise<A> => {
  const deadline = Date.now() + seconds * 1000
  for (;;) {
    const value = await read()
    if (check(value)) return value
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${seconds} s; last value: ${JSON.stringify(value)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** Inserts tasks and returns their ids. */
export const insertTasks = (
  database: string,
  rows: ReadonlyArray<Record<string, unknown>>,
  table = "task"
) =>
  Effect.promise(async () => {
    const ids: Array<string> = []
    for (const row of rows) {
      const columns = Object.keys(row)
      const [inserted] = await query<{ id: string }>(
        database,
        `INSERT INTO ${table} (${columns.map((c) => `"${c}"`).join(", ")})
         VALUES (${columns.map((_, i) => `$${i + 1}`).join(", ")}) RETURNING id::text`,
        Object.values(row)
      )
      ids.push(inserted!.id)
    }
    return ids
  })

/** Waits, in real time, until every given task has ended, and returns the rows. */
export const awaitTasks = (database: string, ids: ReadonlyArray<string>, table = "task", seconds = 20) =>
  Effect.promise(() =>
    eventually(
      () => query<TaskRow>(database, `SELECT * FROM ${table} WHERE id = ANY($1::bigint[]) ORDER BY id`, [ids]),
      (rows) => rows.length === ids.length && rows.every((row) => finished.has(row.state)),
      seconds
    )
  )

/** Runs `body` with the scheduler layer alive, then closes it. */
export const withScheduler = <A, E, R>(layer: Layer.Layer<any, any, never>, body: Effect.Effect<A, E, R>) =>
  Effect.scoped(Effect.flatMap(Layer.build(layer), (context) => Effect.provide(body, context)))
