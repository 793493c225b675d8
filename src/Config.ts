/**
 * Settings and targets. They keep the original extension's names
 * (`pg_task.json`, `pg_task.default_timeout`, ...) so that its documentation
 * and `postgresql.conf` lines keep working. Values come from several sources,
 * the later winning: built-in defaults, the server's own settings, the
 * environment, and command-line flags.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { ConfigError } from "./Errors.js"

/** One task table, and how often its worker looks at it. */
export interface Target {
  /** The database. */
  readonly data: string
  /** The role the target connects as, owner of its schema and table. */
  readonly user: string
  /** The schema; undefined means the role's default schema, found on connect. */
  readonly schema: string | undefined
  readonly table: string
  /** Milliseconds between checks of the table when nothing wakes the worker. */
  readonly timeout: number
  /** Every this many checks, tasks of dead workers go back to `PLAN`. */
  readonly reset: number
  /** Most tasks of this target running at once in one instance. */
  readonly run: number
}

export interface Settings {
  readonly defaultTable: string
  readonly defaultTimeout: number
  readonly defaultReset: number
  readonly defaultRun: number
  readonly targets: ReadonlyArray<Target>
}

/** Where a value came from; named in every error about it. */
export type Source = "defaults" | "server" | "environment" | "flags"

/** Settings as a source gives them: text, not yet checked. */
export interface RawSettings {
  readonly default_table?: string | undefined
  readonly default_timeout?: string | undefined
  readonly default_reset?: string | undefined
  readonly default_run?: string | undefined
  readonly json?: string | undefined
}

export const defaults: RawSettings = {
  default_table: "task",
  default_timeout: "1000",
  default_reset: "60",
  default_run: "16",
  json: `[{"data":"postgres"}]`
}

/** The names of the settings, as the server and the environment spell them. */
export const settingNames = {
  default_table: { server: "pg_task.default_table", env: "PG_TASK_DEFAULT_TABLE" },
  default_timeout: { server: "pg_task.default_timeout", env: "PG_TASK_DEFAULT_TIMEOUT" },
  default_reset: { server: "pg_task.default_reset", env: "PG_TASK_DEFAULT_RESET" },
  default_run: { server: "pg_task.default_run", env: "PG_TASK_DEFAULT_RUN" },
  json: { server: "pg_task.json", env: "PG_TASK_JSON" }
} as const satisfies Record<keyof RawSettings, { server: string; env: string }>

const PositiveInt = Schema.Int.pipe(Schema.positive(), Schema.lessThanOrEqualTo(2147483647))
// PostgreSQL cuts names at 63 bytes, not characters.
const Name = Schema.NonEmptyTrimmedString.pipe(Schema.filter((name) => Buffer.byteLength(name) <= 63))
const PositiveIntText = Schema.compose(Schema.NumberFromString, PositiveInt)

const checks = {
  name: { schema: Name, expected: "must be a non-empty name of at most 63 bytes" },
  positive: { schema: PositiveInt, expected: "must be a positive integer" }
} as const

const targetKeys = {
  data: checks.name,
  user: checks.name,
  schema: checks.name,
  table: checks.name,
  timeout: checks.positive,
  reset: checks.positive,
  run: checks.positive
} as const

type Check = (typeof checks)[keyof typeof checks]

const shown = (value: unknown) => JSON.stringify(typeof value === "string" ? value : JSON.stringify(value))

const check = <A>(
  source: Source,
  path: string,
  spec: { readonly schema: Schema.Schema<A, any> | Schema.Schema<any, any>; readonly expected: string },
  value: unknown
): Either.Either<A, ConfigError> =>
  Either.mapLeft(
    Schema.decodeUnknownEither(spec.schema as Schema.Schema<A, unknown>)(value),
    () => new ConfigError({ source, path, reason: `${spec.expected}, got ${shown(value)}` })
  )

/** The value of one key and the source that gave it: the last source that has it. */
const pick = (layers: ReadonlyArray<readonly [Source, RawSettings]>, key: keyof RawSettings) => {
  for (let i = layers.length - 1; i >= 0; i--) {
    const [source, raw] = layers[i]!
    const value = raw[key]
    if (value !== undefined && value !== "") return { source, value }
  }
  return { source: "defaults" as Source, value: defaults[key]! }
}

export interface Resolved {
  readonly settings: Settings
  /** Unknown keys, named; they are ignored. */
  readonly warnings: ReadonlyArray<string>
}

/**
 * Combines the sources, later ones winning key by key, and checks every value.
 * The first bad value fails with an error naming its source, entry and key.
 */
