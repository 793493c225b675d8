/**
 * A backlog of short tasks runs in rows: several tasks sent to one session
 * at once, one after another. Each task of a row still runs once, in its own
 * clean session state, with its own start, its own outcome and its own STOP;
 * a row cut short gives its tasks back.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { fitsInRow } from "../src/Executor.js"
import { Scheduler } from "../src/Scheduler.js"
import type { ClaimedTask } from "../src/Task.js"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, localScheduler, query, scheduler, type TaskRow, withScheduler
} from "./support/database.js"
import { leaveLeftovers, leftoverColumns, noLeftovers } from "./support/leftovers.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("rows")
  await query(database, "CREATE TABLE side (task bigint NOT NULL, backend int NOT NULL DEFAULT pg_backend_pid())")
  // The task table, made by a scheduler that then stops.
  await Effect.runPromise(withScheduler(localScheduler(database), Effect.flatMap(Scheduler, (s) => s.ready)))
})
afterAll(() => dropDatabase(database))

const sideEffect = "INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint)"

/**
 * Runs short tasks, so that the scheduler (one session) has seen its tasks
 * are short, then inserts the tasks in one statement: its next claim finds
 * all of them waiting, and they run as one row on that session.
 */
const inRow = <A>(
  inputs: ReadonlyArray<string>,
  body: (ids: ReadonlyArray<string>) => Effect.Effect<A>,
  layer = localScheduler(database, { default_run: "1" })
) =>
  withScheduler(
    layer,
    Effect.gen(function*() {
      yield* Effect.flatMap(Scheduler, (s) => s.ready)
      yield* warmUp
      const rows = yield* Effect.promise(() =>
        query<{ id: string }>(database,
          `INSERT INTO task (input) SELECT text FROM unnest($1::text[]) WITH ORDINALITY AS input(text, n) ORDER BY n
           RETURNING id::text`, [inputs])
      )
      return yield* body(rows.map((row) => row.id).sort((a, b) => Number(a) - Number(b)))
    })
  )

/** Twenty short tasks: enough for the average of late durations to forget a slow first one. */
const warmUp = Effect.gen(function*() {
  const rows = yield* Effect.promise(() =>
    query<{ id: string }>(database,
      "INSERT INTO task (input) SELECT 'SELECT 1' FROM generate_series(1, 20) RETURNING id::text")
  )
  yield* awaitTasks(database, rows.map((row) => row.id))
})

const rowsOf = (ids: ReadonlyArray<string>) =>
  query<TaskRow>(database, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids])

const sideCounts = (ids: ReadonlyArray<string>) =>
  query<{ task: string; n: number }>(database,
    "SELECT side.task::text AS task, count(*)::int AS n FROM side WHERE task = ANY($1::bigint[]) GROUP BY side.task ORDER BY side.task",
    [ids])

