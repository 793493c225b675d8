/**
 * The task store in memory: the same claim, start, finish, repeat, delete,
 * release and reset rules as the PostgreSQL store, over rows kept in the
 * process, for simulations under `TestClock`. Task inputs are scripts
 * (`Script`), not SQL. Each target has a table of its own; a user's insert
 * or STOP wakes its worker, as the table's trigger does on a server.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import type { TaskTable } from "./Bootstrap.js"
import { describeTarget, type Target } from "./Config.js"
import * as Script from "./Script.js"
import {
  type Claimed, type Finish, type Held, stoppable, Store, type TargetStore, type TaskSession, type Wake
} from "./Store.js"
import type { ClaimedTask, State } from "./Task.js"

/** A row of a task table, times in milliseconds since the epoch, intervals in milliseconds. */
export interface TaskRow {
  readonly id: string
  readonly parent: string | null
  readonly plan: number
  readonly start: number | null
  readonly stop: number | null
  readonly group: string
  readonly max: number
  readonly pid: number | null
  readonly input: string
  readonly output: string | null
  readonly error: string | null
  readonly state: State
  readonly timeout: number | null
  readonly delete: boolean
  readonly repeat: number | null
  readonly drift: boolean
  readonly count: number
  readonly live: number
  readonly remote: string | null
}

/** What an insert gives; the rest takes the column defaults. */
export type NewRow = Partial<Omit<TaskRow, "id" | "input" | "plan">> & { readonly input: string; readonly plan: number }

const defaults = {
  parent: null,
  start: null,
  stop: null,
  group: "group",
  max: 2147483647,
  pid: null,
  output: null,
  error: null,
  state: "PLAN",
  timeout: null,
  delete: false,
  repeat: null,
  drift: true,
  count: 0,
  live: 0,
  remote: null
} as const satisfies Omit<TaskRow, "id" | "input" | "plan">

const byPriority = (a: TaskRow, b: TaskRow) => b.max - a.max || a.plan - b.plan || Number(a.id) - Number(b.id)

const held = (row: TaskRow) => row.state === "TAKE" || row.state === "WORK"

/** One target's table. Every change is synchronous: nothing else runs halfway through one. */
export class MemoryTable {
  private readonly byId = new Map<string, TaskRow>()
  private nextId = 1
  private nextPid = 1
  /** Backends that are alive: the worker's and its sessions'. */
  private readonly alive = new Set<number>()

  constructor(
    readonly table: TaskTable,
    /** Wakes the worker on users' inserts and STOPs. */
    readonly wakes: Queue.Queue<Wake>
  ) {}

  /** Every row, in `id` order. */
  rows(): ReadonlyArray<TaskRow> {
    return [...this.byId.values()]
  }

  row(id: string): TaskRow | undefined {
    return this.byId.get(id)
  }

  /** A user's insert: wakes the worker. */
  insert(values: NewRow): TaskRow {
    const row = this.add(values)
    Queue.unsafeOffer(this.wakes, "PLAN")
    return row
  }

  /** A user's `UPDATE ... SET state = 'STOP'` of a task that has not ended; false when none. */
  stop(id: string): boolean {
    const row = this.byId.get(id)
    if (row === undefined || !(row.state === "PLAN" || held(row))) return false
    this.set(row, { state: "STOP" })
    Queue.unsafeOffer(this.wakes, "STOP")
    return true
  }

  /** A new backend, alive until `die`. */
  spawn(): number {
    const pid = this.nextPid++
    this.alive.add(pid)
    return pid
  }

  die(pid: number): void {
    this.alive.delete(pid)
  }

