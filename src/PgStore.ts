/**
 * The task store on PostgreSQL. Each target gets a worker session of its
 * own, which holds its liveness lock, listens to the table's trigger and
 * does the bookkeeping one piece at a time, and a pool of task sessions as
 * the target's role. The bookkeeping need not wait for the disk: a crash
 * that loses the last of it re-runs those tasks, which at-least-once
 * allows. Tasks' own work keeps the server's setting.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import { ensureDatabase, ensureTable, quote, type TaskTable } from "./Bootstrap.js"
import * as Claimer from "./Claimer.js"
import type { Target } from "./Config.js"
import { Database } from "./Database.js"
import * as Remotes from "./internal/remotes.js"
import * as Session from "./internal/session.js"
import * as SessionPool from "./internal/sessionPool.js"
import { copiesWithClient, split } from "./internal/statements.js"
import { formatOutput } from "./Output.js"
import {
  type Ran, type RowEvents, type StopSignal, stoppable, stoppedRun, Store, type TargetStore,
  type TaskSession, type Wake
} from "./Store.js"
import type { ClaimedTask, Outcome } from "./Task.js"

export interface PgStoreOptions {
  /**
   * Whether the worker listens to the table's trigger (the default). Without
   * it, only the poll interval and the scheduler's own changes wake it: for
   * simulations that wake it themselves.
   */
  readonly listen?: boolean | undefined
  /**
   * How a task's input runs on its session; the input as SQL by default.
   * Simulations interpret it as a script instead.
   */
  readonly interpret?: ((session: Session.Session, task: ClaimedTask) => Effect.Effect<Ran>) | undefined
}

export const layer = (options: PgStoreOptions = {}) =>
  Layer.effect(
    Store,
    Effect.map(Database, (database) => Store.of({ open: (target) => open(database, target, options) }))
  )

const open = (database: Database["Type"], target: Target, options: PgStoreOptions) =>
  Effect.gen(function*() {
    yield* ensureDatabase(database.admin, target)
    const config = database.clientConfig(target.data, target.user)
    const worker = yield* Session.open({ ...config, options: "-c synchronous_commit=off" }, "connect to the target")
    yield* Claimer.holdLiveLock(worker)
    const table = yield* ensureTable(worker, target)
    yield* Claimer.prepareClaims(worker, table)
    const wakes = yield* Queue.dropping<Wake>(64)
    if (options.listen !== false) {
      worker.onNotification((message) => {
        if (message.channel !== table.channel) return
        Queue.unsafeOffer(wakes, message.payload === "STOP" ? "STOP" : "PLAN")
      })
      yield* worker.query(`LISTEN ${quote(table.channel)}`)
    }
    // One piece of bookkeeping at a time on the worker's session. Ends of
    // runs and releases go on a session of their own: they need not be
    // written by the backend that holds claims, and on one session the claims
    // waited behind them (a busy worker's session was busy most of the time).
    const book = yield* serialised(worker)
    const ends = yield* serialised(
      yield* Session.open({ ...config, options: "-c synchronous_commit=off" }, "connect to the target")
    )
    // A task's backend notices within a second when its client is gone
    // (PostgreSQL 14 and later), so the tasks of a killed instance are
    // cancelled and can be reset instead of running on unseen.
    const checkClient = database.serverVersion >= 140000 ? "-c client_connection_check_interval=1000" : undefined
    // Ends a task session's backend from outside, as the same role.
    const terminate = (pid: number) =>
      ends((s) => s.query("SELECT pg_terminate_backend($1)", [pid])).pipe(Effect.ignore)
    // A session opened ahead of planned tasks also runs a start that
    // matches no task, so that the first row it starts finds the table's
    // catalog entries loaded and its statement's shape parsed: a burst's
    // first rows start on many new backends at once, on the same cores.
    const openSession = (ahead: boolean) =>
      Effect.gen(function*() {
        const session = yield* Session.open({ ...config, options: checkClient }, "connect to the target")
        yield* Claimer.holdLiveLock(session)
        if (ahead) yield* session.query(Claimer.primeStatement(table))
        return taskSession(session, table, options.interpret, terminate)
      })
    const sessions = yield* SessionPool.make(
      openSession(false),
      (session) => session.pid,
      (session) => session.isHealthy(),
      openSession(true)
    )
    const remotes = yield* Remotes.make
    const store: TargetStore = {
      table,
      rowLength: options.interpret === undefined ? rowLength : 1,
      wakes,
      claim: (now, limit, inProcess, until) => book((s) => Claimer.claim(s, now, limit, inProcess, until)),
      claimNext: (now, after) => book((s) => Claimer.claimNext(s, now, after)),
      finish: (finishes) => ends((s) => Effect.asVoid(Claimer.finish(s, table, finishes))),
      release: (held) => ends((s) => Effect.asVoid(Claimer.release(s, table, held))),
      reset: book((s) => Claimer.reset(s, table)),
      stopped: (ids) => book((s) => Claimer.stopped(s, table, ids)),
      session: sessions.take,
      giveBack: sessions.giveBack,
      // Simulations open no sessions of their own accord.
      warm: options.interpret !== undefined ? undefined : (plan, most) =>
        book((s) => Claimer.plannedAt(s, table, plan, most)).pipe(
          Effect.flatMap(sessions.warm),
          Effect.catchAllCause((cause) =>
            Effect.logDebug("could not count the tasks planned next", cause)
          )
        ),
      startRemote: (task, now) =>
        book((s) => Effect.map(Claimer.startRemote(s, table, task, now), (started) => started ? s.pid : undefined)),
      runRemote: (task, stop) => runRemote(remotes, task, stop)
    }
    return store
  })

