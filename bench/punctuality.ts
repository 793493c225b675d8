/**
 * Phase (d), punctuality: 1,000 tasks `SELECT clock_timestamp()` planned for the same instant, two
 * seconds after they are inserted in one statement. Lateness = the time the task's SQL ran (its
 * output) minus its plan, both by the server's clock; a task whose SQL ran before its plan started
 * early, which must never happen.
 */
import { pollUntil, say, thousands } from "./progress.js"
import { withScheduler } from "./scheduler.js"
import { type Database, inDatabase, type Server } from "./server.js"
import { rounded, type Summary, summarize } from "./stats.js"

export const tasks = 1_000
const leadSeconds = 2
const limitMs = 60_000

export interface PunctualityResult {
  readonly tasks: number
  readonly finished: boolean
  readonly ran: number
  readonly failed: number
  /** Output time minus plan, ms, over the tasks that ran. */
  readonly latenessMs: Summary
  /** Tasks whose SQL ran before their plan. */
  readonly early: number
  /** Tasks whose `start` (written by the scheduler) is before their plan. */
  readonly startedBeforePlan: number
}

const insertAll = (db: Database) =>
  db.query(
    `INSERT INTO task (plan, input)
     SELECT now() + interval '${leadSeconds} seconds', 'SELECT clock_timestamp()'
     FROM generate_series(1, ${tasks})`
  )

const countEnded = async (db: Database) => {
  const [row] = await db.query<{ ended: number }>(
    `SELECT count(*)::int AS ended FROM task WHERE state IN ('DONE', 'FAIL')`
  )
  return row!.ended
}

const lateness = (db: Database) =>
  db.query<{ state: string; late: number | null; started_early: boolean | null }>(
    `SELECT state::text,
            CASE WHEN state = 'DONE'
              THEN (extract(epoch FROM output::timestamptz - plan) * 1000)::float8 END AS late,
            start < plan AS started_early
     FROM task`
  )

const measure = async (db: Database): Promise<PunctualityResult> => {
  say(`[d] inserting ${thousands(tasks)} tasks planned ${leadSeconds} s ahead, all for the same instant`)
  await insertAll(db)
  const polled = await pollUntil(() => countEnded(db), (n) => n >= tasks, {
    every: 50,
    limit: limitMs + leadSeconds * 1000,
    report: (n, elapsed) =>
      say(`[d] ${thousands(n)}/${thousands(tasks)} ended, ${(elapsed / 1000).toFixed(1)} s after the insert`)
  })
  const rows = await lateness(db)
  const late = rows.flatMap((row) => row.late === null ? [] : [row.late])
  return {
    tasks,
    finished: polled.finished,
    ran: late.length,
    failed: rows.filter((row) => row.state === "FAIL").length,
    latenessMs: rounded(summarize(late)),
    early: late.filter((ms) => ms < 0).length,
    startedBeforePlan: rows.filter((row) => row.started_early === true).length
  }
}

export const punctuality = (server: Server) =>
  inDatabase(server, "punctuality", (db) => withScheduler(server.url, db.name, () => measure(db)))
