/**
 * One PostgreSQL for the whole run: the server named by PG_TASK_TEST_URL,
 * or an embedded one in a temporary folder, removed afterwards.
 */
import { Effect, Exit, Scope } from "effect"
import { execFileSync } from "node:child_process"
import * as os from "node:os"
import * as path from "node:path"
import type { TestProject } from "vitest/node"
import * as Embedded from "../../src/Embedded.js"

declare module "vitest" {
  export interface ProvidedContext {
    pgUrl: string
    pgEmbedded: boolean
  }
}

export default async function setup(project: TestProject) {
  // The binary's tests run what `npm install` builds; build it from the sources under test.
  execFileSync(process.execPath, [path.resolve("node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"], {
    stdio: "inherit"
  })
  const given = process.env.PG_TASK_TEST_URL
  if (given) {
    project.provide("pgUrl", given)
    project.provide("pgEmbedded", false)
    return
  }
  const scope = Effect.runSync(Scope.make())
  const dataDir = path.join(os.tmpdir(), `pg-task-test-${process.pid}`)
  const server = await Effect.runPromise(
    Scope.extend(Embedded.start({ dataDir, temporary: true }), scope)
  )
  project.provide("pgUrl", server.url)
  project.provide("pgEmbedded", true)
  return () => Effect.runPromise(Scope.close(scope, Exit.void))
}
