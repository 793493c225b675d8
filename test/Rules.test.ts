/**
 * The scheduling rules against a real server in real time: groups, count,
 * parent, delete, repeat of user-added columns, reset, partitioned tables.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Scheduler } from "../src/Scheduler.js"
import { runBinary } from "./support/binary.js"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, insertTasks, localScheduler, query, sql, type TaskRow,
  urlOf, withScheduler
} from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("rules")
  await query(database, "CREATE TABLE side (task bigint, at timestamptz DEFAULT clock_timestamp())")
})
afterAll(() => dropDatabase(database))

const ready = Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)

const scheduled = <A, E, R>(body: Effect.Effect<A, E, R>, settings = {}) =>
  withScheduler(localScheduler(database, settings), Effect.zipRight(ready, body))

/** Samples `read` every few milliseconds until `stop` resolves; returns every sample. */
const sampleWhile = async <A>(read: () => Promise<A>, stop: Promise<unknown>) => {
  const samples: Array<A> = []
  let stopped = false
  void stop.finally(() => (stopped = true))
  while (!stopped) {
    samples.push(await read())
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  return samples
}

const rowsOf = (group: string) =>
  query<TaskRow>(database, `SELECT * FROM task WHERE "group" = $1 ORDER BY id`, [group])

describe("groups", () => {
  it.live("a group with max 2 never has more than two tasks claimed or running", () =>
    scheduled(Effect.gen(function*() {
      const ids = yield* insertTasks(database, Array.from({ length: 8 }, () => ({
        input: "SELECT pg_sleep(0.2)",
        group: "two",
        max: 2
      })))
      const finished = Effect.runPromise(awaitTasks(database, ids))
      const samples = yield* Effect.promise(() =>
        sampleWhile(async () => {
          const [row] = await query<{ n: number }>(database,
            `SELECT count(*)::int AS n FROM task WHERE "group" = 'two' AND state IN ('TAKE', 'WORK')`)
          return row!.n
        }, finished)
      )
      const rows = yield* Effect.promise(() => finished)
      expect(rows.every((row) => row.state === "DONE")).toBe(true)
      expect(Math.max(...samples)).toBe(2)
    })))

  it.live("in a full group, a task with a larger max starts ahead of waiting ones", () =>
    scheduled(Effect.gen(function*() {
      const [blocker] = yield* insertTasks(database, [{ input: "SELECT pg_sleep(1)", group: "prio", max: 1 }])
      yield* Effect.promise(() =>
        eventually(() => rowsOf("prio"), (rows) => rows[0]?.state === "WORK")
      )
      const [waiting, urgent] = yield* insertTasks(database, [
        { input: "SELECT 'waiting'", group: "prio", max: 1 },
        { input: "SELECT 'urgent'", group: "prio", max: 2 }
      ])
      const [first, second, third] = yield* awaitTasks(database, [blocker!, waiting!, urgent!])
      expect(third!.start!.getTime()).toBeLessThan(first!.stop!.getTime())
      expect(third!.start!.getTime()).toBeLessThan(second!.start!.getTime())
      expect(second!.start!.getTime()).toBeGreaterThanOrEqual(first!.stop!.getTime())
    })))
})

describe("sessions, parents and rows", () => {
  it.live("count 5 runs five tasks in one session, then the next ones in a new session", () =>
    scheduled(Effect.gen(function*() {
      const ids = yield* insertTasks(database, Array.from({ length: 7 }, (_, i) => ({
        input: `SELECT pg_backend_pid(), ${i}`,
        group: "count",
        max: 1,
        count: 5
      })))
      const rows = yield* awaitTasks(database, ids)
      const pids = rows.map((row) => row.pid)
      expect(new Set(pids.slice(0, 5)).size).toBe(1)
      expect(pids[5]).not.toBe(pids[0])
      expect(pids[6]).toBe(pids[5])
      // The pid column is the backend the SQL itself ran in.
      expect(rows.map((row) => row.output!.split("\n")[1]!.split("\t")[0])).toEqual(pids.map(String))
    })))

  it.live("rows a task inserts get its id as parent", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{
        input: "INSERT INTO task (input, \"group\") VALUES ('SELECT 1', 'child'), ('SELECT 2', 'child')"
      }])
      yield* awaitTasks(database, [id!])
      const children = yield* Effect.promise(() =>
        eventually(() => rowsOf("child"), (rows) => rows.length === 2 && rows.every((row) => row.state === "DONE"))
      )
      expect(children.map((row) => row.parent)).toEqual([id, id])
    })))

  it.live("delete removes only runs with neither output nor error", () =>
    scheduled(Effect.gen(function*() {
      const ids = yield* insertTasks(database, [
        { input: "SELECT 1 WHERE false", delete: true },
        { input: "SELECT 'kept'", delete: true },
        { input: "SELECT 1/0", delete: true },
        { input: "SELECT 1 WHERE false", delete: false }
      ])
      yield* Effect.promise(() =>
        eventually(
          () => query(database, "SELECT id::text, state FROM task WHERE id = ANY($1::bigint[])", [ids]),
          (rows) => rows.length === 3 && rows.every((row) => row.state !== "PLAN" && row.state !== "WORK")
        )
      )
      const left = yield* sql<{ id: string }>(database,
        "SELECT id::text FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids])
      expect(left.map((row) => row.id)).toEqual(ids.slice(1))
    })))

  it.live("a repeat copies user-added columns and points to its parent", () =>
    Effect.gen(function*() {
      yield* scheduled(Effect.void)
      yield* sql(database, "ALTER TABLE task ADD COLUMN note text, ADD COLUMN tries int DEFAULT 0")
      yield* scheduled(Effect.gen(function*() {
        const [id] = yield* insertTasks(database, [{
          input: "SELECT 'again'", repeat: "1 hour", note: "nightly report", tries: 3, group: "copied"
        }])
        const rows = yield* Effect.promise(() => eventually(() => rowsOf("copied"), (rows) => rows.length === 2))
        expect(rows[1]).toMatchObject({ parent: id, state: "PLAN", note: "nightly report", tries: 3, output: null })
        expect(rows[1]!.plan.getTime() - rows[0]!.plan.getTime()).toBe(3_600_000)
        yield* sql(database, `DELETE FROM task WHERE "group" = 'copied'`)
      }))
    }))
})

