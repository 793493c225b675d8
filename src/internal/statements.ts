/**
 * Just enough of PostgreSQL's lexer to split a task's input into its
 * top-level statements: quoted strings and identifiers, dollar quotes and
 * comments are skipped whole, so a semicolon inside them splits nothing.
 */

const dollarTag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/

/** The input's statements, trimmed, empty ones left out. */
export const split = (input: string): Array<string> => {
  const statements: Array<string> = []
  let start = 0
  let i = 0
  const skipTo = (end: number) => {
    i = end < 0 ? input.length : end
  }
  while (i < input.length) {
    const c = input[i]!
    const next = input[i + 1]
    if (c === "'") {
      const escapes = i > 0 && /[eE]/.test(input[i - 1]!) && !/[A-Za-z0-9_]/.test(input[i - 2] ?? "")
      i = endOfQuoted(input, i + 1, "'", escapes)
    } else if (c === "\"") {
      i = endOfQuoted(input, i + 1, "\"", false)
    } else if (c === "-" && next === "-") {
      const end = input.indexOf("\n", i)
      skipTo(end < 0 ? -1 : end + 1)
    } else if (c === "/" && next === "*") {
      i = endOfComment(input, i + 2)
    } else if (c === "$" && !/[A-Za-z0-9_]/.test(input[i - 1] ?? "")) {
      const tag = dollarTag.exec(input.slice(i))?.[0]
      if (tag === undefined) {
        i += 1
      } else {
        const end = input.indexOf(tag, i + tag.length)
        skipTo(end < 0 ? -1 : end + tag.length)
      }
    } else if (c === ";") {
      statements.push(input.slice(start, i))
      i += 1
      start = i
    } else {
      i += 1
    }
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

const words = (statement: string) =>
  statement
    .replace(/'(?:[^']|'')*'/g, "''")
    .replace(/--[^\n]*/g, " ")
    .replace(/\/\*[\s\S]*?\*\//g, " ")

/**
 * Whether a statement copies to or from the client, which a task cannot do:
 * there is no client to take the rows or give them.
 */
export const copiesWithClient = (statement: string) => {
  const text = words(statement)
  return /^\s*copy\b/i.test(text) && /\b(to\s+stdout|from\s+stdin)\b/i.test(text)
}
