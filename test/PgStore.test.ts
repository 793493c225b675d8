import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { PgTaskConfig } from "../src/Config.js"
import { Database } from "../src/Database.js"
import * as PgStore from "../src/PgStore.js"
import { StopSignal, Store } from "../src/Store.js"
import { createDatabase, dropDatabase, sql, urlOf } from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("store")
})
afterAll(() => dropDatabase(database))

/** The target's store, opened for the test's scope. */
const open = Effect.gen(function*() {
  const { targets } = yield* PgTaskConfig
  return yield* Effect.flatMap(Store, (store) => store.open(targets[0]!))
})

const layer = () =>
  PgStore.layer({ listen: false }).pipe(
    Layer.provideMerge(PgTaskConfig.layerFrom([["flags", { json: JSON.stringify([{ data: database }]) }]])),
    Layer.provideMerge(Database.layer({ url: urlOf(database) }))
  )

describe("a start sent with the task's SQL", () => {
  it.live("runs nothing of a task stopped after its claim, and the session it used is not reused", () =>
    Effect.gen(function*() {
      const store = yield* open
      yield* sql(database, "CREATE TABLE effects (id bigint)")
      const [row] = yield* sql<{ id: string }>(
        database,
        "INSERT INTO task (input) VALUES ('INSERT INTO effects VALUES (1)') RETURNING id"
      )
      const now = Date.now() + 1000
      const { tasks: [task] } = yield* store.claim(now, 1, new Map())
      expect(task?.id).toBe(row!.id)
      yield* sql(database, "UPDATE task SET state = 'STOP' WHERE id = $1", [row!.id])

      const session = yield* store.session
      expect(yield* session.start(task!, now)).toBe(true)
      const ran = yield* session.run(task!, new StopSignal())

      expect(ran.started).toBe(false)
      expect(session.isHealthy()).toBe(false)
      const effects = yield* sql(database, "SELECT * FROM effects")
      expect(effects).toEqual([])
      const [after] = yield* sql<{ state: string; start: Date | null }>(
        database,
        "SELECT state, start FROM task WHERE id = $1",
        [row!.id]
      )
      expect(after).toEqual({ state: "STOP", start: null })
    }).pipe(Effect.scoped, Effect.provide(layer())))

  it.live("marks a claimed task running with its session's pid before its SQL runs", () =>
    Effect.gen(function*() {
      const store = yield* open
      yield* sql(
        database,
        `INSERT INTO task (input)
         VALUES ('SELECT state::text || pid FROM task WHERE id = current_setting(''pg_task.id'')::bigint')`
      )
      const now = Date.now() + 1000
      const { tasks: [task] } = yield* store.claim(now, 1, new Map())
      const session = yield* store.session
      yield* session.start(task!, now)
      const ran = yield* session.run(task!, new StopSignal())
      expect(ran.outcome).toEqual({ state: "DONE", output: `WORK${session.pid}`, error: null })
      expect(session.isHealthy()).toBe(true)
    }).pipe(Effect.scoped, Effect.provide(layer())))
})