/**
 * The most tasks a session runs in a row. A row costs the scheduler and the
 * server about as much again as its tasks (its start, its dispatch, the
 * wake-ups of both processes), so longer rows drain faster; but a slow task
 * keeps the rest of its row waiting. Measured on two cores (`npm run bench`,
 * alternating builds): 64 drained 12,300-13,000 tasks/s where 32 drained
 * 9,700-10,000, and a burst of 1,000 ended 55-59 ms late at p99 instead of
 * 84-98; 128 drained no faster and started a burst's median task later.
 */
const rowLength = 64

/** Runs work on `session` one piece at a time. */
const serialised = (session: Session.Session) =>
  Effect.map(
    Effect.makeSemaphore(1),
    (lock) => <A, E>(work: (session: Session.Session) => Effect.Effect<A, E>) => lock.withPermits(1)(work(session))
  )

/**
 * A task session. A start is not written on its own: it goes out with the
 * task's run, in one write, and after the session's first task it also
 * resets what the last one left. A session whose input is interpreted
 * (simulations) writes the start at once, so that a task has started on
 * the server when its start returns.
 */
const taskSession = (
  session: Session.Session,
  table: TaskTable,
  interpret: ((session: Session.Session, task: ClaimedTask) => Effect.Effect<Ran>) | undefined,
  terminate: (pid: number) => Effect.Effect<void>
): TaskSession => {
  let used = false
  let start: ReadonlyArray<string> | undefined
  return {
    rows: interpret !== undefined ? undefined : {
      start: (tasks, now) =>
        Effect.suspend(() => {
          const reset = used
          used = true
          return startRow(session, table, tasks, now, reset)
        }),
      run: (tasks, stops, events) => runRow(session, tasks, stops, events, terminate(session.pid))
    },
    pid: session.pid,
    start: (task, now) =>
      Effect.suspend(() => {
        start = Claimer.startScript(table, task, now, used)
        used = true
        if (interpret === undefined) return Effect.succeed(true)
        const script = start
        start = undefined
        return Effect.map(runInput(session, { ...task, input: "" }, script), (ran) => ran.lost !== true)
      }),
    run: (task, stop) =>
      Effect.suspend(() => {
        if (interpret !== undefined) return stoppable(interpret(session, task), stop)
        const prelude = start
        start = undefined
        return runInput(session, task, prelude, stop)
      }),
    isHealthy: session.isHealthy
  }
}

const failed = (error: string): Outcome => ({ state: "FAIL", output: null, error })

const done = (output: string | null): Outcome => ({ state: "DONE", output, error: null })

/** Marks a row of tasks running on `session`; the tasks it started, in order. */
const startRow = (
  session: Session.Session,
  table: TaskTable,
  tasks: ReadonlyArray<ClaimedTask>,
  now: number,
  reset: boolean
) =>
  Effect.gen(function*() {
    const scripts = Claimer.startRowScript(table, tasks, now, reset)
    const answers: Array<Session.Answer> = []
    yield* session.pipeline(scripts, (_, answer) => void answers.push(answer), Effect.void).pipe(
      Effect.mapError((failure) => Session.databaseError("start tasks")(new Error(failure.error)))
    )
    const failure = answers.find(Either.isLeft)
    if (failure !== undefined) {
      return yield* Effect.fail(Session.databaseError("start tasks")(new Error(failure.left.error)))
    }
    const last = answers[answers.length - 1]
    const [result] = last !== undefined && Either.isRight(last) ? last.right : []
    const ids = new Set(result?._tag === "Rows" ? result.rows.map((row) => row[0]) : [])
    // The reset let go of the liveness lock, which only a started row takes again.
    if (reset && ids.size === 0) yield* Claimer.holdLiveLock(session)
    return tasks.filter((task) => ids.has(task.id))
  })

