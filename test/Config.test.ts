import { Effect, Either } from "effect"
import { describe, expect, it } from "vitest"
import {
  defaults,
  describeTarget,
  fromEnvironment,
  PgTaskConfig,
  type RawSettings,
  type Resolved,
  resolve,
  type Source,
  type Target
} from "../src/Config.js"
import type { ConfigError } from "../src/Errors.js"

type Layers = ReadonlyArray<readonly [Source, RawSettings]>

const resolved = (layers: Layers): Resolved =>
  Either.getOrThrowWith(resolve(layers), (error) => new Error(error.message))

const targets = (json: string, source: Source = "flags"): ReadonlyArray<Target> =>
  resolved([[source, { json }]]).settings.targets

const failure = (layers: Layers): ConfigError => {
  const result = resolve(layers)
  if (Either.isRight(result)) throw new Error(`expected a failure, got ${JSON.stringify(result.right)}`)
  return result.left
}

/** The message a user sees for a bad `pg_task.json` given by flags. */
const jsonError = (json: string): string => failure([["flags", { json }]]).message

const target = (data: string, more: Partial<Target> = {}): Target => ({
  data,
  user: "postgres",
  schema: undefined,
  table: "task",
  timeout: 1000,
  reset: 60,
  run: 16,
  ...more
})

describe("resolve, defaults", () => {
  it("gives the built-in defaults when no source says anything", () => {
    const expected: Resolved = {
      settings: {
        defaultTable: "task",
        defaultTimeout: 1000,
        defaultReset: 60,
        defaultRun: 16,
        targets: [target("postgres")]
      },
      warnings: []
    }
    expect(resolved([])).toEqual(expected)
    expect(resolved([["defaults", defaults]])).toEqual(expected)
    expect(resolved([["server", {}], ["environment", {}], ["flags", {}]])).toEqual(expected)
  })

  it("keeps the original extension's defaults", () => {
    expect(defaults).toEqual({
      default_table: "task",
      default_timeout: "1000",
      default_reset: "60",
      default_run: "16",
      json: "[{\"data\":\"postgres\"}]"
    })
  })

  it("fills a target's missing keys: database and user postgres, schema left to the role", () => {
    expect(targets("[{}]")).toEqual([target("postgres")])
    expect(targets("[{\"user\":\"alice\"}]")).toEqual([target("postgres", { user: "alice" })])
    expect(targets("[{\"data\":\"db\"}]")[0]!.schema).toBeUndefined()
  })

  it("fills table, timeout, reset and run from the default_ settings", () => {
    const settings = resolved([[
      "flags",
      {
        default_table: "jobs",
        default_timeout: "250",
        default_reset: "7",
        default_run: "3",
        json: "[{\"data\":\"a\"},{\"data\":\"b\",\"table\":\"t\",\"timeout\":5,\"reset\":2,\"run\":1}]"
      }
    ]]).settings
    expect(settings.targets).toEqual([
      target("a", { table: "jobs", timeout: 250, reset: 7, run: 3 }),
      target("b", { table: "t", timeout: 5, reset: 2, run: 1 })
    ])
  })

  it("decodes the example of the original extension's docs", () => {
    const json = "[{\"data\":\"database1\"},{\"data\":\"database2\",\"user\":\"username2\"}," +
      "{\"data\":\"database3\",\"schema\":\"schema3\"},{\"data\":\"database4\",\"table\":\"table4\"}," +
      "{\"data\":\"database5\",\"timeout\":100}]"
    const result = resolved([["server", { json }]])
    expect(result.warnings).toEqual([])
    expect(result.settings.targets).toEqual([
      target("database1"),
      target("database2", { user: "username2" }),
      target("database3", { schema: "schema3" }),
      target("database4", { table: "table4" }),
      target("database5", { timeout: 100 })
    ])
  })

  it("accepts names of exactly 63 characters and the largest int", () => {
    const name = "n".repeat(63)
    expect(targets(`[{"data":"${name}","user":"${name}","schema":"${name}","table":"${name}"}]`))
      .toEqual([target(name, { user: name, schema: name, table: name })])
    expect(targets("[{\"timeout\":2147483647}]")[0]!.timeout).toBe(2147483647)
  })
})

