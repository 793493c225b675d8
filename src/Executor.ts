/**
 * Running tasks: one worker session runs a claimed task, writes back how it
 * ended, and, for a task with `count` or `live`, goes on with the next due
 * task of its group without going back through the dispatcher.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as LogLevel from "effect/LogLevel"
import type * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type { ClockService } from "./Clock.js"
import type { DatabaseError } from "./Errors.js"
import * as Metrics from "./Metrics.js"
import { errors } from "./Output.js"
import {
  type Finish, type Ran, type RowEvents, StopSignal, stoppedRun, type TargetStore, type TaskSession
} from "./Store.js"
import { copiesWithClient, controlsTransaction, split } from "./internal/statements.js"
import { type ClaimedTask, nextPlan, type Outcome } from "./Task.js"

/** What a running task needs from its target's worker. */
export interface WorkerLink {
  readonly store: TargetStore
  readonly clock: ClockService
  /**
   * Runs `use` with the signal a user's STOP of the task raises, registered
   * with the worker meanwhile, so that the worker's STOP checks see every
   * running task, successors in a session included.
   */
  readonly watch: <A, E>(id: string, use: (stop: StopSignal) => Effect.Effect<A, E>) => Effect.Effect<A, E>
  /** As `watch`, for the tasks of a row, each with its signal. */
  readonly watchAll: <A, E>(
    ids: ReadonlyArray<string>,
    stops: ReadonlyArray<StopSignal>,
    use: () => Effect.Effect<A, E>
  ) => Effect.Effect<A, E>
  /** Tells how long a task ran, ms. */
  readonly took: (ms: number) => void
  /**
   * Sends how a run ended to the writer, which writes it batched with other
   * runs' ends and then calls `written`. Synchronous, so that a row's driver
   * callback can send its tasks' ends as they come.
   */
  readonly submit: (finish: Finish, written: (exit: Exit.Exit<void, DatabaseError>) => void) => void
}

/**
 * Runs a claimed task, and its successors for `count` and `live`, to the
 * end. Never fails: every failure is the task's, written to its row, or
 * the worker's, logged with the task put back to `PLAN`. Interrupting it
 * (shutdown) cancels the query and puts the task back to `PLAN`.
 */
export const execute = (link: WorkerLink, first: ClaimedTask) => {
  let current = first
  let holder: number | undefined
  const annotated = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.annotateLogs(effect, { task: current.id, group: current.group })
  // The session goes back to the store for reuse only after a chain that
  // left it clean; one that ran under `count` or `live` ends with it, and
  // the group's next task gets a new one.
  let reuse = false
  const chain = (session: TaskSession) =>
    Effect.gen(function*() {
      holder = session.pid
      const state = { born: yield* link.clock.now, ran: 0 }
      for (;;) {
        state.ran += 1
        const { reusable, next } = yield* runLocal(link, session, current, state, annotated)
        if (next === undefined) {
          reuse = reusable && first.count <= 0 && first.live <= 0
          return
        }
        current = next
      }
    })
  const run = first.remote !== null
    ? runRemote(link, first, annotated)
    : Effect.acquireUseRelease(
      link.store.session,
      chain,
      (session, exit) => link.store.giveBack(session, reuse && Exit.isSuccess(exit))
    )
  return run.pipe(
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : annotated(Effect.logWarning("a worker session failed; its task goes back to PLAN", cause)).pipe(
          Effect.zipRight(Effect.suspend(() => putBack(link, current, holder)))
        )
    )
  )
}

type Annotate = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Runs tasks as a row on one session, one after another, sent together:
 * for a backlog of short tasks, where a session's round trip per task costs
 * more than the tasks. Only tasks that need nothing of a session of their
 * own go in a row (see `fitsInRow`). Each task's end is written as it
 * comes; the row is over once all are written. Tasks that did not get to
 * run, and the one a lost session was running, go back to `PLAN`.
 */
