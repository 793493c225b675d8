/**
 * What a task wrote back: the text of its results and of its error, in the
 * forms psql users know. Pure functions, so every rule is tested without a
 * database.
 */

/** One statement's outcome, as the server sent it. */
export type StatementResult =
  | {
    readonly _tag: "Rows"
    readonly columns: ReadonlyArray<string>
    /** Values in PostgreSQL's own text form; null for SQL NULL. */
    readonly rows: ReadonlyArray<ReadonlyArray<string | null>>
  }
  | { readonly _tag: "Command"; readonly tag: string }

const line = (values: ReadonlyArray<string | null>) => values.map((value) => value ?? "\\N").join("\t")

const statementLines = (result: StatementResult): ReadonlyArray<string> => {
  if (result._tag === "Command") {
    // Row-returning statements are shown by their rows, so their tag adds nothing.
    return result.tag.startsWith("SELECT") ? [] : [result.tag]
  }
  if (result.rows.length === 0) return []
  const header = result.columns.length > 1 ? [result.columns.join("\t")] : []
  return [...header, ...result.rows.map(line)]
}

/**
 * The `output` of a task: one line per row (a header line first when there
 * is more than one column), the command tag of statements without rows, and
 * NULL when nothing at all came back.
 */
export const formatOutput = (results: ReadonlyArray<StatementResult>): string | null => {
  const lines = results.flatMap(statementLines)
  return lines.length === 0 ? null : lines.join("\n")
}

/** The fields of a server error that psql shows. */
export interface ServerError {
  readonly severity?: string | undefined
  readonly message: string
  readonly detail?: string | undefined
  readonly hint?: string | undefined
  readonly where?: string | undefined
}

/**
 * The `error` of a task, as psql shows it: `ERROR:  division by zero`, then
 * `DETAIL:`, `HINT:` and `CONTEXT:` lines where the server sent them.
 */
export const formatError = (error: ServerError): string => {
  const lines = [`${error.severity ?? "ERROR"}:  ${error.message}`]
  if (error.detail) lines.push(`DETAIL:  ${error.detail}`)
  if (error.hint) lines.push(`HINT:  ${error.hint}`)
  if (error.where) lines.push(`CONTEXT:  ${error.where}`)
  return lines.join("\n")
}

/** The errors pg-task itself writes when it ends a task. */
export const errors = {
  timeout: formatError({ message: "canceling statement due to statement timeout" }),
  stopped: formatError({ message: "canceling statement due to user request" })
} as const
