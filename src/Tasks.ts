/**
 * Tasks from Effect code: plan a task with a typed spec, wait for what it
 * returned, stop it. The scheduler itself need not run in this process; this
 * module only writes and reads rows of a task table, the way a user's SQL
 * would, so it works with any pg-task instance watching that table.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import Pg from "pg"
import { Database } from "./Database.js"
import { DatabaseError } from "./Errors.js"
import { databaseError } from "./internal/session.js"
import { State } from "./Task.js"

/** What to run and how; the keys are the task table's columns, left out to take the table's defaults. */
export interface TaskSpec {
  /** The SQL to run: one or more statements. */
  readonly input: string
  /** A `Date`, or that long from the server's `now()`. */
  readonly plan?: Date | Duration.DurationInput | undefined
  readonly group?: string | undefined
  /** At least 1. */
  readonly max?: number | undefined
  readonly timeout?: Duration.DurationInput | undefined
  readonly repeat?: Duration.DurationInput | undefined
  readonly drift?: boolean | undefined
  readonly delete?: boolean | undefined
  /** At least 0. */
  readonly count?: number | undefined
  readonly live?: Duration.DurationInput | undefined
  /** A connection string of another database to run the SQL on. */
  readonly remote?: string | undefined
}

/** The states in which a task has ended. */
export const Ended = Schema.Literal("DONE", "FAIL", "STOP")
export type Ended = typeof Ended.Type

/** What an ended task wrote back. */
export interface TaskResult {
  readonly id: string
  readonly state: Ended
  readonly output: string | null
  readonly error: string | null
  /** Null for a task stopped before it started. */
  readonly start: Date | null
  /** Null for a task stopped before it started. */
  readonly stop: Date | null
}

export interface ResultOptions {
  /** Give up waiting after this long, failing with `TaskTimeoutError`; the task itself goes on. */
  readonly timeout?: Duration.DurationInput | undefined
}

/** A spec that the task table would refuse or misread; nothing was inserted. */
export class TaskSpecError extends Data.TaggedError("TaskSpecError")<{
  /** The key of the spec at fault: `max`, `timeout`, ... */
  readonly field: string
  readonly reason: string
}> {
  override get message() {
    return `task spec: ${this.field} ${this.reason}`
  }
}

/** The task had not ended when the wait's timeout ran out. */
export class TaskTimeoutError extends Data.TaggedError("TaskTimeoutError")<{
  readonly id: string
  /** The timeout, as `Duration.format` writes it. */
  readonly timeout: string
}> {
  override get message() {
    return `task ${this.id} had not ended after ${this.timeout}`
  }
}

/** No row has the id: it never existed or was deleted. */
export class TaskNotFoundError extends Data.TaggedError("TaskNotFoundError")<{
  readonly id: string
  readonly table: string
}> {
  override get message() {
    return `no task ${this.id} in ${this.table}: it never existed, or it was deleted `
      + "(as `delete` does after a run with no output and no error)"
  }
}

export interface TasksService {
  /** The table, quoted as it appears in the SQL: `"task"` or `"schema"."task"`. */
  readonly table: string
  /** Inserts one task and returns its id, the bigint's text. */
  readonly plan: (spec: TaskSpec) => Effect.Effect<string, TaskSpecError | DatabaseError>
  /**
   * Waits until the task has ended (`DONE`, `FAIL` or `STOP`), reading its
   * row every 50 ms on Effect's clock. A running task set to `STOP` has
   * ended once its worker wrote `stop` (a worker lost in between leaves it
   * waiting: give a timeout). For a repeating task this is its first run;
   * later runs are new rows whose `parent` is this id.
   */
  readonly result: (
    id: string,
    options?: ResultOptions
  ) => Effect.Effect<TaskResult, TaskTimeoutError | TaskNotFoundError | DatabaseError>
  /** `plan`, then `result`. */
  readonly run: (
    spec: TaskSpec,
    options?: ResultOptions
  ) => Effect.Effect<TaskResult, TaskSpecError | TaskTimeoutError | TaskNotFoundError | DatabaseError>
  /** Sets a task that has not ended to `STOP`; false when it had ended already or does not exist. */
  readonly stop: (id: string) => Effect.Effect<boolean, DatabaseError>
}

/** Which task table, and how to reach its database. */
export interface TasksOptions {
  /** The target's database; `postgres` by default, as for a target that names none. */
  readonly database?: string | undefined
  /**
   * The role to connect as; the admin connection's by default. It needs
   * INSERT, SELECT and UPDATE on the table and USAGE on its id sequence.
   */
  readonly user?: string | undefined
  /** Without it, the table is found through the role's `search_path`, as a user's own INSERT would. */
  readonly schema?: string | undefined
  /** `task` by default, as `pg_task.default_table`. */
  readonly table?: string | undefined
}

