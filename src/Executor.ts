/**
 * Running tasks: one worker session runs a claimed task, writes back how it
 * ended, and, for a task with `count` or `live`, goes on with the next due
 * task of its group without going back through the dispatcher.
 */
import { Deferred, Effect, Exit, Option, Pool, Scope } from "effect"
import type { TaskTable } from "./Bootstrap.js"
import * as Claimer from "./Claimer.js"
import type { ClockService } from "./Clock.js"
import * as Conninfo from "./Conninfo.js"
import type { DatabaseError } from "./Errors.js"
import * as Session from "./internal/session.js"
import { copiesWithClient, split } from "./internal/statements.js"
import { errors, formatError, formatOutput } from "./Output.js"
import { type ClaimedTask, nextPlan, type Outcome } from "./Task.js"

/** What a running task needs from its target's worker. */
export interface WorkerLink {
  readonly table: TaskTable
  readonly clock: ClockService
  /** Runs bookkeeping on the worker's own session, one piece at a time. */
  readonly book: <A, E>(work: (session: Session.Session) => Effect.Effect<A, E>) => Effect.Effect<A, E>
  /** Sessions as the target's role, holding their liveness lock. */
  readonly sessions: Pool.Pool<Session.Session, DatabaseError>
}

/** Asks a running task to end early; completed by the worker when a user sets `STOP`. */
export type StopSignal = Deferred.Deferred<void>

/**
 * Runs a claimed task, and its successors for `count` and `live`, to the
 * end. Never fails: every failure is the task's, written to its row, or
 * the worker's, logged with the task put back to `PLAN`. Interrupting it
 * (shutdown) cancels the query and puts the task back to `PLAN`.
 */
export const execute = (link: WorkerLink, first: ClaimedTask, stop: StopSignal) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const born = yield* link.clock.now
    let task: ClaimedTask | undefined = first
    let ran = 0
    let session: Session.Session | undefined
    while (task !== undefined) {
      const current: ClaimedTask = task
      if (current.remote !== null) {
        yield* runRemote(link, current, stop)
        return
      }
      session ??= yield* Pool.get(link.sessions).pipe(Scope.extend(scope))
      const ended = yield* runLocal(link, session, current, stop)
      if (!ended) {
        yield* Pool.invalidate(link.sessions, session)
        return yield* Scope.close(scope, Exit.void)
      }
      ran += 1
      task = yield* successor(link, current, ran, born)
    }
    yield* Scope.close(scope, Exit.void)
  }).pipe(
    Effect.catchAllCause((cause) =>
      Effect.logWarning("a worker session failed; its task goes back to PLAN", cause).pipe(
        Effect.zipRight(link.book((worker) => Claimer.release(worker, link.table, [first.id]))),
        Effect.ignore
      )
    ),
    Effect.annotateLogs({ task: first.id, group: first.group })
  )

/** The next task for a reused session, while `count` and `live` allow one. */
const successor = (link: WorkerLink, task: ClaimedTask, ran: number, born: number) =>
  Effect.gen(function*() {
    if (task.count <= 0 && task.live <= 0) return undefined
    const now = yield* link.clock.now
    if (task.count > 0 && ran >= task.count) return undefined
    if (task.live > 0 && now - born >= task.live) return undefined
    return yield* link.book((worker) => Claimer.claimNext(worker, link.table, now, task))
  })

/**
 * One task on a local session. True when the session ended clean and may
 * run another; false when it must be thrown away.
 */
const runLocal = (link: WorkerLink, session: Session.Session, task: ClaimedTask, stop: StopSignal) =>
  Effect.gen(function*() {
    const started = yield* Claimer.start(session, link.table, task, yield* link.clock.now)
    if (!started) return true
    const { outcome, clean } = yield* withLimits(task, stop, runInput(session, task)).pipe(
      Effect.onInterrupt(() => link.book((worker) => Claimer.release(worker, link.table, [task.id])).pipe(Effect.ignore))
    )
    yield* record(link, task, session.pid, outcome)
    if (!clean || !session.isHealthy()) return false
    yield* session.query("DISCARD ALL")
    yield* Claimer.holdLiveLock(session)
    return true
  })

