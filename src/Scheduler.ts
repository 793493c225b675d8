/**
 * One supervised worker per target. A worker sets its target up, then loops:
 * wait for a wake-up, claim what is due, dispatch each task to a session of
 * its own. A target that fails is logged and started again with backoff;
 * the others carry on.
 */
import {
  Cause, Context, Deferred, Duration, Effect, Exit, Fiber, FiberMap, Layer, Metric, Pool, Queue, Ref, Stream,
  SubscriptionRef
} from "effect"
import { ensureDatabase, ensureTable, quote, type TaskTable } from "./Bootstrap.js"
import * as Claimer from "./Claimer.js"
import { Clock } from "./Clock.js"
import { describeTarget, PgTaskConfig, type Target } from "./Config.js"
import { Database } from "./Database.js"
import type { DatabaseError } from "./Errors.js"
import * as Executor from "./Executor.js"
import * as Remotes from "./internal/remotes.js"
import * as Session from "./internal/session.js"
import * as Metrics from "./Metrics.js"
import type { ClaimedTask } from "./Task.js"

export interface SchedulerOptions {
  /** How long running tasks may go on after shutdown begins; then they are cancelled. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /**
   * Run what is due, wait for it to end, and stop, instead of running until
   * interrupted: for cron-style use and scripts. A target that fails is not
   * started again.
   */
  readonly once?: boolean | undefined
}

/** What wakes a worker before its poll interval ends. */
type Wake = "PLAN" | "STOP" | "END"

export interface SchedulerService {
  /** Completes once every target's worker has set its table up. */
  readonly ready: Effect.Effect<ReadonlyArray<TaskTable>>
  /**
   * With `once`: completes when every target's worker has stopped, with
   * whether all of them got through without failing.
   */
  readonly done: Effect.Effect<boolean>
  /** Whether each target's worker is up, and why not when it is not. */
  readonly health: Effect.Effect<ReadonlyArray<TargetHealth>>
}

export interface TargetHealth {
  readonly target: string
  readonly up: boolean
  /** Why the worker is not up: starting, or the error it last failed with. */
  readonly reason?: string | undefined
}

export class Scheduler extends Context.Tag("pg-task/Scheduler")<Scheduler, SchedulerService>() {
  static readonly layer = (options: SchedulerOptions = {}) => Layer.scoped(Scheduler, make(options))
}

const make = (options: SchedulerOptions) =>
  Effect.gen(function*() {
    const { targets } = yield* PgTaskConfig
    const shutdown = yield* Deferred.make<void>()
    const grace = Duration.decode(options.shutdownTimeout ?? Duration.seconds(30))
    const workers = yield* Effect.forEach(targets, (target) => makeWorker(target, shutdown, options.once === true))
    const fibers = yield* Effect.forEach(workers, (worker) =>
      worker.run.pipe(
        Effect.annotateLogs({ module: "Scheduler", target: describeTarget(worker.target) }),
        Effect.forkScoped
      ))
    // Runs before the workers are interrupted: stop claiming, then give
    // running tasks the grace period to finish.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* Deferred.succeed(shutdown, undefined)
        // Finalizers run uninterruptibly; the wait must not be, or the
        // grace period could not cut it short.
        yield* Effect.forEach(workers, (worker) => worker.drained, { concurrency: "unbounded" }).pipe(
          Effect.interruptible,
          Effect.timeoutOption(grace)
        )
      })
    )
    return Scheduler.of({
      ready: Effect.forEach(workers, (worker) => Deferred.await(worker.ready)),
      done: Effect.map(
        Effect.forEach(fibers, (fiber) => Effect.exit(Fiber.join(fiber))),
        (exits) => exits.every(Exit.isSuccess)
      ),
      health: Effect.forEach(workers, (worker) => Ref.get(worker.health))
    })
  })

const reason = (error: unknown) =>
  typeof (error as Error)?.message === "string" ? (error as Error).message : String(error)

/** A target's worker, restarted with backoff whenever it fails (unless it runs once). */
const makeWorker = (target: Target, shutdown: Deferred.Deferred<void>, once: boolean) =>
  Effect.gen(function*() {
    const ready = yield* Deferred.make<TaskTable>()
    const running = yield* SubscriptionRef.make(0)
    const label = describeTarget(target)
    const health = yield* Ref.make<TargetHealth>({ target: label, up: false, reason: "starting" })
    const logFailure = (cause: Cause.Cause<unknown>) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : Effect.logError(once ? "target failed" : "target failed; it starts again after a pause").pipe(
          Effect.annotateLogs("error", reason(Cause.squash(cause))),
          Effect.zipRight(Ref.set(health, { target: label, up: false, reason: reason(Cause.squash(cause)) }))
        )
    let started = false
    const up = Effect.zipRight(Ref.set(health, { target: label, up: true }), Effect.sync(() => (started = true)))
    const life = work(target, shutdown, ready, running, once, up).pipe(Effect.scoped, Effect.tapErrorCause(logFailure))
    // The pause before a new start doubles from one second up to thirty,
    // and goes back to one second once the target has started again.
    const run = once ? life : Effect.gen(function*() {
      for (let failures = 0;; failures++) {
        started = false
        yield* life.pipe(
          Effect.catchAllCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.failCause(cause) : Effect.void)
        )
        if (started) failures = 0
        yield* Effect.sleep(Duration.millis(Math.min(1000 * 2 ** failures, 30_000)))
      }
    })
    return {
      target,
      run,
      ready,
      health,
      /** Completes when no task of this target runs any more. */
      drained: running.changes.pipe(Stream.takeUntil((n) => n === 0), Stream.runDrain)
    }
  })

