/**
 * Just enough of PostgreSQL's lexer to see a task's input as the server
 * will: quoted strings and identifiers, dollar quotes and comments are
 * opaque, so nothing inside them splits a statement or reads as a keyword.
 */

const dollarTag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/
const word = /[A-Za-z0-9_]/

/**
 * The input with every quoted string, quoted identifier, dollar quote and
 * comment blanked out, character for character, so positions still match.
 */
export const mask = (input: string): string => {
  let out = ""
  let i = 0
  const blank = (end: number) => {
    const stop = Math.min(end, input.length)
    out += input.slice(i, stop).replace(/[^\n]/g, " ")
    i = stop
  }
  while (i < input.length) {
    const c = input[i]!
    const next = input[i + 1]
    if (c === "'") {
      const escapes = /[eE]/.test(input[i - 1] ?? "") && !word.test(input[i - 2] ?? "")
      blank(endOfQuoted(input, i + 1, "'", escapes))
    } else if (c === "\"") {
      blank(endOfQuoted(input, i + 1, "\"", false))
    } else if (c === "-" && next === "-") {
      const end = input.indexOf("\n", i)
      blank(end < 0 ? input.length : end)
    } else if (c === "/" && next === "*") {
      blank(endOfComment(input, i + 2))
    } else if (c === "$" && !word.test(input[i - 1] ?? "") && dollarTag.test(input.slice(i))) {
      const tag = dollarTag.exec(input.slice(i))![0]
      const end = input.indexOf(tag, i + tag.length)
      blank(end < 0 ? input.length : end + tag.length)
    } else {
      out += c
      i += 1
    }
  }
  return out
}

/** The input's top-level statements, trimmed, empty ones left out. */
export const split = (input: string): Array<string> => {
  const masked = mask(input)
  const statements: Array<string> = []
  let start = 0
  for (let i = masked.indexOf(";"); i >= 0; i = masked.indexOf(";", start)) {
    statements.push(input.slice(start, i))
    start = i + 1
  }
  statements.push(input.slice(start))
  return statements.map((statement) => statement.trim()).filter((statement) => statement.length > 0)
}

const endOfQuoted = (input: string, from: number, quote: string, escapes: boolean) => {
  let i = from
  while (i < input.length) {
    const c = input[i]!
    if (escapes && c === "\\") {
      i += 2
    } else if (c === quote) {
      if (input[i + 1] === quote) i += 2
      else return i + 1
    } else {
      i += 1
    }
  }
  return input.length
}

const endOfComment = (input: string, from: number) => {
  let depth = 1
  let i = from
  while (i < input.length && depth > 0) {
    if (input.startsWith("/*", i)) {
      depth += 1
      i += 2
    } else if (input.startsWith("*/", i)) {
      depth -= 1
      i += 2
    } else {
      i += 1
    }
  }
  return i
}

/**
 * Whether a statement copies to or from the client, which a task cannot do:
 * there is no client to take the rows or give them.
 */
export const copiesWithClient = (statement: string) => {
  const code = mask(statement)
  return /^\s*copy\b/i.test(code) && /\b(to\s+stdout|from\s+stdin)\b/i.test(code)
}

/**
 * Whether a statement opens or ends a transaction block, or works inside
 * one: after such statements a session may be left in a transaction.
 */
const transactionControl = /^\s*(begin|start|commit|end|rollback|abort|savepoint|release|prepare\s+transaction)\b/i

export const controlsTransaction = (statement: string) => transactionControl.test(mask(statement))
