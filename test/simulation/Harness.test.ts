import { afterEach, describe, expect, it } from "vitest"
import { MemoryStore, type TaskRow } from "../../src/testing.js"
import { baseSeed, check, firstFailure, generate } from "./model.js"

/** A table that lets any due task into its group, whatever the group's `max`. */
class IgnoresMax extends MemoryStore.MemoryTable {
  protected override fits(_row: TaskRow, _running: number, _rank: number) {
    return true
  }
}

const ignoringMax: MemoryStore.MakeTable = (table, wakes) => new IgnoresMax(table, wakes)

/** A table that counts one task too many in every group: a task of `max` 1 never runs. */
class OneShort extends MemoryStore.MemoryTable {
  protected override fits(row: TaskRow, running: number, rank: number) {
    return super.fits(row, running + 1, rank)
  }
}

const given = process.env.SIMULATION_SEED
afterEach(() => {
  if (given === undefined) delete process.env.SIMULATION_SEED
  else process.env.SIMULATION_SEED = given
})

describe("the model test itself", () => {
  it("catches a store that ignores max, names the seed, and the seed replays the failure", async () => {
    const failure = await firstFailure(Array.from({ length: 500 }, (_, i) => i + 1), ignoringMax)
    expect(failure).toBeDefined()
    expect(failure).toMatch(/group g\d ran \d+ tasks at \d+, over its max of \d+/)
    const seed = Number(/SIMULATION_SEED=(\d+) npm run test:simulation/.exec(failure!)![1])
    process.env.SIMULATION_SEED = String(seed)
    expect(baseSeed()).toEqual({ seed, given: true })
    const again = await check(seed, ignoringMax)
    expect(failure).toContain(again.join("\n  - "))
    expect(again.length).toBeGreaterThan(0)
    // The same schedule on the store that keeps the rule breaks nothing.
    expect(await check(seed)).toEqual([])
    expect(generate(seed)).toEqual(generate(seed))
  })

  it("catches a store that keeps a due task waiting while its group has room", async () => {
    const oneShort: MemoryStore.MakeTable = (table, wakes) => new OneShort(table, wakes)
    const failure = await firstFailure(Array.from({ length: 500 }, (_, i) => i + 1), oneShort)
    expect(failure).toMatch(/task \d+ \(-- t\d@\d+\) was due at \d+, could have run at \d+, and never ran/)
  })

  it("refuses a seed that is not an integer", () => {
    process.env.SIMULATION_SEED = "abc"
    expect(() => baseSeed()).toThrow("SIMULATION_SEED must be an integer, not \"abc\"")
  })
})