/**
 * Sets the target up: its database and role, the worker's own session
 * (holding its liveness lock, listening to the table's trigger) and the
 * table. The worker's writes (claims, ends of runs, resets) need not wait
 * for the disk: a crash that loses the last of them re-runs those tasks,
 * which at-least-once allows. Tasks' own work keeps the server's setting.
 */
const setUp = (target: Target) =>
  Effect.gen(function*() {
    const database = yield* Database
    yield* ensureDatabase(database.admin, target)
    const config = database.clientConfig(target.data, target.user)
    const worker = yield* Session.open({ ...config, options: "-c synchronous_commit=off" }, "connect to the target")
    yield* Claimer.holdLiveLock(worker)
    const table = yield* ensureTable(worker, target)
    yield* Claimer.prepareClaims(worker, table)
    const wake = yield* Queue.dropping<Wake>(64)
    worker.onNotification((message) => {
      if (message.channel !== table.channel) return
      Queue.unsafeOffer(wake, message.payload === "STOP" ? "STOP" : "PLAN")
    })
    yield* worker.query(`LISTEN ${quote(table.channel)}`)
    // A task's backend notices within a second when its client is gone
    // (PostgreSQL 14 and later), so the tasks of a killed instance are
    // cancelled and can be reset instead of running on unseen.
    const options = database.serverVersion >= 140000 ? "-c client_connection_check_interval=1000" : undefined
    // Idle sessions close after half an hour. The pool checks them on that
    // period, so a shorter one would also wake it more often for nothing.
    const sessions = yield* Pool.makeWithTTL({
      acquire: Effect.tap(Session.open({ ...config, options }, "connect to the target"), Claimer.holdLiveLock),
      min: 0,
      max: target.run,
      timeToLive: Duration.minutes(30),
      timeToLiveStrategy: "usage"
    })
    return { worker, table, wake, sessions }
  })

/**
 * What running tasks share with their worker: its session, one piece of
 * bookkeeping at a time, and a writer that sends the ends of runs together:
 * whatever piled up while the last write was on its way goes out in the next.
 */
const makeLink = (
  worker: Session.Session,
  table: TaskTable,
  sessions: Executor.WorkerLink["sessions"]
) =>
  Effect.gen(function*() {
    const lock = yield* Effect.makeSemaphore(1)
    const book: Executor.WorkerLink["book"] = (work) => lock.withPermits(1)(work(worker))
    type Pending = readonly [Claimer.Finish, Deferred.Deferred<void, DatabaseError>]
    const finishes = yield* Queue.unbounded<Pending>()
    yield* Effect.gen(function*() {
      const batch = [...yield* Queue.takeBetween(finishes, 1, 1000)]
      const ends = batch.map(([finish]) => finish)
      const written = yield* Effect.exit(book((session) => Effect.asVoid(Claimer.finish(session, table, ends))))
      for (const [, done] of batch) yield* Deferred.done(done, written)
    }).pipe(Effect.forever, Effect.forkScoped)
    // Every running task's STOP signal, by id, for the worker's STOP checks.
    const stops = new Map<string, Executor.StopSignal>()
    const link: Executor.WorkerLink = {
      table,
      clock: yield* Clock,
      sessions,
      remotes: yield* Remotes.make,
      book,
      watch: (id) =>
        Effect.acquireRelease(
          Effect.tap(Deferred.make<void>(), (stop) => Effect.sync(() => stops.set(id, stop))),
          () => Effect.sync(() => stops.delete(id))
        ),
      finish: (finish) =>
        Effect.flatMap(Deferred.make<void, DatabaseError>(), (done) =>
          Effect.zipRight(Queue.offer(finishes, [finish, done]), Deferred.await(done)))
    }
    return { link, stops }
  })