  /**
   * Claims as `TargetStore.claim` says: due rows first, then rows planned
   * up to `until`; with `after`, only rows a session may go on with after
   * that task.
   */
  claim(
    now: number,
    limit: number,
    inProcess: ReadonlyMap<string, number>,
    claimedBy: number,
    { after, until = now }: { readonly after?: ClaimedTask; readonly until?: number } = {}
  ): Claimed {
    const planned = this.rows().filter((row) => row.state === "PLAN")
    // Up to `limit` rows of each (group, max) pair planned up to `until`,
    // in plan order.
    const pairs = new Map<string, Array<TaskRow>>()
    for (const row of planned) {
      if (row.plan > until) continue
      if (after !== undefined && (row.group !== after.group || row.max < after.max || row.remote !== after.remote)) {
        continue
      }
      const key = JSON.stringify([row.group, row.max])
      pairs.set(key, [...pairs.get(key) ?? [], row])
    }
    const candidates = [...pairs.values()].flatMap((rows) =>
      rows.sort((a, b) => a.plan - b.plan || Number(a.id) - Number(b.id)).slice(0, limit)
    )
    const running = new Map<string, number>()
    for (const row of this.byId.values()) {
      if (held(row)) running.set(row.group, (running.get(row.group) ?? 0) + 1)
    }
    for (const [group, n] of inProcess) running.set(group, Math.max(running.get(group) ?? 0, n))
    const ranks = new Map<string, number>()
    const early = (row: TaskRow) => row.plan > now ? 1 : 0
    const picked = candidates.sort((a, b) => early(a) - early(b) || byPriority(a, b)).filter((row) => {
      const rank = (ranks.get(row.group) ?? 0) + 1
      ranks.set(row.group, rank)
      return this.fits(row, running.get(row.group) ?? 0, rank)
    }).slice(0, limit)
    const tasks = picked.map((row) => claimedTask(this.set(row, { state: "TAKE", pid: claimedBy })))
    const left = this.rows().filter((row) => row.state === "PLAN")
    const later = left.filter((row) => row.plan > now).map((row) => row.plan)
    return {
      tasks,
      nextPlan: later.length ? Math.min(...later) : null,
      dueLeft: left.some((row) => row.plan <= now)
    }
  }

  /**
   * Whether a due row fits its group: `running` of the group are claimed or
   * running, and the row comes `rank`th among the group's due rows.
   */
  protected fits(row: TaskRow, running: number, rank: number): boolean {
    return running + rank <= row.max
  }

  start(task: ClaimedTask, now: number, pid: number): boolean {
    const row = this.byId.get(task.id)
    if (row?.state !== "TAKE" || row.pid !== task.claimedBy) return false
    this.set(row, { state: "WORK", start: now, pid })
    return true
  }

  finish(finishes: ReadonlyArray<Finish>): void {
    for (const { task, pid, outcome, stop, next } of finishes) {
      const row = this.byId.get(task.id)
      if (row === undefined || row.pid !== pid || !(row.state === "WORK" || row.state === "STOP")) continue
      const stopped = row.state === "STOP"
      const erase = task.delete && outcome.output === null && outcome.error === null
      if (erase) this.byId.delete(row.id)
      else {
        this.set(row, { state: stopped ? "STOP" : outcome.state, stop, output: outcome.output, error: outcome.error })
      }
      if (next !== null && !stopped) {
        const { group, max, input, timeout, delete: erases, repeat, drift, count, live, remote } = row
        this.add({
          group, max, input, timeout, delete: erases, repeat, drift, count, live, remote,
          parent: erase ? null : row.id,
          plan: next
        })
      }
    }
  }

  release(tasks: ReadonlyArray<Held>): void {
    for (const { id, pid } of tasks) {
      const row = this.byId.get(id)
      if (row !== undefined && held(row) && row.pid === pid) this.set(row, { state: "PLAN", pid: null, start: null })
    }
  }

  /** Puts back rows whose backend is gone. */
  reset(): ReadonlyArray<string> {
    const lost = this.rows().filter((row) => held(row) && !this.alive.has(row.pid!))
    for (const row of lost) this.set(row, { state: "PLAN", pid: null, start: null })
    return lost.map((row) => row.id)
  }

  stopped(ids: ReadonlyArray<string>): ReadonlyArray<string> {
    return ids.filter((id) => this.byId.get(id)?.state === "STOP")
  }

  private add(values: NewRow): TaskRow {
    const row: TaskRow = { ...defaults, ...values, id: String(this.nextId++) }
    this.byId.set(row.id, row)
    return row
  }

  private set(row: TaskRow, changes: Partial<TaskRow>): TaskRow {
    const changed = { ...row, ...changes }
    this.byId.set(row.id, changed)
    return changed
  }
}

