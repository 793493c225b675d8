/**
 * One supervised worker per target. A worker sets its target up, then loops:
 * wait for a wake-up, claim what is due, dispatch each task to a session of
 * its own. A target that fails is logged and started again with backoff;
 * the others carry on.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberMap from "effect/FiberMap"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import type { TaskTable } from "./Bootstrap.js"
import { Clock } from "./Clock.js"
import { describeTarget, PgTaskConfig, type Target } from "./Config.js"
import type { DatabaseError } from "./Errors.js"
import * as Executor from "./Executor.js"
import * as Metrics from "./Metrics.js"
import { type Finish, StopSignal, Store, type TargetStore, type Wake } from "./Store.js"
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

/** How many tasks a target's worker runs, and a wait for the moment none does. */
class Running {
  private n = 0
  private readonly waiting = new Set<() => void>()
  onChange: (n: number) => void = () => {}

  get count() {
    return this.n
  }

  add(delta: number) {
    this.n += delta
    this.onChange(this.n)
    if (this.n === 0) for (const wake of this.waiting) wake()
  }

  /** Completes when no task runs. */
  readonly drained = Effect.async<void>((resume) => {
    if (this.n === 0) return resume(Effect.void)
    const wake = () => {
      this.waiting.delete(wake)
      resume(Effect.void)
    }
    this.waiting.add(wake)
    return Effect.sync(() => this.waiting.delete(wake))
  })
}

/** A target's worker, restarted with backoff whenever it fails (unless it runs once). */
const makeWorker = (target: Target, shutdown: Deferred.Deferred<void>, once: boolean) =>
  Effect.gen(function*() {
    const ready = yield* Deferred.make<TaskTable>()
    const running = new Running()
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
      drained: running.drained
    }
  })

/**
 * The most tasks one claim takes while none of the target's run, and while
 * some do. A burst of due tasks starts once its first claim is back, so
 * that one is smaller; later claims take what the sessions will want, since
 * under load each costs tens of milliseconds whatever its size. Measured
 * on a burst of 1,000 (`npm run bench`, two runs each): 512 then 1,024 made
 * the last tasks start 82-88 ms late, 256 then 1,024 about 98, 256 always
 * 105-110, 1,024 always 84-87 with the first tasks later.
 */
const firstClaimLimit = 512
const claimLimit = 1024

/**
 * How long before their plan tasks are claimed (ms), once nothing due is
 * left to claim. A claim of hundreds of tasks takes tens of milliseconds,
 * and more while others run: claimed ahead, tasks planned for one instant
 * start then, rather than once their claim is back. They wait as `TAKE`,
 * held by the worker, and hold their group's slots from then on; a due task
 * always comes first in a claim, so none is kept waiting for one of them.
 */
const claimAhead = 200

/**
 * Tasks that took at most this long of the instance's time, on average of
 * late, may run in rows (ms): a task's duration divided by the sessions
 * busy when it ended. A backlog on many sessions makes each task's own
 * duration long, however little it costs: sixteen sessions of `SELECT 1`
 * one at a time, at a thousand tasks a second, take 16 ms each, and rows,
 * stopped once, would not come back while the backlog lasted.
 */
const rowTasksUpTo = 5

/** What wakes a worker: its store's wake-ups, and its own timer. */
type Reason = Wake | "TIMER"

/**
 * What running tasks share with their worker: the store, and a writer that
 * sends the ends of runs together: whatever piled up while the last write
 * was on its way goes out in the next. A write that planned repeats wakes
 * the worker through `wake`, so it need not wait for the table's trigger.
 */