/**
 * A task on another database. Its row is held by the worker's own backend,
 * which lives as long as the worker does, so the task is never reset while
 * it runs. Its timeout counts from before the connect, so a remote that
 * hangs cannot hold the task forever.
 */
const runRemote = (link: WorkerLink, task: ClaimedTask, stop: StopSignal) =>
  Effect.gen(function*() {
    const now = yield* link.clock.now
    const pid = yield* link.book((worker) =>
      Effect.map(Claimer.start(worker, link.table, task, now), (started) => started ? worker.pid : undefined)
    )
    if (pid === undefined) return
    const run = Effect.gen(function*() {
      const session = yield* openRemote(task.remote!)
      yield* session.query("SELECT set_config('pg_task.id', $1, false)", [task.id]).pipe(
        Effect.mapError((error) => new Session.TaskFailure(formatError({ message: error.reason })))
      )
      return yield* runInput(session, task)
    }).pipe(
      Effect.catchAll((failure) => Effect.succeed({ outcome: failed(failure.error), clean: false })),
      Effect.scoped
    )
    const { outcome } = yield* withLimits(task, stop, run).pipe(
      Effect.onInterrupt(() => link.book((worker) => Claimer.release(worker, link.table, [task.id])).pipe(Effect.ignore))
    )
    yield* record(link, task, pid, outcome)
  })

const openRemote = (remote: string) =>
  Effect.gen(function*() {
    const info = yield* Effect.mapError(
      Conninfo.parse(remote),
      (error) => new Session.TaskFailure(formatError({ message: `invalid remote: ${error.message}` }))
    )
    return yield* Session.open(Conninfo.toClientConfig(info), "connect to the remote").pipe(
      Effect.mapError((error) =>
        new Session.TaskFailure(formatError({ message: `could not connect to the remote: ${error.reason}` }))
      )
    )
  })

const failed = (error: string): Outcome => ({ state: "FAIL", output: null, error })

interface Ran {
  readonly outcome: Outcome
  /** False when the query was cut short: such a session is not reused. */
  readonly clean: boolean
}

/**
 * Runs the task's SQL, then ends whatever transaction it left open:
 * committed after success, rolled back after failure.
 */
const runInput = (session: Session.Session, task: ClaimedTask): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    if (split(task.input).some(copiesWithClient)) return yield* Effect.fail(Session.copyFailure)
    const results = yield* session.run(task.input)
    yield* session.run("COMMIT")
    return results
  }).pipe(
    Effect.map((results): Outcome => ({ state: "DONE", output: formatOutput(results), error: null })),
    Effect.catchAll((failure) =>
      session.run("ROLLBACK").pipe(Effect.ignore, Effect.as(failed(failure.error)))
    ),
    Effect.map((outcome) => ({ outcome, clean: true }))
  )

/**
 * Bounds a run by the task's timeout and by a user's STOP. Either one
 * interrupts the run, which cancels its query on the server.
 */
const withLimits = (task: ClaimedTask, stop: StopSignal, run: Effect.Effect<Ran>): Effect.Effect<Ran> => {
  const stopped = Effect.as(Deferred.await(stop), { outcome: failed(errors.stopped), clean: false })
  const timed = task.timeout !== null && task.timeout > 0
    ? Effect.map(
      Effect.timeoutOption(run, task.timeout),
      Option.getOrElse(() => ({ outcome: failed(errors.timeout), clean: false }))
    )
    : run
  return Effect.raceFirst(timed, stopped)
}

/** Writes the outcome, with the repeat and delete that follow from it. */
const record = (link: WorkerLink, task: ClaimedTask, pid: number, outcome: Outcome) =>
  Effect.gen(function*() {
    const stop = yield* link.clock.now
    yield* link.book((worker) =>
      Claimer.finish(worker, link.table, task, pid, outcome, stop, nextPlan(task, stop))
    )
    yield* Effect.logDebug("task ended").pipe(Effect.annotateLogs("state", outcome.state))
  })
