/**
 * The `pg-task` binary: flags, then layers, then run until a signal.
 * `pg-task status` and `pg-task check` serve the operator.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as os from "node:os"
import * as path from "node:path"
import * as v8 from "node:v8"
import type { RawSettings } from "./Config.js"
import { Database } from "./Database.js"
import * as Embedded from "./Embedded.js"
import * as PgTask from "./PgTask.js"
import { Scheduler } from "./Scheduler.js"
import * as Status from "./Status.js"

const optionalText = (name: string, description: string) =>
  Options.text(name).pipe(Options.withDescription(description), Options.optional)

const optionalInteger = (name: string, description: string) =>
  Options.integer(name).pipe(Options.withDescription(description), Options.optional)

/** The flags every command takes: where the server is, and the settings. */
const common = {
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
  logFormat: Options.choice("log-format", ["logfmt", "pretty", "json"]).pipe(
    Options.withDescription("how log lines are written"),
    Options.withDefault("logfmt" as const)
  )
}

const flags = {
  ...common,
  once: Options.boolean("once").pipe(Options.withDescription("run what is due now, wait for it, and exit")),
  metricsPort: optionalInteger("metrics-port", "serve Prometheus /metrics and /healthz on this port"),
  metricsHost: Options.text("metrics-host").pipe(
    Options.withDescription("address the metrics port listens on"),
    Options.withDefault("127.0.0.1")
  ),
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

type Common = Command.Command.ParseConfig<typeof common>
type Flags = Command.Command.ParseConfig<typeof flags>

const libpqVariables = ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE"]

const text = (value: Option.Option<string | number>) => Option.getOrUndefined(Option.map(value, String))

const settingsOf = (options: Common): RawSettings => ({
  json: text(options.json),
  default_table: text(options.defaultTable),
  default_timeout: text(options.defaultTimeout),
  default_reset: text(options.defaultReset),
  default_run: text(options.run)
})

const loggers = { logfmt: Logger.logFmt, pretty: Logger.pretty, json: Logger.json } as const

/** The server named by flag or environment, if any. */
const namedServer = (options: Common) => {
  if (Option.isSome(options.url)) return Option.some(options.url.value)
  if (process.env.DATABASE_URL) return Option.some(Redacted.make(process.env.DATABASE_URL))
  if (libpqVariables.some((name) => process.env[name] !== undefined)) return Option.some(undefined)
  return Option.none()
}

/** The server named by flag or environment, or an embedded one when none is. */
const server = (options: Flags) =>
  Option.match(namedServer(options), {
    onSome: Effect.succeed,
    onNone: () =>
      Effect.gen(function*() {
        const embedded = yield* Embedded.start({ dataDir: options.dataDir, port: options.embeddedPort })
        yield* Console.log([
          `pg-task runs on an embedded PostgreSQL, data in ${embedded.dataDir}`,
          `  connect: psql ${embedded.url}`,
          `  try:     INSERT INTO task (input) VALUES ('SELECT now()');`,
          `           SELECT id, state, output, error FROM task;`
        ].join(os.EOL))
        return Redacted.make(embedded.url) as Redacted.Redacted<string> | undefined
      })
  })

/** Reports a failure on standard error, then fails the command so it exits 1. */
const reported = <A, R>(effect: Effect.Effect<A, { readonly message: string }, R>) =>
  effect.pipe(
    Effect.catchAll((error) => Console.error(`pg-task: ${error.message}`).pipe(Effect.zipRight(Effect.fail(error))))
  )

const main = Command.make("pg-task", flags, (options) =>
  Effect.gen(function*() {
    const url = yield* server(options)
    const layer = PgTask.layer({
      url,
      settings: settingsOf(options),
      shutdownTimeout: options.shutdownTimeout,
      once: options.once,
      monitor: Option.getOrUndefined(Option.map(options.metricsPort, (port) => ({ port, host: options.metricsHost })))
    })
    if (!options.once) return yield* Layer.launch(layer)
    const ok = yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.done).pipe(Effect.provide(layer))
    if (!ok) return yield* Effect.fail({ message: "a target failed; see the log" })
  }).pipe(Effect.scoped, reported, Effect.provide(loggers[options.logFormat])))

/** The layers an operator command needs: the server it names, and the settings. */
const operatorLayer = (options: Common) =>
  Layer.unwrapEffect(
    Option.match(namedServer(options), {
      onNone: () => Effect.fail({ message: "name the server with --url, DATABASE_URL or libpq's PG* variables" }),
      onSome: (url) =>
        Effect.succeed(
          PgTask.configLayer({ settings: settingsOf(options) }).pipe(Layer.provideMerge(Database.layer({ url })))
        )
    })
  )

const status = Command.make("status", common, (options) =>
  Effect.flatMap(Status.status, Console.log).pipe(
    Effect.provide(operatorLayer(options)),
    reported,
    Effect.provide(loggers[options.logFormat])
  )).pipe(Command.withDescription("counts by state, lateness, running tasks and recent failures of each target"))

const check = Command.make("check", common, (options) =>
  Effect.gen(function*() {
    const findings = yield* Status.check
    for (const { target, problem } of findings) {
      yield* Console.log(problem === undefined ? `ok   ${target}` : `FAIL ${target}: ${problem}`)
    }
    const failed = findings.filter((finding) => finding.problem !== undefined).length
    if (failed > 0) return yield* Effect.fail({ message: `${failed} of ${findings.length} targets cannot run` })
  }).pipe(
    Effect.provide(operatorLayer(options)),
    reported,
    Effect.provide(loggers[options.logFormat])
  )).pipe(Command.withDescription("validate the settings and every target's connection; exit 1 with the reason"))

const cli = Command.run(main.pipe(Command.withSubcommands([status, check])), { name: "pg-task", version: "0.1.0" })

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

/**
 * V8 lets the old generation grow to about four times what survived its last full collection
 * before it collects again: while tasks stream through, the promoted garbage of short-lived
 * task state took the binary from 100 MiB to 220 MiB. Growing by half instead keeps it near
 * 135 MiB at the same throughput. It is a pace, not a limit: a task with a large output still
 * gets the memory it needs. An operator's own `node --heap-growing-percent=N` wins (Node does not
 * take the flag from NODE_OPTIONS).
 */
const collectSooner = () => {
  if (!process.execArgv.some((flag) => flag.startsWith("--heap-growing-percent"))) {
    v8.setFlagsFromString("--heap-growing-percent=50")
  }
}

collectSooner()
exitOnSecondSignal()
cli(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