export const executeRow = (link: WorkerLink, tasks: ReadonlyArray<ClaimedTask>) => {
  let started: ReadonlyArray<ClaimedTask> = []
  const ended = new Set<number>()
  let holder: number | undefined
  let run: Fiber.RuntimeFiber<void> | undefined
  // The tasks the row started and did not end, which go back to PLAN;
  // after a row that went to its end, none, and nothing is written.
  const putBackRest = () => {
    const rest = started.filter((_, index) => !ended.has(index))
    return holder === undefined || rest.length === 0
      ? Effect.void
      : link.store.release(rest.map((task) => ({ id: task.id, pid: holder! }))).pipe(Effect.ignore)
  }
  const row = (session: TaskSession) =>
    Effect.gen(function*() {
      holder = session.pid
      const rows = session.rows!
      started = yield* rows.start(tasks, yield* link.clock.now)
      if (started.length === 0) return session.isHealthy()
      const labels = yield* metricLabels
      const stops = started.map(() => new StopSignal())
      const began: Array<number | undefined> = []
      const writes = new Writes()
      const states: Array<readonly [ClaimedTask, Outcome["state"]]> = []
      // Tasks whose session was lost under them, for this fiber to put back;
      // then the end of the run.
      const lost = yield* Queue.unbounded<number | "Over">()
      let clean = true
      // Starts and ends are counted, and ends sent to be written, in the
      // driver's callbacks as they come: a row's tasks end many to the
      // millisecond, and a step of this fiber for each cost more than they.
      const events: RowEvents = {
        began: (index) => {
          const now = link.clock.unsafeNow()
          began[index] = now
          countStart(link, started[index]!, now, labels)
        },
        ended: (index, ran) => {
          const task = started[index]!
          ended.add(index)
          // A STOP of a running task that others follow ends the session
          // under it: the task ends stopped all the same.
          const stopped = stops[index]!.stopped
          if (ran.lost === true) clean = false
          if (ran.lost === true && !stopped) {
            Queue.unsafeOffer(lost, index)
            return
          }
          const outcome = stopped ? stoppedRun.outcome : ran.outcome
          const stop = link.clock.unsafeNow()
          const start = began[index] ?? stop
          end(link, task, session.pid, outcome, start, stop, labels, true, writes.sent())
          states.push([task, outcome.state])
        }
      }
      const ids = started.map((task) => task.id)
      run = yield* link.watchAll(ids, stops, () => rows.run(started, stops, events)).pipe(
        Effect.ensuring(Queue.offer(lost, "Over")),
        Effect.fork
      )
      for (;;) {
        const index = yield* Queue.take(lost)
        if (index === "Over") break
        const task = started[index]!
        yield* Effect.logWarning("the task's session was lost; the task goes back to PLAN").pipe(
          Effect.annotateLogs({ task: task.id, group: task.group })
        )
        yield* putBack(link, task, session.pid)
      }
      yield* Fiber.join(run!)
      yield* putBackRest()
      yield* writes.all
      if (yield* debugOn) {
        for (const [task, state] of states) {
          yield* logEnd({ task: task.id, group: task.group }, state)
        }
      }
      return clean && session.isHealthy()
    }).pipe(
      // Interrupted (shutdown), the row's run ends the session first, so
      // that nothing put back can still be running.
      Effect.onInterrupt(() =>
        Effect.zipRight(run === undefined ? Effect.void : Fiber.interrupt(run), putBackRest())
      )
    )
  let reuse = false
  return Effect.acquireUseRelease(
    link.store.session,
    (session) => Effect.map(row(session), (reusable) => void (reuse = reusable)),
    (session, exit) => link.store.giveBack(session, reuse && Exit.isSuccess(exit))
  ).pipe(
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : Effect.logWarning("a worker session failed; its tasks go back to PLAN", cause).pipe(
          Effect.zipRight(Effect.suspend(putBackRest)),
          Effect.zipRight(link.store.release(tasks.map((task) => ({ id: task.id, pid: task.claimedBy })))),
          Effect.ignore
        )
    )
  )
}

/**
 * Whether a task may run in a row of tasks on a shared session: local, no
 * timeout (a cancel could reach the next task), no `count` or `live`, and
 * no statement that opens or ends a transaction, so that the session is
 * idle again when its SQL ends.
 */
export const fitsInRow = (task: ClaimedTask) =>
  task.remote === null && (task.timeout === null || task.timeout <= 0) && task.count <= 0 && task.live <= 0
  && !split(task.input).some((statement) => controlsTransaction(statement) || copiesWithClient(statement))

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
  chain: Chain,
  annotated: Annotate
): Effect.Effect<{ reusable: boolean; next?: ClaimedTask | undefined }, DatabaseError> =>
  link.watch(task.id, (stop) =>
    Effect.gen(function*() {
      const startedAt = yield* link.clock.now
      const started = yield* session.start(task, startedAt)
      if (!started) return { reusable: session.isHealthy() }
      // A store that sends the start with the run learns only from the run
      // that a claim was lost; such a start is counted all the same.
      countStart(link, task, startedAt, yield* metricLabels)
      const { outcome, clean, lost, started: began } = yield* withTimeout(task, session.run(task, stop)).pipe(
        Effect.onInterrupt(() => putBack(link, task, session.pid))
      )
      if (began === false) {
        yield* annotated(Effect.logDebug("the task's claim was lost before it started"))
        return { reusable: false }
      }
      if (lost) {
        yield* annotated(Effect.logWarning("the task's session was lost; the task goes back to PLAN"))
        yield* putBack(link, task, session.pid)
        return { reusable: false }
      }
      const reusable = clean && session.isHealthy()
      const stopped = yield* record(link, task, session.pid, outcome, startedAt)
      const next = reusable && goesOn(task, chain, stopped)
        ? yield* link.store.claimNext(stopped, task)
        : undefined
      return { reusable, next }
    }))

/**
 * A task on another database. Its row is held by the worker's own backend,
 * which lives as long as the worker does, so the task is never reset while
 * it runs. Its timeout counts from before the connect, so a remote that
 * hangs cannot hold the task forever.
 */
