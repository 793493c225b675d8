/**
 * Schedules over virtual time: the scheduler follows TestClock, so hours of
 * schedule pass in well under a second while tasks run on a real server.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { Scheduler } from "../src/Scheduler.js"
import {
  createDatabase, dropDatabase, eventually, insertTasks, localScheduler, query, type TaskRow, withScheduler
} from "./support/database.js"

const T0 = Date.parse("2030-01-01T00:00:00Z")
const minutes = (n: number) => n * 60_000

let database: string
beforeAll(async () => {
  database = await createDatabase("schedule")
})
afterAll(() => dropDatabase(database))

const ready = Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)

/** Every row of the tasks in `group`, in id order. */
const rowsOf = (group: string) =>
  query<TaskRow>(database, `SELECT * FROM task WHERE "group" = $1 ORDER BY id`, [group])

/** Waits in real time until the group's rows satisfy `check`. */
const until = (group: string, check: (rows: Array<TaskRow>) => boolean) =>
  Effect.promise(() => eventually(() => rowsOf(group), check))

const done = (rows: Array<TaskRow>) => rows.filter((row) => row.state === "DONE")

const running = (rows: Array<TaskRow>) => rows.some((row) => row.state === "WORK")

/**
 * TestClock.adjust wakes pending sleeps one deadline at a time, so a short
 * poll interval would make one adjustment thousands of steps, and a task
 * ending meanwhile would read a time in between. With a poll interval of a
 * day, the scheduler wakes only on notifications and on its next plan,
 * which is what these tests are about.
 */
const scheduled = <A, E, R>(body: Effect.Effect<A, E, R>, pollMs = 86_400_000) =>
  withScheduler(localScheduler(database, { default_timeout: String(pollMs) }), Effect.zipRight(ready, body))