describe("reset", () => {
  it.live("a task whose session is terminated goes back to PLAN, runs again and finishes", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{
        input: "SELECT pg_sleep(0.5); INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint)"
      }])
      const [working] = yield* Effect.promise(() =>
        eventually(() => query<TaskRow>(database, "SELECT * FROM task WHERE id = $1", [id]), ([row]) =>
          row?.state === "WORK")
      )
      yield* sql(database, "SELECT pg_terminate_backend($1)", [working!.pid])
      const [row] = yield* awaitTasks(database, [id!])
      expect(row!.state).toBe("DONE")
      expect(row!.pid).not.toBe(working!.pid)
      const side = yield* sql(database, "SELECT task::text FROM side WHERE task = $1", [id])
      expect(side).toEqual([{ task: id }])
    })))

  it.live("the tasks of a killed instance run again on another and finish", () =>
    Effect.gen(function*() {
      yield* scheduled(Effect.void)
      const binary = runBinary(["--url", urlOf(database), "--json", JSON.stringify([{ data: database }])])
      yield* Effect.promise(() => binary.waitFor(/target started/))
      const ids = yield* insertTasks(database, Array.from({ length: 3 }, () => ({
        input: "SELECT pg_sleep(1.5); INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint)",
        group: "killed"
      })))
      yield* Effect.promise(() =>
        eventually(() => rowsOf("killed"), (rows) => rows.length === 3 && rows.every((row) => row.state === "WORK"))
      )
      binary.child.kill("SIGKILL")
      yield* Effect.promise(() => binary.exited)
      const rows = yield* scheduled(awaitTasks(database, ids), { default_reset: "2" })
      expect(rows.map((row) => row.state)).toEqual(["DONE", "DONE", "DONE"])
      const side = yield* sql(database, "SELECT task::text FROM side WHERE task = ANY($1::bigint[]) ORDER BY task", [ids])
      expect(side.map((row) => row.task)).toEqual(ids)
    }))

  it.live("a task running longer than the reset period is never reset", () =>
    scheduled(Effect.gen(function*() {
      const [id] = yield* insertTasks(database, [{
        input: "INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint); SELECT pg_sleep(1)"
      }])
      const finished = Effect.runPromise(awaitTasks(database, [id!]))
      const states = yield* Effect.promise(() =>
        sampleWhile(async () => (await query(database, "SELECT state FROM task WHERE id = $1", [id]))[0]!.state, finished)
      )
      const firstWork = states.indexOf("WORK")
      expect(firstWork).toBeGreaterThanOrEqual(0)
      expect(states.slice(firstWork).filter((state) => state !== "WORK" && state !== "DONE")).toEqual([])
      expect(yield* sql(database, "SELECT count(*)::int AS n FROM side WHERE task = $1", [id])).toEqual([{ n: 1 }])
    }), { default_timeout: "20", default_reset: "1" }))
})

