/**
 * The SQL that moves tasks between states: claim due tasks under group
 * limits, start one, finish it (with its repeat and delete), and put back
 * tasks whose worker is gone.
 *
 * Who holds a task: a claimed (`TAKE`) or running (`WORK`) row names in
 * `pid` the backend responsible for it, and every backend pg-task uses holds
 * a session-level advisory lock keyed by its own pid for as long as it
 * lives. A row whose backend no longer holds that lock belongs to a dead
 * worker and goes back to `PLAN`. A task is never reset for running long,
 * only for having lost its session.
 */
import * as Effect from "effect/Effect"
import Pg from "pg"
import type { TaskTable } from "./Bootstrap.js"
import type { Session } from "./internal/session.js"
import type { Claimed, Finish, Held } from "./Store.js"
import type { ClaimedTask } from "./Task.js"

/** First key of the lock each backend holds on its own pid while it lives. */
export const liveLock = 1885823860
/** First key of the lock that serialises claims on one table (second key: its oid). */
const claimLock = 1885823862

/** Takes the liveness lock; run once on every new session. */
export const holdLiveLock = (session: Session) =>
  session.query("SELECT pg_advisory_lock($1, pg_backend_pid())", [liveLock])

/**
 * The columns of a claimed task, times as milliseconds, each of the type
 * the claim function returns; `row` names the table.
 */
const taskColumns = (row: string) => `${row}.id::text, ${row}."group"::text, ${row}.max::int, ${row}.input::text,
  (extract(epoch FROM ${row}.plan) * 1000)::float8,
  (extract(epoch FROM ${row}.timeout) * 1000)::float8,
  (extract(epoch FROM ${row}.repeat) * 1000)::float8,
  ${row}.drift::boolean, ${row}.delete::boolean, ${row}.count::int, (extract(epoch FROM ${row}.live) * 1000)::float8,
  ${row}.remote::text, ${row}.pid::int`

/**
 * Claims up to `limit` due tasks, taken in order of `max` descending, then
 * `plan`, then `id`. A task fits while fewer than its `max` tasks of its
 * group are claimed or running, counted over the whole table, so the limit
 * holds whichever instance runs them.
 *
 * The cost follows the number of distinct (`group`, `max`) pairs of planned
 * tasks, not the number of rows: a loose scan of the planned-rows index
 * finds the pairs, and for each pair an index range scan reads at most
 * `limit` due rows in `plan` order. Finished rows are in no index it reads.
 * `$1` now in ms, `$2` limit, `$3`/`$4` the in-process group counts; with
 * `$8` true, only tasks a reused session may go on with: group `$5`, remote
 * `$6`, `max` at least `$7`. Tasks planned after now, up to `$9`, are taken
 * after every due one, and so never take a group's slot from a due task.
 */
const claimStatement = (table: TaskTable) => `
  WITH RECURSIVE pairs AS (
    (SELECT "group", max FROM ${table.name} WHERE state = 'PLAN' ORDER BY "group", max LIMIT 1)
    UNION ALL
    SELECT following.* FROM pairs, LATERAL (
      SELECT task."group", task.max FROM ${table.name} AS task
      WHERE task.state = 'PLAN' AND (task."group", task.max) > (pairs."group", pairs.max)
      ORDER BY task."group", task.max LIMIT 1
    ) AS following
  ), running AS (
    SELECT "group", max(n) AS n FROM (
      SELECT "group", count(*) AS n FROM ${table.name}
      WHERE state IN ('TAKE', 'WORK') GROUP BY "group"
      UNION ALL
      SELECT * FROM unnest($3::text[], $4::bigint[])
    ) AS counted GROUP BY "group"
  ), candidates AS (
    SELECT due.* FROM pairs, LATERAL (
      SELECT task.ctid, task.id, task.max, task.plan, task."group" FROM ${table.name} AS task
      WHERE task.state = 'PLAN' AND task."group" = pairs."group" AND task.max = pairs.max
        AND task.plan <= to_timestamp($9 / 1000)
        AND (NOT $8 OR task.remote IS NOT DISTINCT FROM $6)
      ORDER BY task.plan, task.id LIMIT $2
    ) AS due
    WHERE NOT $8 OR (pairs."group" = $5 AND pairs.max >= $7)
  ), ranked AS (
    SELECT *, plan > to_timestamp($1 / 1000) AS early,
      row_number() OVER (PARTITION BY "group" ORDER BY plan > to_timestamp($1 / 1000), max DESC, plan, id) AS rank
    FROM candidates
  ), picked AS (
    SELECT ranked.ctid, ranked.id FROM ranked LEFT JOIN running USING ("group")
    WHERE coalesce(running.n, 0) + ranked.rank <= ranked.max
    ORDER BY ranked.early, ranked.max DESC, ranked.plan, ranked.id
    LIMIT $2
  ), claimed AS (
    UPDATE ${table.name} AS task SET state = 'TAKE', pid = pg_backend_pid()
    WHERE task.ctid = ANY (ARRAY(SELECT ctid FROM picked)) AND task.id = ANY (ARRAY(SELECT id FROM picked))
      AND task.state = 'PLAN'
    RETURNING task.*
  )
  SELECT ${taskColumns("claimed")} FROM claimed`

