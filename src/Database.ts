/**
 * Connections. The admin connection reads the server's settings and creates
 * missing databases and roles; every target then connects to the same
 * server as its own role, so a task never runs with more than that role's
 * privileges.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import Pg from "pg"
import pgpass from "pgpass"
import * as Conninfo from "./Conninfo.js"
import { DatabaseError } from "./Errors.js"
import { databaseError } from "./internal/session.js"

export interface DatabaseOptions {
  /**
   * The admin connection: a `postgresql://` URL or a libpq `key=value`
   * string. Without it, libpq's `PG*` variables and defaults apply.
   */
  readonly url?: Redacted.Redacted<string> | string | undefined
  readonly applicationName?: string | undefined
}

export interface DatabaseService {
  /** The admin connection, for settings and for creating databases and roles. */
  readonly admin: SqlClient.SqlClient
  /** The role of the admin connection. */
  readonly adminUser: string
  /** The server's `server_version_num`, such as 150004. */
  readonly serverVersion: number
  /** How `user` reaches `database` on the same server. */
  readonly clientConfig: (database: string, user: string) => Pg.ClientConfig
  /** The server's address for logs, without a password. */
  readonly describe: string
}

export class Database extends Context.Tag("pg-task/Database")<Database, DatabaseService>() {
  static readonly layer = (options: DatabaseOptions = {}) =>
    Layer.scoped(Database, make(options)).pipe(Layer.provide(Reactivity.layer))
}

const make = (options: DatabaseOptions) =>
  Effect.gen(function*() {
    const base = yield* baseConfig(options.url)
    const applicationName = options.applicationName ?? "pg-task"
    const admin = yield* PgClient.fromPool({
      acquire: Effect.acquireRelease(
        Effect.sync(() => {
          const pool = new Pg.Pool({ ...base, application_name: applicationName, max: 4 })
          pool.on("error", () => undefined)
          return pool
        }),
        (pool) => Effect.promise(() => pool.end().catch(() => undefined))
      )
    }).pipe(Effect.mapError(databaseError("connect to the admin database")))
    const [row] = yield* admin<{ user: string; version: number }>`
      SELECT current_user AS user, current_setting('server_version_num')::int AS version`.pipe(
      Effect.mapError((error) => databaseError("connect to the admin database")(error.cause))
    )
    const adminUser = row!.user
    const basePassword = base.password
    return Database.of({
      admin,
      adminUser,
      serverVersion: row!.version,
      describe: describeServer(base),
      clientConfig: (database, user) => ({
        ...base,
        database,
        user,
        application_name: applicationName,
        // A role other than the admin's finds its password where libpq looks
        // for one: PGPASSWORD or the password file. Trust needs none.
        password: user === adminUser && basePassword !== undefined
          ? basePassword
          : () => lookupPassword({ ...base, database, user }) as Promise<string>
      })
    })
  })

const baseConfig = (url: DatabaseOptions["url"]) => {
  if (url === undefined) return Effect.succeed<Pg.ClientConfig>({})
  const text = Redacted.isRedacted(url) ? Redacted.value(url) : url
  return Effect.mapError(
    Conninfo.parse(text),
    (error) => new DatabaseError({ action: "read the connection string", reason: error.message })
  ).pipe(Effect.map(Conninfo.toClientConfig))
}

const describeServer = (config: Pg.ClientConfig) => {
  const host = config.host ?? process.env.PGHOST ?? "localhost"
  const port = config.port ?? process.env.PGPORT ?? 5432
  return `${host}:${port}`
}

const lookupPassword = (config: Pg.ClientConfig) =>
  new Promise<string | undefined>((resolve) => {
    if (process.env.PGPASSWORD !== undefined) return resolve(process.env.PGPASSWORD)
    pgpass({
      host: config.host ?? process.env.PGHOST ?? "localhost",
      port: config.port ?? Number(process.env.PGPORT ?? 5432),
      database: config.database,
      user: config.user
    }, (password: string | undefined) => resolve(password))
  })
