import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Scheduler } from "../src/Scheduler.js"
import {
  awaitTasks, createDatabase, dropDatabase, insertTasks, localScheduler, sql, withScheduler
} from "./support/database.js"
import { leaveLeftovers, leftoverColumns, noLeftovers } from "./support/leftovers.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("executor")
})
afterAll(() => dropDatabase(database))

/** Runs each input as a task and returns the finished rows, in order. */
const run = (...inputs: ReadonlyArray<string>) =>
  withScheduler(
    localScheduler(database),
    Effect.gen(function*() {
      yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)
      const ids = yield* insertTasks(database, inputs.map((input) => ({ input })))
      return yield* awaitTasks(database, ids)
    })
  )

describe("a task runs and writes back what happened", () => {
  it.live("SELECT now() ends DONE with a timestamp", () =>
    Effect.gen(function*() {
      const [task] = yield* run("SELECT now()")
      expect(task!.state).toBe("DONE")
      expect(task!.error).toBeNull()
      expect(Number.isNaN(Date.parse(task!.output!))).toBe(false)
      expect(task!.start).toBeInstanceOf(Date)
      expect(task!.stop!.getTime()).toBeGreaterThanOrEqual(task!.start!.getTime())
      expect(task!.pid).toBeGreaterThan(0)
    }))

  it.live("SELECT 1/0 ends FAIL with the error and no output", () =>
    Effect.gen(function*() {
      const [task] = yield* run("SELECT 1/0")
      expect(task!.state).toBe("FAIL")
      expect(task!.error!.startsWith("ERROR:  division by zero")).toBe(true)
      expect(task!.output).toBeNull()
      expect(task!.stop).toBeInstanceOf(Date)
    }))

  it.live("output follows the rules of SPEC section 4", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [string, string | null]> = [
        ["SELECT 1 AS a", "1"],
        ["SELECT 1 AS a, 2 AS b", "a\tb\n1\t2"],
        ["SELECT 1 AS a; SELECT 2 AS b", "1\n2"],
        ["SELECT 1 WHERE false", null],
        ["SELECT 1.50::numeric AS n, true AS b, ARRAY[1,2] AS a, NULL::int AS z", "n\tb\ta\tz\n1.50\tt\t{1,2}\t\\N"],
        ["SELECT NULL", "\\N"],
        ["SELECT x FROM generate_series(1, 3) AS x", "1\n2\n3"],
        ["CREATE TEMP TABLE t (a int); INSERT INTO t VALUES (1); DELETE FROM t WHERE a = 2",
          "CREATE TABLE\nINSERT 0 1\nDELETE 0"],
        ["CREATE TEMP TABLE u (a int); INSERT INTO u VALUES (1), (2) RETURNING a", "CREATE TABLE\n1\n2"],
        ["SELECT 'a b' AS s, '2024-01-02'::date AS d, '1 day'::interval AS i", "s\td\ti\na b\t2024-01-02\t1 day"],
        ["DO $$ BEGIN END $$", "DO"]
      ]
      const tasks = yield* run(...cases.map(([input]) => input))
      expect(tasks.map((task) => [task.input, task.state, task.output])).toEqual(
        cases.map(([input, output]) => [input, "DONE", output])
      )
    }))

  it.live("errors carry DETAIL, HINT and CONTEXT lines as psql shows them", () =>
    Effect.gen(function*() {
      const [detail, hint, context] = yield* run(
        "CREATE TEMP TABLE k (a int PRIMARY KEY); INSERT INTO k VALUES (1), (1)",
        "SELECT * FROM no_such_table_here",
        "DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING DETAIL = 'some detail', HINT = 'a hint'; END $$"
      )
      expect(detail!.error).toBe(
        "ERROR:  duplicate key value violates unique constraint \"k_pkey\"\nDETAIL:  Key (a)=(1) already exists."
      )
      expect(hint!.error).toBe("ERROR:  relation \"no_such_table_here\" does not exist")
      expect(context!.error).toBe(
        "ERROR:  custom failure\nDETAIL:  some detail\nHINT:  a hint\nCONTEXT:  PL/pgSQL function inline_code_block line 1 at RAISE"
      )
      expect([detail, hint, context].map((task) => task!.state)).toEqual(["FAIL", "FAIL", "FAIL"])
    }))

  it.live("a failed task rolls back all its statements; an open transaction is committed", () =>
    Effect.gen(function*() {
      yield* sql(database, "CREATE TABLE IF NOT EXISTS effects (note text)")
      const [failed, open] = yield* run(
        "INSERT INTO effects VALUES ('failed'); SELECT 1/0",
        "BEGIN; INSERT INTO effects VALUES ('open')"
      )
      expect(failed!.state).toBe("FAIL")
      expect(open!.state).toBe("DONE")
      const notes = yield* sql<{ note: string }>(database, "SELECT note FROM effects ORDER BY note")
      expect(notes.map((row) => row.note)).toEqual(["open"])
    }))

  it.live("COPY to or from the client fails with a clear error and leaves no trace", () =>
    Effect.gen(function*() {
      yield* sql(database, "CREATE TABLE IF NOT EXISTS copied (a int)")
      const [out, into] = yield* run(
        "INSERT INTO copied VALUES (1); COPY (SELECT 1) TO STDOUT",
        "COPY copied FROM STDIN"
      )
      for (const task of [out!, into!]) {
        expect(task.state).toBe("FAIL")
        expect(task.error).toMatch(/^ERROR:  COPY TO STDOUT and COPY FROM STDIN are not supported in tasks/)
      }
      expect(yield* sql(database, "SELECT * FROM copied")).toEqual([])
    }))

  it.live("pg_task.id is the task's id, and tasks it inserts get it as parent", () =>
    Effect.gen(function*() {
      const [task] = yield* run(
        "SELECT current_setting('pg_task.id'); INSERT INTO task (input) VALUES ('SELECT 2')"
      )
      expect(task!.output).toBe(`${task!.id}\nINSERT 0 1`)
      const [child] = yield* sql<{ parent: string }>(
        database,
        "SELECT parent::text FROM task WHERE input = 'SELECT 2'"
      )
      expect(child!.parent).toBe(task!.id)
    }))

  it.live("what a task leaves in its session is gone for the next task on the same session", () =>
    withScheduler(
      localScheduler(database),
      Effect.gen(function*() {
        yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)
        // One group of max 1: the second task runs after the first, on the
        // session the first gave back.
        const [firstId, secondId] = yield* insertTasks(database, [
          {
            input: `${leaveLeftovers}; SET ROLE NONE; SELECT 1`,
            group: "leaks",
            max: 1
          },
          {
            input: `SELECT ${leftoverColumns}`,
            group: "leaks",
            max: 1
          }
        ])
        const [first, second] = yield* awaitTasks(database, [firstId!, secondId!])
        expect(first!.state).toBe("DONE")
        expect(second!.pid).toBe(first!.pid)
        expect(second!.output).toBe(noLeftovers)
      })
    ))
})