/**
 * Creates the claim as functions of the worker's session, in its temporary
 * schema: PL/pgSQL keeps each statement's plan between calls, so a claim is
 * one round trip with no planning. `pg_task_claim` claims; `pg_task_after`
 * tells the earliest plan to come and whether due tasks were left. Claims
 * on one table are serialised by a transaction lock, taken before the claim
 * reads the table: each statement of the function sees what committed
 * before it, so two instances cannot both fill a group's last slot.
 *
 * The claim reads its indexes by plain index scans, never bitmap scans: an
 * index scan marks the entries of rows gone since the last vacuum as dead,
 * and the next claim passes over them, where a bitmap scan visits every row
 * version left behind. During a drain the running index gains two such
 * entries a task, and the count of running tasks grew with them.
 */
export const prepareClaims = (session: Session, table: TaskTable) =>
  session.script(`
    CREATE OR REPLACE FUNCTION pg_temp.pg_task_claim(float8, int, text[], bigint[], text, text, int, boolean, float8)
    RETURNS TABLE (
      id text, "group" text, max int, input text, plan float8, timeout float8, repeat float8,
      drift boolean, delete boolean, count int, live float8, remote text, "claimedBy" int
    ) LANGUAGE plpgsql SET enable_bitmapscan = off AS $claim$
    #variable_conflict use_column
    BEGIN
      PERFORM pg_advisory_xact_lock(${claimLock}, ${table.oid});
      RETURN QUERY ${claimStatement(table)};
    END
    $claim$;
    CREATE OR REPLACE FUNCTION pg_temp.pg_task_after(float8)
    RETURNS TABLE (plan float8, due boolean) LANGUAGE plpgsql AS $after$
    #variable_conflict use_column
    BEGIN
      RETURN QUERY SELECT
        (SELECT (extract(epoch FROM min(task.plan)) * 1000)::float8 FROM ${table.name} AS task
         WHERE task.state = 'PLAN' AND task.plan > to_timestamp($1 / 1000)),
        EXISTS (SELECT FROM ${table.name} AS task WHERE task.state = 'PLAN' AND task.plan <= to_timestamp($1 / 1000));
    END
    $after$`)

/** A value written into a script as a literal, for the simple protocol. */
const literal = (value: unknown): string => {
  if (value === null || value === undefined) return "NULL"
  if (typeof value === "boolean") return String(value)
  if (typeof value === "object" && "type" in value && "values" in value) {
    const { values, type } = value as ReturnType<typeof typed>
    return `${literal(values)}::${type}`
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`not a finite number: ${value}`)
    return String(value)
  }
  if (Array.isArray(value)) return `ARRAY[${value.map(literal).join(", ")}]`
  return Pg.escapeLiteral(String(value))
}

/** An array with the type its literal is cast to, for arrays that may be empty. */
const typed = (values: ReadonlyArray<unknown>, type: string) => ({ values, type })

/**
 * A claim in one round trip, in one transaction: the claim, and the next
 * plan after `now` of a task left unclaimed. Moving a row between the
 * partitions of a table partitioned by state can meet a concurrent change
 * of the same row as a serialization failure; the claim is then tried again.
 */
