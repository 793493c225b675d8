/**
 * Faults injected under a running scheduler: the server restarted in the
 * middle of a run, the scheduler's sessions terminated, a target's database
 * dropped. Each time the scheduler must log it, come back without spinning,
 * and end every task exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as os from "node:os"
import * as path from "node:path"
import * as Embedded from "../../src/Embedded.js"
import * as PgTask from "../../src/PgTask.js"
import {
  createDatabase, dropDatabase, insertTasks, query, scheduler, type TaskRow, withScheduler
} from "../support/database.js"
import { captureLogs, type LogLine, once, ready, withDatabase, within } from "./helpers.js"

const created: Array<string> = []
afterAll(async () => {
  for (const database of created) await dropDatabase(database)
})

const database = async (prefix: string) => {
  const name = await createDatabase(prefix)
  created.push(name)
  return name
}

/** A task that sleeps, then leaves one row in `side` with its own id. */
const sideTask = (seconds: number, marker: string) =>
  `SELECT pg_sleep(${seconds}) /* ${marker} */; INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint)`

const statesOf = (rows: ReadonlyArray<{ state: string }>) => rows.map((row) => row.state)

/** How many times each task's side effect happened, by task id. */
const sideCounts = async (read: (text: string) => Promise<Array<{ task: string; n: number }>>) =>
  Object.fromEntries(
    (await read("SELECT task::text AS task, count(*)::int AS n FROM side WHERE task = ANY($1::bigint[]) GROUP BY task"))
      .map((row) => [row.task, row.n])
  )

const once1 = (ids: ReadonlyArray<string>) => Object.fromEntries(ids.map((id) => [id, 1]))

const since = (lines: ReadonlyArray<LogLine>, from: number) => lines.slice(from)

/** The throwaway cluster of the restart tests: not the shared test server. */
let cluster: Embedded.EmbeddedServer
let clusterScope: Scope.CloseableScope
let bootMs = 0
beforeAll(async () => {
  clusterScope = Effect.runSync(Scope.make())
  const booted = Date.now()
  cluster = await Effect.runPromise(Scope.extend(Embedded.start({
    dataDir: path.join(os.tmpdir(), `pg-task-faults-${process.pid}-${Date.now()}`),
    temporary: true
  }), clusterScope))
  bootMs = Date.now() - booted
})
afterAll(() => Effect.runPromise(Scope.close(clusterScope, Exit.void)))

/** A database of its own on the throwaway cluster, with the `side` table; its URL. */
const clusterDatabase = async (name: string) => {
  await once(cluster.url, `CREATE DATABASE ${name}`)
  const url = withDatabase(cluster.url, name)
  await once(url, "CREATE TABLE side (task bigint, at timestamptz DEFAULT clock_timestamp())")
  return url
}

/** The scheduler on the throwaway cluster, as an embedding application starts it. */
const clusterScheduler = (database: string) =>
  PgTask.layer({
    url: cluster.url,
    env: false,
    settings: { json: JSON.stringify([{ data: database }]), default_timeout: "200", default_reset: "2" }
  })

interface Outage {
  readonly ids: ReadonlyArray<string>
  readonly rows: ReadonlyArray<TaskRow>
  readonly counts: Record<string, number>
  readonly left: number
  readonly restartMs: number
  /** The log lines from the restart until the worker started again, that one included. */
  readonly lines: ReadonlyArray<LogLine>
  readonly failures: ReadonlyArray<LogLine>
  /** Pauses between one failure of the worker and its next failure or start, ms. */
  readonly pauses: ReadonlyArray<number>
}

/**
 * Runs `tasks` side-effect tasks, restarts the cluster while they all run,
 * optionally keeps the database shut for `extend` failed attempts more,
 * and waits until the worker is back and every task ended.
 */