describe("resolve, sources", () => {
  it("lets later sources win key by key", () => {
    const settings = resolved([
      ["defaults", defaults],
      ["server", { default_table: "server_table", default_timeout: "2000", json: "[{\"data\":\"s\"}]" }],
      ["environment", { default_timeout: "3000", default_reset: "30" }],
      ["flags", { default_reset: "10" }]
    ]).settings
    expect(settings.defaultTable).toBe("server_table")
    expect(settings.defaultTimeout).toBe(3000)
    expect(settings.defaultReset).toBe(10)
    expect(settings.defaultRun).toBe(16)
    expect(settings.targets).toEqual([target("s", { table: "server_table", timeout: 3000, reset: 10 })])
  })

  it("takes pg_task.json whole from the last source that gives it", () => {
    const settings = resolved([
      ["server", { json: "[{\"data\":\"a\"},{\"data\":\"b\"}]" }],
      ["flags", { json: "[{\"data\":\"c\"}]" }]
    ]).settings
    expect(settings.targets).toEqual([target("c")])
  })

  it("counts the empty string as not given", () => {
    const settings = resolved([
      ["server", { default_table: "t1", default_timeout: "500", json: "[{\"data\":\"srv\"}]" }],
      ["environment", {
        default_table: "",
        default_timeout: "",
        default_reset: "",
        default_run: "",
        json: ""
      }],
      ["flags", { default_table: "", json: "" }]
    ]).settings
    expect(settings.defaultTable).toBe("t1")
    expect(settings.defaultTimeout).toBe(500)
    expect(settings.defaultReset).toBe(60)
    expect(settings.targets).toEqual([target("srv", { table: "t1", timeout: 500 })])
    expect(resolved([["flags", { default_table: "", json: "" }]]).settings.targets)
      .toEqual([target("postgres")])
  })

  it("does not check a value that a later source replaces", () => {
    const settings = resolved([
      ["server", { default_timeout: "abc", json: "not json" }],
      ["flags", { default_timeout: "5", json: "[{\"data\":\"ok\"}]" }]
    ]).settings
    expect(settings.defaultTimeout).toBe(5)
    expect(settings.targets).toEqual([target("ok", { timeout: 5 })])
  })

  it("names the source that gave the bad value, not the last source", () => {
    const error = failure([
      ["server", { json: "[{\"data\":\"a\",\"reset\":0}]" }],
      ["environment", { default_timeout: "10" }],
      ["flags", { default_table: "x" }]
    ])
    expect(error.source).toBe("server")
    expect(error.path).toBe("pg_task.json[0].reset")
    expect(error.message).toBe("server: pg_task.json[0].reset must be a positive integer, got \"0\"")
  })

  it("accepts numbers with blanks around them", () => {
    expect(resolved([["environment", { default_timeout: " 250 " }]]).settings.defaultTimeout).toBe(250)
  })

  it("rejects bad default_ settings, naming source and setting", () => {
    expect(failure([["environment", { default_timeout: "abc" }]]).message)
      .toBe("environment: pg_task.default_timeout must be a positive integer, got \"abc\"")
    expect(failure([["server", { default_reset: "0" }]]).message)
      .toBe("server: pg_task.default_reset must be a positive integer, got \"0\"")
    expect(failure([["flags", { default_run: "-3" }]]).message)
      .toBe("flags: pg_task.default_run must be a positive integer, got \"-3\"")
    expect(failure([["flags", { default_timeout: "1.5" }]]).message)
      .toBe("flags: pg_task.default_timeout must be a positive integer, got \"1.5\"")
    expect(failure([["flags", { default_table: "t".repeat(64) }]]).message)
      .toBe(
        "flags: pg_task.default_table must be a non-empty name of at most 63 bytes, " +
          `got "${"t".repeat(64)}"`
      )
  })
})