const claimScript = (session: Session, now: number, args: ReadonlyArray<unknown>) =>
  Effect.gen(function*() {
    const results = yield* session.script(
      `SELECT * FROM pg_temp.pg_task_claim(${args.map(literal).join(", ")});
       SELECT * FROM pg_temp.pg_task_after(${literal(now)})`
    )
    const [after] = results[1]!
    const claimed: Claimed = {
      tasks: inClaimOrder(results[0] as unknown as ReadonlyArray<ClaimedTask>),
      nextPlan: (after?.plan ?? null) as number | null,
      dueLeft: after?.due === true
    }
    return claimed
  }).pipe(
    Effect.tapErrorCause(() => session.query("ROLLBACK").pipe(Effect.ignore)),
    Effect.retry({ while: (error) => error.code === "40001", times: 3 })
  )

/** RETURNING keeps no order; tasks start in the order they were taken. */
const inClaimOrder = (tasks: ReadonlyArray<ClaimedTask>) =>
  [...tasks].sort((a, b) =>
    b.max - a.max || a.plan - b.plan || (BigInt(a.id) < BigInt(b.id) ? -1 : 1)
  )

/**
 * Claims due tasks for this worker; `now` is the scheduler's clock. The
 * groups this instance is running count as at least `inProcess` says: the
 * in-process gate, so that this instance never oversubscribes a group even
 * if rows were changed under it. Tasks planned after `now`, up to `until`,
 * are claimed after every due one. Also tells the earliest plan after
 * `now` of the tasks left, for the worker to sleep until.
 */
export const claim = (
  session: Session,
  now: number,
  limit: number,
  inProcess: ReadonlyMap<string, number> = new Map(),
  until: number = now
) =>
  claimScript(
    session,
    now,
    [now, limit, typed([...inProcess.keys()], "text[]"), typed([...inProcess.values()], "bigint[]"),
      null, null, null, false, until]
  )

/**
 * Claims the next task a reused worker session goes on with: due, of the
 * same group and remote, with a `max` at least as large.
 */
export const claimNext = (session: Session, now: number, after: ClaimedTask) =>
  Effect.map(
    claimScript(
      session,
      now,
      [now, 1, typed([], "text[]"), typed([], "bigint[]"), after.group, after.remote, after.max, true, now]
    ),
    ({ tasks }) => tasks[0]
  )

/**
 * The scripts that mark a claimed task running, on the session that runs
 * it: `pid` becomes that session's backend, and `pg_task.id` is set so that
 * rows the task inserts get it as their `parent`. The write does not wait
 * for the disk (set in the statement itself: a `SET LOCAL` costs the server
 * more than the update); after a crash the row is reset and the task runs
 * again. A session an earlier task used is first reset by `DISCARD ALL`, a
 * message of its own since it cannot share a transaction; it drops the
 * liveness lock, which the start takes again, in the same statement that
 * makes the session the row's holder.
 *
 * The scripts are sent in the same write as the task's SQL, which the
 * server runs right after them whatever they did. So a start that finds its
 * claim lost (the task was stopped, or put back and claimed by another
 * instance) ends its own session: the backend exits before it reads the
 * task's SQL, and nothing of the task runs.
 */
export const startScript = (
  table: TaskTable,
  task: ClaimedTask,
  now: number,
  reset: boolean
): ReadonlyArray<string> => {
  // The script takes no parameters, so its values are written as literals;
  // each is a number, and checked to be one.
  const literals = [task.id, now, task.claimedBy].map(String)
  if (!literals.every((literal) => /^\d+(\.\d+)?$/.test(literal))) {
    throw new Error(`task ${task.id} has a value that is not a number`)
  }
  const [id, at, claimedBy] = literals
  const start = `WITH started AS (
       UPDATE ${table.name} SET state = 'WORK', start = to_timestamp(${at}::float8 / 1000), pid = pg_backend_pid()
       WHERE id = ${id} AND state = 'TAKE' AND pid = ${claimedBy}
       RETURNING set_config('pg_task.id', id::text, false), set_config('synchronous_commit', 'off', true)${
    reset ? `,
         pg_advisory_lock(${liveLock}, pg_backend_pid())` : ""
  }
     )
     SELECT pg_terminate_backend(pg_backend_pid()) WHERE NOT EXISTS (SELECT FROM started)`
  return reset ? ["DISCARD ALL", start] : [start]
}

/** The numbers of a script without parameters, each checked to be one. */
const numbers = (task: ClaimedTask, ...values: ReadonlyArray<number | string>) => {
  const literals = values.map(String)
  if (!literals.every((literal) => /^\d+(\.\d+)?$/.test(literal))) {
    throw new Error(`task ${task.id} has a value that is not a number`)
  }
  return literals
}

