/**
 * Several pg-task instances against the same task table, on the real
 * server: no task runs twice, group limits hold across instances, the tasks
 * of a killed instance run again elsewhere, and instances that start
 * together against a target that does not exist yet both come up.
 */
import { Effect } from "effect"
import pg from "pg"
import { describe, expect, it } from "vitest"
import { type Running } from "../support/binary.js"
import {
  awaitTasks, createDatabase, dropDatabase, eventually, insertTasks, query, scheduler, type TaskRow, uniqueName,
  urlOf
} from "../support/database.js"
import {
  adminDatabase, dropRole, localPortsOf, sampleWhile, sleep, startBinary, stopBinary, withSchedulers
} from "./support.js"

const sideEffect = "INSERT INTO side (task) VALUES (current_setting('pg_task.id')::bigint)"

/** Creates the default task table of `database` the way pg-task does, then stops. */
const bootstrap = (database: string) =>
  withSchedulers([scheduler(database, { json: JSON.stringify([{ data: database }]) })], async () => undefined)

const stopAll = (binaries: ReadonlyArray<Running>) => Promise.all(binaries.map(stopBinary))

/** The lines a binary logged at level ERROR, or wrote to stderr. */
const errorLines = (binary: Running) => [
  ...binary.stdout().match(/^.*level=(ERROR|FATAL).*$/gm) ?? [],
  ...binary.stderr().split("\n").filter((line) => line.trim() !== "")
]

