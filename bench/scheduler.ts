/**
 * The scheduler as a user runs it, in this process: `PgTask.layer` against the benchmark's server,
 * one target (the phase's database), no settings from the environment. Its warnings and errors are
 * printed and counted; its info lines are not, to keep the progress readable.
 */
import { Cause, Context, Effect, Exit, HashMap, Layer, Logger, LogLevel } from "effect"
import type { TaskTable } from "../src/Bootstrap.js"
import * as PgTask from "../src/PgTask.js"
import { Scheduler } from "../src/Scheduler.js"

/** Warnings and errors the scheduler logged so far; main.ts counts them per phase. */
export const logged = { warnings: 0, errors: 0, printed: 0 }

const printLimit = 20

const describe = (
  message: unknown,
  annotations: HashMap.HashMap<string, unknown>,
  cause: Cause.Cause<unknown>
) => {
  const parts = [Array.isArray(message) ? message.map(String).join(" ") : String(message)]
  for (const [key, value] of annotations) parts.push(`${key}=${JSON.stringify(value)}`)
  if (!Cause.isEmpty(cause)) parts.push(`cause=${JSON.stringify(String(Cause.squash(cause)))}`)
  return parts.join(" ")
}

const logger = Logger.make(({ logLevel, message, annotations, cause }) => {
  if (LogLevel.greaterThanEqual(logLevel, LogLevel.Error)) logged.errors += 1
  else logged.warnings += 1
  logged.printed += 1
  const indent = "         pg-task"
  const text = describe(message, annotations, cause)
  if (logged.printed <= printLimit) console.log(`${indent} ${logLevel.label}: ${text}`)
  else if (logged.printed === printLimit + 1) console.log(`${indent}: further log lines are only counted`)
})

const logging = Layer.mergeAll(
  Logger.replace(Logger.defaultLogger, logger),
  Logger.minimumLogLevel(LogLevel.Warning)
)

const schedulerLayer = (adminUrl: string, database: string) =>
  PgTask.layer({
    url: adminUrl,
    env: false,
    applicationName: "pg-task-bench",
    // A phase that gives up must not wait long for the tasks still running.
    shutdownTimeout: "2 seconds",
    settings: { json: JSON.stringify([{ data: database }]) }
  })

/**
 * Runs `body` while the scheduler runs against `database`, once its table is ready; the scheduler
 * stops (running tasks get 2 s, then are cancelled) when `body` ends, and its own errors are thrown.
 */
export const withScheduler = async <A>(
  adminUrl: string,
  database: string,
  body: (table: TaskTable) => Promise<A>
): Promise<A> => {
  const program = Effect.gen(function*() {
    const context = yield* Layer.build(schedulerLayer(adminUrl, database))
    const [table] = yield* Context.get(context, Scheduler).ready.pipe(
      Effect.timeoutFail({
        duration: "60 seconds",
        onTimeout: () => new Error("the scheduler was not ready in 60 s")
      })
    )
    return yield* Effect.tryPromise({ try: () => body(table!), catch: (error) => error })
  }).pipe(Effect.scoped, Effect.provide(logging))
  const exit = await Effect.runPromiseExit(program)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}
