/**
 * Running tasks: one worker session runs a claimed task, writes back how it
 * ended, and, for a task with `count` or `live`, goes on with the next due
 * task of its group without going back through the dispatcher.
 */
import { Cause, Deferred, Effect, FiberRef, LogLevel, Metric, Option, type Scope } from "effect"
import type { ClockService } from "./Clock.js"
import type { DatabaseError } from "./Errors.js"
import * as Metrics from "./Metrics.js"
import { errors } from "./Output.js"
import type { Finish, Ran, TargetStore, TaskSession } from "./Store.js"
import { type ClaimedTask, nextPlan, type Outcome } from "./Task.js"

/** What a running task needs from its target's worker. */
export interface WorkerLink {
  readonly store: TargetStore
  readonly clock: ClockService
  /** Writes how a run ended; batched with other runs' ends. */
  readonly finish: (finish: Finish) => Effect.Effect<void, DatabaseError>
  /**
   * The signal a user's STOP of the task completes, registered with the
   * worker for as long as the scope lives, so that the worker's STOP checks
   * see every running task, successors in a session included.
   */
  readonly watch: (id: string) => Effect.Effect<StopSignal, never, Scope.Scope>
}

/** Asks a running task to end early; completed by the worker when a user sets `STOP`. */
export type StopSignal = Deferred.Deferred<void>

/**
 * Runs a claimed task, and its successors for `count` and `live`, to the
 * end. Never fails: every failure is the task's, written to its row, or
 * the worker's, logged with the task put back to `PLAN`. Interrupting it
 * (shutdown) cancels the query and puts the task back to `PLAN`.
 */
export const execute = (link: WorkerLink, first: ClaimedTask) => {
  let current = first
  let holder: number | undefined
  return Effect.gen(function*() {
    if (first.remote !== null) return yield* Effect.scoped(runRemote(link, first))
    const chain = { born: yield* link.clock.now, ran: 0 }
    const session = yield* link.store.session
    holder = session.pid
    for (;;) {
      chain.ran += 1
      const { reusable, next } = yield* Effect.scoped(runLocal(link, session, current, chain))
      if (next === undefined) {
        // A broken session is thrown away; so is one that ran under `count`
        // or `live`, which end with it: the group's next task gets a new one.
        if (!reusable || first.count > 0 || first.live > 0) yield* link.store.discard(session)
        return
      }
      current = next
    }
  }).pipe(
    Effect.scoped,
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : Effect.logWarning("a worker session failed; its task goes back to PLAN", cause).pipe(
          Effect.zipRight(Effect.suspend(() => putBack(link, current, holder)))
        )
    ),
    Effect.annotateLogs({ task: first.id, group: first.group })
  )
}

interface Chain {
  /** When the worker session started. */
  readonly born: number
  /** How many tasks it has run, this one included. */
  readonly ran: number
}

/** Whether a worker session may go on with another task after `task`. */
const goesOn = (task: ClaimedTask, chain: Chain, now: number) =>
  (task.count > 0 || task.live > 0)
  && (task.count <= 0 || chain.ran < task.count)
  && (task.live <= 0 || now - chain.born < task.live)

/**
 * One task on a local session. `reusable` is false when the session must be
 * thrown away; `next` is the task the session goes on with. The in-process
 * gate still counts this session in its group meanwhile, so the dispatcher
 * does not take the slot between the finish and the next claim.
 */
const runLocal = (
  link: WorkerLink,
  session: TaskSession,
  task: ClaimedTask,
  chain: Chain
): Effect.Effect<{ reusable: boolean; next?: ClaimedTask | undefined }, DatabaseError, Scope.Scope> =>
  Effect.gen(function*() {
    const stop = yield* link.watch(task.id)
    const startedAt = yield* link.clock.now
    const started = yield* session.start(task, startedAt)
    if (!started) return { reusable: true }
    yield* countStart(link, task, startedAt)
    const { outcome, clean, lost } = yield* withLimits(task, stop, session.run(task)).pipe(
      Effect.onInterrupt(() => putBack(link, task, session.pid))
    )
    if (lost) {
      yield* Effect.logWarning("the task's session was lost; the task goes back to PLAN")
      yield* putBack(link, task, session.pid)
      return { reusable: false }
    }
    const reusable = clean && session.isHealthy()
    const stopped = yield* record(link, task, session.pid, outcome, startedAt)
    const next = reusable && goesOn(task, chain, stopped)
      ? yield* link.store.claimNext(stopped, task)
      : undefined
    return { reusable, next }
  })

/**
 * A task on another database. Its row is held by the worker's own backend,
 * which lives as long as the worker does, so the task is never reset while
 * it runs. Its timeout counts from before the connect, so a remote that
 * hangs cannot hold the task forever.
 */
const runRemote = (link: WorkerLink, task: ClaimedTask) =>
  Effect.gen(function*() {
    const stop = yield* link.watch(task.id)
    const now = yield* link.clock.now
    const pid = yield* link.store.startRemote(task, now)
    if (pid === undefined) return
    yield* countStart(link, task, now)
    const { outcome, lost } = yield* withLimits(task, stop, link.store.runRemote(task)).pipe(
      Effect.onInterrupt(() => putBack(link, task))
    )
    if (lost) {
      yield* Effect.logWarning("the connection to the remote was lost; the task goes back to PLAN")
      return yield* putBack(link, task)
    }
    yield* record(link, task, pid, outcome, now)
  })

/**
 * Gives a task back to `PLAN`, for this or another instance to run again:
 * as long as the worker holds its claim, or `session` holds it running.
 */
const putBack = (link: WorkerLink, task: ClaimedTask, session?: number) =>
  link.store.release([
    { id: task.id, pid: task.claimedBy },
    ...session === undefined ? [] : [{ id: task.id, pid: session }]
  ]).pipe(Effect.ignore)

const failed = (error: string): Outcome => ({ state: "FAIL", output: null, error })

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

const metrics = (link: WorkerLink, task: ClaimedTask) => Metrics.forGroup(link.store.table.label, task.group)

const countStart = (link: WorkerLink, task: ClaimedTask, start: number) => {
  const { lateness, started } = metrics(link, task)
  return Effect.zipRight(Metric.update(started, 1), Metric.update(lateness, Math.max(0, start - task.plan) / 1000))
}

/** Writes the outcome, with the repeat and delete that follow from it; returns when it ended. */
const record = (link: WorkerLink, task: ClaimedTask, pid: number, outcome: Outcome, start: number) =>
  Effect.gen(function*() {
    const stop = yield* link.clock.now
    yield* link.finish({ task, pid, outcome, stop, next: nextPlan(task, stop) })
    const { duration, failed, finished } = metrics(link, task)
    yield* Metric.update(finished[outcome.state], 1)
    if (outcome.state === "FAIL") yield* Metric.update(failed, 1)
    yield* Metric.update(duration, (stop - start) / 1000)
    // Built only when debug logs are on: on a busy worker, a log line that
    // is then dropped still costs more than the metrics.
    if (LogLevel.greaterThanEqual(LogLevel.Debug, yield* FiberRef.get(FiberRef.currentMinimumLogLevel))) {
      yield* Effect.logDebug("task ended").pipe(Effect.annotateLogs("state", outcome.state))
    }
    return stop
  })