describe("partitioned task tables", () => {
  it.live("a table partitioned by state keeps a working scheduler", () =>
    Effect.gen(function*() {
      const partitioned = yield* Effect.promise(() => createDatabase("partitioned"))
      yield* sql(partitioned, `
        CREATE TYPE state AS ENUM ('PLAN', 'TAKE', 'WORK', 'DONE', 'FAIL', 'STOP');
        CREATE TABLE task (
          id bigserial, parent bigint, plan timestamptz NOT NULL DEFAULT now(),
          start timestamptz, stop timestamptz, "group" text NOT NULL DEFAULT 'group',
          max int NOT NULL DEFAULT 2147483647, pid int, input text NOT NULL, output text, error text,
          state state NOT NULL DEFAULT 'PLAN', timeout interval, delete boolean NOT NULL DEFAULT false,
          repeat interval, drift boolean NOT NULL DEFAULT true, count int NOT NULL DEFAULT 0,
          live interval NOT NULL DEFAULT '0', remote text, PRIMARY KEY (id, state)
        ) PARTITION BY LIST (state);
        CREATE TABLE task_planned PARTITION OF task FOR VALUES IN ('PLAN');
        CREATE TABLE task_running PARTITION OF task FOR VALUES IN ('TAKE', 'WORK');
        CREATE TABLE task_ended PARTITION OF task FOR VALUES IN ('DONE', 'FAIL', 'STOP');`)
      try {
        yield* withScheduler(
          localScheduler(partitioned),
          Effect.gen(function*() {
            yield* ready
            const ids = yield* insertTasks(partitioned, [
              { input: "SELECT 'one'" },
              { input: "SELECT 1/0" },
              { input: "SELECT 'repeats'", repeat: "1 hour" }
            ])
            const rows = yield* awaitTasks(partitioned, ids)
            expect(rows.map((row) => [row.state, row.output])).toEqual([
              ["DONE", "one"], ["FAIL", null], ["DONE", "repeats"]
            ])
          })
        )
        const placed = yield* sql(partitioned,
          "SELECT tableoid::regclass::text AS part, state::text FROM task ORDER BY id")
        expect(placed).toEqual([
          { part: "task_ended", state: "DONE" },
          { part: "task_ended", state: "FAIL" },
          { part: "task_ended", state: "DONE" },
          { part: "task_planned", state: "PLAN" }
        ])
      } finally {
        yield* Effect.promise(() => dropDatabase(partitioned))
      }
    }))
})
