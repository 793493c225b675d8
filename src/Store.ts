/**
 * Where a target's tasks live, as the scheduler sees it: claim what is due,
 * start it on a session, write back how it ended, give back what is held,
 * put back what a dead worker held. The scheduler's fibers run unchanged
 * over any store: the PostgreSQL one in production (`PgStore`), an
 * in-memory one for simulations (`MemoryStore`).
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type { TaskTable } from "./Bootstrap.js"
import type { Target } from "./Config.js"
import type { DatabaseError, TargetError } from "./Errors.js"
import { errors } from "./Output.js"
import type { ClaimedTask, Outcome } from "./Task.js"

/** What wakes a worker before its poll interval ends. */
export type Wake = "PLAN" | "STOP" | "END"

/** What one claim found. */
export interface Claimed {
  /** The tasks claimed, in the order they start. */
  readonly tasks: ReadonlyArray<ClaimedTask>
  /** The earliest plan still to come, ms; null when none. */
  readonly nextPlan: number | null
  /** Whether due tasks were left, held back by their groups' limits. */
  readonly dueLeft: boolean
}

/** A claimed or running task and the backend that holds its row. */
export interface Held {
  readonly id: string
  readonly pid: number
}

/** How one run ended, ready to be written. */
export interface Finish {
  readonly task: ClaimedTask
  /** The backend that held the row while the task ran. */
  readonly pid: number
  readonly outcome: Outcome
  /** When it ended, ms. */
  readonly stop: number
  /** When it began, ms, for a task whose row was marked running before it began. */
  readonly start?: number | undefined
  /** The next run's plan, ms, for a repeating task. */
  readonly next: number | null
}

/** How running a task's input went. */
export interface Ran {
  readonly outcome: Outcome
  /** False when the run was cut short: such a session is not reused. */
  readonly clean: boolean
  /**
   * The session was lost under the task (terminated, server restarted): the
   * task goes back to `PLAN` and runs again, rather than failing for a
   * reason that is not its own.
   */
  readonly lost?: boolean
  /**
   * False when the task never began: its claim was lost before the start,
   * which a store may send together with the run.
   */
  readonly started?: boolean
}

/**
 * A user's STOP of a running task, as the worker passes it on: the run it
 * reaches is cut short. A plain callback rather than a fiber, since every
 * task has one and most are never stopped.
 */
export class StopSignal {
  private listener: (() => void) | undefined
  private requested = false

  get stopped() {
    return this.requested
  }

  /** Stops the task: the listener, if any, is called once. */
  stop() {
    if (this.requested) return
    this.requested = true
    this.listener?.()
  }

  /** Calls `listener` when the task is stopped, at once if it is already; returns what unregisters it. */
  onStop(listener: () => void): () => void {
    if (this.requested) {
      listener()
      return () => {}
    }
    this.listener = listener
    return () => {
      if (this.listener === listener) this.listener = undefined
    }
  }

  /** Completes when the task is stopped. */
  readonly await: Effect.Effect<void> = Effect.async((resume) => {
    const off = this.onStop(() => resume(Effect.void))
    return Effect.sync(off)
  })
}

/** How a stopped run ends: `FAIL` with the error PostgreSQL gives a cancelled statement. */
export const stoppedRun: Ran = { outcome: { state: "FAIL", output: null, error: errors.stopped }, clean: false }

/** Bounds a run that is an effect by a user's STOP, for stores that cannot cancel through a callback. */
export const stoppable = (run: Effect.Effect<Ran>, stop: StopSignal): Effect.Effect<Ran> =>
  stop.stopped ? Effect.succeed(stoppedRun) : Effect.raceFirst(run, Effect.as(stop.await, stoppedRun))

