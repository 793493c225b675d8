import { Either, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import * as Conninfo from "../src/Conninfo.js"

const parsed = (text: string): Conninfo.Conninfo =>
  Either.getOrThrowWith(Conninfo.parse(text), (error) => new Error(error.message))

/** The parse result with the password revealed, for comparisons. */
const plain = (text: string): Record<string, unknown> => {
  const { password, ...rest } = parsed(text)
  return password === undefined ? rest : { ...rest, password: Redacted.value(password) }
}

const failure = (text: string): Conninfo.ConninfoError => {
  const result = Conninfo.parse(text)
  if (Either.isRight(result)) throw new Error(`expected a failure for ${text}`)
  return result.left
}

/** The message, checked to hold neither the secret nor the whole input. */
const safeMessage = (text: string, secret: string): string => {
  const { message } = failure(text)
  expect(message).not.toContain(secret)
  expect(message).not.toContain(text)
  return message
}

describe("parse, keyword/value form", () => {
  it("reads every honoured keyword", () => {
    const text = "host=h hostaddr=10.0.0.1 port=5433 dbname=db user=u password=pw " +
      "connect_timeout=3 application_name=app options='-c search_path=x' sslmode=verify-full"
    expect(plain(text)).toEqual({
      host: "h",
      hostaddr: "10.0.0.1",
      port: 5433,
      database: "db",
      user: "u",
      password: "pw",
      connectTimeoutSeconds: 3,
      applicationName: "app",
      options: "-c search_path=x",
      sslmode: "verify-full"
    })
  })

  it("treats the empty string and blanks as all defaults", () => {
    expect(plain("")).toEqual({})
    expect(plain("  \t\n ")).toEqual({})
  })

  it("allows whitespace around =", () => {
    expect(plain("host = h   port=  5433\tdbname =db")).toEqual({
      host: "h",
      port: 5433,
      database: "db"
    })
  })

  it("reads quoted values with escaped quotes and backslashes", () => {
    expect(plain("password='a b\\'c'").password).toBe("a b'c")
    expect(plain("password='a\\\\b'").password).toBe("a\\b")
  })

  it("needs no blank after a closing quote", () => {
    expect(plain("host='h'port=1")).toEqual({ host: "h", port: 1 })
  })

  it("applies backslash escapes to unquoted values", () => {
    expect(plain("user=a\\ b")).toEqual({ user: "a b" })
    expect(plain("options=-c\\ search_path=x")).toEqual({ options: "-c search_path=x" })
    expect(plain("password=x\\'y").password).toBe("x'y")
    expect(plain("user=abc\\")).toEqual({ user: "abc" })
  })

  it("keeps a quote inside an unquoted value", () => {
    expect(plain("user=o'brien")).toEqual({ user: "o'brien" })
  })

  it("treats empty values as defaults", () => {
    expect(plain("host='' port='' dbname=db")).toEqual({ database: "db" })
    expect(plain("dbname=db host=")).toEqual({ database: "db" })
  })

  it("takes the word after a blank value as the value, as libpq does", () => {
    expect(plain("host= port=5432")).toEqual({ host: "port=5432" })
  })

  it("lets a repeated keyword win", () => {
    expect(plain("port=1 port=2 user=a user=b")).toEqual({ port: 2, user: "b" })
  })

  it("accepts Unix socket directories, IPv6 and signed integers", () => {
    expect(plain("host=/var/run/postgresql")).toEqual({ host: "/var/run/postgresql" })
    expect(plain("hostaddr=::1 port=' 5432 '")).toEqual({ hostaddr: "::1", port: 5432 })
    expect(plain("connect_timeout=-1")).toEqual({ connectTimeoutSeconds: -1 })
    expect(plain("connect_timeout=+7")).toEqual({ connectTimeoutSeconds: 7 })
  })

  it("accepts every sslmode", () => {
    for (const mode of ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]) {
      expect(plain(`sslmode=${mode}`)).toEqual({ sslmode: mode })
    }
  })

  it("keeps the password redacted", () => {
    const info = parsed("user=u password=hunter2")
    expect(String(info.password)).not.toContain("hunter2")
    expect(JSON.stringify(info)).not.toContain("hunter2")
    expect(Redacted.value(info.password!)).toBe("hunter2")
  })
})