const makeLink = (store: TargetStore, wake: Queue.Enqueue<Reason>, busy: () => number) =>
  Effect.gen(function*() {
    type Pending = readonly [Finish, (written: Exit.Exit<void, DatabaseError>) => void]
    const finishes = yield* Queue.unbounded<Pending>()
    yield* Effect.gen(function*() {
      const batch = [...yield* Queue.takeBetween(finishes, 1, 1000)]
      const ends = batch.map(([finish]) => finish)
      const written = yield* Effect.exit(store.finish(ends))
      if (Exit.isSuccess(written) && ends.some((end) => end.next !== null)) yield* Queue.offer(wake, "PLAN")
      for (const [, done] of batch) done(written)
    }).pipe(Effect.forever, Effect.forkScoped)
    // Every running task's STOP signal, by id, for the worker's STOP checks.
    const stops = new Map<string, StopSignal>()
    // How long tasks took of late, ms of the instance's time (see
    // `rowTasksUpTo`): an average that forgets by a tenth a task. It starts
    // at zero, so that a backlog found at start runs in rows
    // at once; one slow task is then enough to stop them. (Starting from
    // the first task's duration was tried: a new session's first queries
    // are slow, and the first burst drained at half the pace.)
    let recent = 0
    const link: Executor.WorkerLink = {
      store,
      clock: yield* Clock,
      watch: (id, use) =>
        Effect.suspend(() => {
          const stop = new StopSignal()
          stops.set(id, stop)
          return Effect.ensuring(use(stop), Effect.sync(() => stops.delete(id)))
        }),
      watchAll: (ids, signals, use) =>
        Effect.suspend(() => {
          ids.forEach((id, index) => stops.set(id, signals[index]!))
          return Effect.ensuring(use(), Effect.sync(() => ids.forEach((id) => stops.delete(id))))
        }),
      submit: (finish, written) => void Queue.unsafeOffer(finishes, [finish, written]),
      took: (ms) => {
        recent += (ms / Math.max(1, busy()) - recent) / 10
      }
    }
    return { link, stops, recentDuration: () => recent }
  })

