/**
 * Long or stuck work can always be stopped: by its timeout, by a user's
 * STOP, or by shutting the scheduler down. And tasks reach other databases.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Logger, Scope, TestClock } from "effect"
import { Scheduler } from "../src/Scheduler.js"
import { runBinary } from "./support/binary.js"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, insertTasks, localScheduler, query, sql, type TaskRow,
  urlOf, withScheduler
} from "./support/database.js"

let database: string
let remote: string
beforeAll(async () => {
  database = await createDatabase("interrupt")
  remote = await createDatabase("remote")
})
afterAll(async () => {
  await dropDatabase(database)
  await dropDatabase(remote)
})

const ready = Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)

const scheduled = <A, E, R>(body: Effect.Effect<A, E, R>, settings = {}) =>
  withScheduler(localScheduler(database, settings), Effect.zipRight(ready, body))

const rowOf = (id: string) => query<TaskRow>(database, "SELECT * FROM task WHERE id = $1", [id]).then(([row]) => row!)

/** Whether any backend on the server is still running a query containing `marker`. */
const activeQueries = async (marker: string) =>
  (await query<{ n: number }>(database,
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()`, [`%${marker}%`]))[0]!.n

const awaitWork = (id: string) => Effect.promise(() => eventually(() => rowOf(id), (row) => row.state === "WORK"))

const elapsed = (row: TaskRow) => row.stop!.getTime() - row.start!.getTime()

describe("timeout", () => {
  it.live("pg_sleep(10) with timeout '1 second' ends FAIL about a second after it started, its backend freed", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{ input: "SELECT pg_sleep(10) /* t1 */", timeout: "1 second" }])
      const [row] = yield* awaitTasks(database, [id!])
      expect(row).toMatchObject({ state: "FAIL", output: null, error: "ERROR:  canceling statement due to statement timeout" })
      expect(elapsed(row!)).toBeGreaterThanOrEqual(1000)
      expect(elapsed(row!)).toBeLessThan(2000)
      expect(yield* Effect.promise(() => activeQueries("/* t1 */"))).toBe(0)
    })))

  it.live("timeout '300 milliseconds' ends well under a second", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{ input: "SELECT pg_sleep(5)", timeout: "300 milliseconds" }])
      const [row] = yield* awaitTasks(database, [id!])
      expect(row!.state).toBe("FAIL")
      expect(elapsed(row!)).toBeGreaterThanOrEqual(300)
      expect(elapsed(row!)).toBeLessThan(800)
    })))

  it.live("with every task session busy, timeouts still cancel promptly", () =>
    scheduled(Effect.gen(function*() {
      const ids = yield* insertTasks(database, [
        { input: "SELECT pg_sleep(10) /* busy */", timeout: "500 milliseconds" },
        { input: "SELECT pg_sleep(10) /* busy */", timeout: "600 milliseconds" },
        { input: "SELECT 'after'" }
      ])
      const rows = yield* awaitTasks(database, ids)
      expect(rows.map((row) => row.state)).toEqual(["FAIL", "FAIL", "DONE"])
      expect(rows.slice(0, 2).every((row) => elapsed(row) < 1100)).toBe(true)
      expect(yield* Effect.promise(() => activeQueries("/* busy */"))).toBe(0)
    }), { default_run: "2" }))

  it.effect("a timeout is measured on the scheduler's clock, so TestClock decides it", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.parse("2031-01-01T00:00:00Z"))
      yield* scheduled(Effect.gen(function*() {
        const [id] = yield* insertTasks(database, [{
          input: "SELECT pg_sleep(20) /* virtual */",
          timeout: "1 hour",
          plan: new Date("2031-01-01T00:00:00Z")
        }])
        yield* awaitWork(id!)
        yield* TestClock.adjust("1 hour")
        const [row] = yield* awaitTasks(database, [id!])
        expect(row).toMatchObject({ state: "FAIL", error: "ERROR:  canceling statement due to statement timeout" })
        expect(elapsed(row!)).toBe(3_600_000)
      }), { default_timeout: "86400000" })
    }))
})

describe("STOP", () => {
  it.live("STOP of a running pg_sleep(30) frees its backend within a second", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{ input: "SELECT pg_sleep(30) /* stop me */" }])
      yield* awaitWork(id!)
      const stoppedAt = Date.now()
      yield* sql(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [id])
      yield* Effect.promise(() => eventually(() => activeQueries("/* stop me */"), (n) => n === 0, 5))
      expect(Date.now() - stoppedAt).toBeLessThan(1000)
      const row = yield* Effect.promise(() => eventually(() => rowOf(id!), (row) => row.stop !== null))
      expect(row).toMatchObject({ state: "STOP", output: null, error: "ERROR:  canceling statement due to user request" })
    }), { default_timeout: "60000" }))

  it.live("STOP reaches a task that a reused session went on with (count)", () =>
    scheduled(Effect.gen(function*() {
      const [first, second, third] = yield* insertTasks(database, [
        { input: "SELECT pg_sleep(0.3)", group: "chained stop", max: 1, count: 3 },
        { input: "SELECT pg_sleep(30) /* chained */", group: "chained stop", max: 1, count: 3 },
        { input: "SELECT 'after'", group: "chained stop", max: 1, count: 3 }
      ])
      const running = yield* awaitWork(second!)
      const [done] = yield* awaitTasks(database, [first!])
      expect(running.pid).toBe(done!.pid)
      yield* sql(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [second])
      yield* Effect.promise(() => eventually(() => activeQueries("/* chained */"), (n) => n === 0, 5))
      const [stopped, after] = yield* awaitTasks(database, [second!, third!])
      expect(stopped).toMatchObject({ state: "STOP", error: "ERROR:  canceling statement due to user request" })
      expect(after).toMatchObject({ state: "DONE", output: "after" })
    }), { default_timeout: "60000" }))

  it.live("a planned task set to STOP never starts", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{
        input: "SELECT 'never'",
        plan: new Date(Date.now() + 500)
      }])
      yield* sql(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [id])
      yield* Effect.sleep("1200 millis")
      expect(yield* Effect.promise(() => rowOf(id!))).toMatchObject({ state: "STOP", start: null, output: null })
    })))

  it.live("a stopped repeating task does not repeat", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{
        input: "SELECT pg_sleep(30)",
        repeat: "1 second",
        group: "stopped repeat"
      }])
      yield* awaitWork(id!)
      yield* sql(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [id])
      yield* Effect.promise(() => eventually(() => rowOf(id!), (row) => row.stop !== null))
      yield* Effect.sleep("300 millis")
      const rows = yield* sql(database, `SELECT state FROM task WHERE "group" = 'stopped repeat'`)
      expect(rows).toEqual([{ state: "STOP" }])
    })))
})

describe("remote", () => {
  /** The remote database as a libpq key=value string. */
  const keyValue = () => {
    const url = new URL(urlOf(remote))
    return `host=${url.hostname} port=${url.port || 5432} dbname='${remote}' user=${decodeURIComponent(url.username)}`
  }

  it.live("a remote task runs on the other database, by key=value and by URL, with pg_task.id set", () =>
    scheduled(Effect.gen(function*() {
      const ids = yield* insertTasks(database, [
        { input: "SELECT current_database()", remote: keyValue() },
        { input: "SELECT current_database(), current_setting('pg_task.id')", remote: urlOf(remote) }
      ])
      const [byKeys, byUrl] = yield* awaitTasks(database, ids)
      expect(byKeys).toMatchObject({ state: "DONE", output: remote })
      expect(byUrl).toMatchObject({ state: "DONE", output: `current_database\tcurrent_setting\n${remote}\t${ids[1]}` })
    })))

  it.live("tasks on the same remote reuse its session, reset between them", () =>
    scheduled(Effect.gen(function*() {
      const [first] = yield* insertTasks(database, [
        { input: "SET application_name = 'leaked'; SELECT pg_backend_pid()", remote: urlOf(remote) }
      ])
      const [one] = yield* awaitTasks(database, [first!])
      const [second] = yield* insertTasks(database, [
        { input: "SELECT pg_backend_pid(), current_setting('application_name') = 'leaked'", remote: urlOf(remote) }
      ])
      const [two] = yield* awaitTasks(database, [second!])
      const pid = one!.output!.split("\n")[1]
      expect(two!.output).toBe(`pg_backend_pid\t?column?\n${pid}\tf`)
    })))

  it.live("a remote error, a remote timeout and unreachable or malformed remotes each end FAIL", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const capture = Logger.replace(Logger.defaultLogger, Logger.map(Logger.logfmtLogger, (line) => lines.push(line)))
      const secret = "hunter2-very-secret"
      const rows = yield* scheduled(Effect.gen(function*() {
        const ids = yield* insertTasks(database, [
          { input: "SELECT 1/0", remote: keyValue() },
          { input: "SELECT pg_sleep(10) /* remote timeout */", remote: keyValue(), timeout: "500 milliseconds" },
          { input: "SELECT 1", remote: `host=127.0.0.1 port=1 user=nobody password=${secret} dbname=x` },
          { input: "SELECT 1", remote: `postgresql://nobody:${secret}@127.0.0.1:1/x` },
          { input: "SELECT 1", remote: "this is not a connection string" }
        ])
        const rows = yield* awaitTasks(database, ids)
        const [after] = yield* insertTasks(database, [{ input: "SELECT 'still running'" }])
        expect((yield* awaitTasks(database, [after!]))[0]!.state).toBe("DONE")
        return rows
      })).pipe(Effect.provide(capture))
      expect(rows.map((row) => row.state)).toEqual(["FAIL", "FAIL", "FAIL", "FAIL", "FAIL"])
      expect(rows[0]!.error).toBe("ERROR:  division by zero")
      expect(rows[1]!.error).toBe("ERROR:  canceling statement due to statement timeout")
      expect(rows[2]!.error).toMatch(/^ERROR:  could not connect to the remote: /)
      expect(rows[3]!.error).toMatch(/^ERROR:  could not connect to the remote: /)
      expect(rows[4]!.error).toMatch(/^ERROR:  invalid remote: /)
      for (const row of rows) expect(row.error).not.toContain(secret)
      expect(lines.join("\n")).not.toContain(secret)
      expect(yield* Effect.promise(() => activeQueries("/* remote timeout */"))).toBe(0)
    }))
})

