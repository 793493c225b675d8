/**
 * One PostgreSQL session as an Effect resource. Task sessions need what a
 * pooled SQL client hides: the backend pid, the key to cancel a query
 * without borrowing another connection, every statement's command tag, and
 * values in PostgreSQL's own text form.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import Pg from "pg"
import { DatabaseError } from "../Errors.js"
import { formatError, type StatementResult } from "../Output.js"
import { redact } from "../Conninfo.js"
import type { StopSignal } from "../Store.js"

export interface Session {
  /** The backend process id, as `pg_backend_pid()` gives it. */
  readonly pid: number
  /**
   * Runs bookkeeping SQL with parameters; values are parsed as node-postgres
   * does. A `name` prepares the statement once on this session, so that
   * later calls skip parsing and planning it.
   */
  readonly query: <A = Record<string, unknown>>(
    text: string,
    params?: ReadonlyArray<unknown>,
    name?: string
  ) => Effect.Effect<ReadonlyArray<A>, DatabaseError>
  /**
   * Runs a task's SQL: one or more statements in the simple protocol.
   * A `prelude`, scripts of the worker's own, is written ahead of it in
   * the same write and runs first, each script as a message of its own, so
   * that the task's statements stay alone in theirs. Interrupting it, or `stop`,
   * cancels the query on the server; an interrupted run waits until the
   * backend is idle again.
   */
  readonly run: (
    text: string,
    prelude?: ReadonlyArray<string>,
    stop?: StopSignal
  ) => Effect.Effect<ReadonlyArray<StatementResult>, TaskFailure>
  /**
   * Sends several scripts in one write, each a message of its own that the
   * server runs in turn whatever the ones before it did, and hands each
   * script's answer to `answer` as it arrives, in order. Fails when the
   * session is lost; the answers given before stand. Interrupting it runs
   * `abort`, which must end the backend, and waits for the session's end:
   * a cancel could only reach whichever script runs at that moment.
   */
  readonly pipeline: (
    scripts: ReadonlyArray<string>,
    answer: (index: number, answer: Answer) => void,
    abort: Effect.Effect<void>
  ) => Effect.Effect<void, TaskFailure>
  /** Asks the server to cancel what the session runs now. */
  readonly cancel: () => void
  /** False once the connection broke; such a session is closed, never reused. */
  readonly isHealthy: () => boolean
  /**
   * Runs a script of statements in the simple protocol, in one round trip,
   * and returns each statement's rows. No parameters: values must already be
   * literals.
   */
  readonly script: (text: string) => Effect.Effect<ReadonlyArray<ReadonlyArray<Record<string, unknown>>>, DatabaseError>
  /** `I` idle, `T` in a transaction, `E` in a failed transaction, as the server last said. */
  readonly transactionStatus: () => string | null
  readonly onNotification: (listener: (message: Pg.Notification) => void) => void
}

/** How a task's SQL failed, already in the text written to `error`. */
export class TaskFailure {
  readonly _tag = "TaskFailure"
  constructor(
    readonly error: string,
    readonly code?: string,
    /** The session itself was lost (terminated, server gone), not the SQL at fault. */
    readonly lost = false,
    /** The prelude failed: the task's own SQL did not run if the session was lost with it. */
    readonly inPrelude = false
  ) {}
}

/** How one script of a pipeline ended. */
export type Answer = Either.Either<ReadonlyArray<StatementResult>, TaskFailure>

/** Admin shutdown, crash, database dropped, or a connection failure. */
const losesSession = (code: string | undefined) => code !== undefined && /^(57P0[1-4]|08)/.test(code)

const describeCause = (cause: unknown) => redact(cause instanceof Error ? cause.message : String(cause))

export const databaseError = (action: string) => (cause: unknown) =>
  new DatabaseError({
    action,
    code: (cause as { code?: string } | null)?.code,
    reason: describeCause(cause)
  })

