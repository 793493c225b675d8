/**
 * Bad and hostile input: each gets a clear result on its row and the
 * scheduler goes on. A task runs with exactly its target role's privileges,
 * and passwords never reach a row or a log line.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, insertTasks, query, scheduler, type TaskRow, uniqueName,
  withScheduler
} from "../support/database.js"
import { captureLogs, closedPort, hangingServer, ready, within } from "./helpers.js"

let database: string
const mixed = `"Mixed Case"."my tasks"`
beforeAll(async () => {
  database = await createDatabase("input")
})
afterAll(() => dropDatabase(database))

/** The test database's default table, and one whose schema and table names need quoting. */
const targets = () => JSON.stringify([{ data: database }, { data: database, schema: "Mixed Case", table: "my tasks" }])

const scheduled = <A, E, R>(body: Effect.Effect<A, E, R>) =>
  withScheduler(scheduler(database, { json: targets() }), Effect.zipRight(ready, body))

/** A task inserted after the others still runs: the scheduler went on. */
const stillGoing = Effect.gen(function*() {
  const [id] = yield* insertTasks(database, [{ input: "SELECT 'still going'" }])
  const [row] = yield* awaitTasks(database, [id!], "task", 10)
  return row!
})

const short = (text: string | null) => text === null ? "NULL" : JSON.stringify(text.length > 70 ? `${text.slice(0, 70)}...` : text)