const runRemote = (link: WorkerLink, task: ClaimedTask, annotated: Annotate) =>
  link.watch(task.id, (stop) =>
    Effect.gen(function*() {
      const now = yield* link.clock.now
      const pid = yield* link.store.startRemote(task, now)
      if (pid === undefined) return
      countStart(link, task, now, yield* metricLabels)
      const { outcome, lost } = yield* withTimeout(task, link.store.runRemote(task, stop)).pipe(
        Effect.onInterrupt(() => putBack(link, task))
      )
      if (lost) {
        yield* annotated(Effect.logWarning("the connection to the remote was lost; the task goes back to PLAN"))
        return yield* putBack(link, task)
      }
      yield* record(link, task, pid, outcome, now)
    }))

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
 * Bounds a run by the task's timeout, which interrupts the run and so
 * cancels its query on the server. A user's STOP reaches the run through
 * its signal instead: every task can be stopped, and a signal costs no
 * fiber.
 */
const withTimeout = (task: ClaimedTask, run: Effect.Effect<Ran>): Effect.Effect<Ran> =>
  task.timeout !== null && task.timeout > 0
    ? Effect.map(
      Effect.timeoutOption(run, task.timeout),
      Option.getOrElse(() => ({ outcome: failed(errors.timeout), clean: false }))
    )
    : run

const metrics = (link: WorkerLink, task: ClaimedTask) => Metrics.forGroup(link.store.table.label, task.group)

/** The metric labels of the running fiber, which the counts below carry. */
const metricLabels = FiberRef.get(FiberRef.currentMetricLabels)

type Labels = ReadonlyArray<MetricLabel.MetricLabel>

const countStart = (link: WorkerLink, task: ClaimedTask, start: number, labels: Labels) => {
  const { lateness, started } = metrics(link, task)
  started.unsafeUpdate(1, labels)
  lateness.unsafeUpdate(Math.max(0, start - task.plan) / 1000, labels)
}

const countEnd = (
  link: WorkerLink,
  task: ClaimedTask,
  outcome: Outcome,
  start: number,
  stop: number,
  labels: Labels
) => {
  link.took(stop - start)
  const { duration, failed, finished } = metrics(link, task)
  finished[outcome.state].unsafeUpdate(1, labels)
  if (outcome.state === "FAIL") failed.unsafeUpdate(1, labels)
  duration.unsafeUpdate((stop - start) / 1000, labels)
}

/**
 * Sends how a run ended to be written, and counts it; `written` is called
 * once it is. `ownStart`: the task's row said running before it began, so
 * its own start goes with its end.
 */
const end = (
  link: WorkerLink,
  task: ClaimedTask,
  pid: number,
  outcome: Outcome,
  start: number,
  stop: number,
  labels: Labels,
  ownStart: boolean,
  written: (exit: Exit.Exit<void, DatabaseError>) => void
) => {
  const next = nextPlan(task, stop)
  link.submit({ task, pid, outcome, stop, next, ...ownStart && { start } }, written)
  countEnd(link, task, outcome, start, stop, labels)
}

/**
 * The ends a row sent to be written and not yet written; `all` waits for
 * them, and fails as the first that failed. A callback each, not a
 * deferred: a deferred costs more to make than a short task's bookkeeping.
 */
class Writes {
  private pending = 0
  private failure: Exit.Exit<void, DatabaseError> | undefined
  private wake: (() => void) | undefined

  /** Counts an end sent; the callback to give the writer. */
  sent() {
    this.pending += 1
    return (exit: Exit.Exit<void, DatabaseError>) => {
      this.pending -= 1
      if (Exit.isFailure(exit)) this.failure ??= exit
      if (this.pending === 0) this.wake?.()
    }
  }

  readonly all = Effect.async<void, DatabaseError>((resume) => {
    const done = () => resume(this.failure ?? Exit.void)
    if (this.pending === 0) return done()
    this.wake = done
  })
}

/**
 * Whether debug lines are logged: a line that is then dropped still costs
 * more than the rest of a short task's bookkeeping, so it is built only then.
 */
const debugOn = Effect.map(
  FiberRef.get(FiberRef.currentMinimumLogLevel),
  (level) => LogLevel.greaterThanEqual(LogLevel.Debug, level)
)

const logEnd = (annotations: Record<string, string>, state: Outcome["state"]) =>
  Effect.logDebug("task ended").pipe(Effect.annotateLogs({ ...annotations, state }))

/** Writes the outcome, with the repeat and delete that follow from it; returns when it ended. */
const record = (
  link: WorkerLink,
  task: ClaimedTask,
  pid: number,
  outcome: Outcome,
  start: number
) =>
  Effect.gen(function*() {
    const stop = yield* link.clock.now
    const labels = yield* metricLabels
    if (yield* debugOn) yield* logEnd({ task: task.id, group: task.group }, outcome.state)
    yield* Effect.async<void, DatabaseError>((resume) =>
      end(link, task, pid, outcome, start, stop, labels, false, resume)
    )
    return stop
  })
