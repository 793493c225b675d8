/**
 * The monitoring endpoint: Prometheus text at `/metrics`, and `/healthz`,
 * 200 while every target's worker is up, 503 with the reasons otherwise.
 * It listens on 127.0.0.1 unless told otherwise.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import * as http from "node:http"
import * as Metrics from "./Metrics.js"
import { Scheduler } from "./Scheduler.js"
import { ConfigError } from "./Errors.js"

export interface MonitorOptions {
  readonly port: number
  readonly host?: string | undefined
}

const handle = (scheduler: Scheduler["Type"], url: string | undefined) =>
  Effect.gen(function*() {
    if (url === "/metrics") {
      return { status: 200, type: "text/plain; version=0.0.4", body: yield* Metrics.prometheus }
    }
    if (url === "/healthz") {
      const targets = yield* scheduler.health
      const down = targets.filter((target) => !target.up)
      return down.length === 0
        ? { status: 200, type: "text/plain", body: `ok: ${targets.length} targets up\n` }
        : {
          status: 503,
          type: "text/plain",
          body: down.map((target) => `down: ${target.target}: ${target.reason ?? "unknown"}`).join("\n") + "\n"
        }
    }
    return { status: 404, type: "text/plain", body: "not found: try /metrics or /healthz\n" }
  })

/** Serves the endpoint for as long as the layer's scope lives. */
export const layer = (options: MonitorOptions) =>
  Layer.scopedDiscard(
    Effect.gen(function*() {
      const scheduler = yield* Scheduler
      const runtime = yield* Effect.runtime<never>()
      const server = http.createServer((request, response) => {
        Runtime.runPromise(runtime)(handle(scheduler, request.url)).then(({ status, type, body }) => {
          response.writeHead(status, { "content-type": type }).end(body)
        }, () => response.writeHead(500).end())
      })
      const host = options.host ?? "127.0.0.1"
      yield* Effect.acquireRelease(
        Effect.async<void, ConfigError>((resume) => {
          server.once("error", (error) => {
            const reason = `cannot listen on ${host}:${options.port}: ${error.message}`
            resume(Effect.fail(new ConfigError({ source: "flags", path: "--metrics-port", reason })))
          })
          server.listen(options.port, host, () => resume(Effect.void))
        }),
        () =>
          Effect.async<void>((resume) => {
            server.closeAllConnections()
            server.close(() => resume(Effect.void))
          })
      )
      const metrics = `http://${host}:${options.port}/metrics`
      yield* Effect.logInfo("monitoring").pipe(Effect.annotateLogs({ metrics }))
    })
  )
