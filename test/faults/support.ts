/**
 * Helpers for fault tests: several pg-task instances against one server,
 * real binaries or in-process layers, and ways to tell which instance ran
 * which task.
 */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import * as fs from "node:fs"
import * as PgTask from "../../src/PgTask.js"
import { Scheduler } from "../../src/Scheduler.js"
import { type Running, runBinary } from "../support/binary.js"
import { query, serverUrl, urlOf } from "../support/database.js"

/** The database of the admin URL, where roles and databases are created and dropped. */
export const adminDatabase = () => decodeURIComponent(new URL(serverUrl()).pathname.slice(1)) || "postgres"

/** Starts the binary against the test server with the given targets and extra flags. */
export const startBinary = (database: string, targets: ReadonlyArray<Record<string, unknown>>, extra: ReadonlyArray<string> = []) =>
  runBinary([
    "--url", urlOf(database),
    "--json", JSON.stringify(targets),
    "--shutdown-timeout", "2000",
    ...extra
  ])

const within = <A>(promise: Promise<A>, ms: number) =>
  Promise.race([promise, new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), ms))])

/**
 * Ends a binary: SIGTERM, then SIGKILL if it has not exited within a few
 * seconds. Resolves once it has exited; never hangs.
 */
export const stopBinary = async (binary: Running) => {
  if (binary.child.exitCode !== null || binary.child.signalCode !== null) return
  binary.child.kill("SIGTERM")
  if ((await within(binary.exited, 8000)) === "timeout") {
    binary.child.kill("SIGKILL")
    await within(binary.exited, 5000)
  }
}

/**
 * The local TCP ports of the sockets a process holds, read from /proc
 * (Linux). A PostgreSQL backend's `inet_client_port()` is the local port of
 * its client's socket, so this tells which process a backend serves.
 */
export const localPortsOf = (pid: number): Set<number> => {
  const inodes = new Set<string>()
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))
      if (match) inodes.add(match[1]!)
    } catch {
      // The descriptor was closed meanwhile.
    }
  }
  const ports = new Set<number>()
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    if (!fs.existsSync(file)) continue
    for (const line of fs.readFileSync(file, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length < 10) continue
      if (inodes.has(fields[9]!)) ports.add(parseInt(fields[1]!.split(":").at(-1)!, 16))
    }
  }
  return ports
}

/** Polls `read` every few milliseconds until `stop` resolves or rejects; returns every sample. */
export const sampleWhile = async <A>(read: () => Promise<A>, stop: Promise<unknown>) => {
  const samples: Array<A> = []
  let stopped = false
  void stop.then(() => (stopped = true), () => (stopped = true))
  while (!stopped) {
    samples.push(await read())
    await new Promise((resolve) => setTimeout(resolve, 3))
  }
  return samples
}

/**
 * Runs `body` while every given scheduler layer is alive, each built on its
 * own (so each is a separate instance with its own connections), once all
 * of them have set their tables up; then closes them all. An error of
 * `body` comes out as it was thrown.
 */
export const withSchedulers = async <A>(
  layers: ReadonlyArray<ReturnType<typeof PgTask.layer>>,
  body: () => Promise<A>
): Promise<A> => {
  const scope = Effect.runSync(Scope.make())
  try {
    await Effect.runPromise(Effect.gen(function*() {
      const contexts = yield* Effect.all(layers.map((layer) => Scope.extend(Layer.build(layer), scope)), {
        concurrency: "unbounded"
      })
      yield* Effect.forEach(contexts, (context) => Context.get(context, Scheduler).ready, {
        concurrency: "unbounded",
        discard: true
      })
    }).pipe(Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("schedulers not ready in 20 s") })))
    return await body()
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/** Drops a role if it exists. */
export const dropRole = (role: string) => query(adminDatabase(), `DROP ROLE IF EXISTS "${role}"`)

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
