import { describe, expect, it } from "vitest"
import { nextPlan } from "../src/Task.js"

const second = 1000
const minute = 60 * second
const hour = 60 * minute
const plan = Date.UTC(2024, 0, 1, 12, 0, 0)

describe("nextPlan, no repeat", () => {
  it("is null when the task does not repeat", () => {
    expect(nextPlan({ plan, repeat: null, drift: true }, plan + second)).toBeNull()
    expect(nextPlan({ plan, repeat: null, drift: false }, plan + second)).toBeNull()
  })

  it("is null for a zero or negative repeat", () => {
    expect(nextPlan({ plan, repeat: 0, drift: true }, plan + second)).toBeNull()
    expect(nextPlan({ plan, repeat: 0, drift: false }, plan + second)).toBeNull()
    expect(nextPlan({ plan, repeat: -minute, drift: true }, plan + second)).toBeNull()
  })
})

describe("nextPlan, drift = false", () => {
  it("is stop + repeat", () => {
    const stop = plan + 3 * second
    expect(nextPlan({ plan, repeat: 5 * minute, drift: false }, stop)).toBe(stop + 5 * minute)
  })

  it("is stop + repeat however late the task ended", () => {
    const stop = plan + 17 * minute
    expect(nextPlan({ plan, repeat: 5 * minute, drift: false }, stop)).toBe(plan + 22 * minute)
  })

  it("keeps millisecond precision", () => {
    expect(nextPlan({ plan, repeat: 250, drift: false }, plan + 1)).toBe(plan + 251)
  })
})

describe("nextPlan, drift = true", () => {
  const task = { plan, repeat: 5 * minute, drift: true }

  it("is plan + repeat when the task stopped before it", () => {
    expect(nextPlan(task, plan + 2 * second)).toBe(plan + 5 * minute)
    expect(nextPlan(task, plan + 5 * minute - 1)).toBe(plan + 5 * minute)
  })

  it("is plan + repeat when the task stopped at its plan", () => {
    expect(nextPlan(task, plan)).toBe(plan + 5 * minute)
  })

  it("is strictly later than a stop exactly on a grid point", () => {
    expect(nextPlan(task, plan + 5 * minute)).toBe(plan + 10 * minute)
    expect(nextPlan(task, plan + 15 * minute)).toBe(plan + 20 * minute)
  })

  it("skips the slots missed by a stop long after plan (17 minutes late, 5-minute repeat)", () => {
    expect(nextPlan(task, plan + 17 * minute)).toBe(plan + 20 * minute)
  })

  it("keeps the grid a millisecond past a grid point", () => {
    expect(nextPlan(task, plan + 10 * minute + 1)).toBe(plan + 15 * minute)
  })

  it("keeps the grid after a day of downtime", () => {
    const stop = plan + 24 * hour + 30 * minute
    expect(nextPlan({ plan, repeat: hour, drift: true }, stop)).toBe(plan + 25 * hour)
  })

  it("is plan + repeat when the stop lies before the plan", () => {
    expect(nextPlan(task, plan - minute)).toBe(plan + 5 * minute)
  })

  it("keeps an uneven grid exactly", () => {
    const uneven = { plan: plan + 7, repeat: 333, drift: true }
    expect(nextPlan(uneven, plan + 7 + 1000)).toBe(plan + 7 + 4 * 333)
    expect(nextPlan(uneven, plan + 7 + 999)).toBe(plan + 7 + 4 * 333)
    expect(nextPlan(uneven, plan + 7 + 998)).toBe(plan + 7 + 3 * 333)
  })

  it("is always on the grid, strictly after stop, and at most one repeat after it", () => {
    const repeat = 7 * second
    for (let late = 0; late <= 10 * repeat; late += 997) {
      const stop = plan + late
      const next = nextPlan({ plan, repeat, drift: true }, stop)!
      expect(next > stop).toBe(true)
      expect(next - stop <= repeat).toBe(true)
      expect((next - plan) % repeat).toBe(0)
      expect(next >= plan + repeat).toBe(true)
    }
  })
})
