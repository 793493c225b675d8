import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Layer, TestClock } from "effect"
import { Database } from "../src/Database.js"
import { Scheduler } from "../src/Scheduler.js"
import { checkSpec, insertStatement, type TaskSpec, Tasks, type TasksOptions } from "../src/Tasks.js"
import {
  createDatabase, dropDatabase, eventually, localScheduler, query, sql, urlOf, withScheduler
} from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("tasks")
  // The table exists before any test plans into it; most tests run no scheduler.
  await Effect.runPromise(withScheduler(localScheduler(database), Effect.flatMap(Scheduler, (s) => s.ready)))
})
afterAll(() => dropDatabase(database))

/** `body` with `Tasks` on the test database and no scheduler: planned tasks stay planned. */
const withTasks = <A, E>(body: Effect.Effect<A, E, Tasks>, options: TasksOptions = {}) =>
  Effect.provide(
    body,
    Tasks.layer({ database, ...options }).pipe(Layer.provide(Database.layer({ url: urlOf(database) })))
  )

/** `body` with `Tasks` while a scheduler runs the test database's table. */
const withRunning = <A, E>(body: Effect.Effect<A, E, Tasks>) =>
  withScheduler(
    Tasks.layer({ database }).pipe(Layer.provideMerge(localScheduler(database))),
    Effect.zipRight(Effect.flatMap(Scheduler, (s) => s.ready), body)
  )

const rowOf = (id: string) =>
  Effect.map(
    sql(
      database,
      `SELECT *, timeout::text AS timeout, repeat::text AS repeat, live::text AS live,
              (extract(epoch FROM plan - now()) * 1000)::float8 AS plan_in
       FROM task WHERE id = $1`,
      [id]
    ),
    ([row]) => row!
  )

const count = () =>
  Effect.map(sql<{ n: number }>(database, "SELECT count(*)::int AS n FROM task"), ([row]) => row!.n)

/** Runs `f` with the service. */
const use = <A, E>(f: (tasks: Tasks["Type"]) => Effect.Effect<A, E>) => Effect.flatMap(Tasks, f)

describe("checking a spec", () => {
  it.each([
    [{ input: "SELECT 1", max: 0 }, "max", "must be an integer from 1 to 2147483647"],
    [{ input: "SELECT 1", count: -1 }, "count", "must be an integer from 0 to 2147483647"],
    [{ input: "SELECT 1", max: 1.5 }, "max", "must be an integer"],
    [{ input: " " }, "input", "must be SQL text, not empty"],
    [{ input: "SELECT 1", timeout: -5 }, "timeout", "must be a finite, non-negative Duration"],
    [{ input: "SELECT 1", repeat: "-1 seconds" }, "repeat", "must be a finite, non-negative Duration"],
    [{ input: "SELECT 1", live: Duration.infinity }, "live", "must be a finite, non-negative Duration"],
    [{ input: "SELECT 1", plan: new Date(Number.NaN) }, "plan", "must be a valid Date or a finite"],
    [{ input: "SELECT 1", drift: "yes" }, "drift", "must be true or false"],
    [{ input: "SELECT 1", timout: "1 second" }, "timout", "is unexpected"]
  ])("refuses %j, naming the key", (spec, field, reason) => {
    const error = Either.getOrThrow(Either.flip(checkSpec(spec as unknown as TaskSpec)))
    expect(error._tag).toBe("TaskSpecError")
    expect(error.field).toBe(field)
    expect(error.message).toContain(`task spec: ${field} ${reason}`)
  })

  it("turns durations into intervals by milliseconds and plans from the server's now()", () => {
    const checked = Either.getOrThrow(checkSpec({
      input: "SELECT 1",
      plan: Duration.seconds(90),
      timeout: "1.5 seconds",
      repeat: Duration.nanos(1500n),
      live: 250
    }))
    const statement = insertStatement(`"task"`, checked)
    expect(statement.text).toContain(`VALUES ($1::text, now() + $2::interval, $3::interval, $4::interval`)
    expect(statement.params).toEqual(
      ["SELECT 1", "90000 milliseconds", "1500 milliseconds", "0.0015 milliseconds", "250 milliseconds"]
    )
  })
})

