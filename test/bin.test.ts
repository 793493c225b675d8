import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { cleanEnv, runBinary } from "./support/binary.js"
import { createDatabase, dropDatabase, eventually, query, urlOf } from "./support/database.js"

let database: string
beforeAll(async () => {
  database = await createDatabase("bin")
})
afterAll(() => dropDatabase(database))

describe("the pg-task binary", () => {
  it.each([
    [["--json", `[{"data":"x","timeout":-5}]`], `flags: pg_task.json[0].timeout must be a positive integer, got "-5"`],
    [["--json", `[{"data":"x"},{"data":5}]`], `flags: pg_task.json[1].data must be a non-empty name`],
    [["--json", `[{"data":"x",`], `flags: pg_task.json is not valid JSON`],
    [["--default-timeout", "0"], `flags: pg_task.default_timeout must be a positive integer, got "0"`]
  ])("refuses bad settings %j before starting anything", async (args, message) => {
    const binary = runBinary(["--url", urlOf(database), ...args])
    expect(await binary.exited).toBe(1)
    expect(binary.stderr()).toContain(message)
    expect(binary.stdout()).not.toContain("target started")
  })

  it("names the environment when PG_TASK_JSON is bad", async () => {
    const binary = runBinary(["--url", urlOf(database)], {
      env: cleanEnv({ PG_TASK_JSON: `[{"data":"x","reset":"often"}]` })
    })
    expect(await binary.exited).toBe(1)
    expect(binary.stderr()).toContain(`environment: pg_task.json[0].reset must be a positive integer, got "often"`)
  })

  it("runs a task on the server it is given and exits 0 on SIGTERM", async () => {
    const binary = runBinary(["--url", urlOf(database), "--json", JSON.stringify([{ data: database }])])
    await binary.waitFor(/target started/)
    const [{ id }] = await query<{ id: string }>(database, "INSERT INTO task (input) VALUES ('SELECT 40 + 2') RETURNING id")
    const [row] = await eventually(
      () => query(database, "SELECT state, output FROM task WHERE id = $1", [id]),
      ([task]) => task?.state === "DONE"
    )
    expect(row!.output).toBe("42")
    binary.child.kill("SIGTERM")
    expect(await binary.exited).toBe(0)
  })

  it("with no server named, runs on an embedded PostgreSQL and stops it on exit", async () => {
    const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "pg-task-embedded-"))
    fs.chmodSync(cwd, 0o755)
    try {
      const binary = runBinary(["--embedded-port", "0"], { cwd })
      const [, url] = await binary.waitFor(/connect: psql (\S+)/, 120)
      await binary.waitFor(/target started/, 60)
      expect(binary.stdout()).toContain("INSERT INTO task (input) VALUES ('SELECT now()');")
      expect(fs.existsSync(path.join(cwd, ".pg-task", "postgres", "PG_VERSION"))).toBe(true)
      const run = async (text: string) => {
        const client = new (await import("pg")).default.Client({ connectionString: url })
        await client.connect()
        try {
          return (await client.query(text)).rows
        } finally {
          await client.end()
        }
      }
      const [{ id }] = await run("INSERT INTO task (input) VALUES ('SELECT now()') RETURNING id")
      const [row] = await eventually(() => run(`SELECT state, output FROM task WHERE id = ${id}`), ([task]) =>
        task?.state === "DONE")
      expect(Number.isNaN(Date.parse(row!.output))).toBe(false)
      binary.child.kill("SIGTERM")
      expect(await binary.exited).toBe(0)
      const port = Number(new URL(url!).port)
      const open = await new Promise<boolean>((resolve) => {
        const socket = net.connect(port, "127.0.0.1")
        socket.on("connect", () => (socket.destroy(), resolve(true)))
        socket.on("error", () => resolve(false))
      })
      expect(open).toBe(false)
    } finally {
      fs.rmSync(cwd, { recursive: true, force: true })
    }
  }, 180_000)
})

describe("operator commands", () => {
  const json = () => JSON.stringify([{ data: database }])

  it("--once runs what is due, leaves what is planned later, and exits 0", async () => {
    expect(await runBinary(["--url", urlOf(database), "--json", json(), "--once"]).exited).toBe(0)
    await query(database, "DELETE FROM task")
    await query(database, `INSERT INTO task (input, "group") VALUES ('SELECT 1', 'once'), ('SELECT 1/0', 'once'),
      ('SELECT pg_sleep(0.3)', 'once')`)
    await query(database, `INSERT INTO task (input, "group", plan) VALUES ('SELECT 2', 'once', now() + interval '1 hour')`)
    const binary = runBinary(["--url", urlOf(database), "--json", json(), "--once"])
    expect(await binary.exited).toBe(0)
    const rows = await query(database, `SELECT state::text FROM task WHERE "group" = 'once' ORDER BY id`)
    expect(rows.map((row) => row.state)).toEqual(["DONE", "FAIL", "DONE", "PLAN"])
  })

  it("status shows counts by state, due tasks and recent failures", async () => {
    const binary = runBinary(["status", "--url", urlOf(database), "--json", json()])
    expect(await binary.exited).toBe(0)
    const out = binary.stdout()
    expect(out).toMatch(/tasks: .*DONE \d+/)
    expect(out).toMatch(/FAIL \d+/)
    expect(out).toContain("ERROR:  division by zero")
    expect(out).toMatch(/due now: 0/)
  })

  it("check passes on a usable target and fails, naming the reason, on a broken one", async () => {
    const good = runBinary(["check", "--url", urlOf(database), "--json", json()])
    expect(await good.exited).toBe(0)
    expect(good.stdout()).toContain(`ok   ${database}/`)
    const broken = await createDatabase("broken")
    try {
      await query(broken, "CREATE TABLE task (id bigserial PRIMARY KEY, input text NOT NULL)")
      const bad = runBinary(["check", "--url", urlOf(database), "--json", JSON.stringify([{ data: broken }])])
      expect(await bad.exited).toBe(1)
      expect(bad.stdout()).toMatch(/FAIL .*: table task has no column "parent"/)
      expect(bad.stderr()).toContain("1 of 1 targets cannot run")
    } finally {
      await dropDatabase(broken)
    }
  })

  it("--log-format json writes one JSON object per line, annotated with target, task and group", async () => {
    const [{ id }] = await query<{ id: string }>(database,
      `INSERT INTO task (input, "group") VALUES ('SELECT 1', 'logged') RETURNING id::text`)
    // The command line parser reads its built-in --log-level only before the other flags.
    const binary = runBinary([
      "--log-level", "debug", "--url", urlOf(database), "--json", json(), "--once", "--log-format", "json"
    ])
    expect(await binary.exited).toBe(0)
    const lines = binary.stdout().trim().split("\n").map((line) => JSON.parse(line))
    expect(lines.some((line) => line.message === "target started" && line.annotations.database === database))
      .toBe(true)
    expect(lines.find((line) => line.message === "task ended" && line.annotations.task === id)?.annotations)
      .toMatchObject({ group: "logged", state: "DONE", module: "Scheduler" })
  })
})