describe("bad input", () => {
  it.live("SQL that does not parse, empty input, NUL bytes, invalid UTF-8: each a clear result, and the scheduler goes on", () =>
    scheduled(Effect.gen(function*() {
      const inputs = [
        "SELEC 1",
        "",
        "   ",
        "-- only a comment",
        ";",
        "SELECT E'a\\0b'",
        "SELECT convert_from('\\xff'::bytea, 'UTF8')"
      ]
      const ids = yield* insertTasks(database, inputs.map((input) => ({ input })))
      const rows = yield* awaitTasks(database, ids, "task", 15)
      const after = yield* stillGoing
      console.log(
        `[input] injected: ${inputs.map((input) => JSON.stringify(input)).join(", ")}; checked: `
          + rows.map((row, i) => `${JSON.stringify(inputs[i])} -> ${row.state} ${short(row.error ?? row.output)}`).join("; ")
          + `; next task ${after.state}`
      )
      const [syntax, empty, blank, comment, semicolon, nul, utf8] = rows
      expect(syntax).toMatchObject({ state: "FAIL", output: null })
      expect(syntax!.error).toMatch(/^ERROR: {2}syntax error at or near "SELEC"/)
      // Nothing to run is not an error: DONE, with no output.
      for (const row of [empty, blank, comment, semicolon]) {
        expect(row).toMatchObject({ state: "DONE", output: null, error: null })
      }
      expect(nul).toMatchObject({ state: "FAIL", output: null, error: `ERROR:  invalid byte sequence for encoding "UTF8": 0x00` })
      expect(utf8).toMatchObject({ state: "FAIL", output: null, error: `ERROR:  invalid byte sequence for encoding "UTF8": 0xff` })
      expect(after).toMatchObject({ state: "DONE", output: "still going" })
    })))

  it.live("a 5 MB result ends DONE with all of it in output", () =>
    scheduled(Effect.gen(function*() {
      const size = 5 * 1024 * 1024
      const [id] = yield* insertTasks(database, [{ input: `SELECT repeat('x', ${size})` }])
      const started = Date.now()
      yield* Effect.promise(() =>
        eventually(
          () => query<{ state: string }>(database, "SELECT state FROM task WHERE id = $1", [id]),
          ([row]) => ["DONE", "FAIL", "STOP"].includes(row!.state),
          20
        )
      )
      const [row] = yield* Effect.promise(() =>
        query<{ state: string; length: number; same: boolean; error: string | null }>(database,
          `SELECT state, length(output) AS length, output = repeat('x', ${size}) AS same, error FROM task WHERE id = $1`, [id])
      )
      const after = yield* stillGoing
      console.log(
        `[input] injected: SELECT repeat('x', ${size}); checked: ${row!.state}, output length ${row!.length}, `
          + `identical ${row!.same}, ${Date.now() - started} ms; next task ${after.state}`
      )
      expect(row).toEqual({ state: "DONE", length: size, same: true, error: null })
      expect(after.state).toBe("DONE")
    })))

  it.live("a group name with quotes, a backslash and non-ASCII, max 1: DONE, one at a time", () =>
    scheduled(Effect.gen(function*() {
      const [{ group }] = yield* Effect.promise(() => query<{ group: string }>(database, `SELECT 'it''s \\ grüße 🚀' AS group`))
      expect(group).toBe("it's \\ grüße 🚀")
      const ids = yield* insertTasks(database, Array.from({ length: 3 }, () => ({
        input: "SELECT pg_sleep(0.3)",
        group,
        max: 1
      })))
      const rows = yield* awaitTasks(database, ids, "task", 15)
      const byStart = [...rows].sort((a, b) => a.start!.getTime() - b.start!.getTime())
      const overlaps = byStart.slice(1).filter((row, i) => row.start!.getTime() < byStart[i]!.stop!.getTime()).length
      const after = yield* stillGoing
      console.log(
        `[input] injected: 3 tasks of group ${JSON.stringify(group)} with max 1; checked: states `
          + `${rows.map((row) => row.state).join(",")}, group kept ${rows.every((row) => row.group === group)}, `
          + `${overlaps} overlapping runs; next task ${after.state}`
      )
      expect(rows.map((row) => row.state)).toEqual(["DONE", "DONE", "DONE"])
      expect(rows.every((row) => row.group === group)).toBe(true)
      expect(overlaps).toBe(0)
    })))

  it.live("max 0 is refused by the table's own CHECK", () =>
    scheduled(Effect.gen(function*() {
      const error = yield* Effect.promise(() =>
        query(database, "INSERT INTO task (input, max) VALUES ('SELECT 1', 0)").then(
          () => undefined,
          (error: { code?: string; constraint?: string; message: string }) => error
        )
      )
      console.log(
        `[input] injected: INSERT INTO task (input, max) VALUES ('SELECT 1', 0); checked: refused with `
          + `${error?.code} ${error?.constraint}: ${error?.message}`
      )
      expect(error).toMatchObject({
        code: "23514",
        constraint: "task_max_check",
        message: `new row for relation "task" violates check constraint "task_max_check"`
      })
    })))

  it.live("a remote that accepts and never answers, with timeout '1 second': FAIL within about 2 s", () =>
    scheduled(Effect.gen(function*() {
      // The server lives inside the scheduler's scope: it is closed first, so
      // that a connect that the timeout failed to cut short ends then.
      const { row, wall, after, accepted, open } = yield* Effect.gen(function*() {
        const hanging = yield* hangingServer
        const remote = `host=127.0.0.1 port=${hanging.port} dbname=nowhere user=nobody`
        const inserted = Date.now()
        const [id] = yield* insertTasks(database, [{ input: "SELECT 'never'", remote, timeout: "1 second" }])
        const row = yield* Effect.promise(() =>
          within(
            () => query<TaskRow>(database, "SELECT * FROM task WHERE id = $1", [id]),
            ([row]) => ["DONE", "FAIL", "STOP"].includes(row!.state),
            6
          ).then(([row]) => row!, async () => (await query<TaskRow>(database, "SELECT * FROM task WHERE id = $1", [id]))[0]!)
        )
        const wall = Date.now() - inserted
        // Other tasks run meanwhile, whatever became of this one.
        const after = yield* stillGoing
        // The connection the task opened is closed, not left hanging.
        const open = yield* Effect.promise(() =>
          within(async () => hanging.sockets.size, (n) => n === 0, 2).catch(() => hanging.sockets.size)
        )
        return { row, wall, after, accepted: hanging.accepted(), open }
      }).pipe(Effect.scoped)
      const ran = row.stop === null ? null : row.stop.getTime() - row.start!.getTime()
      console.log(
        `[input] injected: remote on a TCP server that never answers, timeout 1 s; checked: ${row.state} `
          + `${short(row.error)} after ${ran ?? "(no stop)"} ms (${wall} ms from insert), ${accepted} connection(s) `
          + `accepted, ${open} still open when checked; next task ${after.state}`
      )
      expect(after.state).toBe("DONE")
      expect(row).toMatchObject({ state: "FAIL", output: null, error: "ERROR:  canceling statement due to statement timeout" })
      expect(ran).toBeGreaterThanOrEqual(1000)
      expect(ran).toBeLessThan(2000)
      expect(wall).toBeLessThan(2500)
      expect(accepted).toBeGreaterThanOrEqual(1)
      expect(open).toBe(0)
    })))

  it.live("schema and table names that need quoting: the table is created and its tasks run", () =>
    scheduled(Effect.gen(function*() {
      const [found] = yield* Effect.promise(() =>
        query<{ table: string | null; owner: string }>(database,
          `SELECT to_regclass($1)::text AS table, (SELECT relowner::regrole::text FROM pg_class WHERE oid = to_regclass($1)) AS owner`,
          [mixed])
      )
      const [id] = yield* insertTasks(database, [{
        input: `SELECT 'quoted'; INSERT INTO ${mixed} (input) VALUES ('SELECT ''child''')`
      }], mixed)
      const [parent] = yield* awaitTasks(database, [id!], mixed, 10)
      const child = yield* Effect.promise(() =>
        eventually(
          () => query<TaskRow>(database, `SELECT * FROM ${mixed} WHERE parent = $1`, [id]),
          (rows) => rows.length === 1 && rows[0]!.state === "DONE",
          10
        )
      )
      console.log(
        `[input] injected: target schema "Mixed Case", table "my tasks"; checked: table ${found!.table} owned by `
          + `${found!.owner}, task ${parent!.state} ${short(parent!.output)}, child inserted by it ${child[0]!.state} `
          + `${short(child[0]!.output)}`
      )
      expect(found!.table).toBe(mixed)
      expect(parent).toMatchObject({ state: "DONE", output: `quoted\nINSERT 0 1`, error: null })
      expect(child[0]).toMatchObject({ state: "DONE", output: "child" })
    })))
})