const claimedTask = (row: TaskRow): ClaimedTask => ({
  id: row.id,
  group: row.group,
  max: row.max,
  input: row.input,
  plan: row.plan,
  timeout: row.timeout,
  repeat: row.repeat,
  drift: row.drift,
  delete: row.delete,
  count: row.count,
  live: row.live,
  remote: row.remote,
  claimedBy: row.pid!
})

/** The tables of a memory store, by target, for reading and writing rows from tests. */
export class MemoryTables extends Context.Tag("pg-task/MemoryTables")<MemoryTables, {
  /** The target's table, made on first use. */
  readonly of: (target: Target) => Effect.Effect<MemoryTable>
}>() {}

const tableOf = (target: Target): TaskTable => {
  const schema = target.schema ?? "public"
  return {
    target,
    schema,
    name: `"${schema}"."${target.table}"`,
    oid: 0,
    channel: "",
    copied: [],
    stateType: `"${schema}".state`,
    label: describeTarget(target, schema)
  }
}

/** Makes a target's table; a subclass of `MemoryTable` may bend its rules, to check the checks. */
export type MakeTable = (table: TaskTable, wakes: Queue.Queue<Wake>) => MemoryTable

const makeTables = (make: MakeTable) => Effect.sync(() => {
  const tables = new Map<string, MemoryTable>()
  return MemoryTables.of({
    of: (target) =>
      Effect.gen(function*() {
        const key = describeTarget(target)
        const found = tables.get(key)
        if (found !== undefined) return found
        const table = make(tableOf(target), yield* Queue.dropping<Wake>(64))
        tables.set(key, table)
        return table
      })
  })
})

const open = (memory: MemoryTable) =>
  Effect.gen(function*() {
    const worker = yield* Effect.acquireRelease(Effect.sync(() => memory.spawn()), (pid) =>
      Effect.sync(() => memory.die(pid)))
    // Sessions are kept between tasks like the PostgreSQL store's, each a
    // backend of its own that holds its tasks while it lives.
    const idle: Array<TaskSession> = []
    const lent = new Set<number>()
    const spawn = (): TaskSession => {
      const pid = memory.spawn()
      return {
        pid,
        start: (task, now) => Effect.sync(() => memory.start(task, now, pid)),
        run: (task, stop) => stoppable(Script.run(task.input), stop),
        isHealthy: () => true
      }
    }
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const session of idle.splice(0)) memory.die(session.pid)
        for (const pid of lent) memory.die(pid)
      })
    )
    const store: TargetStore = {
      table: memory.table,
      rowLength: 1,
      wakes: memory.wakes,
      claim: (now, limit, inProcess, until = now) =>
        Effect.sync(() => memory.claim(now, limit, inProcess, worker, { until })),
      claimNext: (now, after) => Effect.sync(() => memory.claim(now, 1, new Map(), worker, { after }).tasks[0]),
      finish: (finishes) => Effect.sync(() => memory.finish(finishes)),
      release: (tasks) => Effect.sync(() => memory.release(tasks)),
      reset: Effect.sync(() => memory.reset()),
      stopped: (ids) => Effect.sync(() => memory.stopped(ids)),
      session: Effect.sync(() => {
        const session = idle.pop() ?? spawn()
        lent.add(session.pid)
        return session
      }),
      giveBack: (session, reuse) =>
        Effect.sync(() => {
          if (!lent.delete(session.pid)) return
          if (reuse) idle.push(session)
          else memory.die(session.pid)
        }),
      startRemote: (task, now) => Effect.sync(() => memory.start(task, now, worker) ? worker : undefined),
      runRemote: (task, stop) => stoppable(Script.run(task.input), stop)
    }
    return store
  })

/** The memory store and its tables, made by `make`. */
export const layerWith = (make: MakeTable): Layer.Layer<Store | MemoryTables> =>
  Layer.effect(
    Store,
    Effect.map(MemoryTables, (tables) =>
      Store.of({ open: (target) => Effect.flatMap(tables.of(target), (memory) => open(memory)) }))
  ).pipe(Layer.provideMerge(Layer.effect(MemoryTables, makeTables(make))))

/** The memory store and its tables. */
export const layer = layerWith((table, wakes) => new MemoryTable(table, wakes))
