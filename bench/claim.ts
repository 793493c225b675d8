/**
 * Phase (f), claim time, with no scheduler running: `Claimer.claim(session, now, 16)` timed
 * 50 times (after 20 untimed warm-up calls) on an empty table, on 1,000,000 finished rows, and on
 * 100,000 due rows (each claim takes 16, which a plain UPDATE then puts back to PLAN, untimed).
 * Every case starts right after VACUUM ANALYZE, so all three run with fresh statistics.
 * The whole call is reported, as a median in ms, and the claim statement alone too when the claim
 * sends it as a query of its own (not when the claim is one script of several statements).
 */
import { Effect, Exit, Scope } from "effect"
import type { TaskTable } from "../src/Bootstrap.js"
import * as Claimer from "../src/Claimer.js"
import * as Session from "../src/internal/session.js"
import { say, thousands } from "./progress.js"
import { withScheduler } from "./scheduler.js"
import { type Database, inDatabase, type Server } from "./server.js"
import { rounded, type Summary, summarize } from "./stats.js"

const rounds = 50
const warmUp = 20
const limit = 16
const historyRows = 1_000_000
const dueRows = 100_000
const chunk = 100_000

export interface ClaimCase {
  readonly rows: string
  readonly claimed: number
  /** The whole `claim` call. */
  readonly callMs: Summary
  /** The claim statement alone; null when the claim does not send it as a query of its own. */
  readonly statementMs: Summary | null
}

export interface ClaimResult {
  readonly rounds: number
  readonly empty: ClaimCase
  readonly history: ClaimCase
  readonly due: ClaimCase
}

/** The claim statement: it moves rows to TAKE, and is not a script that also begins a transaction. */
const isClaimStatement = (text: string) =>
  /\bUPDATE\b/.test(text) && text.includes("'TAKE'") && !/\bBEGIN\b/.test(text)

/** The session with the time of each claim statement written to `times`. */
const timed = (session: Session.Session, times: Array<number>): Session.Session => ({
  ...session,
  query: <A>(text: string, params?: ReadonlyArray<unknown>) => {
    if (!isClaimStatement(text)) return session.query<A>(text, params)
    const began = performance.now()
    const record = Effect.sync(() => times.push(performance.now() - began))
    return Effect.tap(session.query<A>(text, params), () => record)
  }
})

/** The claimed tasks, whether `claim` returns them as a list or as `{ tasks, ... }`. */
const claimedOf = (result: unknown): ReadonlyArray<{ readonly id: string }> =>
  Array.isArray(result) ? result : (result as { tasks: ReadonlyArray<{ readonly id: string }> }).tasks

const claimOnce = async (session: Session.Session) => {
  const claim = Claimer.claim(session, Date.now(), limit).pipe(Effect.timeout("30 seconds"))
  return claimedOf(await Effect.runPromise(claim))
}

const putBack = (db: Database, ids: ReadonlyArray<string>) =>
  db.query(`UPDATE task SET state = 'PLAN', pid = NULL WHERE id = ANY($1::bigint[])`, [ids])

const measureCase = async (db: Database, session: Session.Session, rows: string) => {
  const statements: Array<number> = []
  const calls: Array<number> = []
  const probe = timed(session, statements)
  let claimed = 0
  let reported = performance.now()
  for (let n = 0; n < warmUp + rounds; n++) {
    if (performance.now() - reported > 2000) {
      say(`[f] ${rows}: ${n}/${warmUp + rounds} claims`)
      reported = performance.now()
    }
    const began = performance.now()
    const tasks = await claimOnce(probe)
    const took = performance.now() - began
    if (tasks.length > 0) await putBack(db, tasks.map((task) => task.id))
    if (n < warmUp) continue
    calls.push(took)
    claimed = tasks.length
  }
  const result: ClaimCase = {
    rows,
    claimed,
    callMs: rounded(summarize(calls)),
    statementMs: statements.length > warmUp ? rounded(summarize(statements.slice(warmUp))) : null
  }
  const statement = result.statementMs === null ? "not sent alone" : `${result.statementMs.p50} ms`
  say(`[f] ${rows}: claim call median ${result.callMs.p50} ms, statement ${statement}, ${claimed} claimed`)
  return result
}

/** Finished rows ran a day ago; due rows were planned an hour ago; one millisecond apart. */
const rowsSql = (state: "DONE" | "PLAN", from: number, to: number) =>
  state === "DONE"
    ? `INSERT INTO task (plan, start, stop, state, input, output)
       SELECT day - interval '1 day', day, day, 'DONE', 'SELECT 1', '1'
       FROM generate_series(${from}, ${to}) AS n,
            LATERAL (SELECT now() - interval '1 day' + n * interval '1 ms') AS t(day)`
    : `INSERT INTO task (plan, input)
       SELECT now() - interval '1 hour' + n * interval '1 ms', 'SELECT 1'
       FROM generate_series(${from}, ${to}) AS n`

const insertRows = async (db: Database, total: number, state: "DONE" | "PLAN") => {
  for (let from = 1; from <= total; from += chunk) {
    const to = Math.min(total, from + chunk - 1)
    await db.query(rowsSql(state, from, to))
    say(`[f] ${thousands(to)}/${thousands(total)} ${state} rows inserted`)
  }
  await db.query("VACUUM ANALYZE task")
}

const measureAll = async (db: Database, table: TaskTable): Promise<ClaimResult> => {
  const scope = Effect.runSync(Scope.make())
  try {
    const open = Session.open({ connectionString: db.url }, "bench")
    const session = await Effect.runPromise(Scope.extend(open, scope))
    // The claim is a function of the worker's session; this session needs its own.
    await Effect.runPromise(Claimer.prepareClaims(session, table))
    await db.query("VACUUM ANALYZE task")
    const empty = await measureCase(db, session, "empty table")
    await insertRows(db, historyRows, "DONE")
    const history = await measureCase(db, session, `${thousands(historyRows)} finished rows`)
    await db.query("TRUNCATE task RESTART IDENTITY")
    await insertRows(db, dueRows, "PLAN")
    const due = await measureCase(db, session, `${thousands(dueRows)} due rows (no history)`)
    return { rounds, empty, history, due }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

export const claimTime = (server: Server) =>
  inDatabase(server, "claim", async (db) => {
    say("[f] creating the table with the scheduler, then stopping it")
    const table = await withScheduler(server.url, db.name, async (table) => table)
    return measureAll(db, table)
  })