/** One life of a target's worker: set up, then claim and dispatch until interrupted. */
const work = (
  target: Target,
  shutdown: Deferred.Deferred<void>,
  ready: Deferred.Deferred<TaskTable>,
  running: SubscriptionRef.SubscriptionRef<number>,
  once: boolean,
  up: Effect.Effect<void>
) =>
  Effect.gen(function*() {
    const clock = yield* Clock
    const { worker, table, wake, sessions } = yield* setUp(target)
    const { link, stops } = yield* makeLink(worker, table, sessions)
    const resets = Metrics.tasksReset.pipe(Metric.tagged("target", table.label))
    const reset = Effect.flatMap(link.book((s) => Claimer.reset(s, table)), (ids) =>
      ids.length === 0
        ? Effect.void
        : Effect.logWarning("put tasks of a dead worker back to PLAN").pipe(
          Effect.annotateLogs("tasks", ids),
          Effect.zipRight(Metric.update(resets, ids.length))
        ))
    yield* reset
    yield* Effect.logInfo("target started").pipe(
      Effect.annotateLogs({ database: target.data, table: `${table.schema}.${target.table}`, role: target.user })
    )
    yield* Deferred.succeed(ready, table)
    yield* up
    const runningGauge = Metrics.tasksRunning.pipe(Metric.tagged("target", table.label))
    yield* running.changes.pipe(Stream.runForEach((n) => Metric.set(runningGauge, n)), Effect.forkScoped)
    const fibers = yield* FiberMap.make<string>()
    // The in-process gate: tasks this instance runs, by group.
    const groups = new Map<string, number>()
    const count = (group: string, delta: number) => {
      const n = (groups.get(group) ?? 0) + delta
      if (n > 0) groups.set(group, n)
      else groups.delete(group)
    }
    const dispatch = (task: ClaimedTask) =>
      Effect.gen(function*() {
        count(task.group, 1)
        yield* SubscriptionRef.update(running, (n) => n + 1)
        const ended = Effect.suspend(() => {
          count(task.group, -1)
          return SubscriptionRef.update(running, (n) => n - 1)
        })
        yield* FiberMap.run(
          fibers,
          task.id,
          Executor.execute(link, task).pipe(Effect.ensuring(ended), Effect.ensuring(Queue.offer(wake, "END")))
        )
      })
    const stopRequested = Effect.gen(function*() {
      if (stops.size === 0) return
      const rows = yield* link.book((s) =>
        s.query<{ id: string }>(
          `SELECT id::text FROM ${table.name} WHERE id = ANY($1::bigint[]) AND state = 'STOP'`,
          [[...stops.keys()]]
        )
      )
      for (const { id } of rows) {
        const stop = stops.get(id)
        if (stop !== undefined) yield* Deferred.succeed(stop, undefined)
      }
    })
    // Claimed tasks waiting for a session. A claim takes up to `run` more
    // than there are free sessions, so that a busy worker claims in batches
    // rather than once per finished task; they stay `TAKE`, held by the
    // worker's backend, until a session starts them.
    const waiting: Array<ClaimedTask> = []
    let nextPlan: number | null = null
    let mayFindMore = true
    let dueLeft = false
    let checkStops = true
    let checks = 0
    while (true) {
      const now = yield* clock.now
      const stopping = yield* Deferred.isDone(shutdown)
      const busy = yield* SubscriptionRef.get(running)
      if (stopping && waiting.length > 0) {
        const ids = waiting.splice(0).map((task) => task.id)
        yield* link.book((s) => Claimer.release(s, table, ids))
      }
      const due = mayFindMore || (nextPlan !== null && nextPlan <= now)
      if (!stopping && due && waiting.length < target.run) {
        const want = 2 * target.run - busy - waiting.length
        const claimed = yield* link.book((s) => Claimer.claim(s, table, now, want, groups))
        waiting.push(...claimed.tasks)
        nextPlan = claimed.nextPlan
        mayFindMore = claimed.tasks.length === want
        dueLeft = claimed.dueLeft
        checks += 1
        if (checks % target.reset === 0) yield* reset
      }
      const free = target.run - busy
      if (free > 0 && waiting.length > 0) yield* Effect.forEach(waiting.splice(0, free), dispatch, { discard: true })
      const idle = waiting.length === 0 && (yield* SubscriptionRef.get(running)) === 0
      if (once && idle && !mayFindMore && !dueLeft) return
      if (checkStops) yield* stopRequested
      const deadline = Math.min(now + target.timeout, nextPlan ?? Infinity)
      const woken = yield* Effect.raceAll([
        Queue.take(wake),
        Effect.as(clock.sleepUntil(deadline), "TIMER" as const),
        stopping ? Effect.never : Effect.as(Deferred.await(shutdown), "END" as const)
      ])
      const reasons = [woken, ...(yield* Queue.takeAll(wake))]
      // A notification or the poll interval may mean new due tasks; a task
      // that ended frees a session, and a group slot for due tasks that their
      // group held back. Running tasks are checked for STOP when a
      // notification says so, and on the poll interval in case one was missed.
      mayFindMore ||= dueLeft || reasons.some((reason) => reason !== "END")
      checkStops = reasons.some((reason) => reason === "TIMER" || reason === "STOP")
    }
  })
