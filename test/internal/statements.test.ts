import { describe, expect, it } from "vitest"
import { copiesWithClient, split } from "../../src/internal/statements.js"

describe("split", () => {
  it("splits on top-level semicolons and trims", () => {
    expect(split("SELECT 1; SELECT 2")).toEqual(["SELECT 1", "SELECT 2"])
    expect(split("  SELECT 1 ;\n\n  INSERT INTO t VALUES (1);  "))
      .toEqual(["SELECT 1", "INSERT INTO t VALUES (1)"])
  })

  it("gives one statement for input without a semicolon", () => {
    expect(split("SELECT 1")).toEqual(["SELECT 1"])
  })

  it("leaves out empty statements", () => {
    expect(split("")).toEqual([])
    expect(split("  \n ")).toEqual([])
    expect(split(";;; ;")).toEqual([])
    expect(split("SELECT 1;;\n;SELECT 2;")).toEqual(["SELECT 1", "SELECT 2"])
  })

  it("does not split inside '...' strings, with '' doubling", () => {
    expect(split("SELECT 'a;b'; SELECT 2")).toEqual(["SELECT 'a;b'", "SELECT 2"])
    expect(split("SELECT 'it''s; fine'; SELECT 2")).toEqual(["SELECT 'it''s; fine'", "SELECT 2"])
    expect(split("SELECT ''';'''; SELECT 2")).toEqual(["SELECT ''';'''", "SELECT 2"])
  })

  it("treats a backslash in a standard string as an ordinary character", () => {
    expect(split("SELECT 'a\\'; SELECT 2")).toEqual(["SELECT 'a\\'", "SELECT 2"])
  })

  it("does not split inside E'...' strings with backslash escapes", () => {
    expect(split("SELECT E'a\\';b'; SELECT 2")).toEqual(["SELECT E'a\\';b'", "SELECT 2"])
    expect(split("SELECT e'\\\\'; SELECT 2")).toEqual(["SELECT e'\\\\'", "SELECT 2"])
    expect(split("SELECT E'x''; y'; SELECT 2")).toEqual(["SELECT E'x''; y'", "SELECT 2"])
    expect(split("E'\\';'; SELECT 2")).toEqual(["E'\\';'", "SELECT 2"])
  })

  it("does not take a word ending in e before a string for an E'' prefix", () => {
    expect(split("SELECT CASE WHEN true THEN 'x' ELSE'a\\'; SELECT 2")).toEqual([
      "SELECT CASE WHEN true THEN 'x' ELSE'a\\'",
      "SELECT 2"
    ])
  })

  it("does not split inside \"...\" identifiers", () => {
    expect(split("SELECT 1 AS \"a;b\"; SELECT 2")).toEqual(["SELECT 1 AS \"a;b\"", "SELECT 2"])
    expect(split("SELECT 1 AS \"a\"\";b\"; SELECT 2")).toEqual(["SELECT 1 AS \"a\"\";b\"", "SELECT 2"])
    expect(split("SELECT 1 AS \"it's\"; SELECT 2")).toEqual(["SELECT 1 AS \"it's\"", "SELECT 2"])
  })

  it("does not split inside $$ dollar quotes", () => {
    const body = "DO $$ BEGIN PERFORM 1; PERFORM 'x;'; END $$"
    expect(split(`${body}; SELECT 2`)).toEqual([body, "SELECT 2"])
  })

  it("does not split inside $tag$ dollar quotes, ending only at the same tag", () => {
    const body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT $$;$$; SELECT 1; $fn$"
    expect(split(`${body}; SELECT f()`)).toEqual([body, "SELECT f()"])
    expect(split("SELECT $a$ ; $b$ ; $a$; SELECT 2")).toEqual(["SELECT $a$ ; $b$ ; $a$", "SELECT 2"])
  })

  it("does not take parameters or identifiers with $ for dollar quotes", () => {
    expect(split("PREPARE p AS SELECT $1; SELECT 2")).toEqual(["PREPARE p AS SELECT $1", "SELECT 2"])
    expect(split("SELECT 1 AS a$b$; SELECT 2")).toEqual(["SELECT 1 AS a$b$", "SELECT 2"])
  })

  it("does not split inside -- line comments", () => {
    expect(split("SELECT 1 -- one; two\n; SELECT 2")).toEqual(["SELECT 1 -- one; two", "SELECT 2"])
    expect(split("SELECT 1 -- it's\n; SELECT 2")).toEqual(["SELECT 1 -- it's", "SELECT 2"])
  })

  it("does not split inside /* */ comments, nested ones included", () => {
    expect(split("SELECT /* a; b */ 1; SELECT 2")).toEqual(["SELECT /* a; b */ 1", "SELECT 2"])
    expect(split("SELECT /* a /* b; */ c; */ 1; SELECT 2"))
      .toEqual(["SELECT /* a /* b; */ c; */ 1", "SELECT 2"])
    expect(split("SELECT /* -- ; */ 1; SELECT 2")).toEqual(["SELECT /* -- ; */ 1", "SELECT 2"])
    expect(split("SELECT 1 -- /* ;\n; SELECT 2")).toEqual(["SELECT 1 -- /* ;", "SELECT 2"])
  })

  it("keeps unterminated quotes and comments to the end of the input", () => {
    expect(split("SELECT 1; SELECT 'a;b")).toEqual(["SELECT 1", "SELECT 'a;b"])
    expect(split("SELECT 1; SELECT $$a;b")).toEqual(["SELECT 1", "SELECT $$a;b"])
    expect(split("SELECT 1; /* a; b")).toEqual(["SELECT 1", "/* a; b"])
  })

  it("handles transactions and several kinds of statement together", () => {
    const input = "BEGIN;\nINSERT INTO t(v) VALUES ('a;b'), (E'c\\'d;');\n" +
      "UPDATE t SET v = $x$;$x$ WHERE \"v;\" IS NULL; -- done;\nCOMMIT;"
    expect(split(input)).toEqual([
      "BEGIN",
      "INSERT INTO t(v) VALUES ('a;b'), (E'c\\'d;')",
      "UPDATE t SET v = $x$;$x$ WHERE \"v;\" IS NULL",
      "-- done;\nCOMMIT"
    ])
  })
})