describe("parse, URI form", () => {
  it("reads user, password, host, port and database, percent-decoded", () => {
    expect(plain("postgresql://u%20x:p%40ss%2Fw@h:5433/my%20db")).toEqual({
      user: "u x",
      password: "p@ss/w",
      host: "h",
      port: 5433,
      database: "my db"
    })
  })

  it("accepts the postgres:// prefix", () => {
    expect(plain("postgres://u@h/db")).toEqual({ user: "u", host: "h", database: "db" })
  })

  it("decodes reserved characters in the database name", () => {
    expect(plain("postgresql://h/d%2Fb%23x%3Fy%40z")).toEqual({ host: "h", database: "d/b#x?y@z" })
  })

  it("honours query parameters", () => {
    const text = "postgresql://u@h/db?sslmode=require&application_name=x&connect_timeout=3"
    expect(plain(text)).toEqual({
      user: "u",
      host: "h",
      database: "db",
      sslmode: "require",
      applicationName: "x",
      connectTimeoutSeconds: 3
    })
  })

  it("percent-decodes query parameters and keeps + as is, like libpq", () => {
    expect(plain("postgresql://h?options=-c%20search_path%3Dx&application_name=a+b")).toEqual({
      host: "h",
      options: "-c search_path=x",
      applicationName: "a+b"
    })
  })

  it("lets query parameters override the parts before ?", () => {
    const text = "postgresql://u:p@h:1/db?host=other&port=2&dbname=d2&user=v&password=q"
    expect(plain(text)).toEqual({
      host: "other",
      port: 2,
      database: "d2",
      user: "v",
      password: "q"
    })
  })

  it("reads ssl=true as sslmode=require", () => {
    expect(plain("postgresql://h?ssl=true")).toEqual({ host: "h", sslmode: "require" })
  })

  it("accepts empty parts", () => {
    expect(plain("postgresql://")).toEqual({})
    expect(plain("postgresql:///db")).toEqual({ database: "db" })
    expect(plain("postgresql://h/db?")).toEqual({ host: "h", database: "db" })
    expect(plain("postgresql://u@/db")).toEqual({ user: "u", database: "db" })
  })

  it("reads socket directories and IPv6 addresses", () => {
    expect(plain("postgresql://%2Fvar%2Frun%2Fpostgresql/db")).toEqual({
      host: "/var/run/postgresql",
      database: "db"
    })
    expect(plain("postgresql://[::1]:5432/db")).toEqual({ host: "::1", port: 5432, database: "db" })
    expect(plain("postgresql://h/db?host=%2Ftmp")).toEqual({ host: "/tmp", database: "db" })
  })

  it("keeps # and : in user info as data, like libpq", () => {
    expect(plain("postgresql://u:a#b:c@h/db")).toEqual({
      user: "u",
      password: "a#b:c",
      host: "h",
      database: "db"
    })
    expect(plain("postgresql://u:a@b@h/db").password).toBe("a@b")
  })

  it("reads a URI that is not at the start as keywords", () => {
    expect(failure("Postgresql://h/db").message).toContain("missing \"=\"")
  })
})

