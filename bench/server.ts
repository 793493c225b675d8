/**
 * The PostgreSQL server the benchmark runs against: the one named by PG_TASK_BENCH_URL, else an
 * embedded one in a temporary folder that is removed afterwards. Each phase works in a fresh
 * database of its own, dropped when the phase ends, so phases cannot disturb each other.
 */
import { Effect, Exit, Scope } from "effect"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import * as Embedded from "../src/Embedded.js"

export interface Server {
  /** The admin URL. */
  readonly url: string
  readonly kind: "embedded" | "PG_TASK_BENCH_URL"
  /** `SHOW server_version`. */
  readonly version: string
  readonly close: () => Promise<void>
}

/** The server at `base` with `database` as the path. */
export const urlOf = (base: string, database: string) => {
  const url = new URL(base)
  url.pathname = `/${encodeURIComponent(database)}`
  return url.toString()
}

/** The URL with its password hidden, for the output and the JSON. */
export const redact = (url: string) => {
  const parsed = new URL(url)
  if (parsed.password !== "") parsed.password = "***"
  return parsed.toString()
}

/** Runs one statement on a connection of its own. */
export const once = async <A>(url: string, text: string): Promise<Array<A>> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query(text)).rows as Array<A>
  } finally {
    await client.end()
  }
}

const showVersion = async (url: string) =>
  (await once<{ server_version: string }>(url, "SHOW server_version"))[0]!.server_version

const startEmbedded = async (): Promise<Server> => {
  const scope = Effect.runSync(Scope.make())
  const dataDir = path.join(os.tmpdir(), `pg-task-bench-${process.pid}`)
  const server = await Effect.runPromise(Scope.extend(Embedded.start({ dataDir, temporary: true }), scope))
  return {
    url: server.url,
    kind: "embedded",
    version: await showVersion(server.url),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/** The server named by PG_TASK_BENCH_URL, or a new embedded one. */
export const startServer = async (): Promise<Server> => {
  const given = process.env.PG_TASK_BENCH_URL
  if (!given) return startEmbedded()
  return { url: given, kind: "PG_TASK_BENCH_URL", version: await showVersion(given), close: async () => {} }
}

/** A database of one phase, with a small pool of connections as its owner for the driver's SQL. */
export interface Database {
  readonly name: string
  readonly url: string
  readonly query: <A = Record<string, unknown>>(
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Promise<Array<A>>
  /** A connection of its own, for SQL whose timing must not wait for the pool. */
  readonly connect: () => Promise<pg.Client>
}

/** No statement of the driver may hang a phase. */
const connectionOptions = "-c statement_timeout=120000"

let created = 0

/** Runs `body` in a fresh database, dropped afterwards whatever happens. */
export const inDatabase = async <A>(server: Server, phase: string, body: (db: Database) => Promise<A>) => {
  created += 1
  const name = `pg_task_bench_${phase}_${process.pid}_${created}`
  await once(server.url, `CREATE DATABASE "${name}"`)
  const url = urlOf(server.url, name)
  const pool = new pg.Pool({ connectionString: url, max: 3, options: connectionOptions })
  pool.on("error", () => undefined)
  const db: Database = {
    name,
    url,
    query: async <A>(text: string, params: ReadonlyArray<unknown> = []) =>
      (await pool.query(text, params as Array<unknown>)).rows as Array<A>,
    connect: async () => {
      const client = new pg.Client({ connectionString: url, options: connectionOptions })
      client.on("error", () => undefined)
      await client.connect()
      return client
    }
  }
  try {
    return await body(db)
  } finally {
    await pool.end().catch(() => undefined)
    await once(server.url, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
  }
}

/**
 * Runs several statements in one simple-protocol query and returns the rows of each. A COMMIT in
 * the text commits what came before it; the statements after it run in a transaction of their own.
 */
export const multi = async (client: pg.Client, text: string) => {
  const results = (await client.query(text)) as unknown as Array<pg.QueryResult>
  return results.map((result) => result.rows as Array<Record<string, unknown>>)
}
