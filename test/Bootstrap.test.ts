import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as Bootstrap from "../src/Bootstrap.js"
import { resolve } from "../src/Config.js"
import * as Session from "../src/internal/session.js"
import { Scheduler } from "../src/Scheduler.js"
import {
  awaitTasks, createDatabase, dropDatabase, insertTasks, query, scheduler, sql, uniqueName, urlOf, withScheduler
} from "./support/database.js"

let admin: string
const created: Array<string> = []
const roles: Array<string> = []
beforeAll(async () => {
  admin = await createDatabase("bootstrap")
})
afterAll(async () => {
  for (const database of [admin, ...created]) await dropDatabase(database)
  for (const role of roles) await query("postgres", `DROP ROLE IF EXISTS "${role}"`)
})

const ready = Effect.flatMap(Scheduler, (s) => s.ready)

/** A target whose database, role, schema and table do not exist yet. */
const freshTarget = () => {
  const target = {
    data: uniqueName("db"),
    user: uniqueName("role"),
    schema: uniqueName("schema"),
    table: "jobs"
  }
  created.push(target.data)
  roles.push(target.user)
  return target
}

describe("targets", () => {
  it.live("a second target's database, role, schema and table are created, and its tasks run as its role", () =>
    Effect.gen(function*() {
      const second = freshTarget()
      const json = JSON.stringify([{ data: admin }, second])
      yield* withScheduler(
        scheduler(admin, { json }),
        Effect.gen(function*() {
          yield* ready
          const input = "SELECT current_user, current_database()"
          const [first] = yield* insertTasks(admin, [{ input }])
          const [other] = yield* insertTasks(second.data, [{ input }], `"${second.schema}"."jobs"`)
          const [firstRow] = yield* awaitTasks(admin, [first!])
          const [otherRow] = yield* awaitTasks(second.data, [other!], `"${second.schema}"."jobs"`)
          expect(firstRow!.output).toMatch(new RegExp(`\\n[^\\t]+\\t${admin}$`))
          expect(otherRow!.output).toBe(`current_user\tcurrent_database\n${second.user}\t${second.data}`)
        })
      )
      const [owners] = yield* sql(second.data, `
        SELECT d.datdba::regrole::text AS database, n.nspowner::regrole::text AS schema,
               c.relowner::regrole::text AS table, t.typowner::regrole::text AS type
        FROM pg_database d, pg_namespace n
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'jobs'
        JOIN pg_type t ON t.typnamespace = n.oid AND t.typname = 'state'
        WHERE d.datname = current_database() AND n.nspname = $1`, [second.schema])
      const owner = second.user
      expect(owners).toEqual({ database: owner, schema: owner, table: owner, type: owner })
    }))

  it.live("the same targets given through the server's settings", () =>
    Effect.gen(function*() {
      const target = freshTarget()
      const settingsDatabase = yield* Effect.promise(() => createDatabase("settings"))
      created.push(settingsDatabase)
      yield* sql(settingsDatabase, `ALTER DATABASE "${settingsDatabase}" SET pg_task.json = '${
        JSON.stringify([target])
      }'`)
      yield* sql(settingsDatabase, `ALTER DATABASE "${settingsDatabase}" SET pg_task.default_timeout = '150'`)
      yield* withScheduler(
        scheduler(settingsDatabase, { default_timeout: undefined }),
        Effect.gen(function*() {
          const [table] = yield* ready
          expect(table!.target).toMatchObject({ ...target, timeout: 150 })
          const [id] = yield* insertTasks(target.data, [{ input: "SELECT current_user" }], `"${target.schema}".jobs`)
          const [row] = yield* awaitTasks(target.data, [id!], `"${target.schema}".jobs`)
          expect(row!.output).toBe(target.user)
        })
      )
    }))

  it.live("two instances setting up the same new target at once both start, and a task runs once", () =>
    Effect.gen(function*() {
      const target = freshTarget()
      const json = JSON.stringify([target])
      const table = `"${target.schema}".jobs`
      yield* withScheduler(
        scheduler(admin, { json }),
        withScheduler(
          scheduler(admin, { json }),
          Effect.gen(function*() {
            yield* ready
            const [id] = yield* insertTasks(target.data, [{ input: "SELECT 1" }], table)
            yield* awaitTasks(target.data, [id!], table)
          })
        ).pipe(Effect.zipLeft(ready))
      )
      const rows = yield* sql(target.data, `SELECT state FROM ${table}`)
      expect(rows).toEqual([{ state: "DONE" }])
    }))

  it.live("an existing table with extra columns is used as it is", () =>
    Effect.gen(function*() {
      const database = yield* Effect.promise(() => createDatabase("extra"))
      created.push(database)
      yield* sql(database, `
        CREATE TYPE state AS ENUM ('PLAN', 'TAKE', 'WORK', 'DONE', 'FAIL', 'STOP');
        CREATE TABLE task (
          id bigserial PRIMARY KEY, parent bigint, plan timestamptz NOT NULL DEFAULT now(),
          start timestamptz, stop timestamptz, "group" text NOT NULL DEFAULT 'group',
          max int NOT NULL DEFAULT 2147483647, pid int, input text NOT NULL, output text, error text,
          state state NOT NULL DEFAULT 'PLAN', timeout interval, delete boolean NOT NULL DEFAULT false,
          repeat interval, drift boolean NOT NULL DEFAULT true, count int NOT NULL DEFAULT 0,
          live interval NOT NULL DEFAULT '0', remote text, note text DEFAULT 'kept', added timestamptz
        )`)
      yield* withScheduler(
        scheduler(database, { json: JSON.stringify([{ data: database }]) }),
        Effect.gen(function*() {
          yield* ready
          const [id] = yield* insertTasks(database, [{ input: "SELECT 'extra'", note: "mine" }])
          const [row] = yield* awaitTasks(database, [id!])
          expect([row!.state, row!.output, row!.note]).toEqual(["DONE", "extra", "mine"])
        })
      )
    }))

  it.live("a table missing a column is refused with the column named", () =>
    Effect.gen(function*() {
      const database = yield* Effect.promise(() => createDatabase("missing"))
      created.push(database)
      yield* sql(database, "CREATE TABLE task (id bigserial PRIMARY KEY, input text NOT NULL)")
      const { settings } = Either.getOrThrow(resolve([["flags", { json: JSON.stringify([{ data: database }]) }]]))
      const error = yield* Effect.scoped(
        Effect.flatMap(
          Session.open({ connectionString: urlOf(database) }, "connect"),
          (session) => Bootstrap.ensureTable(session, settings.targets[0]!)
        )
      ).pipe(Effect.flip)
      expect(error._tag).toBe("TargetError")
      expect(error.message).toContain(`table "public"."task" has no column "parent", "plan"`)
      expect(error.message).toContain(`"remote"`)
    }))
})
