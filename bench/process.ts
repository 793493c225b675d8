/**
 * Phase (e), the scheduler's own peak memory: the `pg-task` binary in a process of its own, as an
 * operator runs it, draining 20,000 `SELECT 1` tasks of a fresh database. Its peak resident set is
 * the kernel's high-water mark (VmHWM in /proc/<pid>/status), read just before it is stopped; the
 * driver's own memory is not in it. PG_TASK_BENCH_NODE_OPTIONS adds Node flags to its command line
 * (for example `--max-old-space-size=128`), to see what a heap limit changes.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import { fileURLToPath } from "node:url"
import { pollUntil, say, thousands } from "./progress.js"
import { inDatabase, type Server } from "./server.js"

const binary = fileURLToPath(new URL("../../../bin/pg-task.js", import.meta.url))
const tasks = 20_000

export interface ProcessResult {
  readonly tasks: number
  readonly finished: boolean
  /** VmHWM of the scheduler process, MiB. */
  readonly peakRssMiB: number | null
  /** VmRSS when the tasks had ended, MiB. */
  readonly endRssMiB: number | null
  /** Tasks per second from the insert to the poll that saw the last one end. */
  readonly tasksPerSecond: number
}

/** A figure of /proc/<pid>/status in MiB, or null where there is no /proc. */
const status = (pid: number, key: "VmHWM" | "VmRSS") => {
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${key}:`))
    const kib = Number(/(\d+)/.exec(line ?? "")?.[1])
    return Number.isFinite(kib) ? Number((kib / 1024).toFixed(1)) : null
  } catch {
    return null
  }
}

export const schedulerProcess = (server: Server) =>
  inDatabase(server, "process", async (db): Promise<ProcessResult> => {
    const flags = process.env.PG_TASK_BENCH_NODE_OPTIONS?.split(" ").filter(Boolean) ?? []
    const child = spawn(process.execPath, [...flags, binary, "--url", db.url], {
      env: { ...process.env, PG_TASK_JSON: JSON.stringify([{ data: db.name }]), DATABASE_URL: undefined },
      stdio: ["ignore", "ignore", "inherit"]
    })
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
    try {
      say(`[e] pg-task started as pid ${child.pid}; waiting for its table`)
      await pollUntil(
        async () => (await db.query<{ table: string | null }>("SELECT to_regclass('task')::text AS table"))[0]!,
        (row) => row.table !== null,
        { every: 50, limit: 30_000 }
      )
      await db.query(`INSERT INTO task (input) SELECT 'SELECT 1' FROM generate_series(1, ${tasks})`)
      const polled = await pollUntil(
        async () =>
          (await db.query<{ ended: number }>(
            "SELECT count(*)::int AS ended FROM task WHERE state IN ('DONE', 'FAIL')"
          ))[0]!.ended,
        (ended) => ended >= tasks,
        {
          every: 100,
          limit: 180_000,
          report: (ended) => say(`[e] ${thousands(ended)}/${thousands(tasks)} ended, rss ${status(child.pid!, "VmRSS")} MiB`)
        }
      )
      return {
        tasks,
        finished: polled.finished,
        peakRssMiB: status(child.pid!, "VmHWM"),
        endRssMiB: status(child.pid!, "VmRSS"),
        tasksPerSecond: Math.round(polled.value / (polled.elapsed / 1000))
      }
    } finally {
      child.kill("SIGTERM")
      await exited
    }
  })
