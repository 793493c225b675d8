/**
 * The task row and the rules that follow from it alone.
 */
import * as Schema from "effect/Schema"

export const State = Schema.Literal("PLAN", "TAKE", "WORK", "DONE", "FAIL", "STOP")
export type State = typeof State.Type

/** A task as the claim hands it to a worker session. */
export interface ClaimedTask {
  readonly id: string
  readonly group: string
  readonly max: number
  readonly input: string
  /** Planned start, milliseconds since the epoch. */
  readonly plan: number
  /** Longest run in milliseconds; null for no limit. */
  readonly timeout: number | null
  /** Milliseconds between runs; null or 0 for no repeat. */
  readonly repeat: number | null
  readonly drift: boolean
  readonly delete: boolean
  readonly count: number
  /** Longest life of the worker session in milliseconds; 0 for no limit. */
  readonly live: number
  readonly remote: string | null
  /** The backend holding the claim until the task starts. */
  readonly claimedBy: number
}

/** How a run ended, as written back to the row. */
export interface Outcome {
  readonly state: "DONE" | "FAIL"
  readonly output: string | null
  readonly error: string | null
}

/**
 * When a repeating task runs next, or null when it does not repeat.
 *
 * With drift (the default) the task keeps its grid: the first
 * `plan + k * repeat` (k >= 1) later than `stop`, so slots missed while it
 * ran long or the scheduler was down are skipped, not run in a burst.
 * Without drift it runs `repeat` after it stopped.
 */
export const nextPlan = (task: Pick<ClaimedTask, "plan" | "repeat" | "drift">, stop: number): number | null => {
  const repeat = task.repeat
  if (repeat === null || repeat <= 0) return null
  if (!task.drift) return stop + repeat
  const k = Math.max(1, Math.floor((stop - task.plan) / repeat) + 1)
  return task.plan + k * repeat
}