/**
 * Marks a row of claimed tasks running on one session, in one statement,
 * for tasks the session runs one after another; returns the ids it
 * started, which leaves out tasks whose claim was lost. A session an
 * earlier task used is first reset by `DISCARD ALL`, as for a single start.
 * `start` says when the row began; each task's own start is written with
 * its end. The setting and the lock are subqueries, evaluated once for
 * the statement rather than for each task it returns. The state is
 * compared as text, which no index's predicate
 * matches: the tasks are found by their ids in the primary key, never by
 * a scan of the index of claimed and running rows, whose statistics lag
 * during a drain and which then holds every claimed task and an entry for
 * each task that ended since the last vacuum.
 */
export const startRowScript = (
  table: TaskTable,
  tasks: ReadonlyArray<ClaimedTask>,
  now: number,
  reset: boolean
): ReadonlyArray<string> => {
  const held = tasks.map((task) => `(${numbers(task, task.id, task.claimedBy).join(", ")})`).join(", ")
  const [at] = numbers(tasks[0]!, now)
  const start = rowStart(table, held, at!, reset)
  return reset ? ["DISCARD ALL", start] : [start]
}

/** The start of the row of tasks `held` lists, as `(id, pid)` values, at `at` ms. */
const rowStart = (table: TaskTable, held: string, at: string, reset: boolean) =>
  `UPDATE ${table.name} AS task
     SET state = 'WORK', start = to_timestamp(${at}::float8 / 1000), pid = pg_backend_pid()
     FROM (VALUES ${held}) AS held(id, pid)
     WHERE task.id = held.id AND task.pid = held.pid AND task.state::text = 'TAKE'
     RETURNING task.id::text AS id, (SELECT set_config('synchronous_commit', 'off', true))${
    reset ? `, (SELECT pg_advisory_lock(${liveLock}, pg_backend_pid()))` : ""
  }`

/**
 * A row's start that matches no task (no claimed task is held by pid 0),
 * for a new session to run once, ahead of its first row.
 */
export const primeStatement = (table: TaskTable) => rowStart(table, "(0::bigint, 0)", "0", false)

/**
 * What runs before each task of a row, in a message of its own: it sets
 * `pg_task.id`, and after the row's first task it first resets what the
 * task before left in the session, as `DISCARD ALL` does, but keeping the
 * liveness lock throughout (a transaction lock on the same key holds it
 * while the session's locks are let go), so that the row's tasks are never
 * without their holder's lock and cannot be reset while they wait.
 */
export const guardScript = (task: ClaimedTask, reset: boolean) => {
  const [id] = numbers(task, task.id)
  const guard = `SELECT set_config('pg_task.id', '${id}', false)`
  if (!reset) return guard
  return `SELECT pg_advisory_xact_lock(${liveLock}, pg_backend_pid()), pg_advisory_unlock_all(),
      pg_advisory_lock(${liveLock}, pg_backend_pid());
    CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *;
    DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES;
    ${guard}`
}

/** Marks a remote task running, held by the worker's own backend. */
export const startRemote = (worker: Session, table: TaskTable, task: ClaimedTask, now: number) =>
  Effect.map(
    worker.query(
      `UPDATE ${table.name} SET state = 'WORK', start = to_timestamp($2::float8 / 1000), pid = pg_backend_pid()
       WHERE id = $1 AND state = 'TAKE' AND pid = $3 RETURNING id`,
      [task.id, now, task.claimedBy]
    ),
    (rows) => rows.length === 1
  )

/**
 * Writes how runs ended, many in one statement: state, `stop`, `output` and
 * `error`, and for a repeating task its next run with every other column
 * copied, user-added ones included. A row a user set to `STOP` meanwhile
 * keeps that state and does not repeat. A run with neither output nor error
 * is deleted when the task asks for it; its next run then has no parent.
 * A row that is no longer held by `pid` (reset meanwhile) is left alone.
 * A task that ran in a row of tasks on one session gets its own `start`.
 * Rows are found through the input alone, each by its id: with `id = ANY`
 * as well, the prepared statement's generic plan scanned the rows and
 * unnested the whole input again for each, so a batch cost the square of
 * its size (a drain spent more on its ends than on its tasks).
 */