describe("parse, errors", () => {
  it("is a tagged error", () => {
    const error = failure("garbage")
    expect(error._tag).toBe("ConninfoError")
    expect(error).toBeInstanceOf(Conninfo.ConninfoError)
    expect(error).toBeInstanceOf(Error)
  })

  it("reports a word without =", () => {
    expect(failure("garbage").message)
      .toBe("missing \"=\" after \"garbage\" in connection info string")
    expect(failure("host=h garbage").message)
      .toBe("missing \"=\" after \"garbage\" in connection info string")
    expect(failure("host h").message)
      .toBe("missing \"=\" after \"host\" in connection info string")
    expect(failure("user='it''s'").message)
      .toBe("missing \"=\" after \"'s'\" in connection info string")
  })

  it("reports an unterminated quoted string", () => {
    expect(failure("host='abc").message)
      .toBe("unterminated quoted string in connection info string")
    expect(failure("host='abc\\'").message)
      .toBe("unterminated quoted string in connection info string")
    expect(failure("host='").message)
      .toBe("unterminated quoted string in connection info string")
  })

  it("names an unknown keyword", () => {
    expect(failure("host=h foo=1").message).toBe("invalid connection option \"foo\"")
    expect(failure("postgresql://h/db?foo=1").message).toBe("invalid connection option \"foo\"")
    expect(failure("postgresql://h/db?ssl=yes").message).toBe("invalid connection option \"ssl\"")
    expect(failure("=x").message).toBe("invalid connection option \"\"")
  })

  it("names libpq keywords that are not supported", () => {
    expect(failure("sslrootcert=/ca.pem").message)
      .toBe("connection option \"sslrootcert\" is not supported")
    expect(failure("postgresql://h?sslcert=/nonexistent/cert.pem").message)
      .toBe("connection option \"sslcert\" is not supported")
    expect(failure("target_session_attrs=any").message).toContain("target_session_attrs")
  })

  it("rejects passfile", () => {
    expect(failure("passfile=/home/u/.pgpass").message)
      .toContain("connection option \"passfile\" is not supported")
  })

  it("names a bad port and its value", () => {
    expect(failure("port=abc").message)
      .toBe("invalid integer value \"abc\" for connection option \"port\"")
    expect(failure("port=5432x").message).toContain("\"5432x\"")
    expect(failure("port=99999999999").message).toContain("\"99999999999\"")
    expect(failure("port=70000").message)
      .toBe("invalid port number \"70000\" for connection option \"port\" (1 to 65535)")
    expect(failure("port=0").message).toContain("\"port\"")
    expect(failure("postgresql://h:abc/db").message)
      .toBe("invalid integer value \"abc\" for connection option \"port\"")
    expect(failure("postgresql://h:70000/db").message).toContain("\"70000\"")
    expect(failure("postgresql://h/db?port=x1").message).toContain("\"x1\"")
  })

  it("names a bad connect_timeout and its value", () => {
    expect(failure("connect_timeout=soon").message)
      .toBe("invalid integer value \"soon\" for connection option \"connect_timeout\"")
    expect(failure("postgresql://h?connect_timeout=1.5").message)
      .toBe("invalid integer value \"1.5\" for connection option \"connect_timeout\"")
  })

  it("names a bad sslmode and its value", () => {
    expect(failure("sslmode=bogus").message)
      .toBe("invalid sslmode value \"bogus\" for connection option \"sslmode\"")
    expect(failure("postgresql://h?sslmode=no-verify").message).toContain("\"no-verify\"")
  })

  it("rejects a hostaddr that is not an IP address", () => {
    expect(failure("hostaddr=db.example.com").message)
      .toBe("invalid hostaddr value \"db.example.com\": not a numeric IP address")
  })

  it("rejects host and port lists", () => {
    expect(failure("host=a,b").message)
      .toBe("multiple hosts in connection option \"host\" are not supported")
    expect(failure("hostaddr=10.0.0.1,10.0.0.2").message).toContain("multiple hosts")
    expect(failure("host=a port=1,2").message)
      .toBe("multiple ports in connection option \"port\" are not supported")
    expect(failure("postgresql://a,b/db").message).toContain("multiple hosts")
    expect(failure("postgresql://u:p@a:1,b:2/db").message).toContain("multiple hosts")
    expect(failure("postgresql://h/db?host=a,b").message).toContain("multiple hosts")
  })

  it("reports malformed URIs", () => {
    expect(failure("postgresql://h/d%zz").message)
      .toBe("invalid percent-encoded token in connection URI")
    expect(failure("postgresql://h/d%0").message).toContain("percent-encoded")
    expect(failure("postgresql://h/d%00").message).toContain("%00")
    expect(failure("postgresql://h/d%FF").message).toContain("cannot be read")
    expect(failure("postgresql://h^x/db").message)
      .toBe("invalid connection URI: its host, port or user info cannot be read")
    expect(failure("postgresql://h/db?sslmode").message)
      .toBe("missing key/value separator \"=\" in URI query parameter \"sslmode\"")
    expect(failure("postgresql://h/db?options=-c%20a=b").message)
      .toBe("extra key/value separator \"=\" in URI query parameter \"options\"")
    expect(failure("postgresql://h/db?application_name=%E0").message).toContain("percent-encoded")
  })
})

