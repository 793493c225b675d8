/**
 * The task store on PostgreSQL. Each target gets a worker session of its
 * own, which holds its liveness lock, listens to the table's trigger and
 * does the bookkeeping one piece at a time, and a pool of task sessions as
 * the target's role. The bookkeeping need not wait for the disk: a crash
 * that loses the last of it re-runs those tasks, which at-least-once
 * allows. Tasks' own work keeps the server's setting.
 */
import { Duration, Effect, Exit, Layer, Pool, Queue } from "effect"
import { ensureDatabase, ensureTable, quote, type TaskTable } from "./Bootstrap.js"
import * as Claimer from "./Claimer.js"
import type { Target } from "./Config.js"
import { Database } from "./Database.js"
import * as Remotes from "./internal/remotes.js"
import * as Session from "./internal/session.js"
import { copiesWithClient, split } from "./internal/statements.js"
import { formatError, formatOutput } from "./Output.js"
import { Store, type Ran, type TaskSession, type TargetStore, type Wake } from "./Store.js"
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
    // One piece of bookkeeping at a time on the worker's session.
    const lock = yield* Effect.makeSemaphore(1)
    const book = <A, E>(work: (session: Session.Session) => Effect.Effect<A, E>) =>
      lock.withPermits(1)(work(worker))
    // A task's backend notices within a second when its client is gone
    // (PostgreSQL 14 and later), so the tasks of a killed instance are
    // cancelled and can be reset instead of running on unseen.
    const checkClient = database.serverVersion >= 140000 ? "-c client_connection_check_interval=1000" : undefined
    const interpret = options.interpret ?? runInput
    // Idle sessions close after half an hour. The pool checks them on that
    // period, so a shorter one would also wake it more often for nothing.
    const sessions = yield* Pool.makeWithTTL({
      acquire: Effect.gen(function*() {
        const session = yield* Session.open({ ...config, options: checkClient }, "connect to the target")
        yield* Claimer.holdLiveLock(session)
        return taskSession(session, table, interpret)
      }),
      min: 0,
      max: target.run,
      timeToLive: Duration.minutes(30),
      timeToLiveStrategy: "usage"
    })
    const remotes = yield* Remotes.make
    const store: TargetStore = {
      table,
      wakes,
      claim: (now, limit, inProcess) => book((s) => Claimer.claim(s, table, now, limit, inProcess)),
      claimNext: (now, after) => book((s) => Claimer.claimNext(s, table, now, after)),
      finish: (finishes) => book((s) => Effect.asVoid(Claimer.finish(s, table, finishes))),
      release: (held) => book((s) => Effect.asVoid(Claimer.release(s, table, held))),
      reset: book((s) => Claimer.reset(s, table)),
      stopped: (ids) => book((s) => Claimer.stopped(s, table, ids)),
      session: Pool.get(sessions),
      discard: (session) => Pool.invalidate(sessions, session),
      startRemote: (task, now) =>
        book((s) => Effect.map(Claimer.startRemote(s, table, task, now), (started) => started ? s.pid : undefined)),
      runRemote: (task) => runRemote(remotes, task)
    }
    return store
  })

/** A task session; after its first task, each start also resets what the last one left. */
const taskSession = (
  session: Session.Session,
  table: TaskTable,
  interpret: (session: Session.Session, task: ClaimedTask) => Effect.Effect<Ran>
): TaskSession => {
  let used = false
  return {
    pid: session.pid,
    start: (task, now) =>
      Effect.suspend(() => {
        const reset = used
        used = true
        return Claimer.start(session, table, task, now, reset)
      }),
    run: (task) => interpret(session, task),
    isHealthy: session.isHealthy
  }
}

const failed = (error: string): Outcome => ({ state: "FAIL", output: null, error })

/**
 * Runs the task's SQL, then ends whatever transaction it left open:
 * committed after success, rolled back after failure.
 */
export const runInput = (session: Session.Session, task: ClaimedTask): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    if (split(task.input).some(copiesWithClient)) return yield* Effect.fail(Session.copyFailure)
    const results = yield* session.run(task.input)
    if (session.transactionStatus() !== "I") yield* session.run("COMMIT")
    return results
  }).pipe(
    Effect.map((results): Outcome => ({ state: "DONE", output: formatOutput(results), error: null })),
    Effect.map((outcome): Ran => ({ outcome, clean: true })),
    Effect.catchAll((failure): Effect.Effect<Ran> => {
      const outcome = failed(failure.error)
      if (failure.lost) return Effect.succeed({ outcome, clean: false, lost: true })
      // The server reports the transaction's state only after the error, so
      // whatever the SQL left open is rolled back unasked.
      return session.run("ROLLBACK").pipe(Effect.ignore, Effect.as({ outcome, clean: true }))
    })
  )

/**
 * A task on another database, on a session kept for reuse when the task
 * left it clean. Connecting is part of the run, so the task's timeout
 * bounds a remote that hangs.
 */
const runRemote = (remotes: Remotes.Remotes, task: ClaimedTask): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    const lease = yield* remotes.lease(task.remote!)
    const { session } = lease
    yield* session.query("SELECT set_config('pg_task.id', $1, false)", [task.id]).pipe(
      Effect.mapError((error) => new Session.TaskFailure(formatError({ message: error.reason }), undefined, true))
    )
    const ran = yield* runInput(session, task)
    lease.reuse = ran.clean && session.isHealthy()
      && Exit.isSuccess(yield* Effect.exit(session.query("DISCARD ALL")))
    return ran
  }).pipe(
    Effect.catchAll((failure) => Effect.succeed<Ran>({ outcome: failed(failure.error), clean: false })),
    Effect.scoped
  )