describe("several instances on one table", () => {
  it("three binaries drain 3,000 tasks inserted at once, each run exactly once, spread over all three", async () => {
    const database = await createDatabase("drain")
    const binaries: Array<Running> = []
    try {
      // The default of `port` is the client port of the session that runs
      // the task: the local port of a socket of the instance's process.
      await query(database,
        "CREATE TABLE side (task bigint NOT NULL, port int DEFAULT inet_client_port(), backend int DEFAULT pg_backend_pid())")
      await bootstrap(database)
      for (let i = 0; i < 3; i++) binaries.push(startBinary(database, [{ data: database }]))
      await Promise.all(binaries.map((binary) => binary.waitFor(/target started/, 25)))
      // Inserted once all three listen: each instance holds up to a thousand
      // or so tasks at a time, so a backlog found at start could be taken by
      // the first two to start before the third is up.
      const began = Date.now()
      await query(database, `INSERT INTO task (input) SELECT $1 FROM generate_series(1, 3000)`, [sideEffect])
      const ended = await eventually(
        () => query<{ open: number }>(database,
          "SELECT count(*)::int AS open FROM task WHERE state NOT IN ('DONE', 'FAIL', 'STOP')"),
        ([row]) => row!.open === 0,
        40
      )
      const drained = Date.now() - began
      expect(ended[0]!.open).toBe(0)

      const states = await query<{ state: string; n: number }>(database,
        "SELECT state::text, count(*)::int AS n FROM task GROUP BY state ORDER BY state")
      expect(states).toEqual([{ state: "DONE", n: 3000 }])
      const [side] = await query<{ rows: number; tasks: number; missing: number; strangers: number }>(database, `
        SELECT (SELECT count(*)::int FROM side) AS rows,
               (SELECT count(DISTINCT task)::int FROM side) AS tasks,
               (SELECT count(*)::int FROM task WHERE NOT EXISTS (SELECT FROM side WHERE side.task = task.id)) AS missing,
               (SELECT count(*)::int FROM side WHERE NOT EXISTS (SELECT FROM task WHERE task.id = side.task)) AS strangers`)
      expect(side).toEqual({ rows: 3000, tasks: 3000, missing: 0, strangers: 0 })
      // Every row's pid is the backend whose insert into side committed.
      const [mismatched] = await query<{ n: number }>(database,
        "SELECT count(*)::int AS n FROM task JOIN side ON side.task = task.id WHERE side.backend <> task.pid")
      expect(mismatched!.n).toBe(0)

      // Which instance ran each task: the client port recorded by each run,
      // matched against the sockets each binary's process holds (its task
      // sessions live on in its pool after the queue is drained).
      const ports = binaries.map((binary) => localPortsOf(binary.child.pid!))
      const perPort = await query<{ port: number | null; n: number }>(database,
        "SELECT port, count(*)::int AS n FROM side GROUP BY port")
      const perInstance = [0, 0, 0]
      let unknown = 0
      for (const { port, n } of perPort) {
        const owner = ports.findIndex((set) => port !== null && set.has(port))
        if (owner < 0) unknown += n
        else perInstance[owner] += n
      }
      const errors = binaries.map((binary) => errorLines(binary))
      console.log(`[instances] injected: 3,000 side-effect tasks in one insert, 3 binaries listening; `
        + `checked: all 3,000 DONE, each id once in side (rows ${side!.rows}, distinct ${side!.tasks}), `
        + `tasks per instance ${perInstance.join("/")} (${unknown} unattributed), `
        + `errors logged ${errors.map((lines) => lines.length).join("/")}, drained in ${drained} ms`)
      for (const n of perInstance) expect(n).toBeGreaterThan(0)
      expect(errors).toEqual([[], [], []])
    } finally {
      await stopAll(binaries)
      await dropDatabase(database)
    }
  }, 60_000)

  it("a group with max 3 never has more than 3 tasks claimed or running across 3 instances", async () => {
    const database = await createDatabase("groupmax")
    try {
      // Each instance runs one task at a time and claims at most one ahead,
      // so filling the group's three slots needs at least two instances.
      const json = JSON.stringify([{ data: database }])
      const names = ["pg-task-a", "pg-task-b", "pg-task-c"]
      const layers = names.map((applicationName) =>
        scheduler(database, { json, default_run: "1" }, { applicationName }))
      await withSchedulers(layers, async () => {
        const ids = await Effect.runPromise(insertTasks(database, [{ input: "SELECT 1 WHERE false", group: "warm" }]))
        await Effect.runPromise(awaitTasks(database, ids))
        await query(database, `INSERT INTO task ("group", max, input)
          SELECT 'three', 3, 'SELECT pg_sleep(0.2)' FROM generate_series(1, 30)`)
        const finished = eventually(
          () => query<{ open: number }>(database,
            `SELECT count(*)::int AS open FROM task WHERE "group" = 'three' AND state NOT IN ('DONE', 'FAIL', 'STOP')`),
          ([row]) => row!.open === 0,
          25
        )
        const samples = await sampleWhile(async () => {
          const [row] = await query<{ n: number }>(database,
            `SELECT count(*)::int AS n FROM task WHERE "group" = 'three' AND state IN ('TAKE', 'WORK')`)
          return row!.n
        }, finished)
        await finished
        const states = await query<{ state: string; n: number }>(database,
          `SELECT state::text, count(*)::int AS n FROM task WHERE "group" = 'three' GROUP BY state`)
        // The task sessions are still open: their application_name tells the instance.
        const perInstance = await query<{ name: string | null; n: number }>(database, `
          SELECT activity.application_name AS name, count(*)::int AS n
          FROM task LEFT JOIN pg_stat_activity AS activity ON activity.pid = task.pid
          WHERE task."group" = 'three' GROUP BY 1 ORDER BY 1`)
        const max = Math.max(...samples)
        console.log(`[instances] injected: 30 pg_sleep(0.2) tasks in group max 3 on 3 in-process instances (run 1 each); `
          + `checked: ${samples.length} samples of TAKE+WORK, max ${max}, histogram ${
            JSON.stringify(samples.reduce<Record<number, number>>((h, n) => ({ ...h, [n]: (h[n] ?? 0) + 1 }), {}))
          }, per instance ${JSON.stringify(perInstance)}`)
        expect(states).toEqual([{ state: "DONE", n: 30 }])
        expect(max).toBe(3)
        expect(perInstance.filter((row) => row.name !== null && names.includes(row.name)).length).toBeGreaterThanOrEqual(2)
      })
    } finally {
      await dropDatabase(database)
    }
  }, 40_000)

  it("the tasks of a SIGKILLed binary run again on the other instance, each effect committed once", async () => {
    const database = await createDatabase("sigkill")
    const binaries: Array<Running> = []
    try {
      await query(database, "CREATE TABLE side (task bigint NOT NULL, backend int DEFAULT pg_backend_pid())")
      const first = startBinary(database, [{ data: database }])
      binaries.push(first)
      await first.waitFor(/target started/, 25)
      // The side effect comes first, so a killed run has written it but
      // must never commit it. The sleep is long enough that the kill (after
      // the second binary has started, which takes node a second or two)
      // and its detection (client_connection_check_interval = 1 s) both
      // fall well inside the first run.
      const ids = await Effect.runPromise(insertTasks(database, Array.from({ length: 6 }, () => ({
        input: `${sideEffect}; SELECT pg_sleep(8)`,
        group: "killed"
      }))))
      const working = await eventually(
        () => query<TaskRow>(database, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids]),
        (rows) => rows.length === 6 && rows.every((row) => row.state === "WORK"),
        15
      )
      const killedPids = working.map((row) => row.pid!)
      const second = startBinary(database, [{ data: database }], ["--default-reset", "2", "--default-timeout", "200"])
      binaries.push(second)
      await second.waitFor(/target started/, 25)
      // Still running on the first instance, with time to spare.
      const before = await query<{ state: string; pid: number; ran: number }>(database,
        `SELECT state::text, pid, extract(epoch FROM clock_timestamp() - start)::float8 AS ran
         FROM task WHERE id = ANY($1::bigint[]) ORDER BY id`, [ids])
      const ran = Math.max(...before.map((row) => row.ran))
      expect(before.map((row) => [row.state, row.pid]), "the 6 tasks still run on the first binary")
        .toEqual(working.map((row) => ["WORK", row.pid]))
      // The kill, and its detection within a second, must fall inside the
      // 8 s sleep; otherwise the first runs could commit (a slow machine,
      // not a bug). Starting node takes several seconds on a busy machine.
      expect(ran, "seconds the first runs had run when the second binary was up").toBeLessThan(6.5)
      const killedAt = Date.now()
      first.child.kill("SIGKILL")
      await first.exited
      const rows = await eventually(
        () => query<TaskRow>(database, "SELECT * FROM task WHERE id = ANY($1::bigint[]) ORDER BY id", [ids]),
        (rows) => rows.every((row) => ["DONE", "FAIL", "STOP"].includes(row.state)),
        20
      )
      const recovered = Date.now() - killedAt
      const side = await query<{ task: string; backend: number }>(database,
        "SELECT task::text, backend FROM side ORDER BY task")
      const [left] = await query<{ n: number }>(database,
        "SELECT count(*)::int AS n FROM task WHERE state IN ('TAKE', 'WORK')")
      console.log(`[instances] injected: SIGKILL of a binary running 6 tasks (pids ${killedPids.join(",")}) `
        + `${ran.toFixed(2)} s into their 8 s runs, with a second binary up (reset 2 x 200 ms); checked: states ${rows.map((row) => row.state).join(",")}, `
        + `side rows ${side.length} for ${new Set(side.map((row) => row.task)).size} tasks, ${left!.n} left TAKE/WORK, `
        + `all DONE ${recovered} ms after the kill, errors logged by the survivor ${errorLines(second).length}`)
      expect(rows.map((row) => row.state)).toEqual(Array(6).fill("DONE"))
      expect(side.map((row) => row.task)).toEqual(ids)
      // The effect that committed is the rerun's, on a backend of the second instance.
      expect(side.map((row) => row.backend)).toEqual(rows.map((row) => row.pid))
      for (const row of rows) expect(killedPids).not.toContain(row.pid)
      expect(left!.n).toBe(0)
      expect(second.stdout()).toMatch(/put tasks of a dead worker back to PLAN/)
      expect(errorLines(second)).toEqual([])
    } finally {
      await stopAll(binaries)
      await dropDatabase(database)
    }
  }, 50_000)

  it("two binaries started at once against a missing database, role, schema and table both come up", async () => {
    const database = uniqueName("fresh")
    const role = uniqueName("role")
    const schema = uniqueName("schema")
    const table = uniqueName("table")
    const binaries: Array<Running> = []
    // An uncommitted CREATE ROLE of the same name: the role stays missing to
    // both instances, and each one's own CREATE ROLE waits on it, so that
    // both go on creating at the same instant once it is rolled back,
    // instead of one being a node start-up ahead of the other.
    const holder = new pg.Client({ connectionString: urlOf(adminDatabase()) })
    holder.on("error", () => undefined)
    let holding = false
    try {
      await holder.connect()
      await holder.query(`BEGIN; CREATE ROLE "${role}" LOGIN`)
      holding = true
      const targets = [{ data: database, user: role, schema, table }]
      binaries.push(startBinary(adminDatabase(), targets), startBinary(adminDatabase(), targets))
      const aligned = await eventually(
        () => query<{ n: number }>(adminDatabase(), `SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE pid <> $1 AND wait_event_type = 'Lock' AND query ILIKE 'CREATE ROLE%' AND query LIKE $2`,
        [(holder as unknown as { processID: number }).processID, `%${role}%`]),
        ([row]) => row!.n === 2,
        20
      ).then(([row]) => row!.n, () => -1)
      await holder.query("ROLLBACK")
      holding = false
      const started = await Promise.allSettled(binaries.map((binary) => binary.waitFor(/target started/, 25)))
      const failures = binaries.map(errorLines)
      if (started.some((s) => s.status === "rejected")) {
        console.log(`[instances] injected: 2 binaries started at once on a missing target; checked: started `
          + `${started.map((s) => s.status).join("/")}, errors ${JSON.stringify(failures)}`)
      }
      expect(started.map((s) => s.status)).toEqual(["fulfilled", "fulfilled"])
      const [owners] = await query<{ database: string; schema: string; table: string }>(database, `
        SELECT (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()) AS database,
               (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1) AS schema,
               (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass($2)) AS table`,
        [schema, `"${schema}"."${table}"`])
      await query(database, `CREATE TABLE public.side (task bigint NOT NULL); GRANT INSERT ON public.side TO "${role}"`)
      const ids = await Effect.runPromise(insertTasks(database, [{ input: sideEffect }], `"${schema}"."${table}"`))
      const [row] = await Effect.runPromise(awaitTasks(database, ids, `"${schema}"."${table}"`, 15))
      await sleep(300)
      const side = await query<{ task: string }>(database, "SELECT task::text FROM side")
      console.log(`[instances] injected: 2 binaries started at once on a target whose database, role, schema and `
        + `table were missing (both held at CREATE ROLE: ${aligned === 2 ? "yes" : "no"}); checked: started ${started.map((s) => s.status).join("/")}, errors logged `
        + `${failures.map((lines) => lines.length).join("/")}, owners ${JSON.stringify(owners)}, task ${row!.state}, `
        + `side rows ${side.length}`)
      expect(failures).toEqual([[], []])
      expect(owners).toEqual({ database: role, schema: role, table: role })
      expect(row!.state).toBe("DONE")
      expect(side).toEqual([{ task: ids[0] }])
    } finally {
      if (holding) await holder.query("ROLLBACK").catch(() => undefined)
      await holder.end().catch(() => undefined)
      await stopAll(binaries)
      await dropDatabase(database)
      await dropRole(role)
    }
  }, 50_000)
})