export class Tasks extends Context.Tag("pg-task/Tasks")<Tasks, TasksService>() {
  /**
   * Tasks on a table of the server that `Database` reaches, connecting to
   * the table's database with `Database`'s own settings (host, port, TLS,
   * password lookup), as the admin's role unless `user` is given. The
   * connection is opened on first use, so this layer may be built alongside
   * a scheduler that is still creating the database.
   */
  static readonly layer = (options: TasksOptions = {}) =>
    Layer.scoped(Tasks, Effect.flatMap(connect(options), (sql) => make(sql, options))).pipe(
      Layer.provide(Reactivity.layer)
    )

  /** Tasks through a client already connected to the table's database. */
  static readonly make = (sql: SqlClient.SqlClient, options: Pick<TasksOptions, "schema" | "table"> = {}) =>
    make(sql, options)
}

const quote = (name: string) => Pg.escapeIdentifier(name)

const connect = (options: TasksOptions) =>
  Effect.gen(function*() {
    const database = yield* Database
    const config = database.clientConfig(options.database ?? "postgres", options.user ?? database.adminUser)
    return yield* PgClient.fromPool({
      acquire: Effect.acquireRelease(
        Effect.sync(() => {
          // Waits are short polls; a few connections serve many of them.
          const pool = new Pg.Pool({ ...config, max: 4, idleTimeoutMillis: 10_000 })
          pool.on("error", () => undefined)
          return pool
        }),
        (pool) => Effect.promise(() => pool.end().catch(() => undefined))
      )
    }).pipe(Effect.mapError(databaseError("connect to the task table's database")))
  })

// Spec checks

/**
 * The largest interval sent, in milliseconds: inside PostgreSQL's interval
 * range (64-bit microseconds), and small enough that `String` never writes
 * an exponent.
 */
const maxMillis = Number.MAX_SAFE_INTEGER

/**
 * `Duration.decode` turns negative and NaN inputs into zero; a spec must say
 * what it means, so those are refused before decoding.
 */
const isNegative = (input: unknown) => {
  if (typeof input === "number") return Number.isNaN(input) || input < 0
  if (typeof input === "bigint") return input < 0n
  if (typeof input === "string") return input.trimStart().startsWith("-")
  if (Array.isArray(input)) return input.some((part) => Number.isNaN(part) || part < 0)
  return false
}

const IntervalFromInput = Schema.transformOrFail(Schema.Unknown, Schema.DurationFromSelf, {
  strict: true,
  decode: (input, _, ast) => {
    const duration = isNegative(input) ? Option.none() : Duration.decodeUnknown(input)
    const fits = Option.isSome(duration) && Duration.isFinite(duration.value)
      && Duration.toMillis(duration.value) <= maxMillis
    return fits ? ParseResult.succeed(duration.value) : ParseResult.fail(new ParseResult.Type(ast, input))
  },
  encode: ParseResult.succeed
})

const intervalMessage = "must be a finite, non-negative Duration"

const Interval = IntervalFromInput.annotations({ message: () => intervalMessage })

const PlanField = Schema.Union(Schema.ValidDateFromSelf, IntervalFromInput).annotations({
  message: () => ({ message: "must be a valid Date or a finite, non-negative Duration", override: true })
})

const intRange = (min: number) =>
  Schema.Int.pipe(Schema.between(min, 2147483647)).annotations({
    message: () => ({ message: `must be an integer from ${min} to 2147483647`, override: true })
  })

const text = (what: string) => Schema.String.annotations({ message: () => `must be ${what}` })

const flag = Schema.Boolean.annotations({ message: () => "must be true or false" })

const Spec = Schema.Struct({
  input: Schema.String.pipe(Schema.filter((sql) => sql.trim() !== "")).annotations({
    message: () => ({ message: "must be SQL text, not empty", override: true })
  }),
  plan: Schema.optional(PlanField),
  group: Schema.optional(text("a string")),
  max: Schema.optional(intRange(1)),
  timeout: Schema.optional(Interval),
  repeat: Schema.optional(Interval),
  drift: Schema.optional(flag),
  delete: Schema.optional(flag),
  count: Schema.optional(intRange(0)),
  live: Schema.optional(Interval),
  remote: Schema.optional(text("a connection string"))
})

type CheckedSpec = typeof Spec.Type

const decodeSpec = Schema.decodeUnknownEither(Spec, { errors: "first", onExcessProperty: "error" })

/** Checks a spec; the error names the first key at fault. */
export const checkSpec = (spec: TaskSpec): Either.Either<CheckedSpec, TaskSpecError> =>
  Either.mapLeft(decodeSpec(spec), (error) => {
    const [issue] = ParseResult.ArrayFormatter.formatErrorSync(error)
    return new TaskSpecError({
      field: issue?.path.length ? String(issue.path[0]) : "spec",
      reason: issue?.message ?? "is not a task spec"
    })
  })