describe("a row of tasks on one session", () => {
  it.live("marks its tasks running together; each runs once, in order, with its own start and clean state", () =>
    inRow([
      `SELECT pg_sleep(0.3); ${leaveLeftovers}; SELECT 1`,
      `SELECT current_setting('pg_task.id') = (SELECT max(id)::text FROM task WHERE state = 'WORK'
          AND pid = pg_backend_pid() AND id = current_setting('pg_task.id')::bigint) AS own_id,
        ${leftoverColumns}`,
      sideEffect,
      sideEffect
    ], (ids) =>
      Effect.gen(function*() {
        // While the first task sleeps, the whole row is running on its session.
        const running = yield* Effect.promise(() =>
          eventually(() => rowsOf(ids), (rows) => rows.every((row) => row.state === "WORK"), 10)
        )
        expect(new Set(running.map((row) => row.pid)).size).toBe(1)
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => row.state)).toEqual(["DONE", "DONE", "DONE", "DONE"])
        expect(new Set(rows.map((row) => row.pid)).size).toBe(1)
        const [header, values] = noLeftovers.split("\n")
        expect(rows[1]!.output).toBe(`own_id\t${header}\nt\t${values}`)
        // Each task's start is its own: the second began after the first,
        // which slept, had stopped; the row's start, shared, would be before.
        for (let i = 1; i < rows.length; i++) {
          expect(rows[i]!.start!.getTime()).toBeGreaterThanOrEqual(rows[i - 1]!.stop!.getTime())
        }
        expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([
          { task: ids[2], n: 1 },
          { task: ids[3], n: 1 }
        ])
      })))

  it.live("holds at most 64 tasks: the rest of a backlog waits for the next row", () =>
    inRow(["SELECT pg_sleep(0.5)", ...Array<string>(99).fill("SELECT 1")], (ids) =>
      Effect.gen(function*() {
        // While the row's first task sleeps, its row is running and the
        // rest of the backlog is claimed or waiting to be.
        const running = yield* Effect.promise(() =>
          eventually(() => rowsOf(ids), (rows) => rows[0]!.state === "WORK" && rows[1]!.state === "WORK", 10)
        )
        const working = running.filter((row) => row.state === "WORK")
        expect(working.length).toBe(64)
        expect(new Set(working.map((row) => row.pid)).size).toBe(1)
        expect(working.map((row) => row.id)).toEqual(ids.slice(0, 64))
        const rows = yield* awaitTasks(database, ids)
        expect(rows.every((row) => row.state === "DONE")).toBe(true)
      })))

  it.live("a task that fails fails alone; the others run with their own output", () =>
    inRow(["SELECT 1/0", "SELECT 2", "SELECT no_such_column", "SELECT 4"], (ids) =>
      Effect.gen(function*() {
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => [row.state, row.output])).toEqual([
          ["FAIL", null],
          ["DONE", "2"],
          ["FAIL", null],
          ["DONE", "4"]
        ])
        expect(rows[0]!.error!.startsWith("ERROR:  division by zero")).toBe(true)
        expect(rows[2]!.error!.startsWith("ERROR:  column \"no_such_column\" does not exist")).toBe(true)
      })))

  it.live("SQL that fails to parse fails alone and runs once; a VACUUM still runs in a row", () =>
    inRow(["SELECT 1 FROM", sideEffect, "SELECT E'a\\0b'", "VACUUM side", sideEffect, "SELECT 2"], (ids) =>
      Effect.gen(function*() {
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => [row.state, row.output])).toEqual([
          ["FAIL", null],
          ["DONE", "INSERT 0 1"],
          ["FAIL", null],
          ["DONE", "VACUUM"],
          ["DONE", "INSERT 0 1"],
          ["DONE", "2"]
        ])
        expect(rows[0]!.error).toBe("ERROR:  syntax error at end of input")
        expect(rows[2]!.error).toBe("ERROR:  invalid byte sequence for encoding \"UTF8\": 0x00")
        expect(new Set(rows.map((row) => row.pid)).size).toBe(1)
        expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([
          { task: ids[1], n: 1 },
          { task: ids[4], n: 1 }
        ])
      })))

  it.live("what a query left in the session is gone for the next task, even after a task that failed", () =>
    inRow([
      "SELECT set_config('statement_timeout', '12345', false), set_config('search_path', 'nowhere', false), "
      + "pg_advisory_lock(42)",
      "SELECT set_config('work_mem', '7MB', false), 1/0",
      `SELECT current_setting('search_path') AS path, current_setting('work_mem') AS work_mem, ${leftoverColumns}`
    ], (ids) =>
      Effect.gen(function*() {
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => row.state)).toEqual(["DONE", "FAIL", "DONE"])
        const [header, values] = noLeftovers.split("\n")
        const [{ path, work_mem }] = yield* Effect.promise(() =>
          query<{ path: string; work_mem: string }>(database,
            "SELECT current_setting('search_path') AS path, current_setting('work_mem') AS work_mem")
        )
        expect(rows[2]!.output).toBe(`path\twork_mem\t${header}\n${path}\t${work_mem}\t${values}`)
        expect(new Set(rows.map((row) => row.pid)).size).toBe(1)
      })))

  it.live("a task stopped while it waits in the row never runs; the tasks after it run once elsewhere", () =>
    inRow(["SELECT pg_sleep(1); " + sideEffect, sideEffect, sideEffect, sideEffect], (ids) =>
      Effect.gen(function*() {
        yield* Effect.promise(() =>
          eventually(() => rowsOf(ids), (rows) => rows.every((row) => row.state === "WORK"), 10)
        )
        yield* Effect.promise(() => query(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [ids[1]]))
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => row.state)).toEqual(["DONE", "STOP", "DONE", "DONE"])
        expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([
          { task: ids[0], n: 1 },
          { task: ids[2], n: 1 },
          { task: ids[3], n: 1 }
        ])
      })))

  it.live("a STOP of the running task ends it at once; the tasks after it run once", () =>
    inRow(["SELECT pg_sleep(30)", sideEffect, sideEffect], (ids) =>
      Effect.gen(function*() {
        yield* Effect.promise(() =>
          eventually(() => query<{ n: number }>(database,
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(30)' AND state = 'active'"),
            ([row]) => row!.n === 1, 10)
        )
        yield* Effect.promise(() => query(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [ids[0]]))
        const rows = yield* awaitTasks(database, ids, "task", 10)
        expect(rows.map((row) => row.state)).toEqual(["STOP", "DONE", "DONE"])
        expect(rows[0]!.error).toBe("ERROR:  canceling statement due to user request")
        expect(rows[0]!.stop!.getTime() - rows[0]!.start!.getTime()).toBeLessThan(5000)
        expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([
          { task: ids[1], n: 1 },
          { task: ids[2], n: 1 }
        ])
      })))

  it.live("a row whose session is ended under it gives its tasks back; each then runs once", () =>
    inRow(["SELECT pg_sleep(1); " + sideEffect, sideEffect, sideEffect], (ids) =>
      Effect.gen(function*() {
        const [sleeper] = yield* Effect.promise(() =>
          eventually(() => query<{ pid: number }>(database,
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(1);%' AND state = 'active' AND pid <> pg_backend_pid()"),
            (rows) => rows.length === 1, 10)
        )
        yield* Effect.promise(() => query(database, "SELECT pg_terminate_backend($1)", [sleeper!.pid]))
        const rows = yield* awaitTasks(database, ids)
        expect(rows.map((row) => row.state)).toEqual(["DONE", "DONE", "DONE"])
        expect(rows[0]!.pid).not.toBe(sleeper!.pid)
        expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([
          { task: ids[0], n: 1 },
          { task: ids[1], n: 1 },
          { task: ids[2], n: 1 }
        ])
      })))

  it.live("a shutdown that cuts a row short puts its tasks back to PLAN, none of them half run", () =>
    Effect.gen(function*() {
      const ids = yield* inRow(
        ["SELECT pg_sleep(30)", sideEffect, sideEffect],
        (ids) =>
          Effect.as(
            Effect.promise(() =>
              eventually(() => query<{ n: number }>(database,
                "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(30)' AND state = 'active'"),
                ([row]) => row!.n === 1, 10)
            ),
            ids
          ),
        scheduler(database, { json: JSON.stringify([{ data: database }]), default_run: "1" }, { shutdownTimeout: 200 })
      )
      const rows = yield* Effect.promise(() => rowsOf(ids))
      expect(rows.map((row) => [row.state, row.pid, row.start])).toEqual([
        ["PLAN", null, null],
        ["PLAN", null, null],
        ["PLAN", null, null]
      ])
      expect(yield* Effect.promise(() => sideCounts(ids))).toEqual([])
      yield* Effect.promise(() => query(database, "DELETE FROM task WHERE id = ANY($1::bigint[])", [ids]))
    }))
})