export const finish = (session: Session, table: TaskTable, finishes: ReadonlyArray<Finish>) => {
  const copied = table.copied.join(", ")
  const repeat = (from: string, parent: string) =>
    `SELECT ${copied}, ${parent}, to_timestamp(pg_task_next / 1000) FROM ${from}
     WHERE pg_task_next IS NOT NULL AND state <> 'STOP'`
  const statement = `
    WITH input AS (
      SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::text[], $6::text[],
        $7::float8[], $8::bool[], $9::float8[]) AS input(id, pid, state, stop, output, error, next, erase, start)
    ), ended AS (
      UPDATE ${table.name} AS task SET
        state = CASE WHEN task.state = 'STOP' THEN task.state ELSE input.state::${table.stateType} END,
        start = coalesce(to_timestamp(input.start / 1000), task.start),
        stop = to_timestamp(input.stop / 1000), output = input.output, error = input.error
      FROM input
      WHERE task.id = input.id AND task.pid = input.pid
        AND task.state IN ('WORK', 'STOP') AND NOT input.erase
      RETURNING task.*, input.next AS pg_task_next
    ), gone AS (
      DELETE FROM ${table.name} AS task USING input
      WHERE task.id = input.id AND task.pid = input.pid
        AND task.state IN ('WORK', 'STOP') AND input.erase
      RETURNING task.*, input.next AS pg_task_next
    )
    INSERT INTO ${table.name} (${copied}, parent, plan)
    ${repeat("ended", "id")} UNION ALL ${repeat("gone", "NULL::bigint")}`
  const column = <A>(f: (finish: Finish) => A) => finishes.map(f)
  return session.query(statement, [
    column((f) => f.task.id),
    column((f) => f.pid),
    column((f) => f.outcome.state),
    column((f) => f.stop),
    column((f) => f.outcome.output),
    column((f) => f.outcome.error),
    column((f) => f.next),
    column((f) => f.task.delete && f.outcome.output === null && f.outcome.error === null),
    column((f) => f.start ?? null)
  ], "pg_task_finish")
}

/**
 * Puts tasks back to `PLAN`, each only while the backend named with it
 * holds it; used when a worker gives up tasks it claimed or started. Rows
 * are found through the input, as for `finish`, by their ids (the state
 * compared as text, as for a row's start).
 */
export const release = (session: Session, table: TaskTable, held: ReadonlyArray<Held>) =>
  session.query(
    `UPDATE ${table.name} AS task SET state = 'PLAN', pid = NULL, start = NULL
     FROM unnest($1::bigint[], $2::int[]) AS held(id, pid)
     WHERE task.id = held.id AND task.pid = held.pid
       AND task.state::text IN ('TAKE', 'WORK')`,
    [held.map((h) => h.id), held.map((h) => h.pid)]
  )

/** Puts back to `PLAN` every claimed or running task whose backend is gone. */
export const reset = (session: Session, table: TaskTable) =>
  Effect.map(
    session.query<{ id: string }>(
      `UPDATE ${table.name} AS task SET state = 'PLAN', pid = NULL, start = NULL
       WHERE state IN ('TAKE', 'WORK') AND NOT EXISTS (
         SELECT FROM pg_locks AS lock
         WHERE lock.locktype = 'advisory' AND lock.classid = $1 AND lock.objsubid = 2
           AND lock.objid = task.pid::oid AND lock.pid = task.pid AND lock.granted
       )
       RETURNING id::text`,
      [liveLock]
    ),
    (rows) => rows.map((row) => row.id)
  )

/**
 * How many local tasks are planned within a second of `plan`, counted up
 * to `most`: the sessions that plan will want. Tasks claimed ahead of that
 * plan count too.
 */
export const plannedAt = (session: Session, table: TaskTable, plan: number, most: number) =>
  Effect.map(
    session.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM (
         SELECT FROM ${table.name}
         WHERE state IN ('PLAN', 'TAKE') AND remote IS NULL
           AND plan >= to_timestamp($1::float8 / 1000) AND plan < to_timestamp($1::float8 / 1000 + 1)
         LIMIT $2
       ) AS planned`,
      [plan, most]
    ),
    (rows) => rows[0]?.n ?? 0
  )

/** Which of these tasks a user has set to `STOP`. */
export const stopped = (session: Session, table: TaskTable, ids: ReadonlyArray<string>) =>
  Effect.map(
    session.query<{ id: string }>(
      `SELECT id::text FROM ${table.name} WHERE id = ANY($1::bigint[]) AND state = 'STOP'`,
      [ids]
    ),
    (rows) => rows.map((row) => row.id)
  )