/** A session that runs tasks, one at a time, as the target's role. */
export interface TaskSession {
  /** The backend that holds the task's row while it runs. */
  readonly pid: number
  /**
   * Marks a claimed task running on this session, first resetting whatever
   * an earlier task left in it. False when the claim was lost meanwhile. A
   * store may instead send the start with the run, which then tells
   * through `started` whether the task began.
   */
  readonly start: (task: ClaimedTask, now: number) => Effect.Effect<boolean, DatabaseError>
  /** Runs the task's input to its end; `stop` or interrupting it cancels the run. */
  readonly run: (task: ClaimedTask, stop: StopSignal) => Effect.Effect<Ran>
  /** False once the session is broken and must not run another task. */
  readonly isHealthy: () => boolean
  /**
   * A store that can send a session several tasks at once runs them as a
   * row, one after another: `start` marks them running in one statement
   * and returns those it started, in order, leaving out tasks whose claim
   * was lost; `run` then runs them, each stopped by its signal in `stops`,
   * and tells of each as it begins and ends. A task the session was lost
   * under ends with `lost`; tasks after it neither begin nor end.
   * Interrupting the run ends the session with whatever it runs.
   */
  readonly rows?: {
    readonly start: (tasks: ReadonlyArray<ClaimedTask>, now: number) => Effect.Effect<
      ReadonlyArray<ClaimedTask>,
      DatabaseError
    >
    readonly run: (
      tasks: ReadonlyArray<ClaimedTask>,
      stops: ReadonlyArray<StopSignal>,
      events: RowEvents
    ) => Effect.Effect<void>
  } | undefined
}

/** What a row of tasks tells as it runs; tasks by their place in the row. */
export interface RowEvents {
  readonly began: (index: number) => void
  readonly ended: (index: number, ran: Ran) => void
}

/** One target's table, open for a worker. */
export interface TargetStore {
  readonly table: TaskTable
  /** The most tasks a session runs as a row (see `TaskSession.rows`); 1 without rows. */
  readonly rowLength: number
  /** Wake-ups from users' changes to the table: new or re-planned tasks, STOPs. */
  readonly wakes: Queue.Dequeue<Wake>
  /**
   * Claims up to `limit` due tasks in order of `max` descending, `plan`,
   * `id`, within group limits counted over the whole table; the groups this
   * instance runs count as at least `inProcess` says. With `until` later
   * than `now`, tasks planned up to `until` are claimed too, after every
   * due one, for the worker to start at their plan.
   */
  readonly claim: (
    now: number,
    limit: number,
    inProcess: ReadonlyMap<string, number>,
    until?: number
  ) => Effect.Effect<Claimed, DatabaseError>
  /** Claims the task a session goes on with after `after`: same group and remote, `max` at least as large. */
  readonly claimNext: (now: number, after: ClaimedTask) => Effect.Effect<ClaimedTask | undefined, DatabaseError>
  /** Writes how runs ended, with the repeats and deletes that follow. */
  readonly finish: (finishes: ReadonlyArray<Finish>) => Effect.Effect<void, DatabaseError>
  /**
   * Puts tasks back to `PLAN`, each only while the backend named with it
   * still holds it: a task reset and claimed anew meanwhile stays with its
   * new holder.
   */
  readonly release: (held: ReadonlyArray<Held>) => Effect.Effect<void, DatabaseError>
  /** Puts back to `PLAN` the tasks of workers that are gone; returns their ids. */
  readonly reset: Effect.Effect<ReadonlyArray<string>, DatabaseError>
  /** Which of these tasks a user has set to `STOP`. */
  readonly stopped: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<string>, DatabaseError>
  /** A session for local tasks, to be given back with `giveBack`. */
  readonly session: Effect.Effect<TaskSession, DatabaseError>
  /** Gives a session back: kept for the next task when `reuse`, else closed. */
  readonly giveBack: (session: TaskSession, reuse: boolean) => Effect.Effect<void>
  /**
   * Opens sessions ahead of the tasks planned for `plan` (within a second
   * of it), up to `most` open in all, so that they start on time rather
   * than after their connections; in the background, and a failure to
   * connect is left for the tasks' own sessions to report. A store without
   * sessions to open has none.
   */
  readonly warm?: ((plan: number, most: number) => Effect.Effect<void>) | undefined
  /** Marks a remote task running, held by the worker; the holder, or undefined when the claim was lost. */
  readonly startRemote: (task: ClaimedTask, now: number) => Effect.Effect<number | undefined, DatabaseError>
  /** Runs a remote task's input on its remote; `stop` or interrupting it cancels the run. */
  readonly runRemote: (task: ClaimedTask, stop: StopSignal) => Effect.Effect<Ran>
}

export interface StoreService {
  /** Sets a target up and opens its table for the scope's life. */
  readonly open: (target: Target) => Effect.Effect<TargetStore, DatabaseError | TargetError, Scope.Scope>
}

export class Store extends Context.Tag("pg-task/Store")<Store, StoreService>() {}
