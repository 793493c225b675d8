/**
 * The scheduler as one layer: an Effect application that provides it runs
 * pg-task for as long as the layer's scope lives. Closing the scope stops
 * claiming, lets running tasks finish within the shutdown timeout, then
 * cancels the rest and puts them back to `PLAN`.
 */
import type * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Clock } from "./Clock.js"
import { fromEnvironment, PgTaskConfig, type RawSettings, settingNames, type Source } from "./Config.js"
import { Database, type DatabaseOptions } from "./Database.js"
import { DatabaseError } from "./Errors.js"
import * as Monitor from "./Monitor.js"
import * as PgStore from "./PgStore.js"
import { Scheduler, type SchedulerOptions } from "./Scheduler.js"

export interface PgTaskOptions extends DatabaseOptions, SchedulerOptions {
  /**
   * `server` (the default) follows the database server's clock; `effect`
   * follows Effect's own clock, which is `TestClock` in tests.
   */
  readonly clock?: "server" | "effect" | undefined
  /** Serve `/metrics` and `/healthz` on this port (and host, 127.0.0.1 by default). */
  readonly monitor?: Monitor.MonitorOptions | undefined
  /** Settings that win over the server's and the environment's, as the flags give them. */
  readonly settings?: RawSettings | undefined
  /** Read `PG_TASK_*` variables from this environment; `process.env` by default, none with `false`. */
  readonly env?: Record<string, string | undefined> | false | undefined
}

/** The `pg_task.*` settings of the server, as `current_setting` shows them on the admin connection. */
export const serverSettings = Effect.gen(function*() {
  const { admin } = yield* Database
  const entries = Object.entries(settingNames)
  const [row] = yield* admin<Record<string, string | null>>`SELECT ${
    admin.csv(entries.map(([key, names]) => admin`current_setting(${names.server}, true) AS ${admin(key)}`))
  }`.pipe(
    Effect.mapError((error) => new DatabaseError({ action: "read the server's settings", reason: String(error.cause) }))
  )
  const raw: Record<string, string | undefined> = {}
  for (const [key] of entries) raw[key] = row?.[key] ?? undefined
  return raw as RawSettings
})

/** Settings from defaults, the server, the environment and the given flags, the later winning. */
export const configLayer = (options: Pick<PgTaskOptions, "settings" | "env"> = {}) =>
  Layer.unwrapEffect(
    Effect.map(serverSettings, (server) => {
      const env = options.env === false ? {} : fromEnvironment(options.env ?? process.env)
      const layers: Array<readonly [Source, RawSettings]> = [["server", server], ["environment", env]]
      if (options.settings) layers.push(["flags", options.settings])
      return PgTaskConfig.layerFrom(layers)
    })
  )

/** The whole scheduler against a server, following the server's clock. */
export const layer = (options: PgTaskOptions = {}) => {
  const scheduler = Scheduler.layer(options).pipe(
    Layer.provideMerge(PgStore.layer()),
    Layer.provideMerge(configLayer(options)),
    Layer.provideMerge(options.clock === "effect" ? Clock.layerTest : Clock.layerServer()),
    Layer.provideMerge(Database.layer(options))
  )
  return options.monitor ? Layer.provideMerge(Monitor.layer(options.monitor), scheduler) : scheduler
}

/**
 * The whole scheduler with its options read from Effect's `Config`, for
 * applications that configure everything that way:
 * `PgTask.layerConfig(Config.all({ url: Config.redacted("DATABASE_URL") }))`.
 */
export const layerConfig = (options: Config.Config<PgTaskOptions>) =>
  Layer.unwrapEffect(Effect.map(options, layer))
