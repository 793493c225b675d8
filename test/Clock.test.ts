/**
 * The scheduler's clock never wakes a sleeper early, whatever fraction of a
 * millisecond its deadline has: a planned task is looked for only once its
 * plan has come.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Clock } from "../src/Clock.js"

describe("Clock", () => {
  it.live("sleepUntil returns only once the clock reads the deadline, fractions of a millisecond included", () =>
    Effect.gen(function*() {
      const clock = yield* Clock
      const early: Array<number> = []
      for (let i = 0; i < 40; i++) {
        const at = (yield* clock.now) + 2 + (i % 10) / 10 + 0.05
        yield* clock.sleepUntil(at)
        const woke = yield* clock.now
        if (woke < at) early.push(at - woke)
      }
      expect(early).toEqual([])
    }).pipe(Effect.provide(Clock.layerTest)))
})
