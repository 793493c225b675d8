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
import { Effect } from "effect"
import type { TaskTable } from "./Bootstrap.js"
import type { DatabaseError } from "./Errors.js"
import type { Session } from "./internal/session.js"
import type { ClaimedTask, Outcome } from "./Task.js"

/** First key of the lock each backend holds on its own pid while it lives. */
export const liveLock = 1885823860
/** First key of the lock that serialises claims on one table (second key: its oid). */
const claimLock = 1885823862

/** Takes the liveness lock; run once on every new session and after `DISCARD ALL`. */
export const holdLiveLock = (session: Session) =>
  session.query("SELECT pg_advisory_lock($1, pg_backend_pid())", [liveLock])

/** The columns of a claimed task, times as milliseconds; `row` names the table. */
const taskColumns = (row: string) => `${row}.id::text AS id, ${row}."group", ${row}.max, ${row}.input,
  (extract(epoch FROM ${row}.plan) * 1000)::float8 AS plan,
  (extract(epoch FROM ${row}.timeout) * 1000)::float8 AS timeout,
  (extract(epoch FROM ${row}.repeat) * 1000)::float8 AS repeat,
  ${row}.drift, ${row}.delete, ${row}.count, (extract(epoch FROM ${row}.live) * 1000)::float8 AS live,
  ${row}.remote, ${row}.pid AS "claimedBy"`

/**
 * Claims up to `limit` due tasks, taken in order of `max` descending, then
 * `plan`, then `id`. A task fits while fewer than its `max` tasks of its
 * group are claimed or running, counted over the whole table, so the limit
 * holds whichever instance runs them. Claims on one table are serialised by
 * a transaction lock, so two instances cannot both fill a group's last slot.
 */
const claimStatement = (table: TaskTable, extra: string) => `
  WITH running AS (
    SELECT "group", max(n) AS n FROM (
      SELECT "group", count(*) AS n FROM ${table.name}
      WHERE state IN ('TAKE', 'WORK') GROUP BY "group"
      UNION ALL
      SELECT * FROM unnest($3::text[], $4::bigint[])
    ) AS counted GROUP BY "group"
  ), due AS (
    SELECT id, max, plan, "group",
      row_number() OVER (PARTITION BY "group" ORDER BY max DESC, plan, id) AS rank
    FROM ${table.name}
    WHERE state = 'PLAN' AND plan <= to_timestamp($1::float8 / 1000) ${extra}
  ), picked AS (
    SELECT due.id FROM due LEFT JOIN running USING ("group")
    WHERE coalesce(running.n, 0) + due.rank <= due.max
    ORDER BY due.max DESC, due.plan, due.id
    LIMIT $2
  )
  UPDATE ${table.name} AS task SET state = 'TAKE', pid = pg_backend_pid()
  FROM picked WHERE task.id = picked.id AND task.state = 'PLAN'
  RETURNING ${taskColumns("task")}`

/**
 * Runs a claim under the table's claim lock. Moving a row between the
 * partitions of a table partitioned by state can meet a concurrent change
 * of the same row as a serialization failure; the claim is then tried again.
 */
