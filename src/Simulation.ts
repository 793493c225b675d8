/**
 * A simulated scheduler: the real scheduler's fibers over a task store,
 * on `TestClock`, with task inputs written as scripts (`Script`) that take
 * virtual time. Plan tasks, advance the clock, read back the rows: days of
 * schedule are checked in milliseconds.
 *
 * `layer` keeps the table in memory. `layerPostgres` runs the same
 * simulation over a real PostgreSQL table, with the production claim,
 * finish and reset statements: what differs between the two is the store
 * alone, so their rows can be compared.
 *
 * Advancing the clock goes from one timer to the next, and before each
 * step waits until the scheduler has nothing on its way to the store, so
 * that every decision is taken at the virtual instant it belongs to.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as FiberScheduler from "effect/Scheduler"
import type { TaskTable } from "./Bootstrap.js"
import { Clock } from "./Clock.js"
import { PgTaskConfig, type RawSettings, type Target } from "./Config.js"
import { Database, type DatabaseOptions } from "./Database.js"
import { type ConfigError, DatabaseError, TargetError } from "./Errors.js"
import * as Session from "./internal/session.js"
import { VirtualClock } from "./internal/virtualClock.js"
import * as MemoryStore from "./MemoryStore.js"
import type { TaskRow } from "./MemoryStore.js"
import * as PgStore from "./PgStore.js"
import { Scheduler } from "./Scheduler.js"
import * as Script from "./Script.js"
import { Store, type TargetStore, type Wake } from "./Store.js"
import { checkSpec, insertStatement, type TaskSpec, type TaskSpecError } from "./Tasks.js"

export type { TaskRow } from "./MemoryStore.js"

export interface SimulationService {
  /**
   * Plans a task in the first target's table; its input is a script. A
   * `plan` given as a duration counts from the simulation's clock.
   */
  readonly plan: (spec: TaskSpec) => Effect.Effect<string, TaskSpecError | DatabaseError>
  /** Sets a task that has not ended to `STOP`, as a user would; false when it had ended. */
  readonly stop: (id: string) => Effect.Effect<boolean, DatabaseError>
  /** Every row of the first target's table, in `id` order. */
  readonly rows: Effect.Effect<ReadonlyArray<TaskRow>, DatabaseError>
  /** The simulation's clock, in milliseconds since the epoch. */
  readonly now: Effect.Effect<number>
  /**
   * Moves the clock forward by `duration`, timer by timer, letting the
   * scheduler act at each instant before going on.
   */
  readonly advance: (duration: Duration.DurationInput) => Effect.Effect<void>
  /** Waits until the scheduler has done all it can at the current instant. */
  readonly settle: Effect.Effect<void>
}

export interface SimulationOptions {
  /**
   * Settings, as the flags give them. The poll interval (`default_timeout`)
   * is one day unless set: a simulation loses no wake-up, so polling would
   * only add steps.
   */
  readonly settings?: RawSettings | undefined
  /**
   * Run what is due, wait for it to end, and stop (`Scheduler.done` tells),
   * as the binary's `--once` does.
   */
  readonly once?: boolean | undefined
  /**
   * Makes the in-memory table (`layer` only): a subclass of `MemoryTable`
   * that bends a rule, to show that a check of the rules catches it.
   */
  readonly table?: MemoryStore.MakeTable | undefined
  /**
   * `virtual` (the default): the simulation's own clock, which moves from
   * timer to timer at once. `test`: Effect's `TestClock` (use it under
   * `it.effect`); `advance` is then `TestClock.adjust` with the scheduler
   * settled before and after, and a test may adjust `TestClock` itself.
   * `TestClock` waits several event-loop turns for each timer it fires, so
   * a busy simulated day takes seconds rather than milliseconds.
   * `layerPostgres` always uses the virtual clock.
   */
  readonly clock?: "virtual" | "test" | undefined
  /** Where the simulation's clock starts; the epoch (1970-01-01T00:00:00Z) by default. */
  readonly start?: Date | undefined
}

const startOf = (options: SimulationOptions) => options.start?.getTime() ?? 0

/** The scheduler's clock and Effect's (task timeouts, script sleeps), both virtual. */
const clockLayer = (virtual: VirtualClock) =>
  Layer.merge(
    Layer.succeed(Clock, {
      now: virtual.currentTimeMillis,
      unsafeNow: () => virtual.unsafeCurrentTimeMillis(),
      sleepUntil: (at) => virtual.sleepUntil(at)
    }),
    Layer.setClock(virtual)
  )