describe("parse, errors never show a password", () => {
  const secret = "S3cr3t-Pa55"

  it.each([
    `password=${secret} port=abc`,
    `password=${secret} connect_timeout=x`,
    `password=${secret} sslmode=nope`,
    `password=${secret} host=a,b`,
    `password=${secret} foo=1`,
    `password=${secret} passfile=/p`,
    `password='${secret}`,
    `password=${secret} garbage`,
    `password=${secret} hostaddr=nope`,
    `postgresql://u:${secret}@h:abc/db`,
    `postgresql://u:${secret}@h^x/db`,
    `postgresql://u:${secret}@a,b/db`,
    `postgresql://u:${secret}@h/db?foo=1`,
    `postgresql://u:${secret}@h/db?sslmode=bad`,
    `postgresql://u:${secret}@h/d%zz`,
    `postgresql://u@h/db?password=${secret}&bogus`,
    `postgresql://u@h/db?password=${secret}&port=abc`,
    ` postgresql://u:${secret}@h/db`
  ])("%s", (text) => {
    const message = safeMessage(text, secret)
    expect(message.length).toBeGreaterThan(0)
  })

  it("hides a word that may be the rest of an unquoted password", () => {
    expect(safeMessage("password=my Secret", "Secret"))
      .toBe("missing \"=\" after \"***\" in connection info string")
    expect(safeMessage("password=my sec=ret", "sec"))
      .toBe("invalid connection option \"***\"")
    expect(safeMessage("postgresql://h/db?password=a&b", "b"))
      .toBe("missing key/value separator \"=\" in URI query parameter \"***\"")
  })

  it("hides a value that equals or overlaps the password", () => {
    expect(safeMessage("password=abc port=abc", "abc"))
      .toBe("invalid integer value \"***\" for connection option \"port\"")
    expect(safeMessage("port=x9 password=x9y", "x9"))
      .toBe("invalid integer value \"***\" for connection option \"port\"")
    expect(safeMessage("postgresql://u:pa/ss@h/db", "pa")).toContain("\"***\"")
  })
})

describe("redact", () => {
  it.each([
    ["password=secret", "password=***"],
    ["password='se cret'", "password=***"],
    ["host=h password='it\\'s' user=u", "host=h password=*** user=u"],
    ["password = secret user=u", "password = *** user=u"],
    ["password=se\\ cret user=u", "password=*** user=u"],
    ["password='unterminated user=u", "password=***"],
    ["user=u password= host=h", "user=u password= ***"],
    [
      "sslpassword=x PGPASSWORD=y client_secret=z",
      "sslpassword=*** PGPASSWORD=*** client_secret=***"
    ],
    ["PASSWORD=x", "PASSWORD=***"],
    ["postgresql://u:secret@h/db", "postgresql://u:***@h/db"],
    ["postgres://u:secret@h:5432/db?sslmode=require", "postgres://u:***@h:5432/db?sslmode=require"],
    ["postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"],
    ["postgresql://u:a@b/c@h/db", "postgresql://u:***@h/db"],
    ["postgresql://u:a?b@h/db", "postgresql://u:***@h/db"],
    ["postgresql://u:p@h/db?user=me@example.com", "postgresql://u:***@h/db?user=me@example.com"],
    ["postgresql://u:my secret@h/db", "postgresql://u:***@h/db"],
    ["postgresql://u@h/db?password=x", "postgresql://u@h/db?password=***"],
    [
      "postgresql://h/db?sslmode=require&password=x&user=u",
      "postgresql://h/db?sslmode=require&password=***&user=u"
    ],
    [
      "connect to POSTGRESQL://u:secret@h/db failed: refused",
      "connect to POSTGRESQL://u:***@h/db failed: refused"
    ],
    [
      "a: postgresql://u:x@h, b: host=h password=y",
      "a: postgresql://u:***@h, b: host=h password=***"
    ]
  ])("%s", (text, expected) => {
    expect(Conninfo.redact(text)).toBe(expected)
    expect(Conninfo.redact(expected)).toBe(expected)
  })

  it.each([
    "",
    "host=h user=u dbname=db",
    "postgresql://u@h:5432/db",
    "postgresql://h:5432/db",
    "postgresql://[::1]:5432/db",
    "passfile=/home/u/.pgpass",
    "nothing to hide here"
  ])("leaves %j alone", (text) => {
    expect(Conninfo.redact(text)).toBe(text)
  })

  it("errs towards hiding too much when unsure", () => {
    expect(Conninfo.redact("postgresql://h:5432/db down, ask me@example.com"))
      .not.toContain("5432/db down")
  })

  it("never throws and always hides a generated password", () => {
    let seed = 42
    const next = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    }
    const alphabet = "ab=' \\@:/?&#%\t\n,xpostgresql://password"
    const word = (length: number) =>
      Array.from({ length }, () => alphabet[next(alphabet.length)]).join("")
    for (let i = 0; i < 2000; i++) {
      const text = word(next(40))
      expect(() => Conninfo.redact(text)).not.toThrow()
      expect(() => Conninfo.parse(text)).not.toThrow()
      const secret = `Zq${word(next(8)).replace(/[\s'\\&@]/g, "")}Zq`
      expect(Conninfo.redact(`${text} password=${secret} x`)).not.toContain(secret)
      expect(Conninfo.redact(`postgresql://u:${secret}@h/db ${text}`)).not.toContain(secret)
      for (const input of [`password=${secret} ${text}`, `postgresql://u:${secret}@${text}`]) {
        const result = Conninfo.parse(input)
        if (Either.isLeft(result)) expect(result.left.message).not.toContain(secret)
      }
    }
    expect(Conninfo.redact("\ud800password=\udfff")).toBe("\ud800password=***")
  })

  it("hides everything that parse reads as a password", () => {
    for (const text of [
      "host=h password='a b\\'c' user=u",
      "postgresql://u:p%20q@h/db",
      "postgresql://h/db?password=xyz",
      "postgresql://u:a#b@h/db"
    ]) {
      const password = Redacted.value(parsed(text).password!)
      expect(Conninfo.redact(text)).not.toContain(password)
      expect(Conninfo.redact(text)).toContain("***")
    }
  })
})