describe("resolve, bad pg_task.json", () => {
  it("names source, entry index and key", () => {
    const error = failure([[
      "flags",
      { json: "[{\"data\":\"a\"},{\"data\":\"b\"},{\"data\":\"c\",\"timeout\":-5}]" }
    ]])
    expect(error._tag).toBe("ConfigError")
    expect(error.source).toBe("flags")
    expect(error.path).toBe("pg_task.json[2].timeout")
    expect(error.reason).toBe("must be a positive integer, got \"-5\"")
    expect(error.message).toBe("flags: pg_task.json[2].timeout must be a positive integer, got \"-5\"")
  })

  it("reports the first bad value", () => {
    expect(jsonError("[{\"data\":\"a\",\"timeout\":0},{\"data\":5}]"))
      .toBe("flags: pg_task.json[0].timeout must be a positive integer, got \"0\"")
  })

  it("rejects malformed JSON", () => {
    const error = failure([["environment", { json: "[{\"data\":\"a\"" }]])
    expect(error.source).toBe("environment")
    expect(error.path).toBe("pg_task.json")
    expect(error.message.startsWith("environment: pg_task.json is not valid JSON")).toBe(true)
    expect(jsonError("[{data:'a'}]").startsWith("flags: pg_task.json is not valid JSON")).toBe(true)
  })

  it("rejects JSON that is not an array of objects", () => {
    const expected = "pg_task.json must be a non-empty JSON array of objects"
    expect(failure([["server", { json: '{"data":"x"}' }]]).message)
      .toBe(`server: ${expected}, got "{\\"data\\":\\"x\\"}"`)
    expect(jsonError('"postgres"')).toBe(`flags: ${expected}, got "postgres"`)
    expect(jsonError("42")).toBe(`flags: ${expected}, got "42"`)
    expect(jsonError("null")).toBe(`flags: ${expected}, got "null"`)
    expect(jsonError("[]")).toBe(`flags: ${expected}, got "[]"`)
  })

  it("rejects entries that are not objects, naming the entry", () => {
    expect(jsonError("[{\"data\":\"a\"},1]")).toBe("flags: pg_task.json[1] must be an object, got \"1\"")
    expect(jsonError("[\"postgres\"]")).toBe("flags: pg_task.json[0] must be an object, got \"postgres\"")
    expect(jsonError("[null]")).toBe("flags: pg_task.json[0] must be an object, got \"null\"")
    expect(jsonError("[[{\"data\":\"a\"}]]"))
      .toBe("flags: pg_task.json[0] must be an object, got \"[{\\\"data\\\":\\\"a\\\"}]\"")
  })

  it("rejects numbers of the wrong type or range", () => {
    expect(jsonError("[{\"timeout\":\"abc\"}]"))
      .toBe("flags: pg_task.json[0].timeout must be a positive integer, got \"abc\"")
    expect(jsonError("[{\"timeout\":1.5}]"))
      .toBe("flags: pg_task.json[0].timeout must be a positive integer, got \"1.5\"")
    expect(jsonError('[{"reset":0}]'))
      .toBe('flags: pg_task.json[0].reset must be a positive integer, got "0"')
    expect(jsonError('[{"run":true}]'))
      .toBe('flags: pg_task.json[0].run must be a positive integer, got "true"')
    expect(jsonError("[{\"timeout\":2147483648}]"))
      .toBe("flags: pg_task.json[0].timeout must be a positive integer, got \"2147483648\"")
  })

  it("rejects names of the wrong type, empty, or over 63 characters", () => {
    const expected = "must be a non-empty name of at most 63 bytes"
    expect(jsonError("[{\"data\":5}]")).toBe(`flags: pg_task.json[0].data ${expected}, got "5"`)
    expect(jsonError("[{\"data\":\"\"}]")).toBe(`flags: pg_task.json[0].data ${expected}, got ""`)
    expect(jsonError("[{\"data\":\"a\",\"user\":[\"u\"]}]"))
      .toBe(`flags: pg_task.json[0].user ${expected}, got "[\\"u\\"]"`)
    expect(jsonError('[{"data":"a","schema":null}]'))
      .toBe(`flags: pg_task.json[0].schema ${expected}, got "null"`)
    const long = "x".repeat(64)
    expect(jsonError(`[{"data":"a"},{"data":"b","table":"${long}"}]`))
      .toBe(`flags: pg_task.json[1].table ${expected}, got "${long}"`)
  })

  it("rejects two entries naming the same table", () => {
    expect(jsonError("[{\"data\":\"a\"},{\"data\":\"b\"},{\"data\":\"a\",\"user\":\"other\"}]"))
      .toBe("flags: pg_task.json[2] names the same table as pg_task.json[0]")
    expect(jsonError("[{\"data\":\"a\"},{\"data\":\"a\",\"table\":\"task\",\"timeout\":5}]"))
      .toBe("flags: pg_task.json[1] names the same table as pg_task.json[0]")
    expect(jsonError("[{\"data\":\"a\",\"schema\":\"s\"},{\"data\":\"a\",\"schema\":\"s\"}]"))
      .toBe("flags: pg_task.json[1] names the same table as pg_task.json[0]")
  })

  it("accepts the same database with another table or schema", () => {
    expect(targets('[{"data":"a"},{"data":"a","table":"t2"},{"data":"a","schema":"s"}]')).toEqual([
      target("a"),
      target("a", { table: "t2" }),
      target("a", { schema: "s" })
    ])
  })
})