const settingsLayer = (options: SimulationOptions) =>
  PgTaskConfig.layerFrom([["flags", { default_timeout: String(Duration.toMillis("1 day")), ...options.settings }]])

/**
 * What the simulation tracks of the store: how many calls are on their way,
 * and the wake-ups the simulation itself sends.
 */
interface Watched {
  inFlight: number
  /** Calls made so far. */
  calls: number
  /** Calls made when the clock last moved. */
  callsBefore: number
  /** Why the scheduler was stopped short: it spun at one instant. */
  fault?: string
  readonly opened: Array<{ readonly target: Target; readonly table: TaskTable; readonly wakes: Queue.Queue<Wake> }>
}

/** More calls to the store than this at one instant mean the scheduler spins. */
const spinning = 100_000

/** Counts every call to the store while it is on its way; its wake-ups are the simulation's. */
const watchStore = (watched: Watched, ownWakes: boolean) =>
  Layer.effect(
    Store,
    Effect.map(Store, (inner) =>
      Store.of({
        open: (target) =>
          Effect.gen(function*() {
            const store = yield* inner.open(target)
            const wakes = ownWakes ? yield* Queue.dropping<Wake>(64) : (store.wakes as Queue.Queue<Wake>)
            watched.opened.push({ target, table: store.table, wakes })
            return watch(watched, { ...store, wakes })
          })
      }))
  )

const watch = (watched: Watched, store: TargetStore): TargetStore => {
  // A scheduler that keeps calling its store at one instant spins, and may
  // never let the simulation run again to find out: it is stopped here.
  const counted = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.suspend(() => {
      if (++watched.calls - watched.callsBefore > spinning) {
        watched.fault ??= `${watched.calls - watched.callsBefore} calls to the store at one instant`
        return Effect.dieMessage(`the scheduler spins: ${watched.fault}`)
      }
      watched.inFlight++
      return Effect.ensuring(effect, Effect.sync(() => watched.inFlight--))
    })
  return {
    ...store,
    claim: (now, limit, inProcess, until) => counted(store.claim(now, limit, inProcess, until)),
    claimNext: (now, after) => counted(store.claimNext(now, after)),
    finish: (finishes) => counted(store.finish(finishes)),
    release: (held) => counted(store.release(held)),
    reset: counted(store.reset),
    stopped: (ids) => counted(store.stopped(ids)),
    session: Effect.map(counted(store.session), (session) => ({
      ...session,
      start: (task, now) => counted(session.start(task, now))
    })),
    giveBack: (session, reuse) => counted(store.giveBack(session, reuse)),
    startRemote: (task, now) => counted(store.startRemote(task, now))
  }
}

/**
 * Lets other fibers, and the sockets under them, run for a moment of real
 * time; with 0, until the event loop has run everything already queued.
 */
const pause = (millis: number) =>
  Effect.async<void>((resume) => {
    if (millis === 0) {
      const immediate = setImmediate(() => resume(Effect.void))
      return Effect.sync(() => clearImmediate(immediate))
    }
    const timer = setTimeout(() => resume(Effect.void), millis)
    return Effect.sync(() => clearTimeout(timer))
  })

/** How a simulation reads and writes its table, in memory or in PostgreSQL. */
interface Rows {
  readonly insert: (spec: TaskSpec, now: number) => Effect.Effect<string, TaskSpecError | DatabaseError>
  readonly stop: (id: string) => Effect.Effect<boolean, DatabaseError>
  readonly all: Effect.Effect<ReadonlyArray<TaskRow>, DatabaseError>
}

/**
 * `quiet`: the real time, ms, to let pass before looking whether the
 * scheduler is idle; `wakes`: whether the simulation wakes the workers
 * after its own changes, for a store that does not.
 */
