import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Simulation } from "pg-task/testing"

const week = Simulation.layer({ start: new Date("2026-01-05T00:00:00Z") })

describe("the nightly report", () => {
  it.effect("runs at 02:00 every night, and a slow night does not make it run twice", () =>
    Effect.gen(function*() {
      const sim = yield* Simulation
      yield* sim.plan({
        input: "sleep 50 minutes; output report sent",
        plan: new Date("2026-01-05T02:00:00Z"),
        repeat: "1 day",
        timeout: "2 hours"
      })
      yield* sim.advance("7 days")
      const runs = (yield* sim.rows).filter((row) => row.state === "DONE")
      expect(runs.map((row) => new Date(row.start!).toISOString())).toEqual(
        [5, 6, 7, 8, 9, 10, 11].map((day) => `2026-01-${String(day).padStart(2, "0")}T02:00:00.000Z`)
      )
      expect(runs.every((row) => row.output === "report sent")).toBe(true)
    }).pipe(Effect.provide(week)))
})
