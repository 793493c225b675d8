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
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import { Database } from "./Database.js"

export interface ClockService {
  /** The scheduler's now, in milliseconds since the epoch. */
  readonly now: Effect.Effect<number>
  /** Sleeps until the scheduler's clock reads `at` (at once if it already does). */
  readonly sleepUntil: (at: number) => Effect.Effect<void>
}

/** Host clock plus an offset; both sleep and now go through Effect's clock. */
const withOffset = (offset: Effect.Effect<number>): ClockService => {
  const now = Effect.zipWith(EffectClock.currentTimeMillis, offset, (host, delta) => host + delta)
  return {
    now,
    sleepUntil: (at) => Effect.flatMap(now, (current) => at > current ? Effect.sleep(at - current) : Effect.void)
  }
}

export class Clock extends Context.Tag("pg-task/Clock")<Clock, ClockService>() {
  /** Effect's own clock with no offset: `TestClock` under `it.effect`. */
  static readonly layerTest = Layer.succeed(Clock, withOffset(Effect.succeed(0)))

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
        const offset = yield* Ref.make(yield* measure)
        yield* measure.pipe(
          Effect.flatMap((delta) => Ref.set(offset, delta)),
          Effect.catchAllCause((cause) => Effect.logDebug("could not measure the server's clock", cause)),
          Effect.repeat(Schedule.spaced(every)),
          Effect.delay(every),
          Effect.forkScoped
        )
        return withOffset(Ref.get(offset))
      })
    )
}
