/**
 * What a task can leave in its session, and the query that shows whether
 * the next task on that session still sees any of it.
 */
import { liveLock } from "../../src/Claimer.js"

/** Leaves a setting, a temp table, a prepared statement, an advisory lock and a LISTEN behind. */
export const leaveLeftovers = "SET statement_timeout = 12345; CREATE TEMP TABLE leftover (a int); "
  + "PREPARE leftover AS SELECT 1; SELECT pg_advisory_lock(42); LISTEN leftover"

/** The columns that show leftovers, and the session's liveness lock (1 when held). */
export const leftoverColumns = `current_setting('statement_timeout') AS timeout,
  (to_regclass('pg_temp.leftover') IS NULL)::text AS temp_gone,
  (SELECT count(*) FROM pg_prepared_statements) AS prepared,
  (SELECT count(*) FROM pg_listening_channels()) AS listening,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    AND objid = 42 AND objsubid = 1) AS task_locks,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    AND classid = ${liveLock} AND objsubid = 2 AND granted) AS liveness_lock`

/** `leftoverColumns` as a clean session shows them: header line, then values. */
export const noLeftovers = "timeout\ttemp_gone\tprepared\tlistening\ttask_locks\tliveness_lock\n0\ttrue\t0\t0\t0\t1"