const makeSimulation = (
  virtual: VirtualClock | undefined,
  watched: Watched,
  rows: Rows,
  quiet: number,
  wakes: boolean
) =>
  Effect.gen(function*() {
    // Real time, ms, that one instant of virtual time may take.
    const patience = 20_000
    const clock = yield* Clock
    const wake = (reason: Wake) =>
      wakes
        ? Effect.forEach(watched.opened, (opened) => Queue.offer(opened.wakes, reason), { discard: true })
        : Effect.void
    // The scheduler is idle when no store call was on its way or made
    // across two pauses in a row: every fiber woken meanwhile has run
    // until it waits for the clock or for a wake-up. One that never stops
    // calling is a scheduler that spins, and the simulation says so.
    const settle = Effect.gen(function*() {
      const since = Date.now()
      for (let idle = 0, calls = -1; idle < 2;) {
        if (watched.fault !== undefined || Date.now() - since > patience) {
          return yield* Effect.dieMessage(
            `the scheduler did not settle at ${new Date(yield* clock.now).toISOString()}: `
              + (watched.fault ?? `${watched.calls - watched.callsBefore} calls to its store and counting`)
          )
        }
        yield* pause(quiet)
        idle = watched.inFlight === 0 && watched.calls === calls ? idle + 1 : 0
        calls = watched.calls
      }
    })
    // Timer by timer: at each instant the scheduler does all it can before
    // the clock moves on. TestClock goes timer by timer itself, waiting for
    // the fibers it woke to wait again.
    const advance = (duration: Duration.DurationInput) =>
      Effect.gen(function*() {
        if (virtual === undefined) {
          yield* settle
          watched.callsBefore = watched.calls
          yield* TestClock.adjust(duration)
          return yield* settle
        }
        const end = virtual.unsafeCurrentTimeMillis() + Duration.toMillis(duration)
        yield* settle
        for (let next = virtual.next(); next !== undefined && next <= end; next = virtual.next()) {
          watched.callsBefore = watched.calls
          virtual.moveTo(next)
          yield* settle
        }
        watched.callsBefore = watched.calls
        virtual.moveTo(end)
        yield* settle
      })
    return Simulation.of({
      plan: (spec) =>
        Effect.gen(function*() {
          const id = yield* rows.insert(spec, yield* clock.now)
          yield* wake("PLAN")
          return id
        }),
      stop: (id) => Effect.tap(rows.stop(id), (stopped) => stopped ? wake("STOP") : Effect.void),
      rows: rows.all,
      now: clock.now,
      advance,
      settle
    })
  })

/** The plan a spec gives, in ms: a duration counts from `now`, none means `now`. */
const planOf = (plan: TaskSpec["plan"], now: number) =>
  plan === undefined ? now : plan instanceof Date ? plan.getTime() : now + Duration.toMillis(plan)

const memoryRows: Effect.Effect<Rows, never, MemoryStore.MemoryTables | PgTaskConfig> =
  Effect.gen(function*() {
    const tables = yield* MemoryStore.MemoryTables
    const { targets } = yield* PgTaskConfig
    const table = yield* tables.of(targets[0]!)
    const millis = (duration: Duration.DurationInput | undefined) =>
      duration === undefined ? undefined : Duration.toMillis(duration)
    return {
      insert: (spec, now) =>
        Effect.map(checkSpec(spec), (checked) => {
          const row = table.insert({
            input: checked.input,
            plan: planOf(spec.plan, now),
            ...checked.group !== undefined && { group: checked.group },
            ...checked.max !== undefined && { max: checked.max },
            ...checked.timeout !== undefined && { timeout: millis(checked.timeout)! },
            ...checked.repeat !== undefined && { repeat: millis(checked.repeat)! },
            ...checked.drift !== undefined && { drift: checked.drift },
            ...checked.delete !== undefined && { delete: checked.delete },
            ...checked.count !== undefined && { count: checked.count },
            ...checked.live !== undefined && { live: millis(checked.live)! },
            ...checked.remote !== undefined && { remote: checked.remote }
          })
          return row.id
        }),
      stop: (id) => Effect.sync(() => table.stop(id)),
      all: Effect.sync(() => table.rows())
    }
  })

/** The columns of a row, times as ms, in the shape of `TaskRow`. */
const rowColumns = `id::text AS id, parent::text AS parent,
  (extract(epoch FROM plan) * 1000)::float8 AS plan, (extract(epoch FROM start) * 1000)::float8 AS start,
  (extract(epoch FROM stop) * 1000)::float8 AS stop, "group", max, pid, input, output, error, state::text AS state,
  (extract(epoch FROM timeout) * 1000)::float8 AS timeout, delete,
  (extract(epoch FROM repeat) * 1000)::float8 AS repeat, drift, count,
  (extract(epoch FROM live) * 1000)::float8 AS live, remote`

