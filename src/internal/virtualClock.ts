/**
 * A clock that stands still until told to move, for simulations: like
 * Effect's `TestClock`, but it moves from one timer to the next at once,
 * and leaves waiting for the fibers it woke to whoever moves it. A sleep
 * that is interrupted leaves no timer behind.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"

interface Timer {
  readonly at: number
  readonly wake: () => void
}

export class VirtualClock implements Clock.Clock {
  readonly [Clock.ClockTypeId]: Clock.ClockTypeId = Clock.ClockTypeId
  private instant: number
  private readonly timers = new Set<Timer>()

  constructor(start = 0) {
    this.instant = start
  }

  unsafeCurrentTimeMillis(): number {
    return this.instant
  }

  unsafeCurrentTimeNanos(): bigint {
    return BigInt(Math.round(this.instant * 1_000_000))
  }

  readonly currentTimeMillis = Effect.sync(() => this.instant)

  readonly currentTimeNanos = Effect.sync(() => this.unsafeCurrentTimeNanos())

  sleep(duration: Duration.Duration): Effect.Effect<void> {
    return Effect.suspend(() => this.sleepUntil(this.instant + Duration.toMillis(duration)))
  }

  sleepUntil(at: number): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (at <= this.instant) return resume(Effect.void)
      const timer: Timer = { at, wake: () => resume(Effect.void) }
      this.timers.add(timer)
      return Effect.sync(() => this.timers.delete(timer))
    })
  }

  /** The earliest timer's instant, or undefined when nothing sleeps. */
  next(): number | undefined {
    let earliest: number | undefined
    for (const timer of this.timers) if (earliest === undefined || timer.at < earliest) earliest = timer.at
    return earliest
  }

  /** Moves to `at` (never back) and wakes every timer due by then, earliest first. */
  moveTo(at: number): void {
    this.instant = Math.max(this.instant, at)
    const due = [...this.timers].filter((timer) => timer.at <= this.instant).sort((a, b) => a.at - b.at)
    for (const timer of due) {
      this.timers.delete(timer)
      timer.wake()
    }
  }
}
