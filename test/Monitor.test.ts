import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { freePort } from "../src/Embedded.js"
import { Scheduler } from "../src/Scheduler.js"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, insertTasks, query, scheduler, withScheduler
} from "./support/database.js"

let database: string
let other: string
beforeAll(async () => {
  database = await createDatabase("monitor")
  other = await createDatabase("monitored")
})
afterAll(async () => {
  await dropDatabase(database)
  await dropDatabase(other)
})

const get = (port: number, path: string) =>
  Effect.promise(async () => {
    const response = await fetch(`http://127.0.0.1:${port}${path}`)
    return { status: response.status, body: await response.text() }
  })

/** A line of Prometheus' text format: a comment, or a sample with optional labels. */
const sample = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})? (-?[0-9.]+(e[+-]?[0-9]+)?|\+Inf|NaN)$/

const value = (text: string, name: string, labels: Record<string, string>) => {
  const line = text.split("\n").find((line) =>
    line.startsWith(`${name}{`) && Object.entries(labels).every(([key, v]) => line.includes(`${key}="${v}"`)))
  return line === undefined ? 0 : Number(line.split(" ").at(-1))
}

describe("metrics and health", () => {
  it.live("/metrics parses as Prometheus text and its counters move as tasks run; /healthz follows the targets", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const json = JSON.stringify([{ data: database }, { data: other }])
      yield* withScheduler(
        scheduler(database, { json }, { monitor: { port } }),
        Effect.gen(function*() {
          yield* Effect.flatMap(Scheduler, (s) => s.ready)
          const before = (yield* get(port, "/metrics")).body
          const ids = yield* insertTasks(database, [
            { input: "SELECT 1", group: "metered" },
            { input: "SELECT 1/0", group: "metered" }
          ])
          yield* awaitTasks(database, ids)
          const metrics = yield* get(port, "/metrics")
          expect(metrics.status).toBe(200)
          for (const line of metrics.body.trim().split("\n")) {
            if (!line.startsWith("#")) expect(line).toMatch(sample)
          }
          const tags = { group: "metered" }
          expect(value(metrics.body, "pg_task_tasks_started_total", tags)
            - value(before, "pg_task_tasks_started_total", tags)).toBe(2)
          expect(value(metrics.body, "pg_task_tasks_finished_total", { ...tags, state: "DONE" })).toBeGreaterThanOrEqual(1)
          expect(value(metrics.body, "pg_task_tasks_failed_total", tags)).toBeGreaterThanOrEqual(1)
          expect(metrics.body).toContain("# TYPE pg_task_task_duration_seconds histogram")
          expect(metrics.body).toMatch(/pg_task_task_lateness_seconds_count\{[^}]*group="metered"[^}]*\} [1-9]/)
          expect(metrics.body).toMatch(/pg_task_tasks_running\{target="[^"]+"\} 0/)

          const healthy = yield* get(port, "/healthz")
          expect(healthy).toEqual({ status: 200, body: "ok: 2 targets up\n" })
          yield* Effect.promise(() => query("postgres", `DROP DATABASE "${other}" WITH (FORCE)`))
          const sick = yield* Effect.promise(() =>
            eventually(() => Effect.runPromise(get(port, "/healthz")), (response) => response.status === 503)
          )
          expect(sick.body).toContain(`down: ${other}/`)
          expect((yield* get(port, "/nowhere")).status).toBe(404)
        })
      )
    }))
})