describe("toClientConfig", () => {
  it("maps every field", () => {
    const info = parsed(
      "host=h port=5433 dbname=db user=u password=pw connect_timeout=5 " +
        "application_name=app options='-c x=y' sslmode=require"
    )
    expect(Conninfo.toClientConfig(info)).toStrictEqual({
      user: "u",
      password: "pw",
      host: "h",
      port: 5433,
      database: "db",
      connectionTimeoutMillis: 5000,
      application_name: "app",
      options: "-c x=y",
      ssl: { rejectUnauthorized: false }
    })
  })

  it("leaves out what was not given", () => {
    expect(Conninfo.toClientConfig({})).toStrictEqual({})
    expect(Conninfo.toClientConfig(parsed("postgresql://h/db"))).toStrictEqual({
      host: "h",
      database: "db"
    })
  })

  it.each([
    ["disable", false],
    ["allow", undefined],
    ["prefer", undefined],
    ["require", { rejectUnauthorized: false }],
    ["verify-ca", true],
    ["verify-full", true]
  ] as const)("maps sslmode=%s", (mode, ssl) => {
    expect(Conninfo.toClientConfig(parsed(`sslmode=${mode}`)).ssl).toStrictEqual(ssl)
  })

  it("follows libpq's connect_timeout rules", () => {
    const millis = (text: string) => Conninfo.toClientConfig(parsed(text)).connectionTimeoutMillis
    expect(millis("connect_timeout=0")).toBeUndefined()
    expect(millis("connect_timeout=-3")).toBeUndefined()
    expect(millis("connect_timeout=1")).toBe(2000)
    expect(millis("connect_timeout=10")).toBe(10000)
  })

  it("connects to hostaddr and checks the certificate against host", () => {
    const info = parsed("host=db.example.com hostaddr=10.0.0.1 sslmode=verify-full")
    expect(Conninfo.toClientConfig(info)).toStrictEqual({
      host: "10.0.0.1",
      ssl: { servername: "db.example.com" }
    })
    expect(Conninfo.toClientConfig(parsed("hostaddr=10.0.0.1 sslmode=verify-ca")))
      .toStrictEqual({ host: "10.0.0.1", ssl: true })
  })
})

describe("describe", () => {
  it("gives user, host, port and database", () => {
    expect(Conninfo.describe(parsed("host=h port=5432 dbname=db user=u password=pw")))
      .toBe("u@h:5432/db")
    expect(Conninfo.describe(parsed("postgresql://u:secret@h/db"))).toBe("u@h/db")
  })

  it("never shows the password", () => {
    const info = parsed("postgresql://u:secret@h:5432/db?sslmode=require")
    expect(Conninfo.describe(info)).not.toContain("secret")
  })

  it("handles defaults, IPv6, sockets and hostaddr", () => {
    expect(Conninfo.describe({})).toBe("(default)")
    expect(Conninfo.describe(parsed("dbname=db"))).toBe("(default)/db")
    expect(Conninfo.describe(parsed("postgresql://[::1]:5432/db"))).toBe("[::1]:5432/db")
    expect(Conninfo.describe(parsed("host=/tmp port=5432"))).toBe("/tmp:5432")
    expect(Conninfo.describe(parsed("hostaddr=10.0.0.1 user=u"))).toBe("u@10.0.0.1")
  })
})