describe("security", () => {
  const target = { data: uniqueName("sec_db"), user: uniqueName("sec_role") }
  afterAll(async () => {
    await dropDatabase(target.data)
    await query("postgres", `DROP ROLE IF EXISTS "${target.user}"`)
  })

  const secured = <A, E, R>(body: Effect.Effect<A, E, R>) =>
    withScheduler(scheduler(database, { json: JSON.stringify([target]) }), Effect.zipRight(ready, body))

  it.live("a task of an unprivileged role cannot become anyone else, and runs in sessions of that role", () =>
    secured(Effect.gen(function*() {
      const role = target.user
      const attempts = [
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "RESET ROLE; SELECT current_user",
        "RESET SESSION AUTHORIZATION; SELECT current_user",
        `ALTER ROLE "${role}" SUPERUSER`,
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        "SELECT session_user, current_user",
        "SELECT pg_read_file('/etc/passwd')",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "SET ROLE NONE; SET SESSION AUTHORIZATION DEFAULT; SELECT current_user"
      ]
      const ids = yield* insertTasks(target.data, attempts.map((input) => ({ input })))
      const [long] = yield* insertTasks(target.data, [{ input: "SELECT pg_sleep(1.5); SELECT session_user" }])
      const working = yield* Effect.promise(() =>
        eventually(
          () => query<TaskRow>(target.data, "SELECT * FROM task WHERE id = $1", [long]),
          ([row]) => row!.state === "WORK",
          10
        )
      )
      const [activity] = yield* Effect.promise(() =>
        query<{ usename: string; application_name: string }>(target.data,
          "SELECT usename, application_name FROM pg_stat_activity WHERE pid = $1", [working[0]!.pid])
      )
      const rows = yield* awaitTasks(target.data, ids, "task", 15)
      const [longRow] = yield* awaitTasks(target.data, [long!], "task", 10)
      const [after] = yield* Effect.promise(() =>
        query<{ rolsuper: boolean; rolcreaterole: boolean; rolcreatedb: boolean }>("postgres",
          "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1", [role])
      )
      console.log(
        `[input] injected as a fresh non-superuser role: ${attempts.map((a, i) => `${JSON.stringify(a)} -> `
          + `${rows[i]!.state} ${short(rows[i]!.error ?? rows[i]!.output)}`).join("; ")}; checked: role afterwards `
          + `${JSON.stringify(after)}, running task's backend usename ${activity?.usename} (${activity?.application_name}), `
          + `its output ${short(longRow!.output)}`
      )
      // Each attempt fails, or shows the unprivileged role.
      // What a DONE attempt may show: command tags, then the role's name (or "f").
      const unprivileged = (output: string | null) => {
        const lines = (output ?? "").split("\n")
        const last = lines.pop()
        return (last === role || last === "f" || output === `session_user\tcurrent_user\n${role}\t${role}`)
          && (lines.every((line) => /^(RESET|SET)$/.test(line)) || output!.startsWith("session_user"))
      }
      rows.forEach((row, i) => {
        if (row.state === "DONE") {
          expect([attempts[i], unprivileged(row.output) ? "unprivileged" : row.output]).toEqual([attempts[i], "unprivileged"])
        }
        else expect([attempts[i], row.state, row.error]).toEqual([attempts[i], "FAIL", expect.stringMatching(/^ERROR: {2}\S/)])
      })
      expect(rows.slice(0, 2).map((row) => row.state)).toEqual(["FAIL", "FAIL"])
      expect(rows[4]!.state).toBe("FAIL")
      expect(rows[5]).toMatchObject({ state: "DONE", output: "f" })
      expect(rows[6]).toMatchObject({ state: "DONE", output: `session_user\tcurrent_user\n${role}\t${role}` })
      expect(rows[7]!.state).toBe("FAIL")
      expect(rows[8]!.state).toBe("FAIL")
      expect(after).toEqual({ rolsuper: false, rolcreaterole: false, rolcreatedb: false })
      expect(activity).toEqual({ usename: role, application_name: "pg-task" })
      expect(longRow).toMatchObject({ state: "DONE", output: `\n${role}` })
    })))

  it.live("a remote's password never appears in a row or in the scheduler's logs", () =>
    Effect.gen(function*() {
      const secret = "sekrit-123"
      const port = yield* Effect.promise(closedPort)
      const remotes = [
        `host=127.0.0.1 port=${port} dbname=x user=x password=${secret}`,
        `host=127.0.0.1 port=${port} dbname=x user=x password='${secret}'`,
        `postgresql://x:${secret}@127.0.0.1:${port}/x`,
        `postgresql://x:${secret}@127.0.0.1:${port}/x?sslmode=disable&bogus=1`,
        `postgresql://x:${encodeURIComponent(secret).replace("-", "%2D")}@127.0.0.1:${port}/x`,
        `host=127.0.0.1 port=${port} password=${secret} passfile=/nonexistent`,
        `host=127.0.0.1 password=${secret} port='${port}`,
        `postgresql://x:${secret}@[127.0.0.1:${port}/x`
      ]
      const logs = captureLogs()
      const rows = yield* scheduled(Effect.gen(function*() {
        const ids = yield* insertTasks(database, remotes.map((remote) => ({ input: "SELECT 1", remote })))
        const rows = yield* awaitTasks(database, ids, "task", 15)
        expect((yield* stillGoing).state).toBe("DONE")
        return rows
      })).pipe(Effect.provide(logs.layer))
      const leaks = rows.filter((row) => (row.error ?? "").includes("sekrit"))
      const logLeaks = logs.lines.filter((l) => l.line.includes("sekrit"))
      console.log(
        `[input] injected: ${remotes.length} remotes with password ${secret} (closed port ${port}, quoted, URL, `
          + `percent-encoded, refused keyword, malformed); checked: states ${rows.map((row) => row.state).join(",")}, `
          + `${leaks.length} errors and ${logLeaks.length} of ${logs.lines.length} log lines mention it; errors: `
          + rows.map((row) => short(row.error)).join(" | ")
      )
      expect(rows.map((row) => row.state)).toEqual(remotes.map(() => "FAIL"))
      for (const row of rows) expect(row.error).toMatch(/^ERROR: {2}(could not connect to the remote|invalid remote): /)
      expect(leaks.map((row) => row.error)).toEqual([])
      expect(logLeaks.map((l) => l.line)).toEqual([])
    }))
})