const inTransaction = <A>(session: Session, table: TaskTable, body: Effect.Effect<A, DatabaseError>) =>
  Effect.gen(function*() {
    yield* session.query("BEGIN")
    yield* session.query("SELECT pg_advisory_xact_lock($1, $2)", [claimLock, table.oid])
    const result = yield* body
    yield* session.query("COMMIT")
    return result
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
 * if rows were changed under it.
 */
export const claim = (
  session: Session,
  table: TaskTable,
  now: number,
  limit: number,
  inProcess: ReadonlyMap<string, number> = new Map()
) =>
  inTransaction(
    session,
    table,
    session.query<ClaimedTask>(claimStatement(table, ""), [now, limit, [...inProcess.keys()], [...inProcess.values()]])
  ).pipe(Effect.map(inClaimOrder))

/**
 * Claims the next task a reused worker session goes on with: due, of the
 * same group and remote, with a `max` at least as large.
 */
export const claimNext = (session: Session, table: TaskTable, now: number, after: ClaimedTask) =>
  inTransaction(
    session,
    table,
    session.query<ClaimedTask>(
      claimStatement(table, `AND "group" = $5 AND remote IS NOT DISTINCT FROM $6 AND max >= $7`),
      [now, 1, [], [], after.group, after.remote, after.max]
    )
  ).pipe(Effect.map((tasks) => tasks[0]))

/**
 * Marks a claimed task running, on the session that runs it: `pid` becomes
 * that session's backend, and `pg_task.id` is set so that rows the task
 * inserts get it as their `parent`. False when the claim was lost meanwhile.
 */
export const start = (session: Session, table: TaskTable, task: ClaimedTask, now: number) =>
  Effect.map(
    session.query(
      `UPDATE ${table.name} SET state = 'WORK', start = to_timestamp($2::float8 / 1000), pid = pg_backend_pid()
       WHERE id = $1 AND state = 'TAKE' AND pid = $3
       RETURNING set_config('pg_task.id', id::text, false)`,
      [task.id, now, task.claimedBy]
    ),
    (rows) => rows.length === 1
  )

/**
 * Writes how a run ended and, for a repeating task, inserts its next run
 * with every other column copied, user-added ones included. A row a user set
 * to `STOP` meanwhile keeps that state and does not repeat. A run with
 * neither output nor error is deleted when the task asks for it; its next
 * run then has no parent to point to.
 */
export const finish = (
  session: Session,
  table: TaskTable,
  task: ClaimedTask,
  pid: number,
  outcome: Outcome,
  stop: number,
  next: number | null
) => {
  const copied = table.copied.join(", ")
  const repeat = (from: string, parent: string) =>
    `INSERT INTO ${table.name} (${copied}, parent, plan)
     SELECT ${copied}, ${parent}, to_timestamp($3::float8 / 1000) FROM ${from}
     WHERE $3 IS NOT NULL AND ${from}.state <> 'STOP'`
  const erase = task.delete && outcome.output === null && outcome.error === null
  const statement = erase
    ? `WITH ended AS (
         DELETE FROM ${table.name} WHERE id = $1 AND pid = $2 AND state IN ('WORK', 'STOP') RETURNING *
       ) ${repeat("ended", "NULL")}`
    : `WITH ended AS (
         UPDATE ${table.name} SET
           state = CASE WHEN state = 'STOP' THEN state ELSE $4 END,
           stop = to_timestamp($5::float8 / 1000), output = $6, error = $7
         WHERE id = $1 AND pid = $2 AND state IN ('WORK', 'STOP') RETURNING *
       ) ${repeat("ended", "ended.id")}`
  const params = erase
    ? [task.id, pid, next]
    : [task.id, pid, next, outcome.state, stop, outcome.output, outcome.error]
  return session.query(statement, params)
}

/** Puts tasks back to `PLAN`; used when a worker gives up tasks it still holds. */
export const release = (session: Session, table: TaskTable, ids: ReadonlyArray<string>) =>
  session.query(
    `UPDATE ${table.name} SET state = 'PLAN', pid = NULL, start = NULL
     WHERE id = ANY($1::bigint[]) AND state IN ('TAKE', 'WORK')`,
    [ids]
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

/** The earliest plan after `now`, to sleep until it; null when none is planned. */
export const nextDue = (session: Session, table: TaskTable, now: number) =>
  Effect.map(
    session.query<{ plan: number | null }>(
      `SELECT (extract(epoch FROM min(plan)) * 1000)::float8 AS plan FROM ${table.name}
       WHERE state = 'PLAN' AND plan > to_timestamp($1::float8 / 1000)`,
      [now]
    ),
    ([row]) => row?.plan ?? null
  )
