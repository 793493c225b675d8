/**
 * examples/report.ts as a user builds and runs it: compiled by TypeScript,
 * run by node against a fresh database named by DATABASE_URL.
 */
import { execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { cleanEnv } from "./support/binary.js"
import { createDatabase, dropDatabase, query, urlOf } from "./support/database.js"

let database: string
let outDir: string
beforeAll(async () => {
  database = await createDatabase("example")
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), "pg-task-example-"))
  const tsc = path.resolve("node_modules/typescript/bin/tsc")
  await promisify(execFile)(process.execPath, [tsc, "-p", "examples/tsconfig.json", "--outDir", outDir])
  // The output lives outside the project: it needs the project's module type and packages.
  fs.writeFileSync(path.join(outDir, "package.json"), JSON.stringify({ type: "module" }))
  fs.symlinkSync(path.resolve("node_modules"), path.join(outDir, "node_modules"), "dir")
})
afterAll(async () => {
  if (outDir !== undefined) fs.rmSync(outDir, { recursive: true, force: true })
  await dropDatabase(database)
})

const runExample = (env: Record<string, string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [path.join(outDir, "examples", "report.js")], {
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk) => (stdout += chunk))
    child.stderr.on("data", (chunk) => (stderr += chunk))
    // An example that does not close its connections never exits on its own.
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000)
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

describe("examples/report.ts", () => {
  it("plans a task through Tasks, prints its output, and exits 0", async () => {
    const { code, stdout, stderr } = await runExample({ DATABASE_URL: urlOf(database) })
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" })
    const printed = stdout.match(/^pg_class has (\d+) rows \(task (\d+)\)$/m)
    expect(printed, stdout).not.toBeNull()
    const [, rows, id] = printed!
    // Nothing creates relations in the database once the scheduler has set its table up.
    const [counted] = await query<{ n: string }>(database, "SELECT count(*)::text AS n FROM pg_class")
    expect(rows).toBe(counted!.n)
    const [task] = await query(database, "SELECT state, output FROM task WHERE id = $1", [id])
    expect(task).toEqual({ state: "DONE", output: rows })
  })

  it("fails with exit code 1 and says why when DATABASE_URL is missing", async () => {
    const { code, stdout, stderr } = await runExample({})
    expect(code).toBe(1)
    expect(stdout + stderr).toContain("DATABASE_URL")
  })
})

describe("the README's simulation example", () => {
  it("is examples/schedule.test.ts as it is, which the suite runs", () => {
    const readme = fs.readFileSync("README.md", "utf8")
    const example = fs.readFileSync("examples/schedule.test.ts", "utf8")
    expect(readme).toContain("```ts\n" + example + "```")
  })
})
