/**
 * The `pg-task` binary: flags, then layers, then run until a signal.
 */
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, Logger, Option, Redacted } from "effect"
import * as os from "node:os"
import * as path from "node:path"
import type { RawSettings } from "./Config.js"
import * as Embedded from "./Embedded.js"
import * as PgTask from "./PgTask.js"

const optionalText = (name: string, description: string) =>
  Options.text(name).pipe(Options.withDescription(description), Options.optional)

const optionalInteger = (name: string, description: string) =>
  Options.integer(name).pipe(Options.withDescription(description), Options.optional)

const flags = {
  url: Options.redacted("url").pipe(
    Options.withDescription("The server to run on: a postgresql:// URL or a libpq key=value string. "
      + "Else DATABASE_URL, else libpq's PG* variables; with none of them, an embedded PostgreSQL."),
    Options.optional
  ),
  json: optionalText("json", "pg_task.json: the targets, a JSON array of objects"),
  defaultTable: optionalText("default-table", "pg_task.default_table: table of a target that names none"),
  defaultTimeout: optionalInteger("default-timeout", "pg_task.default_timeout: milliseconds between checks"),
  defaultReset: optionalInteger("default-reset", "pg_task.default_reset: checks between resets"),
  run: optionalInteger("run", "most tasks of a target running at once, for targets that name none"),
  shutdownTimeout: Options.integer("shutdown-timeout").pipe(
    Options.withDescription("milliseconds running tasks may go on after SIGINT or SIGTERM"),
    Options.withDefault(30000)
  ),
  dataDir: Options.text("data-dir").pipe(
    Options.withDescription("data folder of the embedded PostgreSQL"),
    Options.withDefault(path.join(".pg-task", "postgres"))
  ),
  embeddedPort: Options.integer("embedded-port").pipe(
    Options.withDescription("port of the embedded PostgreSQL (another is chosen when it is taken)"),
    Options.withDefault(54329)
  )
}

type Flags = Command.Command.ParseConfig<typeof flags>

const libpqVariables = ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE"]

const text = (value: Option.Option<string | number>) =>
  Option.getOrUndefined(Option.map(value, String))

const settingsOf = (options: Flags): RawSettings => ({
  json: text(options.json),
  default_table: text(options.defaultTable),
  default_timeout: text(options.defaultTimeout),
  default_reset: text(options.defaultReset),
  default_run: text(options.run)
})

/** The server named by flag or environment, or an embedded one when none is. */
const server = (options: Flags) =>
  Effect.gen(function*() {
    if (Option.isSome(options.url)) return options.url.value
    if (process.env.DATABASE_URL) return Redacted.make(process.env.DATABASE_URL)
    if (libpqVariables.some((name) => process.env[name] !== undefined)) return undefined
    const embedded = yield* Embedded.start({ dataDir: options.dataDir, port: options.embeddedPort })
    yield* Console.log([
      `pg-task runs on an embedded PostgreSQL, data in ${embedded.dataDir}`,
      `  connect: psql ${embedded.url}`,
      `  try:     INSERT INTO task (input) VALUES ('SELECT now()');`,
      `           SELECT id, state, output, error FROM task;`
    ].join(os.EOL))
    return Redacted.make(embedded.url)
  })

const main = Command.make("pg-task", flags, (options) =>
  Effect.gen(function*() {
    const url = yield* server(options)
    yield* Layer.launch(PgTask.layer({
      url,
      settings: settingsOf(options),
      shutdownTimeout: options.shutdownTimeout
    }))
  }).pipe(
    Effect.scoped,
    Effect.catchAll((error) =>
      Console.error(`pg-task: ${error.message}`).pipe(Effect.zipRight(Effect.fail(error)))
    )
  ))

const cli = Command.run(main, { name: "pg-task", version: "0.1.0" })

/** A second SIGINT or SIGTERM while shutting down ends the process at once. */
const exitOnSecondSignal = () => {
  let signals = 0
  const onSignal = () => {
    signals += 1
    if (signals >= 2) {
      process.stderr.write("pg-task: second signal, exiting at once\n")
      process.exit(1)
    }
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
}

exitOnSecondSignal()
cli(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  Effect.provide(Logger.logFmt),
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