/** PostgreSQL reads `'1500 milliseconds'` exactly, fractions down to the microsecond included. */
const intervalText = (duration: Duration.Duration) => `${Duration.toMillis(duration)} milliseconds`

/** The INSERT for a checked spec: only the keys given, every value a parameter. */
export const insertStatement = (table: string, spec: CheckedSpec) => {
  const columns: Array<string> = []
  const values: Array<string> = []
  const params: Array<unknown> = []
  const add = (column: string, value: unknown, cast: string, around = (p: string) => p) => {
    params.push(value)
    columns.push(quote(column))
    values.push(around(`$${params.length}::${cast}`))
  }
  add("input", spec.input, "text")
  if (spec.plan instanceof Date) add("plan", spec.plan, "timestamptz")
  else if (spec.plan !== undefined) add("plan", intervalText(spec.plan), "interval", (p) => `now() + ${p}`)
  if (spec.group !== undefined) add("group", spec.group, "text")
  if (spec.max !== undefined) add("max", spec.max, "int")
  for (const column of ["timeout", "repeat", "live"] as const) {
    const value = spec[column]
    if (value !== undefined) add(column, intervalText(value), "interval")
  }
  if (spec.drift !== undefined) add("drift", spec.drift, "boolean")
  if (spec.delete !== undefined) add("delete", spec.delete, "boolean")
  if (spec.count !== undefined) add("count", spec.count, "int")
  if (spec.remote !== undefined) add("remote", spec.remote, "text")
  return {
    text: `INSERT INTO ${table} (${columns.join(", ")}) VALUES (${values.join(", ")})
           RETURNING id::text AS id`,
    params
  }
}

// The service

const Row = Schema.Struct({
  state: State,
  output: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.String),
  start: Schema.NullOr(Schema.DateFromSelf),
  stop: Schema.NullOr(Schema.DateFromSelf)
})

/**
 * `STOP` alone is not the end of a task that had started: its worker still
 * has to cancel it and write `stop` and the error (or the real output, if it
 * finished first). A task stopped before it started never gets either.
 */
const isEnded = (row: typeof Row.Type) =>
  row.state === "DONE" || row.state === "FAIL"
  || (row.state === "STOP" && (row.start === null || row.stop !== null))

/** Polls on Effect's clock, so a test that adjusts `TestClock` drives the wait; ends with the ended row. */
const untilEnded = Schedule.spaced(Duration.millis(50)).pipe(
  Schedule.whileInput((row: typeof Row.Type) => !isEnded(row)),
  Schedule.passthrough
)

const make = (sql: SqlClient.SqlClient, options: Pick<TasksOptions, "schema" | "table">) => {
  const table = options.schema === undefined
    ? quote(options.table ?? "task")
    : `${quote(options.schema)}.${quote(options.table ?? "task")}`
  const query = <A extends object>(action: string, text: string, params: ReadonlyArray<unknown>) =>
    sql.unsafe<A>(text, params).pipe(Effect.mapError((error: SqlError) => databaseError(action)(error.cause)))

  const plan = (spec: TaskSpec) =>
    Effect.gen(function*() {
      const statement = insertStatement(table, yield* checkSpec(spec))
      const [row] = yield* query<{ id: string }>("plan a task", statement.text, statement.params)
      return row!.id
    })

  const read = (id: string) =>
    Effect.gen(function*() {
      const [row] = yield* query<Record<string, unknown>>(
        "read a task",
        `SELECT state::text AS state, output, error, start, stop FROM ${table} WHERE id = $1::bigint`,
        [id]
      )
      if (row === undefined) return yield* new TaskNotFoundError({ id, table })
      return yield* Schema.decodeUnknown(Row)(row).pipe(
        Effect.mapError((error) => new DatabaseError({ action: "read a task", reason: error.message }))
      )
    })

  const result = (id: string, options: ResultOptions = {}) => {
    const wait = read(id).pipe(
      Effect.repeat(untilEnded),
      Effect.map((row): TaskResult => ({ id, ...row, state: row.state as Ended }))
    )
    if (options.timeout === undefined) return wait
    const timeout = Duration.decode(options.timeout)
    return Effect.timeoutFail(wait, {
      duration: timeout,
      onTimeout: () => new TaskTimeoutError({ id, timeout: Duration.format(timeout) })
    })
  }

  const stop = (id: string) =>
    Effect.map(
      query<{ id: string }>(
        "stop a task",
        `UPDATE ${table} SET state = 'STOP'
         WHERE id = $1::bigint AND state IN ('PLAN', 'TAKE', 'WORK') RETURNING id`,
        [id]
      ),
      (rows) => rows.length > 0
    )

  return Effect.succeed(Tasks.of({
    table,
    plan,
    result,
    run: (spec, options) => Effect.flatMap(plan(spec), (id) => result(id, options)),
    stop
  }))
}