describe("copiesWithClient", () => {
  it("is true for COPY ... TO STDOUT and COPY ... FROM STDIN", () => {
    expect(copiesWithClient("COPY t TO STDOUT")).toBe(true)
    expect(copiesWithClient("COPY t FROM STDIN")).toBe(true)
    expect(copiesWithClient("COPY t (a, b) FROM STDIN WITH (FORMAT csv)")).toBe(true)
    expect(copiesWithClient("COPY (SELECT 1) TO STDOUT WITH CSV HEADER")).toBe(true)
  })

  it("is true in any case and with any blanks", () => {
    expect(copiesWithClient("copy t to stdout")).toBe(true)
    expect(copiesWithClient("Copy t From Stdin")).toBe(true)
    expect(copiesWithClient("  \n\tCOPY t\n  TO\n\tSTDOUT  ")).toBe(true)
  })

  it("is true with comments around and between the words", () => {
    expect(copiesWithClient("/* export */ COPY t TO STDOUT")).toBe(true)
    expect(copiesWithClient("-- export\nCOPY t TO STDOUT")).toBe(true)
    expect(copiesWithClient("COPY t TO /* here */ STDOUT")).toBe(true)
    expect(copiesWithClient("COPY t FROM -- here\nSTDIN")).toBe(true)
    expect(copiesWithClient("COPY t /* it's */ FROM STDIN")).toBe(true)
  })

  it("is false for COPY to or from a file or a program", () => {
    expect(copiesWithClient("COPY t TO '/tmp/to stdout'")).toBe(false)
    expect(copiesWithClient("COPY t FROM '/x'")).toBe(false)
    expect(copiesWithClient("COPY t FROM '/tmp/from stdin.csv'")).toBe(false)
    expect(copiesWithClient("COPY t TO PROGRAM 'cat > /dev/null'")).toBe(false)
    expect(copiesWithClient("COPY t TO '/tmp/f' -- not to stdout")).toBe(false)
    expect(copiesWithClient("COPY t FROM '/x' /* not from stdin */")).toBe(false)
  })

  it("is false for statements that are not COPY", () => {
    expect(copiesWithClient("SELECT 'copy x to stdout'")).toBe(false)
    expect(copiesWithClient("SELECT 1 AS copy_to_stdout")).toBe(false)
    expect(copiesWithClient("INSERT INTO log VALUES ('COPY t FROM STDIN')")).toBe(false)
    expect(copiesWithClient("-- COPY t TO STDOUT\nSELECT 1")).toBe(false)
    expect(copiesWithClient("/* COPY t FROM STDIN */ SELECT 1")).toBe(false)
    expect(copiesWithClient("copying")).toBe(false)
  })

  it("is false when 'to stdout' is inside a dollar-quoted file name", () => {
    expect(copiesWithClient("COPY t TO $$/tmp/to stdout$$")).toBe(false)
  })

  it("is false when 'to stdout' is inside a quoted identifier", () => {
    expect(copiesWithClient("COPY \"to stdout\" FROM '/tmp/x'")).toBe(false)
  })

  it("is false when 'to stdout' is inside an E'' file name with an escaped quote", () => {
    expect(copiesWithClient("COPY t TO E'/tmp/it\\'s to stdout'")).toBe(false)
  })

  it("is false when a comment with an apostrophe comes before a quoted file name", () => {
    expect(copiesWithClient("COPY t /* it's */ TO '/tmp/to stdout'")).toBe(false)
  })

  it("is true when apostrophes in comments surround TO STDOUT", () => {
    expect(copiesWithClient("COPY t /* don't */ TO STDOUT -- it's fine")).toBe(true)
    expect(copiesWithClient("-- it's the export\nCOPY t TO STDOUT -- that's all")).toBe(true)
  })

  it("finds the COPY among statements of a split input", () => {
    expect(split("SELECT 'x;'; COPY t TO STDOUT; SELECT 2").some(copiesWithClient)).toBe(true)
    expect(split("SELECT 'COPY t TO STDOUT;'; SELECT 2").some(copiesWithClient)).toBe(false)
    expect(split("DO $$ BEGIN EXECUTE 'x'; END $$; COPY t FROM '/x'").some(copiesWithClient)).toBe(false)
  })
})