/**
 * Runs `slow` alone on a scheduler of `run` sessions, so that the target's
 * tasks have lately been slow, then inserts `count` tasks of `input` in one
 * statement and hands their ids to `body`.
 */
const afterSlowTask = <A>(
  run: number,
  slow: string,
  backlog: { readonly input: string; readonly count: number },
  body: (ids: ReadonlyArray<string>) => Effect.Effect<A>
) =>
  withScheduler(
    localScheduler(database, { default_run: String(run) }),
    Effect.gen(function*() {
      yield* Effect.flatMap(Scheduler, (s) => s.ready)
      const [first] = yield* Effect.promise(() =>
        query<{ id: string }>(database, "INSERT INTO task (input) VALUES ($1) RETURNING id::text", [slow])
      )
      yield* awaitTasks(database, [first!.id])
      const rows = yield* Effect.promise(() =>
        query<{ id: string }>(database,
          "INSERT INTO task (input) SELECT $1 FROM generate_series(1, $2) RETURNING id::text",
          [backlog.input, backlog.count])
      )
      return yield* body(rows.map((row) => row.id))
    })
  )

/** The most tasks of `ids` running on one session at once, as seen now. */
const mostOnOneSession = (ids: ReadonlyArray<string>) =>
  Effect.promise(async () => {
    const [row] = await query<{ n: number }>(database,
      `SELECT coalesce(max(n), 0)::int AS n FROM (
         SELECT count(*) AS n FROM task WHERE id = ANY($1::bigint[]) AND state = 'WORK' GROUP BY pid
       ) AS sessions`, [ids])
    return row!.n
  })

