/**
 * `npm run bench`: measures pg-task as a user would, against the server at PG_TASK_BENCH_URL or an
 * embedded one. The scheduler runs in this process (PgTask.layer) and each phase works in a fresh
 * database: (a) throughput, (b) latency, (d) punctuality, (f) claim time without the scheduler,
 * and (e) this process's peak memory over the whole run. Prints a table of the figures beside their
 * targets and writes them, with the run's details, to bench/results.json.
 */
import * as os from "node:os"
import { fileURLToPath } from "node:url"
import { claimTime } from "./claim.js"
import { latency } from "./latency.js"
import { startSampler } from "./memory.js"
import { schedulerProcess } from "./process.js"
import { say } from "./progress.js"
import { punctuality } from "./punctuality.js"
import { figures, type Results, table, writeJson } from "./report.js"
import { logged } from "./scheduler.js"
import { redact, type Server, startServer } from "./server.js"
import { throughput } from "./throughput.js"

const resultsFile = fileURLToPath(new URL("../../results.json", import.meta.url))

interface PhaseRecord {
  readonly ok: boolean
  readonly seconds: number
  readonly error?: string | undefined
  readonly schedulerWarnings: number
  readonly schedulerErrors: number
}

const phases: Record<string, PhaseRecord> = {}
const memory = startSampler()
let running: Server | undefined
/** Set by a signal: no further phase starts and no results are written. */
let stopping = false

const runPhase = async <A>(key: string, title: string, body: () => Promise<A>): Promise<A | undefined> => {
  if (stopping) return undefined
  say(`== (${key}) ${title}`)
  memory.enter(key)
  const began = performance.now()
  const before = { ...logged }
  const record = (ok: boolean, error?: string) => {
    const seconds = Number(((performance.now() - began) / 1000).toFixed(1))
    phases[key] = {
      ok,
      seconds,
      error,
      schedulerWarnings: logged.warnings - before.warnings,
      schedulerErrors: logged.errors - before.errors
    }
    if (!stopping) say(`== (${key}) ${ok ? "done" : `FAILED: ${error}`} in ${seconds} s`)
  }
  try {
    const result = await body()
    const finished = (result as { finished?: boolean }).finished
    record(finished !== false, finished === false ? "not every task ended (see the figures)" : undefined)
    return result
  } catch (error) {
    record(false, error instanceof Error ? error.message : String(error))
    return undefined
  }
}

const runAll = async (server: Server): Promise<Omit<Results, "memory">> => ({
  throughput: await runPhase("a", "throughput: 20,000 SELECT 1 tasks", () => throughput(server)),
  latency: await runPhase("b", "latency: 200 sequential tasks", () => latency(server)),
  punctuality: await runPhase("d", "punctuality: 1,000 tasks planned 2 s ahead", () => punctuality(server)),
  process: await runPhase("e", "memory: the pg-task binary draining 20,000 tasks", () => schedulerProcess(server)),
  claim: await runPhase("f", "claim time, scheduler stopped", () => claimTime(server))
})

/**
 * On SIGINT or SIGTERM the embedded server is stopped and its folder removed (within 10 s);
 * a second signal exits at once.
 */
const onSignal = (signal: NodeJS.Signals, code: number) => {
  process.once(signal, () => {
    process.once(signal, () => process.exit(code))
    stopping = true
    say(`${signal}: stopping the server`)
    const stop = running?.close() ?? Promise.resolve()
    const limit = new Promise((resolve) => setTimeout(resolve, 10_000))
    void Promise.race([stop, limit]).finally(() => process.exit(code))
  })
}

const main = async () => {
  const date = new Date().toISOString()
  const began = performance.now()
  onSignal("SIGINT", 130)
  onSignal("SIGTERM", 143)
  say(`pg-task benchmark; the scheduler runs in this Node process (pid ${process.pid}) beside the driver`)
  say(process.env.PG_TASK_BENCH_URL ? "server: PG_TASK_BENCH_URL" : "server: starting an embedded PostgreSQL")
  const server = await startServer()
  running = server
  say(`server: PostgreSQL ${server.version} at ${redact(server.url)} (${server.kind})`)
  let partial: Omit<Results, "memory"> = {}
  try {
    partial = await runAll(server)
  } finally {
    if (!stopping) {
      say("stopping the server")
      await server.close()
    }
  }
  if (stopping) return
  const results: Results = { ...partial, memory: memory.stop() }
  const rows = figures(results)
  console.log(`\n${table(rows)}\n`)
  console.log("The scheduler's memory is the pg-task binary's, in a process of its own (phase e); the last")
  console.log("two RSS rows are this Node process, where the driver and the in-process scheduler run together.")
  writeJson(resultsFile, {
    date,
    node: process.version,
    postgres: server.version,
    cpus: os.cpus().length,
    server: server.kind,
    url: redact(server.url),
    schedulerInProcess: true,
    durationSeconds: Number(((performance.now() - began) / 1000).toFixed(1)),
    phases,
    figures: rows,
    results
  })
  console.log(`Figures written to ${resultsFile}`)
  process.exitCode = Object.values(phases).every((phase) => phase.ok) ? 0 : 1
}

main().catch((error) => {
  console.error("bench: failed:", error)
  process.exit(1)
})