/** One life of a target's worker: set up, then claim and dispatch until interrupted. */
const work = (
  target: Target,
  shutdown: Deferred.Deferred<void>,
  ready: Deferred.Deferred<TaskTable>,
  running: Running,
  once: boolean,
  up: Effect.Effect<void>
) =>
  Effect.gen(function*() {
    const clock = yield* Clock
    const store = yield* Effect.flatMap(Store, (stores) => stores.open(target))
    const { table, wakes } = store
    // Everything that wakes the worker comes through one queue: the table's
    // notifications, the ends of tasks, repeats it wrote, its timer and the
    // shutdown. Waiting on one queue costs no fibers, where a race of the
    // sources forked one a source on every wake-up.
    const reasons = yield* Queue.unbounded<Reason>()
    // Sessions in use; a session may run a row of several tasks.
    let sessions = 0
    const { link, recentDuration, stops } = yield* makeLink(store, reasons, () => sessions)
    const resets = Metrics.tasksReset.pipe(Metric.tagged("target", table.label))
    /** Puts back the tasks of dead workers; how many. */
    const reset = Effect.flatMap(store.reset, (ids) =>
      ids.length === 0
        ? Effect.succeed(0)
        : Effect.logWarning("put tasks of a dead worker back to PLAN").pipe(
          Effect.annotateLogs("tasks", ids),
          Effect.zipRight(Metric.update(resets, ids.length)),
          Effect.as(ids.length)
        ))
    yield* reset
    yield* Effect.logInfo("target started").pipe(
      Effect.annotateLogs({ database: target.data, table: `${table.schema}.${target.table}`, role: target.user })
    )
    yield* Deferred.succeed(ready, table)
    yield* up
    yield* Queue.take(wakes).pipe(
      Effect.flatMap((wake) => Queue.offer(reasons, wake)),
      Effect.forever,
      Effect.forkScoped
    )
    yield* Deferred.await(shutdown).pipe(Effect.zipRight(Queue.offer(reasons, "END")), Effect.forkScoped)
    const runningGauge = Metrics.tasksRunning(table.label)
    running.onChange = (n) => runningGauge.unsafeUpdate(n, [])
    const fibers = yield* FiberMap.make<string>()
    // The in-process gate: tasks this instance runs, by group.
    const groups = new Map<string, number>()
    const count = (group: string, delta: number) => {
      const n = (groups.get(group) ?? 0) + delta
      if (n > 0) groups.set(group, n)
      else groups.delete(group)
    }
    /** Runs tasks on one session: one alone, or several as a row. */
    const dispatch = (tasks: ReadonlyArray<ClaimedTask>) =>
      Effect.gen(function*() {
        for (const task of tasks) count(task.group, 1)
        running.add(tasks.length)
        sessions += 1
        const ended = Effect.sync(() => {
          for (const task of tasks) count(task.group, -1)
          running.add(-tasks.length)
          sessions -= 1
        })
        const execute = tasks.length === 1
          ? Executor.execute(link, tasks[0]!)
          : Executor.executeRow(link, tasks)
        yield* FiberMap.run(
          fibers,
          tasks[0]!.id,
          execute.pipe(Effect.ensuring(ended), Effect.ensuring(Queue.offer(reasons, "END")))
        )
      })
    /**
     * Hands the waiting tasks to `free` sessions, a task each; with more
     * waiting than that, tasks that fit in a row are dealt out in turn, up
     * to `length` a session, so that they still start about in the order
     * they were claimed. A task that must have a session of its own waits
     * for the next free one, and so do the tasks after it.
     */
    const deal = (free: number, length: number) => {
      const hands: Array<Array<ClaimedTask>> = []
      // The hands whose first task may lead a row (whether a task fits in a
      // row reads its SQL: asked once a task).
      const rows: Array<Array<ClaimedTask>> = []
      for (let turn = 0; waiting.length > 0;) {
        if (hands.length < free) {
          const hand = [waiting.shift()!]
          hands.push(hand)
          if (Executor.fitsInRow(hand[0]!)) rows.push(hand)
          continue
        }
        if (!Executor.fitsInRow(waiting[0]!)) break
        const open = rows.filter((hand) => hand.length < length)
        if (open.length === 0) break
        open[turn++ % open.length]!.push(waiting.shift()!)
      }
      return hands
    }
    /**
     * How many tasks a session runs in a row: as many as the store allows
     * while this target's tasks have been short, else one. A row is for a
     * backlog of short tasks, where a round trip per task costs more than
     * the tasks; with long ones it would only keep tasks waiting behind a
     * slow one while other sessions are free.
     */
    const rowLength = () => recentDuration() <= rowTasksUpTo ? store.rowLength : 1
    const stopRequested = Effect.gen(function*() {
      if (stops.size === 0) return
      for (const id of yield* store.stopped([...stops.keys()])) {
        stops.get(id)?.stop()
      }
    })
    // Claimed tasks waiting for a session. A worker holds, claimed or
    // running, up to `run` more tasks than its sessions run, so that a busy
    // worker claims in batches rather than once per finished task; while
    // tasks run in rows, a row a session and a quarter more, so that a
    // session whose row ends finds its next row waiting while the claim that
    // refills it is on its way. Holding a row more a session drained no
    // faster, and kept more of a backlog from the target's other instances.
    // They stay `TAKE`, held by the worker's backend, until a session starts
    // them.
    const held = () => rowLength() === 1 ? 2 * target.run : Math.ceil(1.25 * rowLength() * target.run)
    const waiting: Array<ClaimedTask> = []
    // Tasks claimed ahead of their plan, earliest plan first (in claim order
    // within a plan); each joins those waiting when its plan comes.
    const ahead: Array<ClaimedTask> = []
    const lead = once ? 0 : claimAhead
    let nextPlan: number | null = null
    let mayFindMore = true
    let dueLeft = false
    let checkStops = true
    let checks = 0
    let timer: { readonly at: number; readonly fiber: Fiber.RuntimeFiber<void> } | undefined
    // The plan whose sessions were last opened ahead.
    let warmed = Infinity
    while (true) {
      const now = yield* clock.now
      const stopping = yield* Deferred.isDone(shutdown)
      const busy = running.count
      if (stopping && waiting.length + ahead.length > 0) {
        const given = [...waiting.splice(0), ...ahead.splice(0)]
        yield* store.release(given.map((task) => ({ id: task.id, pid: task.claimedBy })))
      }
      const come = ahead.findIndex((task) => task.plan > now)
      waiting.push(...ahead.splice(0, come === -1 ? ahead.length : come))
      const until = now + lead
      const due = mayFindMore || (nextPlan !== null && nextPlan <= until)
      // Rows may have taken more tasks than a session each, and the row
      // length may have fallen since: then nothing more is wanted yet.
      const holding = busy + waiting.length + ahead.length
      const want = Math.min(busy === 0 ? firstClaimLimit : claimLimit, held() - holding)
      if (!stopping && due && waiting.length < target.run && want > 0) {
        const claimed = yield* store.claim(now, want, groups, until)
        for (const task of claimed.tasks) (task.plan <= now ? waiting : ahead).push(task)
        ahead.sort((a, b) => a.plan - b.plan)
        nextPlan = claimed.nextPlan
        mayFindMore = claimed.tasks.length === want
        dueLeft = claimed.dueLeft
        checks += 1
        // Tasks put back are due at once: claim again rather than wait.
        if (checks % target.reset === 0 && (yield* reset) > 0) {
          mayFindMore = true
          continue
        }
        // A full claim of tasks ahead of their plan: claim the rest now,
        // while there is time, rather than when their plan comes.
        if (mayFindMore && waiting.length === 0) continue
      }
      const free = target.run - sessions
      if (free > 0 && waiting.length > 0) {
        const length = Math.min(rowLength(), Math.ceil(waiting.length / free))
        yield* Effect.forEach(deal(free, length), dispatch, { discard: true })
        // Sessions took what waited: claim again now rather than at the next
        // wake-up, so that what the worker holds does not hang on whether a
        // task's end or its repeat's wake-up came first.
        const holds = running.count + waiting.length + ahead.length
        if (!stopping && mayFindMore && waiting.length < target.run && held() - holds > 0) {
          continue
        }
      }
      const idle = waiting.length === 0 && running.count === 0
      if (once && idle && !mayFindMore && !dueLeft) return
      if (checkStops) yield* stopRequested
      // A plan already past is no deadline: its task waits for a session,
      // and the end of a task wakes the worker.
      const unclaimed = nextPlan !== null && nextPlan > now ? nextPlan : Infinity
      const planned = Math.min(unclaimed, ahead[0]?.plan ?? Infinity)
      // Sessions for the next planned tasks are opened ahead of them, once
      // their plan is two poll intervals away, so that tasks planned for one
      // instant start then rather than after their connections.
      if (store.warm !== undefined && planned !== warmed && planned - now <= 2 * target.timeout) {
        warmed = planned
        yield* store.warm(planned, target.run)
      }
      // A timer is kept while it rings no later than the deadline, rather
      // than made anew on every wake-up (a busy worker wakes for every row
      // that ends): ringing early costs a look at the table, and the next
      // round sets the timer again. One that rang is replaced.
      const claimAt = unclaimed - lead > now ? unclaimed - lead : Infinity
      const deadline = Math.min(now + target.timeout, claimAt, planned)
      if (timer === undefined || timer.at > deadline) {
        if (timer !== undefined) yield* Fiber.interrupt(timer.fiber)
        const ring = Effect.zipRight(clock.sleepUntil(deadline), Effect.asVoid(Queue.offer(reasons, "TIMER")))
        timer = { at: deadline, fiber: yield* Effect.forkScoped(ring) }
      }
      const woken = [yield* Queue.take(reasons), ...(yield* Queue.takeAll(reasons))]
      // A timer that rang is done: the next round sets a new one, even for
      // the same deadline.
      if (woken.includes("TIMER")) timer = undefined
      // A notification or the poll interval may mean new due tasks; a task
      // that ended frees a session, and a group slot for due tasks that their
      // group held back. Running tasks are checked for STOP when a
      // notification says so, and on the poll interval in case one was missed.
      mayFindMore ||= dueLeft || woken.some((reason) => reason !== "END")
      checkStops = woken.some((reason) => reason === "TIMER" || reason === "STOP")
    }
  })