describe("schedules under TestClock", () => {
  it.effect("a repeat '5 min' task runs 12 times in a virtual hour, on its grid", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* scheduled(Effect.gen(function*() {
        yield* insertTasks(database, [{ input: "SELECT 1", plan: new Date(T0), repeat: "5 minutes", group: "grid" }])
        for (let run = 1; run <= 12; run++) {
          yield* until("grid", (rows) => done(rows).length === run)
          if (run < 12) yield* TestClock.adjust(minutes(5))
        }
      }))
      const rows = yield* Effect.promise(() => rowsOf("grid"))
      expect(done(rows).map((row) => row.start!.getTime())).toEqual(
        Array.from({ length: 12 }, (_, k) => T0 + minutes(5 * k))
      )
      expect(rows.at(-1)).toMatchObject({ state: "PLAN", plan: new Date(T0 + minutes(60)) })
      expect(rows.slice(1).map((row) => row.parent)).toEqual(rows.slice(0, -1).map((row) => row.id))
    }))

  it.effect("with drift = false each plan is the previous stop plus the repeat, however long the run", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* scheduled(Effect.gen(function*() {
        yield* insertTasks(database, [{
          input: "SELECT pg_sleep(0.3)",
          plan: new Date(T0),
          repeat: "5 minutes",
          drift: false,
          group: "nodrift"
        }])
        for (const [run, takes] of [[1, 2], [2, 3]] as const) {
          yield* until("nodrift", running)
          yield* TestClock.adjust(minutes(takes))
          yield* until("nodrift", (rows) => done(rows).length === run)
          if (run === 1) yield* TestClock.adjust(minutes(5))
        }
      }))
      const [first, second, third] = yield* Effect.promise(() => rowsOf("nodrift"))
      expect(first!.stop!.getTime()).toBe(T0 + minutes(2))
      expect(second!.plan.getTime()).toBe(T0 + minutes(7))
      expect(second!.stop!.getTime()).toBe(T0 + minutes(10))
      expect(third).toMatchObject({ state: "PLAN", plan: new Date(T0 + minutes(15)) })
    }))

  it.effect("a scheduler down for 17 minutes runs a 5-minute task once, then goes on on the grid", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* insertTasks(database, [{ input: "SELECT 1", plan: new Date(T0), repeat: "5 minutes", group: "down" }])
      yield* TestClock.setTime(T0 + minutes(17))
      yield* scheduled(Effect.gen(function*() {
        yield* until("down", (rows) => done(rows).length === 1)
        yield* TestClock.adjust(minutes(3))
        yield* until("down", (rows) => done(rows).length === 2)
      }))
      const rows = yield* Effect.promise(() => rowsOf("down"))
      expect(done(rows).map((row) => row.start!.getTime())).toEqual([T0 + minutes(17), T0 + minutes(20)])
      expect(rows.at(-1)).toMatchObject({ state: "PLAN", plan: new Date(T0 + minutes(25)) })
    }))

  // Here the usual poll interval runs too, to show it does not make the task late.
  it.effect("a task planned for tomorrow runs exactly when the clock gets there", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const tomorrow = T0 + minutes(24 * 60)
      yield* scheduled(Effect.gen(function*() {
        yield* insertTasks(database, [{ input: "SELECT 1", plan: new Date(tomorrow), group: "tomorrow" }])
        yield* TestClock.adjust(minutes(24 * 60) - 1)
        // Claimed ahead of its plan by now, but not started.
        const [claimed] = yield* until("tomorrow", (rows) => rows[0]!.state === "TAKE")
        expect(claimed).toMatchObject({ start: null, output: null })
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 300)))
        expect((yield* Effect.promise(() => rowsOf("tomorrow")))[0]).toMatchObject({ state: "TAKE", start: null })
        yield* TestClock.adjust(1)
        yield* until("tomorrow", (rows) => done(rows).length === 1)
      }))
      const [row] = yield* Effect.promise(() => rowsOf("tomorrow"))
      expect(row!.start!.getTime()).toBe(tomorrow)
    }))

  it.effect("a task is claimed 200 ms before its plan, not earlier, and starts at its plan", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const plan = T0 + minutes(10)
      yield* scheduled(Effect.gen(function*() {
        yield* insertTasks(database, [{ input: "SELECT 1", plan: new Date(plan), group: "ahead" }])
        yield* TestClock.adjust(minutes(10) - 201)
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 300)))
        expect((yield* Effect.promise(() => rowsOf("ahead")))[0]).toMatchObject({ state: "PLAN", pid: null })
        yield* TestClock.adjust(1)
        yield* until("ahead", (rows) => rows[0]!.state === "TAKE")
        yield* TestClock.adjust(200)
        yield* until("ahead", (rows) => done(rows).length === 1)
      }))
      const [row] = yield* Effect.promise(() => rowsOf("ahead"))
      expect(row!.start!.getTime()).toBe(plan)
    }))

  it.effect("a task claimed ahead never keeps a due task of its group waiting", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* scheduled(Effect.gen(function*() {
        // With one slot, the due task must come first, though the one
        // planned 100 ms later has the larger max. Both come in one
        // statement, so that one claim sees both.
        yield* Effect.promise(() =>
          query(
            database,
            `INSERT INTO task (input, plan, "group", max)
             VALUES ('SELECT ''later''', $1, 'first', 2), ('SELECT ''due''', $2, 'first', 1)`,
            [new Date(T0 + 100), new Date(T0)]
          )
        )
        yield* until("first", (rows) => done(rows).length === 1)
        yield* TestClock.adjust(100)
        yield* until("first", (rows) => done(rows).length === 2)
      }))
      const rows = yield* Effect.promise(() => rowsOf("first"))
      expect(rows.map((row) => [row.output, row.start!.getTime()])).toEqual([["later", T0 + 100], ["due", T0]])
    }))

  it.effect("a task stopped after it was claimed ahead never runs, and the next one does", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* scheduled(Effect.gen(function*() {
        const [stopped] = yield* insertTasks(database, [{ input: "SELECT 1", plan: new Date(T0 + 150), group: "gone" }])
        yield* until("gone", (rows) => rows[0]!.state === "TAKE")
        yield* Effect.promise(() => query(database, `UPDATE task SET state = 'STOP' WHERE id = $1`, [stopped]))
        yield* TestClock.adjust(150)
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 300)))
        yield* insertTasks(database, [{ input: "SELECT 2", plan: new Date(T0 + 150), group: "gone" }])
        yield* until("gone", (rows) => done(rows).length === 1)
      }))
      const [stopped, next] = yield* Effect.promise(() => rowsOf("gone"))
      expect(stopped).toMatchObject({ state: "STOP", start: null, output: null })
      expect(next).toMatchObject({ state: "DONE", output: "2" })
    }))

  it.effect("live '10 min' ends a reused session after ten virtual minutes", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      yield* scheduled(Effect.gen(function*() {
        yield* insertTasks(database, Array.from({ length: 4 }, () => ({
          input: "SELECT pg_sleep(0.25)",
          plan: new Date(T0),
          group: "live",
          max: 1,
          live: "10 minutes"
        })))
        for (let run = 1; run <= 3; run++) {
          yield* until("live", (rows) => running(rows) && done(rows).length === run - 1)
          yield* TestClock.adjust(minutes(4))
        }
        yield* until("live", (rows) => done(rows).length === 4)
      }))
      const rows = yield* Effect.promise(() => rowsOf("live"))
      const pids = rows.map((row) => row.pid)
      expect(pids.slice(0, 3)).toEqual([pids[0], pids[0], pids[0]])
      expect(pids[3]).not.toBe(pids[0])
      expect(rows.map((row) => row.start!.getTime())).toEqual([T0, T0 + minutes(4), T0 + minutes(8), T0 + minutes(12)])
    }))
})
