import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Config, ConfigProvider, Effect, Layer } from "effect"
import * as PgTask from "../src/PgTask.js"
import { Scheduler } from "../src/Scheduler.js"
import { awaitTasks, createDatabase, dropDatabase, insertTasks, urlOf } from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("layer")
})
afterAll(() => dropDatabase(database))

describe("PgTask.layerConfig", () => {
  it.live("reads its options from Effect's Config and runs tasks", () =>
    Effect.gen(function*() {
      const options = Config.all({
        url: Config.redacted("DATABASE_URL"),
        settings: Config.all({ json: Config.string("TARGETS") }),
        env: Config.succeed(false as const)
      })
      const provider = ConfigProvider.fromMap(new Map([
        ["DATABASE_URL", urlOf(database)],
        ["TARGETS", JSON.stringify([{ data: database, timeout: 100 }])]
      ]))
      const rows = yield* Effect.gen(function*() {
        const [table] = yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)
        expect(table!.target).toMatchObject({ data: database, timeout: 100 })
        const ids = yield* insertTasks(database, [{ input: "SELECT 'configured'" }])
        return yield* awaitTasks(database, ids)
      }).pipe(
        Effect.provide(PgTask.layerConfig(options)),
        Effect.withConfigProvider(provider)
      )
      expect(rows.map((row) => [row.state, row.output])).toEqual([["DONE", "configured"]])
    }))

  it.live("fails with the missing setting's name when the config lacks it", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(PgTask.layerConfig(Config.all({ url: Config.redacted("DATABASE_URL") }))).pipe(
        Effect.scoped,
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map())),
        Effect.flip
      )
      expect(String(error)).toContain("DATABASE_URL")
    }))
})