const outage = (url: string, logs: ReturnType<typeof captureLogs>, tasks: number, extend = 0) =>
  Effect.promise(async (): Promise<Outage> => {
    const database = decodeURIComponent(new URL(url).pathname.slice(1))
    const ids = (await once<{ id: string }>(
      url,
      `INSERT INTO task (input) SELECT $1 FROM generate_series(1, ${tasks}) RETURNING id::text`,
      [sideTask(1, "restart")]
    )).map((row) => row.id)
    const readRows = () => once<TaskRow>(url, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids])
    await within(readRows, (rows) => rows.every((row) => row.state === "WORK"), 10)
    const mark = logs.lines.length
    const failedSince = () =>
      since(logs.lines, mark).filter((l) => /level=ERROR/.test(l.line) && /target failed/.test(l.line))
    const restartAt = Date.now()
    await Effect.runPromise(cluster.restart)
    const restartMs = Date.now() - restartAt
    if (extend > 0) {
      // The server is back, but the target's database refuses connections
      // for a while: the worker fails again and again, pausing longer each time.
      await once(cluster.url, `ALTER DATABASE ${database} ALLOW_CONNECTIONS false`)
      await within(async () => failedSince().length, (n) => n >= 1 + extend, 20)
      await once(cluster.url, `ALTER DATABASE ${database} ALLOW_CONNECTIONS true`)
    }
    await within(async () => since(logs.lines, mark), (lines) => lines.some((l) => /target started/.test(l.line)), 40)
    const after = since(logs.lines, mark)
    const lines = after.slice(0, after.findIndex((l) => /target started/.test(l.line)) + 1)
    const rows = await within(readRows, (rows) => rows.every((row) => ["DONE", "FAIL", "STOP"].includes(row.state)), 30)
    const counts = await sideCounts((text) => once(url, text, [ids]))
    const [{ left }] = await once<{ left: number }>(url,
      "SELECT count(*)::int AS left FROM task WHERE state IN ('TAKE', 'WORK')")
    const failures = lines.filter((l) => /level=ERROR/.test(l.line) && /target failed/.test(l.line))
    const marks = [...failures.map((l) => l.at), lines.at(-1)!.at]
    const pauses = marks.slice(1).map((at, i) => at - marks[i]!)
    return { ids, rows, counts, left: left!, restartMs, lines, failures, pauses }
  })

describe("server restart", () => {
  it.live("a restart in the middle of a run: logged, reconnected with backoff, every task DONE once", () =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(() => clusterDatabase("restart_one"))
      const logs = captureLogs()
      const tasks = 4
      yield* withScheduler(
        clusterScheduler("restart_one"),
        Effect.gen(function*() {
          yield* ready
          // The restart, and the database kept shut for one more attempt, so
          // that the worker fails twice and the doubling shows.
          const extend = 1
          const o = yield* outage(url, logs, tasks, extend)
          console.log(
            `[faults] injected: restart of the throwaway cluster (boot ${bootMs} ms, restart ${o.restartMs} ms), `
              + `then the database shut (ALLOW_CONNECTIONS false) for ${extend} more attempt, while ${tasks} tasks ran `
              + `pg_sleep(1); checked: states ${statesOf(o.rows).join(",")}, side effects ${JSON.stringify(o.counts)}, `
              + `${o.left} left in TAKE/WORK, ${o.lines.length} log lines until back (${o.failures.length} `
              + `"target failed", pauses ${o.pauses.join("/")} ms)`
          )
          expect(statesOf(o.rows)).toEqual(Array(tasks).fill("DONE"))
          expect(o.rows.every((row) => row.error === null)).toBe(true)
          expect(o.counts).toEqual(once1(o.ids))
          expect(o.left).toBe(0)
          // Logged: the worker's failure, as an error, naming the target.
          expect(o.failures.length).toBe(1 + extend)
          expect(o.failures[0]!.line).toMatch(/target="restart_one\//)
          // Backoff: about 1 s, then twice that.
          expect(o.pauses[0]).toBeGreaterThanOrEqual(900)
          expect(o.pauses[0]).toBeLessThan(1500)
          expect(o.pauses[1]).toBeGreaterThanOrEqual(1.8 * o.pauses[0]!)
          expect(o.pauses[1]).toBeLessThan(3000)
          // No spinning: a handful of lines, about one per lost task and per failed attempt.
          expect(o.lines.length).toBeLessThanOrEqual(tasks + 2 * o.failures.length + 4)
        })
      ).pipe(Effect.provide(logs.layer))
    }), 60_000)

  it.live("the backoff starts again at about 1 s after the target recovered", () =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(() => clusterDatabase("restart_two"))
      const logs = captureLogs()
      yield* withScheduler(
        clusterScheduler("restart_two"),
        Effect.gen(function*() {
          yield* ready
          const first = yield* outage(url, logs, 2)
          expect(statesOf(first.rows)).toEqual(["DONE", "DONE"])
          // Healthy for a while, then a second, unrelated outage.
          yield* Effect.sleep("1 second")
          const second = yield* outage(url, logs, 2)
          console.log(
            `[faults] injected: two restarts of the throwaway cluster, the second after the worker had recovered `
              + `and run tasks; checked: pauses before the worker started again ${first.pauses.join("/")} ms, then `
              + `${second.pauses.join("/")} ms; states ${statesOf(second.rows).join(",")}`
          )
          expect(statesOf(second.rows)).toEqual(["DONE", "DONE"])
          expect(second.counts).toEqual(once1(second.ids))
          expect(first.pauses[0]).toBeGreaterThanOrEqual(900)
          expect(first.pauses[0]).toBeLessThan(1500)
          // A new outage after a healthy period starts again at about 1 s, not where the last one left off.
          expect(second.pauses[0]).toBeGreaterThanOrEqual(900)
          expect(second.pauses[0]).toBeLessThan(1500)
        })
      ).pipe(Effect.provide(logs.layer))
    }), 60_000)
})

