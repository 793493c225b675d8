/**
 * An application that embeds pg-task: the scheduler runs in this process
 * (`PgTask.layer`), and the program plans a task through the typed API
 * (`Tasks`), waits for it and prints what it returned. Leaving `main` closes
 * the layers' scope, which stops the scheduler and closes every connection,
 * so the process exits on its own.
 *
 *   DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres node examples/dist/examples/report.js
 */
import { NodeRuntime } from "@effect/platform-node"
import { Config, Console, Data, Duration, Effect, Layer, Logger, LogLevel, Redacted } from "effect"
import { Conninfo, PgTask, Scheduler, Tasks } from "../src/index.js"

class ReportError extends Data.TaggedError("ReportError")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

const main = Effect.gen(function*() {
  // The scheduler creates the table when it is missing; plan into it only once it exists.
  yield* Effect.flatMap(Scheduler, (scheduler) => scheduler.ready).pipe(
    Effect.timeoutFail({
      duration: Duration.minutes(1),
      onTimeout: () => new ReportError({ reason: "the scheduler was not ready within a minute; see its log" })
    })
  )
  const tasks = yield* Tasks
  const id = yield* tasks.plan({ input: "SELECT count(*) FROM pg_class", timeout: Duration.seconds(30) })
  const result = yield* tasks.result(id, { timeout: Duration.minutes(1) })
  if (result.state !== "DONE") {
    return yield* new ReportError({ reason: `task ${id} ended ${result.state}: ${result.error}` })
  }
  yield* Console.log(`pg_class has ${result.output} rows (task ${id})`)
})

/**
 * One target, the database that DATABASE_URL names, run by the URL's role;
 * `Tasks` plans into the same table.
 */
const layers = Layer.unwrapEffect(
  Effect.gen(function*() {
    const url = yield* Config.redacted("DATABASE_URL")
    const server = yield* Conninfo.parse(Redacted.value(url))
    const database = server.database ?? "postgres"
    const target = server.user === undefined ? { data: database } : { data: database, user: server.user }
    const scheduler = PgTask.layer({ url, settings: { json: JSON.stringify([target]) } })
    return Tasks.layer({ database, user: target.user }).pipe(Layer.provideMerge(scheduler))
  })
)

main.pipe(
  Effect.provide(layers),
  // The scheduler's info lines would bury the one line this program prints.
  Effect.provide(Logger.minimumLogLevel(LogLevel.Warning)),
  NodeRuntime.runMain
)
