/**
 * The one source of time for every scheduling decision: which tasks are
 * due, when a repeat runs next, how long a session lives, when to look at
 * the table again. In production it follows the database server's clock, so
 * a host whose clock is off does not run tasks early or late; in tests it is
 * Effect's `TestClock`, so hours of schedule pass in milliseconds.
 */
import * as EffectClock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { Database } from "./Database.js"

export interface ClockService {
  /** The scheduler's now, in milliseconds since the epoch. */
  readonly now: Effect.Effect<number>
  /**
   * The same reading, outside an effect: for bookkeeping done in a
   * driver's callback, many times a millisecond on a busy worker.
   */
  readonly unsafeNow: () => number
  /** Sleeps until the scheduler's clock reads `at` (at once if it already does). */
  readonly sleepUntil: (at: number) => Effect.Effect<void>
}

/**
 * A clock plus an offset, both read when the service is made: Effect's
 * clock then (`TestClock` in a test), and the offset as it stands when read.
 * A sleep until `at` sleeps again while the clock still reads before it: a
 * timer keeps whole milliseconds, the host clock reads whole milliseconds,
 * and the offset may change meanwhile, so one sleep can end a little early,
 * and a planned task must not be looked for before its plan.
 */
const withOffset = (clock: EffectClock.Clock, offset: () => number): ClockService => {
  const unsafeNow = () => clock.unsafeCurrentTimeMillis() + offset()
  const now = Effect.sync(unsafeNow)
  const sleepUntil = (at: number): Effect.Effect<void> =>
    Effect.flatMap(now, (current) =>
      at > current
        ? Effect.zipRight(
          clock.sleep(Duration.millis(Math.max(1, Math.ceil(at - current)))),
          Effect.suspend(() => sleepUntil(at))
        )
        : Effect.void)
  return { now, unsafeNow, sleepUntil }
}

export class Clock extends Context.Tag("pg-task/Clock")<Clock, ClockService>() {
  /** Effect's own clock with no offset: `TestClock` under `it.effect`. */
  static readonly layerTest = Layer.effect(
    Clock,
    Effect.map(Effect.clock, (clock) => withOffset(clock, () => 0))
  )

  /**
   * Follows the server's `clock_timestamp()`: the offset is measured on
   * start and every `every` after, halving the round trip.
   */
  static readonly layerServer = (every: Duration.DurationInput = Duration.minutes(1)) =>
    Layer.scoped(
      Clock,
      Effect.gen(function*() {
        const { admin } = yield* Database
        const measure = Effect.gen(function*() {
          const before = yield* EffectClock.currentTimeMillis
          const [row] = yield* admin<{ server: number }>`
            SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS server`
          const after = yield* EffectClock.currentTimeMillis
          return row!.server - (before + after) / 2
        })
        let offset = yield* measure
        yield* measure.pipe(
          Effect.flatMap((delta) => Effect.sync(() => (offset = delta))),
          Effect.catchAllCause((cause) => Effect.logDebug("could not measure the server's clock", cause)),
          Effect.repeat(Schedule.spaced(every)),
          Effect.delay(every),
          Effect.forkScoped
        )
        return withOffset(yield* Effect.clock, () => offset)
      })
    )
}
