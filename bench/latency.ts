/**
 * Phase (b), latency: 200 tasks `SELECT clock_timestamp()`, one at a time, each inserted once the
 * previous one ended. Latency = the time the task's SQL ran (its output) minus the insert's commit.
 *
 * The commit time is read on the server, in the same simple-protocol query right after the COMMIT:
 * `BEGIN; INSERT ...; COMMIT; SELECT clock_timestamp()`. The task cannot be seen by the scheduler
 * before the commit, so a timestamp from INSERT ... RETURNING (taken before the commit) would
 * charge the commit's own cost to pg-task; reading the clock after COMMIT on the client would add
 * a network round trip the other way. Read this way, both ends come from the server's clock.
 */
import { type Summary, rounded, summarize } from "./stats.js"
import { pollUntil, say } from "./progress.js"
import { withScheduler } from "./scheduler.js"
import { type Database, inDatabase, multi, type Server } from "./server.js"
import type pg from "pg"

export const tasks = 200
const taskLimitMs = 5_000
const phaseLimitMs = 60_000

export interface LatencyResult {
  readonly tasks: number
  readonly finished: boolean
  readonly ran: number
  readonly failed: number
  readonly error?: string | undefined
  /** Output time minus commit, ms. */
  readonly latencyMs: Summary
  /** `start` (written by the scheduler) minus commit, ms: the claim and dispatch part. */
  readonly startLagMs: Summary
  readonly firstTaskMs: number | null
  /**
   * `start` (the scheduler's clock, taken before the task's SQL is sent) minus the output (the
   * server's clock, while the SQL runs): it should be below zero; above zero, the scheduler's clock
   * runs ahead of the server's.
   */
  readonly startMinusOutputMs: Summary
}

interface Row {
  readonly state: string
  readonly ran: number | null
  readonly start: number | null
}

const insertOne = async (client: pg.Client) => {
  const results = await multi(
    client,
    `BEGIN;
     INSERT INTO task (input) VALUES ('SELECT clock_timestamp()') RETURNING id::text;
     COMMIT;
     SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS committed`
  )
  return { id: results[1]![0]!.id as string, committed: results[3]![0]!.committed as number }
}

const readTask = async (db: Database, id: string) =>
  (await db.query<Row>(
    `SELECT state::text,
            CASE WHEN state = 'DONE' THEN (extract(epoch FROM output::timestamptz) * 1000)::float8 END AS ran,
            (extract(epoch FROM start) * 1000)::float8 AS start
     FROM task WHERE id = $1`,
    [id]
  ))[0]!

const ended = (row: Row) => row.state === "DONE" || row.state === "FAIL"

const runAll = async (db: Database, client: pg.Client) => {
  const latencies: Array<number> = []
  const lags: Array<number> = []
  const skews: Array<number> = []
  let failed = 0
  const began = performance.now()
  for (let n = 1; n <= tasks; n++) {
    if (performance.now() - began > phaseLimitMs) {
      return { latencies, lags, skews, failed, error: `phase time limit (${phaseLimitMs / 1000} s)` }
    }
    const { id, committed } = await insertOne(client)
    const polled = await pollUntil(() => readTask(db, id), ended, { every: 5, limit: taskLimitMs })
    if (!polled.finished) return { latencies, lags, skews, failed, error: `task ${n} not ended within 5 s` }
    const row = polled.value
    if (row.ran === null) failed += 1
    else latencies.push(row.ran - committed)
    if (row.start !== null) lags.push(row.start - committed)
    if (row.start !== null && row.ran !== null) skews.push(row.start - row.ran)
    if (n % 50 === 0) say(`[b] ${n}/${tasks} tasks, p50 so far ${summarize(latencies).p50.toFixed(2)} ms`)
  }
  return { latencies, lags, skews, failed, error: undefined }
}

const measure = async (db: Database): Promise<LatencyResult> => {
  say(`[b] ${tasks} sequential tasks, each inserted after the previous one ended`)
  const client = await db.connect()
  try {
    const { latencies, lags, skews, failed, error } = await runAll(db, client)
    return {
      tasks,
      finished: error === undefined && failed === 0,
      ran: latencies.length,
      failed,
      error,
      latencyMs: rounded(summarize(latencies)),
      startLagMs: rounded(summarize(lags)),
      firstTaskMs: latencies.length > 0 ? Number(latencies[0]!.toFixed(3)) : null,
      startMinusOutputMs: rounded(summarize(skews))
    }
  } finally {
    await client.end()
  }
}

export const latency = (server: Server) =>
  inDatabase(server, "latency", (db) => withScheduler(server.url, db.name, () => measure(db)))