describe("plan", () => {
  it.live("writes every field as given", () =>
    withTasks(
      Effect.gen(function*() {
        const tasks = yield* Tasks
        expect(tasks.table).toBe(`"public"."task"`)
        const plan = new Date("2031-05-06T07:08:09.123Z")
        const id = yield* tasks.plan({
          input: "SELECT 1",
          plan,
          group: "reports",
          max: 3,
          timeout: Duration.millis(1500),
          repeat: Duration.minutes(5),
          drift: false,
          delete: true,
          count: 7,
          live: Duration.seconds(90),
          remote: "host=10.0.0.5 dbname=shop"
        })
        expect(id).toMatch(/^\d+$/)
        const row = yield* rowOf(id)
        expect(row).toMatchObject({
          input: "SELECT 1",
          state: "PLAN",
          group: "reports",
          max: 3,
          timeout: "00:00:01.5",
          repeat: "00:05:00",
          drift: false,
          delete: true,
          count: 7,
          live: "00:01:30",
          remote: "host=10.0.0.5 dbname=shop",
          parent: null
        })
        expect((row.plan as Date).getTime()).toBe(plan.getTime())
      }),
      { schema: "public", table: "task" }
    ))

  it.live("plans a Duration from the server's now(), and leaves the rest to the table's defaults", () =>
    withTasks(Effect.gen(function*() {
      const id = yield* use((tasks) => tasks.plan({ input: "SELECT 1", plan: Duration.hours(1) }))
      const row = yield* rowOf(id)
      expect(row.plan_in).toBeGreaterThan(3_600_000 - 5_000)
      expect(row.plan_in).toBeLessThanOrEqual(3_600_000)
      expect(row).toMatchObject({
        group: "group",
        max: 2147483647,
        timeout: null,
        repeat: null,
        drift: true,
        delete: false,
        count: 0,
        live: "00:00:00",
        remote: null
      })
    })))

  it.live("refuses a bad spec with the key named, before anything is inserted", () =>
    withTasks(Effect.gen(function*() {
      const before = yield* count()
      const error = yield* Effect.flip(use((tasks) => tasks.plan({ input: "SELECT 1", max: 0 })))
      expect(error._tag).toBe("TaskSpecError")
      expect(error).toMatchObject({ field: "max" })
      expect(yield* count()).toBe(before)
    })))
})

describe("run and result", () => {
  it.live("run returns DONE with the output while a scheduler runs", () =>
    withRunning(Effect.gen(function*() {
      const result = yield* use((tasks) => tasks.run({ input: "SELECT 40 + 2" }))
      expect(result).toMatchObject({ state: "DONE", output: "42", error: null })
      expect(result.id).toMatch(/^\d+$/)
      expect(result.start).toBeInstanceOf(Date)
      expect(result.stop!.getTime()).toBeGreaterThanOrEqual(result.start!.getTime())
    })))

  it.live("a failing task returns FAIL with its error", () =>
    withRunning(Effect.gen(function*() {
      const result = yield* use((tasks) => tasks.run({ input: "SELECT 1/0" }))
      expect(result.state).toBe("FAIL")
      expect(result.output).toBeNull()
      expect(result.error!.startsWith("ERROR:  division by zero")).toBe(true)
    })))

  it.live("result with a timeout fails with TaskTimeoutError when no scheduler runs", () =>
    withTasks(Effect.gen(function*() {
      const tasks = yield* Tasks
      const id = yield* tasks.plan({ input: "SELECT 1" })
      const error = yield* Effect.flip(tasks.result(id, { timeout: "300 millis" }))
      expect(error._tag).toBe("TaskTimeoutError")
      expect(error).toMatchObject({ id })
      expect(error.message).toBe(`task ${id} had not ended after 300ms`)
      expect((yield* rowOf(id)).state).toBe("PLAN")
    })))

  it.effect("waits on Effect's clock, so TestClock drives its timeout", () =>
    withTasks(Effect.gen(function*() {
      const tasks = yield* Tasks
      const id = yield* tasks.plan({ input: "SELECT 1", plan: Duration.hours(1) })
      const fiber = yield* Effect.fork(Effect.flip(tasks.result(id, { timeout: "1 hour" })))
      // Time moves only once the wait has set its timer.
      const tick = Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      yield* Effect.repeat(Effect.zipLeft(TestClock.sleeps(), tick), { until: (sleeps) => sleeps.length > 0 })
      yield* TestClock.adjust("1 hour")
      const error = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "TaskTimeoutError", id })
    })))

  it.live("result of an id with no row fails with TaskNotFoundError", () =>
    withTasks(Effect.gen(function*() {
      const error = yield* Effect.flip(use((tasks) => tasks.result("999999999")))
      expect(error).toMatchObject({ _tag: "TaskNotFoundError", id: "999999999" })
    })))
})

describe("stop", () => {
  it.live("stops a planned task, which then never starts", () =>
    withTasks(Effect.gen(function*() {
      const tasks = yield* Tasks
      const id = yield* tasks.plan({ input: "SELECT 1", plan: Duration.hours(1) })
      expect(yield* tasks.stop(id)).toBe(true)
      const result = yield* tasks.result(id, { timeout: "5 seconds" })
      expect(result).toEqual({ id, state: "STOP", output: null, error: null, start: null, stop: null })
      expect(yield* tasks.stop(id)).toBe(false)
    })))

  it.live("stops a running task, whose query is cancelled", () =>
    withRunning(Effect.gen(function*() {
      const tasks = yield* Tasks
      const id = yield* tasks.plan({ input: "SELECT pg_sleep(30)" })
      const state = () => query(database, "SELECT state FROM task WHERE id = $1", [id])
      yield* Effect.promise(() => eventually(state, ([row]) => row?.state === "WORK"))
      expect(yield* tasks.stop(id)).toBe(true)
      const result = yield* tasks.result(id, { timeout: "10 seconds" })
      expect(result.state).toBe("STOP")
      expect(result.error).toContain("canceling statement due to user request")
    })))
})
