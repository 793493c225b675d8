import { describe, it } from "vitest"
import { baseSeed, firstFailure } from "./model.js"

const { seed: base, given } = baseSeed()
const schedules = given ? 1 : Number(process.env.SIMULATION_SCHEDULES ?? 1000)
const batch = 100

describe(`${schedules} random schedules in memory, from seed ${base}`, () => {
  for (let from = 0; from < schedules; from += batch) {
    const seeds = Array.from({ length: Math.min(batch, schedules - from) }, (_, i) => base + from + i)
    it(`schedules ${from + 1} to ${from + seeds.length} keep every rule`, async () => {
      const failure = await firstFailure(seeds)
      if (failure !== undefined) throw new Error(failure)
    })
  }
})
