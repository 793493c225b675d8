import { describe, expect, it } from "vitest"
import { errors, formatError, formatOutput, type StatementResult } from "../src/Output.js"

const rows = (
  columns: ReadonlyArray<string>,
  ...values: ReadonlyArray<ReadonlyArray<string | null>>
): StatementResult => ({ _tag: "Rows", columns, rows: values })

const command = (tag: string): StatementResult => ({ _tag: "Command", tag })

describe("formatOutput", () => {
  it("writes a single value without a header (SELECT 1 AS a)", () => {
    expect(formatOutput([rows(["a"], ["1"])])).toBe("1")
  })

  it("writes a header line first when there is more than one column (SELECT 1 AS a, 2 AS b)", () => {
    expect(formatOutput([rows(["a", "b"], ["1", "2"])])).toBe("a\tb\n1\t2")
  })

  it("writes one line per row", () => {
    expect(formatOutput([rows(["n"], ["1"], ["2"], ["3"])])).toBe("1\n2\n3")
    expect(formatOutput([rows(["n", "t"], ["1", "x"], ["2", "y"])])).toBe("n\tt\n1\tx\n2\ty")
  })

  it("joins the parts of several statements by a newline (SELECT 1 AS a; SELECT 2 AS b)", () => {
    expect(formatOutput([rows(["a"], ["1"]), rows(["b"], ["2"])])).toBe("1\n2")
  })

  it("writes NULL as \\N", () => {
    expect(formatOutput([rows(["a"], [null])])).toBe("\\N")
    expect(formatOutput([rows(["a", "b"], ["1", null], [null, null])])).toBe("a\tb\n1\t\\N\n\\N\t\\N")
  })

  it("keeps the empty string apart from NULL", () => {
    expect(formatOutput([rows(["a"], [""])])).toBe("")
    expect(formatOutput([rows(["a", "b"], ["", null])])).toBe("a\tb\n\t\\N")
  })

  it("writes values in the text form the server sent, untouched", () => {
    expect(formatOutput([rows(["t", "b", "j"], ["2024-01-02 03:04:05+00", "t", "{\"k\": [1, 2]}"])]))
      .toBe("t\tb\tj\n2024-01-02 03:04:05+00\tt\t{\"k\": [1, 2]}")
  })

  it("writes no header for a statement that returned no rows", () => {
    expect(formatOutput([rows(["a", "b"])])).toBeNull()
    expect(formatOutput([rows(["a", "b"]), rows(["c"], ["3"])])).toBe("3")
  })

  it("writes the command tags of statements without rows", () => {
    expect(formatOutput([command("INSERT 0 1")])).toBe("INSERT 0 1")
    expect(formatOutput([command("DELETE 0")])).toBe("DELETE 0")
    expect(formatOutput([command("CREATE TABLE")])).toBe("CREATE TABLE")
    expect(formatOutput([command("UPDATE 3")])).toBe("UPDATE 3")
  })

  it("adds no tag for SELECT", () => {
    expect(formatOutput([command("SELECT 0")])).toBeNull()
    expect(formatOutput([command("SELECT 5")])).toBeNull()
    expect(formatOutput([command("CREATE TABLE"), command("SELECT 2"), command("INSERT 0 1")]))
      .toBe("CREATE TABLE\nINSERT 0 1")
  })

  it("mixes tags and rows in statement order", () => {
    const results = [
      command("BEGIN"),
      command("CREATE TABLE"),
      command("INSERT 0 2"),
      rows(["id", "name"], ["1", "a"], ["2", "b"]),
      rows(["count"], ["2"]),
      command("COMMIT")
    ]
    expect(formatOutput(results)).toBe("BEGIN\nCREATE TABLE\nINSERT 0 2\nid\tname\n1\ta\n2\tb\n2\nCOMMIT")
  })

  it("is NULL when nothing at all was produced (SELECT 1 WHERE false)", () => {
    expect(formatOutput([])).toBeNull()
    expect(formatOutput([rows(["?column?"])])).toBeNull()
    expect(formatOutput([rows(["a"]), command("SELECT 0"), rows(["b", "c"])])).toBeNull()
  })

  it("has no trailing newline", () => {
    const output = formatOutput([rows(["a", "b"], ["1", "2"]), command("INSERT 0 1")])
    expect(output).toBe("a\tb\n1\t2\nINSERT 0 1")
    expect(output?.endsWith("\n")).toBe(false)
  })
})

describe("formatError", () => {
  it("writes severity, a colon and two spaces before the message", () => {
    expect(formatError({ message: "division by zero" })).toBe("ERROR:  division by zero")
    expect(formatError({ severity: "ERROR", message: "division by zero" })).toBe("ERROR:  division by zero")
    expect(formatError({ severity: "FATAL", message: "terminating connection" }))
      .toBe("FATAL:  terminating connection")
  })

  it("adds DETAIL, HINT and CONTEXT lines in that order", () => {
    expect(formatError({
      severity: "ERROR",
      message: "duplicate key value violates unique constraint \"t_pkey\"",
      detail: "Key (id)=(1) already exists.",
      hint: "Use another id.",
      where: "SQL statement \"INSERT INTO t VALUES (1)\""
    })).toBe(
      "ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n" +
        "DETAIL:  Key (id)=(1) already exists.\n" +
        "HINT:  Use another id.\n" +
        "CONTEXT:  SQL statement \"INSERT INTO t VALUES (1)\""
    )
  })

  it("leaves out the lines the server did not send", () => {
    expect(formatError({ message: "relation \"nope\" does not exist", detail: undefined, hint: undefined }))
      .toBe("ERROR:  relation \"nope\" does not exist")
    expect(formatError({ message: "m", hint: "h" })).toBe("ERROR:  m\nHINT:  h")
    expect(formatError({ message: "m", detail: "d" })).toBe("ERROR:  m\nDETAIL:  d")
    expect(formatError({ message: "m", where: "PL/pgSQL function f() line 3 at RAISE" }))
      .toBe("ERROR:  m\nCONTEXT:  PL/pgSQL function f() line 3 at RAISE")
  })

  it("keeps multi-line context as the server sent it", () => {
    const where = "PL/pgSQL function g() line 1\nSQL statement \"SELECT g()\""
    expect(formatError({ message: "boom", where }))
      .toBe("ERROR:  boom\nCONTEXT:  PL/pgSQL function g() line 1\nSQL statement \"SELECT g()\"")
  })

  it("writes the errors pg-task itself gives to ended tasks", () => {
    expect(errors.timeout).toBe("ERROR:  canceling statement due to statement timeout")
    expect(errors.stopped).toBe("ERROR:  canceling statement due to user request")
  })
})