describe("faults", () => {
  it.live("pg_terminate_backend of every session of a target while tasks run: each task ends DONE once", () =>
    Effect.gen(function*() {
      const admin = yield* Effect.promise(() => database("term_admin"))
      const target = yield* Effect.promise(() => database("term"))
      yield* Effect.promise(() => query(target, "CREATE TABLE side (task bigint)"))
      const logs = captureLogs()
      const tasks = 4
      yield* withScheduler(
        scheduler(admin, { json: JSON.stringify([{ data: target }]), default_reset: "2" }),
        Effect.gen(function*() {
          yield* ready
          const ids = yield* insertTasks(target, Array.from({ length: tasks }, () => ({ input: sideTask(1, "terminate") })))
          const readRows = () =>
            query<TaskRow>(target, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids])
          yield* Effect.promise(() => within(readRows, (rows) => rows.every((row) => row.state === "WORK"), 10))
          const mark = logs.lines.length
          const killedAt = Date.now()
          const killed = yield* Effect.promise(() =>
            query<{ pid: number; query: string; terminated: boolean }>(admin, `
              WITH sessions AS MATERIALIZED (
                SELECT pid, left(query, 60) AS query FROM pg_stat_activity
                WHERE application_name = 'pg-task' AND datname = $1 AND pid <> pg_backend_pid()
              )
              SELECT pid, query, pg_terminate_backend(pid) AS terminated FROM sessions`, [target])
          )
          const rows = yield* Effect.promise(() =>
            within(readRows, (rows) => rows.every((row) => ["DONE", "FAIL", "STOP"].includes(row.state)), 30)
          )
          const recoveredMs = Date.now() - killedAt
          const counts = yield* Effect.promise(() => sideCounts((text) => query(target, text, [ids])))
          const [{ left }] = yield* Effect.promise(() =>
            query<{ left: number }>(target, "SELECT count(*)::int AS left FROM task WHERE state IN ('TAKE', 'WORK')")
          )
          const after = since(logs.lines, mark)
          console.log(
            `[faults] injected: pg_terminate_backend of ${killed.length} pg-task sessions of the target while ${tasks} `
              + `tasks ran; checked: states ${statesOf(rows).join(",")} after ${recoveredMs} ms, side effects `
              + `${JSON.stringify(counts)}, ${left} left in TAKE/WORK, ${after.length} log lines`
          )
          // The worker's own session and one session per running task.
          expect(killed.every((session) => session.terminated)).toBe(true)
          expect(killed.length).toBeGreaterThanOrEqual(tasks + 1)
          expect(statesOf(rows)).toEqual(Array(tasks).fill("DONE"))
          expect(counts).toEqual(once1(ids))
          expect(left).toBe(0)
          expect(after.some((l) => /target failed|session was lost/.test(l.line))).toBe(true)
          expect(after.length).toBeLessThanOrEqual(tasks + 8)
        })
      ).pipe(Effect.provide(logs.layer))
    }))

  it.live("a target's database dropped under the scheduler: that target logs an error naming it and retries; the other runs on", () =>
    Effect.gen(function*() {
      const admin = yield* Effect.promise(() => database("drop_admin"))
      const doomed = yield* Effect.promise(() => database("doomed"))
      const other = yield* Effect.promise(() => database("other"))
      const logs = captureLogs()
      yield* withScheduler(
        scheduler(admin, { json: JSON.stringify([{ data: doomed }, { data: other }]), default_reset: "2" }),
        Effect.gen(function*() {
          yield* ready
          const [doomedTask] = yield* insertTasks(doomed, [{ input: "SELECT pg_sleep(30) /* doomed */" }])
          const [running] = yield* insertTasks(other, [{ input: "SELECT pg_sleep(1.5); SELECT 'survived'" }])
          yield* Effect.promise(() =>
            within(
              async () => [
                ...await query<TaskRow>(doomed, "SELECT state FROM task WHERE id = $1", [doomedTask]),
                ...await query<TaskRow>(other, "SELECT state FROM task WHERE id = $1", [running])
              ],
              (rows) => rows.every((row) => row.state === "WORK"),
              10
            )
          )
          const mark = logs.lines.length
          const droppedAt = Date.now()
          yield* Effect.promise(() => dropDatabase(doomed))
          const [after] = yield* insertTasks(other, [{ input: "SELECT 'after the drop'" }])
          const [first, second] = yield* Effect.promise(() =>
            within(
              () => query<TaskRow>(other, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [[running, after]]),
              (rows) => rows.every((row) => row.state === "DONE" || row.state === "FAIL"),
              15
            )
          )
          const afterDoneMs = second!.stop!.getTime() - droppedAt
          // The doomed target: an error naming it, then a second attempt (which
          // finds the database missing and, by the contract, creates it again).
          const named = (l: LogLine) => l.line.includes(doomed)
          yield* Effect.promise(() =>
            within(
              async () => since(logs.lines, mark),
              (lines) => {
                const failed = lines.findIndex((l) => named(l) && /level=ERROR/.test(l.line))
                return failed >= 0 && lines.slice(failed + 1).some((l) => named(l))
              },
              15
            )
          )
          const lines = since(logs.lines, mark)
          const failure = lines.find((l) => named(l) && /level=ERROR/.test(l.line))!
          const retry = lines.slice(lines.indexOf(failure) + 1).find(named)!
          console.log(
            `[faults] injected: DROP DATABASE ... WITH (FORCE) of one of two targets; checked: other target's running `
              + `task ${first!.state} (${JSON.stringify(first!.output)}), task inserted after the drop ${second!.state} ${afterDoneMs} ms `
              + `after the drop; error line: ${failure.line}; retry ${retry.at - failure.at} ms later: ${retry.line}`
          )
          expect(first!.state).toBe("DONE")
          expect(first!.output).toMatch(/survived$/)
          expect(second).toMatchObject({ state: "DONE", output: "after the drop" })
          expect(afterDoneMs).toBeLessThan(3000)
          expect(failure.line).toMatch(/target failed/)
          expect(retry.at - failure.at).toBeGreaterThanOrEqual(900)
          // Not spinning meanwhile.
          expect(lines.filter(named).length).toBeLessThanOrEqual(10)
        })
      ).pipe(Effect.provide(logs.layer))
      // The scheduler re-created it; drop it for good.
      yield* Effect.promise(() => dropDatabase(doomed))
    }))

  it.live("a target's database renamed under the scheduler: that target reports and comes back; the other runs on", () =>
    Effect.gen(function*() {
      const admin = yield* Effect.promise(() => database("rename_admin"))
      const moved = yield* Effect.promise(() => database("moved"))
      const other = yield* Effect.promise(() => database("steady"))
      const renamed = `${moved}_old`
      created.push(renamed)
      const logs = captureLogs()
      yield* withScheduler(
        scheduler(admin, { json: JSON.stringify([{ data: moved }, { data: other }]) }),
        Effect.gen(function*() {
          yield* ready
          // A database with sessions cannot be renamed: end them, then rename
          // before the worker's pause is over.
          yield* Effect.promise(() =>
            query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", [moved]))
          yield* Effect.promise(() => query(admin, `ALTER DATABASE "${moved}" RENAME TO "${renamed}"`))
          const [after] = yield* insertTasks(other, [{ input: "SELECT 'after the rename'" }])
          const [row] = yield* Effect.promise(() =>
            within(() => query<TaskRow>(other, "SELECT * FROM task WHERE id = $1", [after]), ([r]) =>
              r?.state === "DONE", 10))
          // The target comes back on a database of its name again, as the
          // contract says: a missing database is created.
          const [back] = yield* Effect.promise(() =>
            within(
              () => query<{ n: number }>(admin, "SELECT count(*)::int AS n FROM pg_database WHERE datname = $1", [moved]),
              ([r]) => r!.n === 1,
              15
            )
          )
          const error = logs.lines.find((l) => l.line.includes(moved) && /level=ERROR/.test(l.line))
          console.log(
            `[faults] injected: sessions of one of two targets ended and its database renamed; checked: other `
              + `target's task ${row!.state}, error logged: ${error?.line ?? "(none)"}, database of the name back: ${back!.n}`
          )
          expect(row!.output).toBe("after the rename")
          expect(error?.line).toMatch(/target failed/)
          expect(back!.n).toBe(1)
        })
      ).pipe(Effect.provide(logs.layer))
    }))
})