/** Opens a session that is closed when the scope closes. */
export const open = (
  config: Pg.ClientConfig,
  purpose: string
): Effect.Effect<Session, DatabaseError, Scope.Scope> => {
  const connect = Effect.tryPromise({
    try: async (signal) => {
      const client = new Pg.Client(config)
      const health = { healthy: true }
      // A broken socket is reported here and by the failing query; without
      // a listener the error would end the process.
      client.on("error", () => {
        health.healthy = false
      })
      client.on("end", () => {
        health.healthy = false
      })
      // An interrupted connect drops the socket at once: a server that
      // never answers would also never finish a polite goodbye.
      signal.addEventListener("abort", () => (client as unknown as Connected).connection.stream.destroy())
      await client.connect()
      coalesceWrites(client)
      return { client, health }
    },
    catch: databaseError(purpose)
  })
  // Connecting stays interruptible, unlike an acquisition of acquireRelease,
  // so a timeout can cut short a server that accepts and never answers; the
  // abort above then closes the socket.
  return Effect.uninterruptibleMask((restore) =>
    Effect.tap(
      restore(connect),
      ({ client }) => Effect.addFinalizer(() => Effect.promise(() => client.end().catch(() => undefined)))
    )
  ).pipe(Effect.map(({ client, health }) => make(client, config, health)))
}

/**
 * node-postgres writes each protocol message on its own: a query with
 * parameters is five writes, and on a machine where a system call is dear
 * they cost more than the query. Messages sent in the same tick go out in
 * one write instead.
 */
interface Connected {
  readonly connection: {
    _send: (buffer: Buffer) => boolean
    readonly stream: NodeJS.WritableStream & { cork(): void; uncork(): void; destroy(): void }
  }
}

const coalesceWrites = (client: Pg.Client) => {
  const connection = (client as unknown as Connected).connection
  const send = connection._send.bind(connection)
  let corked = false
  connection._send = (buffer) => {
    if (!corked) {
      corked = true
      connection.stream.cork()
      process.nextTick(() => {
        corked = false
        connection.stream.uncork()
      })
    }
    return send(buffer)
  }
}

const make = (client: Pg.Client, config: Pg.ClientConfig, health: { healthy: boolean }): Session => ({
  pid: (client as unknown as { processID: number }).processID,
  isHealthy: () => health.healthy,
  onNotification: (listener) => void client.on("notification", listener),
  query: <A>(text: string, params: ReadonlyArray<unknown> = [], name?: string) =>
    Effect.tryPromise({
      try: () =>
        client.query({ text, values: params as Array<unknown>, ...name !== undefined && { name } })
          .then((result) => result.rows as ReadonlyArray<A>),
      catch: databaseError("query")
    }),
  // A session lost under a task is broken at once, before its socket says so.
  run: (text, prelude = [], stop) =>
    Effect.tapError(runTask(client, config, text, prelude, stop), (failure) =>
      Effect.sync(() => {
        if (failure.lost) health.healthy = false
      })),
  pipeline: (scripts, answer, abort) =>
    Effect.async<void, TaskFailure>((resume) => {
      let finished = false
      const waiters: Array<() => void> = []
      const query = new PipelineQuery(scripts, client as unknown as Driven, answer, (failure) => {
        finished = true
        if (failure !== undefined) health.healthy = false
        waiters.splice(0).forEach((wake) => wake())
        resume(failure === undefined ? Effect.void : Effect.fail(failure))
      })
      client.query(query as unknown as Pg.QueryConfig)
      return Effect.zipRight(
        abort,
        Effect.async<void>((done) => {
          if (finished) return done(Effect.void)
          waiters.push(() => done(Effect.void))
        })
      )
    }),
  cancel: () => cancel(client, config),
  script: (text) =>
    Effect.tryPromise({
      try: () =>
        client.query(text).then((result) => {
          const results = Array.isArray(result) ? result : [result]
          return results.map((one: Pg.QueryResult) => one.rows)
        }),
      catch: databaseError("query")
    }),
  transactionStatus: () => client.getTransactionStatus()
})

const runTask = (
  client: Pg.Client,
  config: Pg.ClientConfig,
  text: string,
  prelude: ReadonlyArray<string>,
  stop: StopSignal | undefined
) =>
  Effect.async<ReadonlyArray<StatementResult>, TaskFailure>((resume) => {
    let finished = false
    const waiters: Array<() => void> = []
    const query = new TaskQuery(text, prelude, client as unknown as Driven, (outcome) => {
      finished = true
      unwatch()
      waiters.splice(0).forEach((wake) => wake())
      resume(Either.isRight(outcome) ? Effect.succeed(outcome.right) : Effect.fail(outcome.left))
    }, () => cancel(client, config))
    client.query(query as unknown as Pg.QueryConfig)
    const unwatch = stop === undefined ? () => {} : stop.onStop(() => query.cancel())
    return Effect.async<void>((done) => {
      if (finished) return done(Effect.void)
      waiters.push(() => done(Effect.void))
      query.cancel()
    })
  })

