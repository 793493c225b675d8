import { Effect, Logger, LogLevel } from "effect"
import { describe, expect, it } from "vitest"
import { Simulation } from "../../src/testing.js"
import { baseSeed, generate, play, report, violations } from "./model.js"

const { seed: base, given } = baseSeed()
const schedules = given ? 1 : Number(process.env.SIMULATION_SCHEDULES ?? 1000)
const batch = 100

/** Plays one schedule in memory and returns what it broke. */
export const check = (seed: number) => {
  const schedule = generate(seed)
  return play(schedule).pipe(
    Effect.map((played) => violations(schedule, played)),
    Effect.provide(Simulation.layer({ settings: { default_run: String(schedule.run) } })),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
}

describe(`${schedules} random schedules in memory, from seed ${base}`, () => {
  for (let from = 0; from < schedules; from += batch) {
    const seeds = Array.from({ length: Math.min(batch, schedules - from) }, (_, i) => base + from + i)
    it(`schedules ${from + 1} to ${from + seeds.length} keep every rule`, async () => {
      for (const seed of seeds) {
        const problems = await check(seed)
        if (problems.length > 0) expect.fail(report(seed, problems))
      }
    })
  }
})