describe("when rows form", () => {
  it.live("not once the target's tasks have been slow: a backlog then runs a task a session", () =>
    afterSlowTask(1, "SELECT pg_sleep(0.2)", { input: "SELECT pg_sleep(0.3)", count: 3 }, (ids) =>
      Effect.gen(function*() {
        // Three looks while the first task sleeps: never more than one of
        // them running, since each waits for a session of its own.
        const seen: Array<number> = []
        for (let i = 0; i < 3; i++) {
          yield* Effect.sleep("80 millis")
          const [row] = yield* Effect.promise(() =>
            query<{ n: number }>(database,
              "SELECT count(*)::int AS n FROM task WHERE id = ANY($1::bigint[]) AND state = 'WORK'", [ids])
          )
          seen.push(row!.n)
        }
        expect(Math.max(...seen)).toBeLessThanOrEqual(1)
        const ended = yield* awaitTasks(database, ids)
        expect(ended.map((row) => row.state)).toEqual(["DONE", "DONE", "DONE"])
      })))

  // Each takes 10 ms on its own, but 16 run at once: rows pay.
  it.live("again after a slow task, once a backlog on many sessions shows each task costs little", () =>
    afterSlowTask(16, "SELECT pg_sleep(0.5)", { input: "SELECT pg_sleep(0.01)", count: 1000 }, (ids) =>
      Effect.gen(function*() {
        let most = 0
        for (let look = 0; look < 400 && most <= 1; look++) {
          most = Math.max(most, yield* mostOnOneSession(ids))
          yield* Effect.sleep("5 millis")
        }
        expect(most).toBeGreaterThan(1)
        const ended = yield* awaitTasks(database, ids, "task", 60)
        expect(ended.every((row) => row.state === "DONE")).toBe(true)
      })))
})

describe("which tasks may run in a row", () => {
  const task = (input: string, fields: Partial<ClaimedTask> = {}): ClaimedTask => ({
    id: "1", group: "group", max: 1, input, plan: 0, timeout: null, repeat: null, drift: true, delete: false,
    count: 0, live: 0, remote: null, claimedBy: 1, ...fields
  })

  it("plain local SQL does; a timeout, count, live, remote, transaction control or COPY with the client does not", () => {
    expect(fitsInRow(task("SELECT 1; INSERT INTO t VALUES ('begin; commit')"))).toBe(true)
    expect(fitsInRow(task("DO $$ BEGIN PERFORM 1; END $$"))).toBe(true)
    expect(fitsInRow(task("SELECT 1", { timeout: 1000 }))).toBe(false)
    expect(fitsInRow(task("SELECT 1", { count: 2 }))).toBe(false)
    expect(fitsInRow(task("SELECT 1", { live: 1000 }))).toBe(false)
    expect(fitsInRow(task("SELECT 1", { remote: "host=elsewhere" }))).toBe(false)
    expect(fitsInRow(task("BEGIN; INSERT INTO t VALUES (1)"))).toBe(false)
    expect(fitsInRow(task("start transaction; select 1"))).toBe(false)
    expect(fitsInRow(task("SELECT 1; COMMIT"))).toBe(false)
    expect(fitsInRow(task("SAVEPOINT a"))).toBe(false)
    expect(fitsInRow(task("COPY t TO STDOUT"))).toBe(false)
  })
})