/**
 * Asks the server to cancel whatever the session runs, by the protocol's
 * cancel request on a new socket: it needs no pooled connection, so it never
 * waits behind busy ones. Cancelling is best effort, so a failure is ignored.
 */
const cancel = (client: Pg.Client, config: Pg.ClientConfig) => {
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number }
  const host = config.host ?? process.env.PGHOST ?? "localhost"
  const port = Number(config.port ?? process.env.PGPORT ?? 5432)
  const socket = host.startsWith("/")
    ? net.connect(`${host}/.s.PGSQL.${port}`)
    : net.connect(port, host)
  const request = Buffer.alloc(16)
  request.writeInt32BE(16, 0)
  request.writeInt32BE(80877102, 4)
  request.writeInt32BE(processID, 8)
  request.writeInt32BE(secretKey, 12)
  socket.setTimeout(5000, () => socket.destroy())
  socket.on("error", () => socket.destroy())
  socket.on("connect", () => socket.end(request))
}

type Outcome = Either.Either<ReadonlyArray<StatementResult>, TaskFailure>

interface ServerMessage {
  readonly fields: ReadonlyArray<{ readonly name: string }>
}

/**
 * What of node-postgres' client a query spanning several messages touches:
 * the client hands the next server message to its active query, and sends
 * nothing else while `readyForQuery` is false.
 */
interface Driven {
  _activeQuery: unknown
  readyForQuery: boolean
  getTransactionStatus(): string | null
}

/** The results of one script as the server sends them: rows by statement, or its command tag. */
class Results {
  private results: Array<StatementResult> = []
  private columns: ReadonlyArray<string> | undefined
  private rows: Array<ReadonlyArray<string | null>> = []

  describe(message: ServerMessage) {
    this.columns = message.fields.map((field) => field.name)
    this.rows = []
  }

  row(message: { fields: ReadonlyArray<string | null> }) {
    this.rows.push(message.fields)
  }

  complete(message: { text: string }) {
    if (this.columns !== undefined) {
      this.results.push({ _tag: "Rows", columns: this.columns, rows: this.rows })
      this.columns = undefined
      this.rows = []
    } else {
      this.results.push({ _tag: "Command", tag: message.text })
    }
  }

  /** The results so far; the next script's start afresh. */
  take(): ReadonlyArray<StatementResult> {
    const results = this.results
    this.results = []
    return results
  }
}

/**
 * A query object that node-postgres drives message by message. It keeps each
 * statement's command tag whole (`INSERT 0 1`, `CREATE TABLE`) and each value
 * as the text the server sent, with no type parsing in between.
 *
 * With a prelude it sends several Query messages in one write and stays the
 * client's active query until the last one's ReadyForQuery: the client
 * gives up its active query at every ReadyForQuery and after every error,
 * so the query takes that place back while a message of its own is still
 * to be answered. The prelude's rows are not kept.
 */
class TaskQuery {
  private readonly results = new Results()
  private copyRefused = false
  private done = false
  /** How many of the prelude's scripts are still to be answered. */
  private preludeLeft: number
  private preludeFailure: TaskFailure | undefined
  private failure: TaskFailure | undefined
  private cancelled = false

  constructor(
    readonly text: string,
    private readonly prelude: ReadonlyArray<string>,
    private readonly client: Driven,
    private readonly finish: (outcome: Outcome) => void,
    private readonly cancelQuery: () => void
  ) {
    this.preludeLeft = prelude.length
  }

  private get inPrelude() {
    return this.preludeLeft > 0
  }

  submit(connection: { query: (text: string) => void }) {
    for (const script of this.prelude) connection.query(script)
    connection.query(this.text)
  }

  /** Cancels the run; a cancel that reaches the prelude is sent again for the task's SQL. */
  cancel() {
    this.cancelled = true
    this.cancelQuery()
  }

  /** Stays the client's active query until the last ReadyForQuery. */
  private keepActive() {
    this.client._activeQuery = this
    this.client.readyForQuery = false
  }

  handleRowDescription(message: ServerMessage) {
    if (!this.inPrelude) this.results.describe(message)
  }

  handleDataRow(message: { fields: ReadonlyArray<string | null> }) {
    if (!this.inPrelude) this.results.row(message)
  }

  handleCommandComplete(message: { text: string }) {
    if (!this.inPrelude) this.results.complete(message)
  }

  handleEmptyQuery() {}

  handlePortalSuspended() {}

  handleCopyInResponse(connection: { sendCopyFail: (message: string) => void }) {
    this.copyRefused = true
    connection.sendCopyFail("COPY FROM STDIN is not supported in tasks")
  }