export const resolve = (
  layers: ReadonlyArray<readonly [Source, RawSettings]>
): Either.Either<Resolved, ConfigError> =>
  Either.gen(function*() {
    const scalar = (key: "default_timeout" | "default_reset" | "default_run") => {
      const { source, value } = pick(layers, key)
      return check(source, settingNames[key].server, {
        schema: PositiveIntText,
        expected: checks.positive.expected
      }, value.trim())
    }
    const table = pick(layers, "default_table")
    const defaultTable = yield* check(table.source, settingNames.default_table.server, checks.name, table.value)
    const defaultTimeout = yield* scalar("default_timeout")
    const defaultReset = yield* scalar("default_reset")
    const defaultRun = yield* scalar("default_run")
    const json = pick(layers, "json")
    const warnings: Array<string> = []
    const targets = yield* decodeTargets(json.source, json.value, warnings, {
      table: defaultTable,
      timeout: defaultTimeout,
      reset: defaultReset,
      run: defaultRun
    })
    return {
      settings: { defaultTable, defaultTimeout, defaultReset, defaultRun, targets },
      warnings
    }
  })

const decodeTargets = (
  source: Source,
  text: string,
  warnings: Array<string>,
  fallback: { table: string; timeout: number; reset: number; run: number }
): Either.Either<ReadonlyArray<Target>, ConfigError> =>
  Either.gen(function*() {
    const path = settingNames.json.server
    const fail = (where: string, reason: string) => Either.left(new ConfigError({ source, path: where, reason }))
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch (cause) {
      return yield* fail(path, `is not valid JSON: ${(cause as Error).message}`)
    }
    if (!Array.isArray(parsed) || parsed.length === 0) {
      return yield* fail(path, `must be a non-empty JSON array of objects, got ${shown(parsed)}`)
    }
    const targets: Array<Target> = []
    for (const [index, entry] of parsed.entries()) {
      const at = `${path}[${index}]`
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
        return yield* fail(at, `must be an object, got ${shown(entry)}`)
      }
      const values: Record<string, unknown> = {}
      for (const [key, value] of Object.entries(entry)) {
        const spec: Check | undefined = Object.hasOwn(targetKeys, key)
          ? (targetKeys as Record<string, Check>)[key]
          : undefined
        if (spec === undefined) {
          warnings.push(`${source}: ${at}.${key} is not a known key and is ignored`)
          continue
        }
        values[key] = yield* check(source, `${at}.${key}`, spec, value)
      }
      const target: Target = {
        data: (values.data as string | undefined) ?? "postgres",
        user: (values.user as string | undefined) ?? "postgres",
        schema: values.schema as string | undefined,
        table: (values.table as string | undefined) ?? fallback.table,
        timeout: (values.timeout as number | undefined) ?? fallback.timeout,
        reset: (values.reset as number | undefined) ?? fallback.reset,
        run: (values.run as number | undefined) ?? fallback.run
      }
      const twin = targets.findIndex((other) => sameTable(other, target))
      if (twin >= 0) {
        return yield* fail(at, `names the same table as ${path}[${twin}]`)
      }
      targets.push(target)
    }
    return targets
  })

// Two targets that leave the schema to their roles' defaults most likely share it.
const sameTable = (a: Target, b: Target) =>
  a.data === b.data && a.table === b.table && (a.schema ?? "") === (b.schema ?? "")

/** `database/schema.table as role`, the way logs and errors name a target. */
export const describeTarget = (target: Target, schema?: string) =>
  `${target.data}/${schema ?? target.schema ?? "(default schema)"}.${target.table} as ${target.user}`

/** Reads the settings a process environment gives. */
export const fromEnvironment = (env: Record<string, string | undefined>): RawSettings => {
  const raw: Record<string, string | undefined> = {}
  for (const [key, names] of Object.entries(settingNames)) raw[key] = env[names.env]
  return raw
}

/** The settings in force, decoded; provided by the binary or an embedding application. */
export class PgTaskConfig extends Context.Tag("pg-task/Config")<PgTaskConfig, Settings>() {
  static readonly layer = (settings: Settings) => Layer.succeed(PgTaskConfig, settings)

  /** Settings from raw sources, failing with the first bad value. */
  static readonly layerFrom = (layers: ReadonlyArray<readonly [Source, RawSettings]>) =>
    Layer.effect(
      PgTaskConfig,
      Effect.gen(function*() {
        const { settings, warnings } = yield* resolve(layers)
        for (const warning of warnings) yield* Effect.logWarning(warning)
        return settings
      })
    )
}
