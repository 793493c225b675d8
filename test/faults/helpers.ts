/**
 * Shared pieces of the fault-injection tests: captured scheduler logs, plain
 * queries on any server (the throwaway cluster included), local TCP servers
 * that never answer, and ports where nothing listens.
 */
import { Effect, Logger } from "effect"
import * as net from "node:net"
import { freePort } from "../../src/Embedded.js"
import pg from "pg"
import { Scheduler } from "../../src/Scheduler.js"

export const ready = Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)

export interface LogLine {
  /** When it was written, ms since the epoch (host clock). */
  readonly at: number
  readonly line: string
}

/** The scheduler's logs in logfmt, kept in memory; provide `layer` around the scheduler. */
export const captureLogs = () => {
  const lines: Array<LogLine> = []
  const layer = Logger.replace(
    Logger.defaultLogger,
    Logger.map(Logger.logfmtLogger, (line) => lines.push({ at: Date.now(), line }))
  )
  return { lines, layer, text: () => lines.map((entry) => entry.line).join("\n") }
}

/** A URL with another database. */
export const withDatabase = (url: string, database: string) => {
  const parsed = new URL(url)
  parsed.pathname = `/${encodeURIComponent(database)}`
  return parsed.toString()
}

/** One statement on a fresh connection, closed afterwards; errors are the server's. */
export const once = async <A = Record<string, any>>(
  url: string,
  text: string,
  params: ReadonlyArray<unknown> = []
): Promise<Array<A>> => {
  const client = new pg.Client({ connectionString: url })
  client.on("error", () => undefined)
  await client.connect()
  try {
    return (await client.query(text, params as Array<unknown>)).rows as Array<A>
  } finally {
    await client.end().catch(() => undefined)
  }
}

/** The same as an Effect. */
export const onceE = <A = Record<string, any>>(url: string, text: string, params?: ReadonlyArray<unknown>) =>
  Effect.promise(() => once<A>(url, text, params))

/** Polls until `check` holds or `seconds` pass; the last value either way. */
export const within = async <A>(read: () => Promise<A>, check: (value: A) => boolean, seconds: number) => {
  const deadline = Date.now() + seconds * 1000
  for (;;) {
    let value: A | undefined
    let failed: unknown
    try {
      value = await read()
    } catch (error) {
      failed = error
    }
    if (failed === undefined && check(value as A)) return value as A
    if (Date.now() > deadline) {
      throw new Error(
        `condition not met within ${seconds} s; last ${
          failed === undefined ? `value: ${JSON.stringify(value)}` : `error: ${String(failed)}`
        }`
      )
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/**
 * A TCP server on 127.0.0.1 that accepts connections and never answers,
 * closed with the scope. `open()` tells how many accepted sockets are still
 * open (not closed by the client).
 */
export const hangingServer = Effect.acquireRelease(
  Effect.async<{ server: net.Server; port: number; sockets: Set<net.Socket>; accepted: () => number }>((resume) => {
    const sockets = new Set<net.Socket>()
    let accepted = 0
    const server = net.createServer((socket) => {
      accepted += 1
      sockets.add(socket)
      socket.on("error", () => undefined)
      socket.on("close", () => sockets.delete(socket))
      // Read and drop whatever comes, so that the client's close is seen.
      socket.resume()
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      resume(Effect.succeed({ server, port, sockets, accepted: () => accepted }))
    })
  }),
  ({ server, sockets }) =>
    Effect.async<void>((resume) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resume(Effect.void))
    })
)

/** A port on 127.0.0.1 where nothing listens (it was free a moment ago). */
export const closedPort = freePort
