/**
 * What the worker does ahead of planned tasks: the sessions a plan will
 * want are open before it comes, so that tasks planned for one instant
 * start then rather than after their connections.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Scheduler } from "../src/Scheduler.js"
import {
  awaitTasks, createDatabase, dropDatabase, localScheduler, query, withScheduler
} from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("warm")
})
afterAll(() => dropDatabase(database))

interface Ran {
  readonly pid: number
  readonly before: boolean
}

/**
 * Inserts `n` tasks planned two seconds ahead and waits for them; then
 * tells, for each backend that ran one, whether it connected before the
 * plan, and how many sessions the scheduler opened since the insert.
 */
const planAhead = (n: number) =>
  Effect.gen(function*() {
    yield* Effect.flatMap(Scheduler, (s) => s.ready)
    const rows = yield* Effect.promise(() =>
      query<{ id: string; inserted: Date }>(database,
        `INSERT INTO task (plan, input) SELECT now() + interval '2 seconds', 'SELECT pg_sleep(0.1)'
         FROM generate_series(1, $1) RETURNING id::text, clock_timestamp() AS inserted`, [n])
    )
    yield* awaitTasks(database, rows.map((row) => row.id))
    const ran = yield* Effect.promise(() =>
      query<Ran>(database,
        `SELECT DISTINCT task.pid, activity.backend_start < task.plan AS before
         FROM task JOIN pg_stat_activity AS activity ON activity.pid = task.pid
         WHERE task.id = ANY($1::bigint[])`, [rows.map((row) => row.id)])
    )
    const [open] = yield* Effect.promise(() =>
      query<{ n: number }>(database,
        `SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'pg-task' AND backend_start > $1`,
        [rows[0]!.inserted])
    )
    return { ran, open: open!.n }
  })

describe("sessions ahead of planned tasks", () => {
  it.live("a burst planned for one instant runs on sessions that connected before its plan", () =>
    withScheduler(
      localScheduler(database, { default_run: "4", default_timeout: "500" }),
      Effect.gen(function*() {
        const { ran } = yield* planAhead(4)
        expect(ran).toHaveLength(4)
        expect(ran.every((backend) => backend.before)).toBe(true)
      })
    ))

  it.live("one planned task opens one session, not a session for every slot", () =>
    withScheduler(
      localScheduler(database, { default_run: "4", default_timeout: "500" }),
      Effect.gen(function*() {
        const { ran, open } = yield* planAhead(1)
        expect(ran).toEqual([{ pid: ran[0]!.pid, before: true }])
        expect(open).toBe(1)
      })
    ))
})
