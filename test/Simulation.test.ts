import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { PgTaskConfig } from "../src/Config.js"
import { MemoryStore, Simulation } from "../src/testing.js"

const minute = 60_000
const hour = 60 * minute

const simulate = <A, E>(body: Effect.Effect<A, E, Simulation>, settings = {}) =>
  Effect.provide(body, Simulation.layer({ settings }))

describe("Simulation", () => {
  it.effect("a repeating task keeps its grid for a virtual day", () =>
    simulate(Effect.gen(function*() {
      const sim = yield* Simulation
      yield* sim.plan({ input: "sleep 10 minutes; output done", repeat: "1 hour", plan: "30 minutes" })
      yield* sim.advance("1 day")
      const runs = (yield* sim.rows).filter((row) => row.state === "DONE")
      expect(runs).toHaveLength(24)
      for (const [k, run] of runs.entries()) {
        expect(run.start).toBe(30 * minute + k * hour)
        expect(run.stop).toBe(40 * minute + k * hour)
        expect(run.output).toBe("done")
      }
    })))

  it.effect("without drift a task runs its repeat after it stopped", () =>
    simulate(Effect.gen(function*() {
      const sim = yield* Simulation
      yield* sim.plan({ input: "sleep 25 minutes", repeat: "1 hour", drift: false })
      yield* sim.advance("4 hours")
      const starts = (yield* sim.rows).filter((row) => row.state === "DONE").map((row) => row.start)
      expect(starts).toEqual([0, 85 * minute, 170 * minute])
    })))

  it.effect("a group's max holds tasks back until a slot frees", () =>
    simulate(Effect.gen(function*() {
      const sim = yield* Simulation
      for (let i = 0; i < 5; i++) yield* sim.plan({ input: "sleep 1 hour", group: "reports", max: 2 })
      yield* sim.advance("3 hours")
      const starts = (yield* sim.rows).map((row) => row.start)
      expect(starts).toEqual([0, 0, hour, hour, 2 * hour])
    })))

  it.effect("timeouts, STOPs and failures end tasks as on a server", () =>
    simulate(Effect.gen(function*() {
      const sim = yield* Simulation
      const slow = yield* sim.plan({ input: "sleep 2 hours; output late", timeout: "30 minutes" })
      const stopped = yield* sim.plan({ input: "sleep 2 hours", repeat: "3 hours" })
      const failing = yield* sim.plan({ input: "sleep 1 minute; fail disk full" })
      const never = yield* sim.plan({ input: "output never", plan: "1 hour" })
      yield* sim.advance("10 minutes")
      expect(yield* sim.stop(stopped)).toBe(true)
      expect(yield* sim.stop(never)).toBe(true)
      yield* sim.advance("1 day")
      const byId = new Map((yield* sim.rows).map((row) => [row.id, row]))
      expect(byId.get(slow)).toMatchObject({
        state: "FAIL",
        stop: 30 * minute,
        error: "ERROR:  canceling statement due to statement timeout"
      })
      expect(byId.get(stopped)).toMatchObject({
        state: "STOP",
        stop: 10 * minute,
        error: "ERROR:  canceling statement due to user request"
      })
      expect(byId.get(failing)).toMatchObject({ state: "FAIL", stop: minute, error: "ERROR:  disk full" })
      expect(byId.get(never)).toMatchObject({ state: "STOP", start: null })
      expect(byId.size).toBe(4)
    })))

  it.effect("a worker whose sessions are busy waits for one to free, even with a plan past", () =>
    simulate(
      Effect.gen(function*() {
        const sim = yield* Simulation
        yield* sim.plan({ input: "sleep 1 hour", plan: "10 minutes" })
        yield* sim.plan({ input: "sleep 1 hour", plan: "20 minutes" })
        yield* sim.plan({ input: "sleep 1 hour", plan: "30 minutes" })
        yield* sim.advance("4 hours")
        const rows = yield* sim.rows
        expect(rows.map((row) => [row.start, row.stop])).toEqual([
          [10 * minute, 70 * minute],
          [70 * minute, 130 * minute],
          [130 * minute, 190 * minute]
        ])
      }),
      { default_run: "1" }
    ))

  it.effect("a task whose session died goes back to PLAN and runs again; its old run is not written", () =>
    Effect.gen(function*() {
      const sim = yield* Simulation
      const id = yield* sim.plan({ input: "sleep 1 hour; output done" })
      yield* sim.advance("10 minutes")
      const [running] = yield* sim.rows
      expect(running).toMatchObject({ state: "WORK", start: 0 })
      const { targets } = yield* PgTaskConfig
      const table = yield* Effect.flatMap(MemoryStore.MemoryTables, (tables) => tables.of(targets[0]!))
      table.die(running!.pid!)
      // The next claim (here, for a new task) finds the row held by a dead session.
      yield* sim.plan({ input: "output other" })
      yield* sim.advance("2 hours")
      const row = (yield* sim.rows).find((r) => r.id === id)
      expect(row).toMatchObject({ state: "DONE", start: 10 * minute, stop: 70 * minute, output: "done" })
    }).pipe(Effect.provide(Simulation.layer({ settings: { default_reset: "1" } }))))

  it.effect("a script the simulation cannot read fails its task with a syntax error", () =>
    simulate(Effect.gen(function*() {
      const sim = yield* Simulation
      const id = yield* sim.plan({ input: "SELECT 1" })
      yield* sim.advance("1 second")
      const [row] = yield* sim.rows
      expect(row).toMatchObject({ id, state: "FAIL", error: "ERROR:  syntax error at or near \"SELECT\"" })
    })))
})

describe("Simulation on TestClock", () => {
  const onTestClock = <A, E>(body: Effect.Effect<A, E, Simulation>) =>
    Effect.provide(body, Simulation.layer({ clock: "test", start: new Date(hour) }))

  it.effect("a group's max holds tasks back until a slot frees, a day moved by TestClock", () =>
    onTestClock(Effect.gen(function*() {
      const sim = yield* Simulation
      expect(yield* sim.now).toBe(hour)
      for (let i = 0; i < 3; i++) yield* sim.plan({ input: "sleep 1 hour", group: "reports", max: 2 })
      yield* sim.plan({ input: "sleep 10 minutes; output ok", repeat: "6 hours" })
      yield* sim.advance("1 day")
      const rows = yield* sim.rows
      expect(rows.filter((row) => row.group === "reports").map((row) => row.start)).toEqual([hour, hour, 2 * hour])
      const repeats = rows.filter((row) => row.state === "DONE" && row.output === "ok")
      expect(repeats.map((row) => row.start)).toEqual([1, 7, 13, 19].map((h) => h * hour))
    })))

  it.effect("a test may adjust TestClock itself and settle the scheduler", () =>
    onTestClock(Effect.gen(function*() {
      const sim = yield* Simulation
      const id = yield* sim.plan({ input: "sleep 5 minutes; output done", timeout: "1 minute" })
      yield* sim.settle
      yield* TestClock.adjust("2 minutes")
      yield* sim.settle
      expect((yield* sim.rows).find((row) => row.id === id)).toMatchObject({
        state: "FAIL",
        start: hour,
        stop: hour + minute,
        error: "ERROR:  canceling statement due to statement timeout"
      })
    })))
})