describe("shutdown", () => {
  it.live("SIGTERM lets a short task finish to DONE and exits 0", () =>
    Effect.promise(async () => {
      await Effect.runPromise(scheduled(Effect.void))
      const binary = runBinary(["--url", urlOf(database), "--json", JSON.stringify([{ data: database }])])
      await binary.waitFor(/target started/)
      const [{ id }] = await query(database, "INSERT INTO task (input) VALUES ('SELECT pg_sleep(1)') RETURNING id::text")
      await eventually(() => rowOf(id), (row) => row.state === "WORK")
      binary.child.kill("SIGTERM")
      expect(await binary.exited).toBe(0)
      expect(await rowOf(id)).toMatchObject({ state: "DONE" })
    }))

  it.live("SIGTERM with --shutdown-timeout 1000 cancels a long task and puts it back to PLAN", () =>
    Effect.promise(async () => {
      await Effect.runPromise(scheduled(Effect.void))
      const binary = runBinary([
        "--url", urlOf(database), "--json", JSON.stringify([{ data: database }]), "--shutdown-timeout", "1000"
      ])
      await binary.waitFor(/target started/)
      const [{ id }] = await query(database,
        "INSERT INTO task (input, \"group\") VALUES ('SELECT pg_sleep(30) /* long */', 'long') RETURNING id::text")
      await eventually(() => rowOf(id), (row) => row.state === "WORK")
      const signalled = Date.now()
      binary.child.kill("SIGTERM")
      expect(await binary.exited).toBe(0)
      expect(Date.now() - signalled).toBeLessThan(5000)
      expect(await rowOf(id)).toMatchObject({ state: "PLAN", pid: null, start: null })
      expect(await activeQueries("/* long */")).toBe(0)
      await query(database, "DELETE FROM task WHERE id = $1", [id])
    }))

  it.effect("closing the layer's scope waits the grace period on the scheduler's clock, then puts tasks back", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.parse("2032-01-01T00:00:00Z"))
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        // A day between polls, so that adjusting TestClock wakes few sleeps.
        localScheduler(database, { default_timeout: "86400000" }),
        scope
      )
      yield* Effect.provide(ready, context)
      const [quick, slow] = yield* insertTasks(database, [
        { input: "SELECT pg_sleep(0.3)", plan: new Date("2032-01-01T00:00:00Z"), group: "grace" },
        { input: "SELECT pg_sleep(30) /* grace */", plan: new Date("2032-01-01T00:00:00Z"), group: "grace" }
      ])
      yield* awaitWork(quick!)
      yield* awaitWork(slow!)
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* Effect.promise(() => eventually(() => rowOf(quick!), (row) => row.state === "DONE"))
      expect((yield* Effect.promise(() => rowOf(slow!))).state).toBe("WORK")
      yield* TestClock.adjust("30 seconds")
      yield* Fiber.join(closing)
      expect(yield* Effect.promise(() => rowOf(slow!))).toMatchObject({ state: "PLAN", pid: null })
      expect(yield* Effect.promise(() => activeQueries("/* grace */"))).toBe(0)
      yield* sql(database, `DELETE FROM task WHERE "group" = 'grace'`)
    }))
})