  handleCopyData() {
    // The server streams COPY TO STDOUT without waiting for us; cancelling
    // rolls the task back instead of half-running it.
    if (!this.copyRefused) {
      this.copyRefused = true
      this.cancelQuery()
    }
  }

  handleError(error: unknown) {
    const failure = failureOf(error, this.inPrelude)
    if (failure.lost) return this.end(Either.left(this.preludeFailure ?? failure))
    if (this.inPrelude) this.preludeFailure = failure
    else this.failure ??= this.copyRefused ? copyFailure : failure
    // A ReadyForQuery follows every error; it tells whether a transaction is left.
    this.keepActive()
  }

  handleReadyForQuery() {
    if (this.inPrelude) {
      this.preludeLeft -= 1
      this.keepActive()
      if (this.cancelled && !this.inPrelude) this.cancelQuery()
      return
    }
    if (this.preludeFailure !== undefined) return this.end(Either.left(this.preludeFailure))
    if (this.failure !== undefined) return this.end(Either.left(this.failure))
    this.end(this.copyRefused ? Either.left(copyFailure) : Either.right(this.results.take()))
  }

  private end(outcome: Outcome) {
    if (this.done) return
    this.done = true
    this.finish(outcome)
  }
}

/**
 * The text of a server's error, or of a broken connection (an error without
 * a severity: no answer from the server), as a task's failure; `inPrelude`
 * for a server's error in a script of the worker's own.
 */
const failureOf = (error: unknown, inPrelude = false): TaskFailure => {
  const server = error as Partial<Pg.DatabaseError>
  if (typeof server.severity !== "string") {
    return new TaskFailure(formatError({ message: describeCause(error) }), undefined, true)
  }
  return new TaskFailure(
    formatError({
      severity: server.severity,
      message: server.message ?? "",
      detail: server.detail,
      hint: server.hint,
      where: server.where
    }),
    server.code,
    losesSession(server.code),
    inPrelude
  )
}

/**
 * Several scripts sent in one write, driven like `TaskQuery`: it stays the
 * client's active query until the last script's ReadyForQuery, and keeps
 * each script's results as the server sent them. A script that copies
 * from the client is refused as in a task; one that copies to it is
 * cancelled.
 */
class PipelineQuery {
  private index = 0
  private readonly results = new Results()
  private failure: TaskFailure | undefined
  private copyRefused = false
  private done = false

  constructor(
    private readonly scripts: ReadonlyArray<string>,
    private readonly client: Driven,
    private readonly answer: (index: number, answer: Answer) => void,
    private readonly end: (lost: TaskFailure | undefined) => void
  ) {}

  submit(connection: { query: (text: string) => void }) {
    for (const script of this.scripts) connection.query(script)
  }

  private keepActive() {
    this.client._activeQuery = this
    this.client.readyForQuery = false
  }

  handleRowDescription(message: ServerMessage) {
    this.results.describe(message)
  }

  handleDataRow(message: { fields: ReadonlyArray<string | null> }) {
    this.results.row(message)
  }

  handleCommandComplete(message: { text: string }) {
    this.results.complete(message)
  }

  handleEmptyQuery() {}

  handlePortalSuspended() {}

  handleCopyInResponse(connection: { sendCopyFail: (message: string) => void }) {
    this.copyRefused = true
    connection.sendCopyFail("COPY FROM STDIN is not supported in tasks")
  }

  handleCopyData() {}

  handleError(error: unknown) {
    const failure = failureOf(error)
    if (failure.lost) return this.finish(failure)
    this.failure ??= this.copyRefused ? copyFailure : failure
    this.keepActive()
  }

  handleReadyForQuery() {
    const failure = this.failure ?? (this.copyRefused ? copyFailure : undefined)
    const results = this.results.take()
    this.answer(this.index, failure === undefined ? Either.right(results) : Either.left(failure))
    this.index += 1
    this.failure = undefined
    this.copyRefused = false
    if (this.index < this.scripts.length) return this.keepActive()
    this.finish(undefined)
  }

  private finish(lost: TaskFailure | undefined) {
    if (this.done) return
    this.done = true
    this.end(lost)
  }
}

export const copyFailure = new TaskFailure(
  formatError({
    message: "COPY TO STDOUT and COPY FROM STDIN are not supported in tasks",
    hint: "Copy to or from a file or a program on the server instead."
  }),
  "0A000"
)