const postgresRows = (watched: Watched): Effect.Effect<Rows, DatabaseError, Database | Scope.Scope> =>
  Effect.gen(function*() {
    const database = yield* Database
    const { target, table } = watched.opened[0]!
    const session = yield* Session.open(database.clientConfig(target.data, target.user), "connect to the target")
    return {
      insert: (spec, now) =>
        Effect.gen(function*() {
          const checked = yield* checkSpec(spec)
          const statement = insertStatement(table.name, { ...checked, plan: new Date(planOf(spec.plan, now)) })
          const [row] = yield* session.query<{ id: string }>(statement.text, statement.params)
          return row!.id
        }),
      stop: (id) =>
        Effect.map(
          session.query(
            `UPDATE ${table.name} SET state = 'STOP' WHERE id = $1 AND state IN ('PLAN', 'TAKE', 'WORK') RETURNING id`,
            [id]
          ),
          (changed) => changed.length > 0
        ),
      all: session.query<TaskRow>(`SELECT ${rowColumns} FROM ${table.name} ORDER BY id`)
    }
  })

const layer = (
  options: SimulationOptions = {}
): Layer.Layer<Simulation | Scheduler | PgTaskConfig | MemoryStore.MemoryTables, ConfigError> => {
  const watched: Watched = { inFlight: 0, calls: 0, callsBefore: 0, opened: [] }
  const virtual = options.clock === "test" ? undefined : new VirtualClock(startOf(options))
  // Closing a simulation cancels what still runs: the clock stands still
  // once nobody moves it, so a grace period would never end.
  const scheduler = Scheduler.layer({ once: options.once, shutdownTimeout: 0 }).pipe(
    Layer.provideMerge(watchStore(watched, false)),
    Layer.provideMerge(options.table ? MemoryStore.layerWith(options.table) : MemoryStore.layer),
    Layer.provideMerge(settingsLayer(options)),
    Layer.provideMerge(
      virtual === undefined
        ? Layer.provideMerge(Clock.layerTest, Layer.effectDiscard(TestClock.setTime(startOf(options))))
        : clockLayer(virtual)
    ),
    // Fibers yield to the event loop's timers only after a long run of
    // work, so one turn of the event loop sees every fiber woken by a step
    // waiting again, while a scheduler that spins still lets the
    // simulation notice.
    Layer.provideMerge(Layer.setScheduler(new FiberScheduler.MixedScheduler(10_000)))
  )
  const simulation = Layer.effect(
    Simulation,
    Effect.gen(function*() {
      yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)
      return yield* makeSimulation(virtual, watched, yield* memoryRows, 0, false)
    })
  )
  return Layer.provideMerge(simulation, scheduler)
}

const layerPostgres = (
  options: SimulationOptions & DatabaseOptions
): Layer.Layer<Simulation | Scheduler, DatabaseError | TargetError> => {
  const watched: Watched = { inFlight: 0, calls: 0, callsBefore: 0, opened: [] }
  const virtual = new VirtualClock(startOf(options))
  const scheduler = Scheduler.layer({ once: options.once, shutdownTimeout: 0 }).pipe(
    Layer.provideMerge(watchStore(watched, true)),
    Layer.provideMerge(PgStore.layer({ listen: false, interpret: (_, task) => Script.run(task.input) })),
    Layer.provideMerge(settingsLayer(options)),
    Layer.provideMerge(clockLayer(virtual)),
    Layer.provideMerge(Database.layer(options))
  )
  const simulation = Layer.scoped(
    Simulation,
    Effect.gen(function*() {
      yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready)
      return yield* makeSimulation(virtual, watched, yield* postgresRows(watched), 2, true)
    })
  )
  return Layer.provideMerge(simulation, scheduler).pipe(
    Layer.catchAll((error) =>
      Layer.fail(
        error instanceof DatabaseError || error instanceof TargetError
          ? error
          : new DatabaseError({ action: "start the simulation", reason: String(error) })
      )
    )
  )
}

export class Simulation extends Context.Tag("pg-task/Simulation")<Simulation, SimulationService>() {
  /** The simulation over a table in memory. Use it under `it.effect`, where the clock is `TestClock`. */
  static readonly layer = layer
  /**
   * The same simulation over a real table, on the server `options` names:
   * the production store, with task inputs read as scripts and wake-ups sent
   * by the simulation rather than by the table's trigger.
   */
  static readonly layerPostgres = layerPostgres
}
