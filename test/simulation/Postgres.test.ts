import { Effect, type Layer, Logger, LogLevel } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Scheduler } from "../../src/Scheduler.js"
import { Simulation } from "../../src/testing.js"
import { createDatabase, dropDatabase, urlOf } from "../support/database.js"
import { baseSeed, comparable, generate, play, report, violations } from "./model.js"

const { seed: base, given } = baseSeed()
const schedules = given ? 1 : Number(process.env.SIMULATION_POSTGRES_SCHEDULES ?? 20)
/**
 * Schedules that once left different rows, played on every run besides the
 * random ones. 1821925927: a task's end and its repeat's wake-up came in a
 * different order on each store, and the memory store's worker did not claim
 * again until the next wake-up.
 */
const known = given ? [] : [1821925927]

let database: string
beforeAll(async () => {
  database = await createDatabase("simulation")
})
afterAll(() => dropDatabase(database))

/** Plays the schedule of `seed` on `layer`. */
const playOn = <E>(seed: number, layer: Layer.Layer<Simulation | Scheduler, E>) =>
  play(generate(seed)).pipe(Effect.provide(layer), Logger.withMinimumLogLevel(LogLevel.Warning), Effect.runPromise)

describe(`${schedules} random schedules in memory and in PostgreSQL, from seed ${base}`, () => {
  const seeds = [...Array.from({ length: schedules }, (_, i) => base + i), ...known]
  seeds.forEach((seed, i) => {
    const name = i < schedules ? `schedule ${i + 1}` : `known schedule ${seed}`
    it(`${name} leaves the same rows in both`, async () => {
      const schedule = generate(seed)
      const settings = { json: JSON.stringify([{ data: database, table: `sim_${i}`, run: schedule.run }]) }
      const memory = await playOn(seed, Simulation.layer({ settings }))
      const postgres = await playOn(seed, Simulation.layerPostgres({ url: urlOf(database), settings }))
      const problems = violations(schedule, postgres)
      if (problems.length > 0) expect.fail(report(seed, problems))
      const [inMemory, onServer] = [comparable(memory.rows), comparable(postgres.rows)]
      if (JSON.stringify(inMemory) !== JSON.stringify(onServer)) {
        expect(onServer, report(seed, ["the rows in PostgreSQL differ from the rows in memory"])).toEqual(inMemory)
      }
    })
  })
})
