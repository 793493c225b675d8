/**
 * Phase (a), throughput: with the scheduler running, 20,000 `SELECT 1` tasks are inserted in one
 * statement; tasks per second = 20,000 / the time from the insert's commit (its return to the
 * driver) until a poll every 50 ms sees every row DONE or FAIL. The span max(stop) - min(start)
 * of the rows is reported too, and the CPU a task of the scheduler's process and of the server,
 * which move less from run to run than the rate.
 */
import { countCpu, type CpuPerTask } from "./cpu.js"
import { pollUntil, round, say, thousands } from "./progress.js"
import { withScheduler } from "./scheduler.js"
import { type Database, inDatabase, multi, type Server } from "./server.js"

export const tasks = 20_000
const limitMs = 180_000

export interface ThroughputResult {
  readonly tasks: number
  readonly finished: boolean
  readonly ended: number
  readonly failed: number
  readonly insertMs: number
  /** From the insert's commit to the poll that saw the last row end. */
  readonly elapsedMs: number
  readonly tasksPerSecond: number
  /** max(stop) - min(start) over the ended rows. */
  readonly spanMs: number | null
  readonly spanTasksPerSecond: number | null
  /** The last row's stop after the commit, by the server's clock. */
  readonly lastStopAfterCommitMs: number | null
  /** From the insert to the poll that saw the last row end. */
  readonly cpu: CpuPerTask
}

interface Ended {
  readonly ended: number
  readonly failed: number
}

const countEnded = async (db: Database) =>
  (await db.query<Ended>(
    `SELECT count(*)::int AS ended, count(*) FILTER (WHERE state = 'FAIL')::int AS failed
     FROM task WHERE state IN ('DONE', 'FAIL')`
  ))[0]!

const insertAll = async (db: Database) => {
  const client = await db.connect()
  try {
    const before = performance.now()
    const results = await multi(
      client,
      `BEGIN;
       INSERT INTO task (input) SELECT 'SELECT 1' FROM generate_series(1, ${tasks});
       COMMIT;
       SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS committed`
    )
    const committedAt = performance.now()
    return { insertMs: committedAt - before, committedAt, committed: results[3]![0]!.committed as number }
  } finally {
    await client.end()
  }
}

const span = async (db: Database, committed: number) =>
  (await db.query<{ span: number | null; last: number | null }>(
    `SELECT (extract(epoch FROM max(stop) - min(start)) * 1000)::float8 AS span,
            (extract(epoch FROM max(stop)) * 1000)::float8 - $1 AS last
     FROM task WHERE state IN ('DONE', 'FAIL')`,
    [committed]
  ))[0]!

const measure = async (db: Database): Promise<ThroughputResult> => {
  say(`[a] inserting ${thousands(tasks)} tasks in one statement`)
  const cpu = countCpu()
  const insert = await insertAll(db)
  say(`[a] inserted and committed in ${insert.insertMs.toFixed(0)} ms; waiting for them to end`)
  const polled = await pollUntil(() => countEnded(db), (n) => n.ended >= tasks, {
    every: 50,
    limit: limitMs,
    report: (n, elapsed) =>
      say(`[a] ${thousands(n.ended)}/${thousands(tasks)} ended, ${(elapsed / 1000).toFixed(1)} s, `
        + `${Math.round(n.ended / (elapsed / 1000))} tasks/s so far`)
  }, insert.committedAt)
  const cpuPerTask = cpu(tasks)
  const { span: spanMs, last } = await span(db, insert.committed)
  const { ended, failed } = polled.value
  return {
    tasks,
    finished: polled.finished,
    ended,
    failed,
    insertMs: round(insert.insertMs, 1),
    elapsedMs: round(polled.elapsed, 1),
    tasksPerSecond: round(ended / (polled.elapsed / 1000), 1),
    spanMs: spanMs === null ? null : round(spanMs, 1),
    spanTasksPerSecond: spanMs === null || spanMs <= 0 ? null : round(ended / (spanMs / 1000), 1),
    lastStopAfterCommitMs: last === null ? null : round(last, 1),
    cpu: cpuPerTask
  }
}

export const throughput = (server: Server) =>
  inDatabase(server, "throughput", (db) => withScheduler(server.url, db.name, () => measure(db)))