/**
 * Runs a started row of tasks: each task's reset and SQL, one message each,
 * all in one write. The answers come in order, two a task. A STOP of the
 * running task cancels it when it is the row's last; any other STOP ends
 * the session, since its SQL is already on its way, and a cancel that
 * arrives as the next task begins would reach that one instead. A task
 * stopped just as it began is then cut short, and ends stopped.
 */
const runRow = (
  session: Session.Session,
  tasks: ReadonlyArray<ClaimedTask>,
  stops: ReadonlyArray<StopSignal>,
  events: RowEvents,
  abort: Effect.Effect<void>
): Effect.Effect<void> =>
  Effect.suspend(() => {
    const last = tasks.length - 1
    let running = -1
    let unguarded = -1
    const stopRunning = (index: number) => {
      if (index === last) session.cancel()
      else Effect.runFork(abort)
    }
    let next = 0
    const unwatch = stops.map((stop, index) =>
      stop.onStop(() => {
        if (running === index) stopRunning(index)
        else if (index >= next) Effect.runFork(abort)
      })
    )
    const scripts = tasks.flatMap((task, index) => [Claimer.guardScript(task, index > 0), task.input])
    const answer = (at: number, answer: Session.Answer) => {
      const index = at >> 1
      if (at % 2 === 0) {
        if (Either.isLeft(answer)) {
          // The task's SQL runs all the same: the session must end before
          // anything after it, and the task runs again.
          unguarded = index
          next = index + 1
          events.ended(index, { outcome: failed(answer.left.error), clean: false, lost: true })
          Effect.runFork(abort)
          return
        }
        running = index
        next = index + 1
        events.began(index)
        if (stops[index]!.stopped) stopRunning(index)
        return
      }
      if (index === unguarded) return
      running = -1
      events.ended(
        index,
        Either.isRight(answer)
          ? { outcome: done(formatOutput(answer.right)), clean: true }
          : { outcome: failed(answer.left.error), clean: true }
      )
    }
    return session.pipeline(scripts, answer, abort).pipe(
      Effect.catchAll((failure) =>
        Effect.sync(() => {
          if (running < 0) return
          events.ended(running, { outcome: failed(failure.error), clean: false, lost: true })
        })
      ),
      Effect.ensuring(Effect.sync(() => unwatch.forEach((off) => off())))
    )
  })

/**
 * Runs the task's SQL, after the `prelude` that starts it, then ends
 * whatever transaction it left open: committed after success, rolled back
 * after failure.
 */
export const runInput = (
  session: Session.Session,
  task: ClaimedTask,
  prelude?: ReadonlyArray<string>,
  stop?: StopSignal
): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    if (split(task.input).some(copiesWithClient)) {
      yield* session.run("", prelude)
      return yield* Effect.fail(Session.copyFailure)
    }
    const results = yield* session.run(task.input, prelude, stop)
    if (session.transactionStatus() !== "I") yield* session.run("COMMIT")
    return results
  }).pipe(
    Effect.map((results): Ran =>
      stop?.stopped === true
        ? stoppedRun
        : { outcome: done(formatOutput(results)), clean: true }
    ),
    Effect.catchAll((failure): Effect.Effect<Ran> => {
      // A stopped run ends as stopped, however its query ended.
      if (stop?.stopped === true && !failure.inPrelude) return Effect.succeed(stoppedRun)
      const outcome = failed(failure.error)
      // A start that ended its session found its claim lost: nothing ran.
      // One that failed otherwise let the SQL run without its row marked
      // running, so the task runs again.
      if (failure.inPrelude) return Effect.succeed({ outcome, clean: false, started: !failure.lost, lost: true })
      if (failure.lost) return Effect.succeed({ outcome, clean: false, lost: true })
      if (session.transactionStatus() === "I") return Effect.succeed({ outcome, clean: true })
      return session.run("ROLLBACK").pipe(Effect.ignore, Effect.as({ outcome, clean: true }))
    })
  )

/**
 * A task on another database, on a session kept for reuse when the task
 * left it clean. Connecting is part of the run, so the task's timeout
 * bounds a remote that hangs.
 */
const runRemote = (remotes: Remotes.Remotes, task: ClaimedTask, stop: StopSignal): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    const lease = yield* remotes.lease(task.remote!)
    const { session } = lease
    if (!/^\d+$/.test(task.id)) return yield* Effect.die(new Error(`task id ${task.id} is not a number`))
    const ran = yield* runInput(session, task, [`SELECT set_config('pg_task.id', '${task.id}', false)`], stop)
    lease.reuse = ran.clean && session.isHealthy()
      && Exit.isSuccess(yield* Effect.exit(session.query("DISCARD ALL")))
    return ran
  }).pipe(
    Effect.catchAll((failure) => Effect.succeed<Ran>({ outcome: failed(failure.error), clean: false })),
    Effect.scoped
  )