describe("resolve, unknown keys", () => {
  it("warns about unknown keys by name and ignores them", () => {
    const result = resolved([["server", { json: '[{"data":"a"},{"data":"b","sleep":5,"Timeout":1}]' }]])
    expect(result.settings.targets).toEqual([target("a"), target("b")])
    expect(result.warnings).toEqual([
      "server: pg_task.json[1].sleep is not a known key and is ignored",
      "server: pg_task.json[1].Timeout is not a known key and is ignored"
    ])
  })

  it("does not check the values of unknown keys", () => {
    const result = resolved([["flags", { json: "[{\"data\":\"a\",\"extra\":{\"deep\":[null]}}]" }]])
    expect(result.settings.targets).toEqual([target("a")])
    expect(result.warnings).toEqual(["flags: pg_task.json[0].extra is not a known key and is ignored"])
  })

  it("treats keys that are names of Object.prototype members as unknown", () => {
    for (const key of ["constructor", "toString", "__proto__"]) {
      const result = resolve([["flags", { json: `[{"data":"a","${key}":1}]` }]])
      expect(Either.isRight(result)).toBe(true)
      expect(Either.getOrThrow(result).warnings)
        .toEqual([`flags: pg_task.json[0].${key} is not a known key and is ignored`])
    }
  })
})

describe("fromEnvironment", () => {
  it("reads the PG_TASK_ variables", () => {
    const raw = fromEnvironment({
      PG_TASK_JSON: "[{\"data\":\"envdb\"}]",
      PG_TASK_DEFAULT_TABLE: "jobs",
      PG_TASK_DEFAULT_TIMEOUT: "500",
      PG_TASK_DEFAULT_RESET: "5",
      PG_TASK_DEFAULT_RUN: "2",
      PATH: "/usr/bin",
      PGDATABASE: "other"
    })
    expect(raw).toEqual({
      json: "[{\"data\":\"envdb\"}]",
      default_table: "jobs",
      default_timeout: "500",
      default_reset: "5",
      default_run: "2"
    })
  })

  it("leaves variables that are not set undefined", () => {
    const raw = fromEnvironment({ PG_TASK_DEFAULT_TIMEOUT: "500", HOME: "/root" })
    expect(raw.default_timeout).toBe("500")
    expect(raw.json).toBeUndefined()
    expect(raw.default_table).toBeUndefined()
    expect(raw.default_reset).toBeUndefined()
    expect(raw.default_run).toBeUndefined()
    expect(Object.values(fromEnvironment({})).filter((value) => value !== undefined)).toEqual([])
  })

  it("feeds resolve, between the server and the flags", () => {
    const env = fromEnvironment({ PG_TASK_JSON: "[{\"data\":\"envdb\"}]", PG_TASK_DEFAULT_TIMEOUT: "500" })
    const settings = resolved([
      ["defaults", defaults],
      ["server", { default_timeout: "100", default_reset: "9", json: "[{\"data\":\"srv\"}]" }],
      ["environment", env],
      ["flags", { default_reset: "3" }]
    ]).settings
    expect(settings.targets).toEqual([target("envdb", { timeout: 500, reset: 3 })])
  })

  it("names the environment as the source of a bad variable", () => {
    const env = fromEnvironment({ PG_TASK_JSON: '[{"data":"a","timeout":-5}]' })
    const error = failure([["environment", env]])
    expect(error.message).toBe("environment: pg_task.json[0].timeout must be a positive integer, got \"-5\"")
  })
})

describe("describeTarget", () => {
  it("names database, schema, table and role", () => {
    expect(describeTarget(target("db1", { user: "u1", schema: "s1", table: "t1" }))).toBe("db1/s1.t1 as u1")
    expect(describeTarget(target("db1"))).toBe("db1/(default schema).task as postgres")
    expect(describeTarget(target("db1"), "public")).toBe("db1/public.task as postgres")
  })
})

describe("PgTaskConfig.layerFrom", () => {
  it("provides the resolved settings", () => {
    const settings = Effect.runSync(
      PgTaskConfig.pipe(Effect.provide(PgTaskConfig.layerFrom([["flags", { json: "[{\"data\":\"x\"}]" }]])))
    )
    expect(settings.targets).toEqual([target("x")])
  })

  it("fails with the ConfigError before anything starts", () => {
    const result = Effect.runSync(
      PgTaskConfig.pipe(
        Effect.provide(PgTaskConfig.layerFrom([["flags", { json: "[{\"timeout\":-5}]" }]])),
        Effect.either
      )
    )
    expect(Either.isLeft(result)).toBe(true)
    if (Either.isLeft(result)) {
      expect(result.left.message).toBe('flags: pg_task.json[0].timeout must be a positive integer, got "-5"')
    }
  })
})

describe("names are measured in bytes, as PostgreSQL does", () => {
  it("refuses a name of 40 two-byte characters", () => {
    const result = resolve([["flags", { json: JSON.stringify([{ data: "é".repeat(40) }]) }]])
    expect(Either.isLeft(result) && result.left.message).toBe(
      `flags: pg_task.json[0].data must be a non-empty name of at most 63 bytes, got "${"é".repeat(40)}"`
    )
  })
})
