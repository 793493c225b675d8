/**
 * PostgreSQL connection strings, read the way libpq reads them, for a task's
 * `remote` column and the admin `--url` flag. Pure: no I/O, no database.
 *
 * Two forms are accepted:
 *
 * - keyword/value: `host=h port=5432 dbname=db user=u password='a b\'c'`.
 *   Whitespace may surround `=`; a value may be single-quoted, and `\'` and
 *   `\\` escape inside and outside quotes. The empty string means all defaults.
 * - URI: `postgresql://u:p@h:5432/db?sslmode=require` (or `postgres://`).
 *   Host, port, user info and database go through `pg-connection-string`;
 *   query parameters are percent-decoded and read as keywords, winning over
 *   the parts before `?`. `ssl=true` means `sslmode=require`, as in libpq.
 *
 * Honoured keywords; an empty value means the default, a repeated one wins:
 *
 * - `host`: name, IP address, or Unix socket directory (starting with `/`).
 * - `hostaddr`: numeric IP address to connect to instead of resolving `host`;
 *   `host` still names the server for certificate checks.
 * - `port`: 1 to 65535.
 * - `dbname`, `user`, `password`: the password is kept `Redacted`.
 * - `connect_timeout`: seconds; zero or less waits forever, 1 counts as 2.
 * - `application_name`, `options` (e.g. `-c search_path=x`).
 * - `sslmode`: `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`.
 *
 * Rejected:
 *
 * - Host or port lists (`host=a,b`): one connection string names one server.
 * - `passfile`: node-postgres cannot take a password file per connection, and
 *   ignoring it would fail later with a confusing authentication error; give
 *   `password`, or rely on `PGPASSWORD`.
 * - Other libpq keywords (`sslrootcert`, `target_session_attrs`, ...) are
 *   reported as not supported; anything else as `invalid connection option`.
 *
 * Error messages never contain the connection string nor the password.
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import { isIP } from "node:net"
import type { ClientConfig } from "pg"
import { parse as parseUrl } from "pg-connection-string"

export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"

/** A parsed connection string. Absent fields take node-postgres defaults. */
export interface Conninfo {
  readonly host?: string
  readonly hostaddr?: string
  readonly port?: number
  readonly database?: string
  readonly user?: string
  readonly password?: Redacted.Redacted<string>
  readonly connectTimeoutSeconds?: number
  readonly applicationName?: string
  readonly options?: string
  readonly sslmode?: SslMode
}

/** A connection string could not be read. The message names the problem, never the password. */
export class ConninfoError extends Data.TaggedError("ConninfoError")<{
  readonly message: string
}> {}

interface Pair {
  readonly key: string
  readonly value: string
  /** Follows a secret value: a stray word here may be the rest of an unquoted password. */
  readonly afterSecret: boolean
}

interface Span {
  readonly start: number
  readonly end: number
}

/** Quotes a value for an error message, or hides it when it may be part of a secret. */
type Show = (value: string) => string

const sslModes: ReadonlyArray<SslMode> = [
  "disable",
  "allow",
  "prefer",
  "require",
  "verify-ca",
  "verify-full"
]

const honoured: ReadonlySet<string> = new Set([
  "host",
  "hostaddr",
  "port",
  "dbname",
  "user",
  "password",
  "connect_timeout",
  "application_name",
  "options",
  "sslmode"
])

const unsupported: ReadonlySet<string> = new Set([
  "channel_binding",
  "client_encoding",
  "fallback_application_name",
  "gssdelegation",
  "gssencmode",
  "gsslib",
  "keepalives",
  "keepalives_count",
  "keepalives_idle",
  "keepalives_interval",
  "krbsrvname",
  "load_balance_hosts",
  "max_protocol_version",
  "min_protocol_version",
  "oauth_client_id",
  "oauth_client_secret",
  "oauth_issuer",
  "oauth_scope",
  "replication",
  "require_auth",
  "requirepeer",
  "scram_client_key",
  "scram_server_key",
  "service",
  "ssl_max_protocol_version",
  "ssl_min_protocol_version",
  "sslcert",
  "sslcertmode",
  "sslcompression",
  "sslcrl",
  "sslcrldir",
  "sslkey",
  "sslkeylogfile",
  "sslnegotiation",
  "sslpassword",
  "sslrootcert",
  "sslsni",
  "target_session_attrs",
  "tcp_user_timeout"
])

const isSecretKey = (key: string): boolean => /password|secret/i.test(key)

const isSpace = (char: string | undefined): boolean =>
  char !== undefined && " \t\n\v\f\r".includes(char)

// Redaction

const secretKeyword = /(?<![\w?&.-])[\w.-]*(?:password|secret)[ \t\n\v\f\r]*=[ \t\n\v\f\r]*/gi
const secretQueryParameter = /[?&][\w.-]*(?:password|secret)=/gi
const uriScheme = /postgres(?:ql)?:\/\//gi

/** Where a keyword value starting at `start` ends, by libpq's quoting rules. */
const valueEnd = (text: string, start: number): number => {
  const quoted = text[start] === "'"
  let i = quoted ? start + 1 : start
  while (i < text.length) {
    const char = text[i]
    if (char === "\\") i += 2
    else if (quoted && char === "'") return i + 1
    else if (!quoted && isSpace(char)) return i
    else i += 1
  }
  return text.length
}

const keywordSecretSpans = (text: string): Array<Span> =>
  Array.from(text.matchAll(secretKeyword), (match) => {
    const start = match.index + match[0].length
    return { start, end: valueEnd(text, start) }
  })

const querySecretSpans = (text: string): Array<Span> =>
  Array.from(text.matchAll(secretQueryParameter), (match) => {
    const start = match.index + match[0].length
    const rest = text.slice(start).search(/[&\s]/)
    return { start, end: rest < 0 ? text.length : start + rest }
  })

const indexWithin = (text: string, search: string, from: number, to: number): number => {
  const index = text.indexOf(search, from)
  return index >= 0 && index < to ? index : -1
}

/**
 * The `@` closing a URI's user info. Errs towards hiding too much: user info may hold
 * unencoded `/`, `?`, `@` or spaces, which other parsers would not accept.
 */
const userinfoEnd = (text: string, from: number): number => {
  const space = text.slice(from).search(/\s/)
  const stop = space < 0 ? text.length : from + space
  const query = indexWithin(text, "?", from, stop)
  const beforeQuery = query < 0 ? -1 : text.lastIndexOf("@", query)
  if (beforeQuery >= from) return beforeQuery
  const last = text.lastIndexOf("@", stop - 1)
  if (last >= from) return last
  const slash = indexWithin(text, "/", from, stop)
  const head = text.slice(from, slash < 0 ? stop : slash)
  return head.includes(":") ? text.indexOf("@", stop) : -1
}

const userinfoSpans = (text: string): Array<Span> =>
  Array.from(text.matchAll(uriScheme)).flatMap((match) => {
    const from = match.index + match[0].length
    const at = userinfoEnd(text, from)
    const colon = at < 0 ? -1 : indexWithin(text, ":", from, at)
    return colon < 0 ? [] : [{ start: colon + 1, end: at }]
  })

const secretSpans = (text: string): Array<Span> =>
  [...keywordSecretSpans(text), ...querySecretSpans(text), ...userinfoSpans(text)]
    .filter((span) => span.end > span.start)
    .sort((a, b) => a.start - b.start)
    .reduce<Array<Span>>((merged, span) => {
      const last = merged[merged.length - 1]
      if (last !== undefined && span.start <= last.end) {
        merged[merged.length - 1] = { start: last.start, end: Math.max(last.end, span.end) }
      } else {
        merged.push(span)
      }
      return merged
    }, [])

/**
 * Hides passwords in text that may hold connection strings, in keyword form
 * (`password=secret`, `password='se cret'`) and in URIs (`postgresql://u:secret@h`,
 * `?password=secret`): each becomes `***`. Also hides `...password=` and `...secret=`
 * keys of other kinds. Never throws.
 */
export const redact = (text: string): string => {
  try {
    const source = String(text)
    const spans = secretSpans(source)
    const parts = spans.map((span, i) =>
      source.slice(i === 0 ? 0 : spans[i - 1]!.end, span.start) + "***"
    )
    return parts.join("") + source.slice(spans.length === 0 ? 0 : spans[spans.length - 1]!.end)
  } catch {
    return "***"
  }
}

const showing = (secrets: ReadonlyArray<string>): Show => (value) =>
  value !== "" && secrets.some((s) => s !== "" && (s.includes(value) || value.includes(s)))
    ? `"***"`
    : `"${value}"`

// Keyword/value form

interface Scanned {
  readonly value: string
  readonly end: number
}

const scanBare = (text: string, start: number): Scanned => {
  let value = ""
  let i = start
  while (i < text.length && !isSpace(text[i])) {
    if (text[i] === "\\") i += 1
    value += text[i] ?? ""
    i += 1
  }
  return { value, end: i }
}

const scanQuoted = (text: string, start: number): Scanned | undefined => {
  let value = ""
  let i = start + 1
  while (i < text.length) {
    const char = text[i]
    if (char === "'") return { value, end: i + 1 }
    if (char === "\\") i += 1
    value += text[i] ?? ""
    i += 1
  }
  return undefined
}

const skipSpaces = (text: string, start: number): number => {
  let i = start
  while (isSpace(text[i])) i += 1
  return i
}

const keywordPairs = (text: string, show: Show): Either.Either<Array<Pair>, string> => {
  const pairs: Array<Pair> = []
  let i = skipSpaces(text, 0)
  while (i < text.length) {
    const keyStart = i
    while (i < text.length && text[i] !== "=" && !isSpace(text[i])) i += 1
    const key = text.slice(keyStart, i)
    const previous = pairs[pairs.length - 1]
    const afterSecret = previous !== undefined && isSecretKey(previous.key)
    i = skipSpaces(text, i)
    if (text[i] !== "=") {
      const shown = afterSecret ? `"***"` : show(key)
      return Either.left(`missing "=" after ${shown} in connection info string`)
    }
    i = skipSpaces(text, i + 1)
    const scanned = text[i] === "'" ? scanQuoted(text, i) : scanBare(text, i)
    if (scanned === undefined) {
      return Either.left("unterminated quoted string in connection info string")
    }
    pairs.push({ key, value: scanned.value, afterSecret })
    i = skipSpaces(text, scanned.end)
  }
  return Either.right(pairs)
}

// URI form

const uriPrefix = /^postgres(?:ql)?:\/\//

const decode = (text: string): Either.Either<string, string> =>
  Either.try({
    try: () => decodeURIComponent(text),
    catch: () => "invalid percent-encoded token in connection URI"
  })

const checkPercents = (text: string): Either.Either<string, string> =>
  /%(?![0-9a-f]{2})/i.test(text)
    ? Either.left("invalid percent-encoded token in connection URI")
    : /%00/.test(text)
    ? Either.left("forbidden value %00 in percent-encoded value of connection URI")
    : Either.right(text)

// pg-connection-string decodes the path with decodeURI, which keeps reserved characters encoded.
const decodeReserved = (text: string): string =>
  text.replace(/%(2[346bcf]|3[abdf]|40)/gi, (_, hex: string) =>
    String.fromCharCode(parseInt(hex, 16)))

/** Host and port as written, to report lists and bad ports better than the URL parser can. */
const checkAuthority = (base: string, show: Show): Either.Either<string, string> => {
  const authority = base.replace(uriPrefix, "").split("/")[0] ?? ""
  const hostPort = authority.slice(authority.lastIndexOf("@") + 1)
  if (hostPort.includes(",")) {
    return Either.left(`multiple hosts in connection URI are not supported`)
  }
  const port = /^(?:\[[^\]]*\]|[^:[]*):(.+)$/.exec(hostPort)?.[1]
  return port === undefined
    ? Either.right(base)
    : Either.map(portField(port, show), () => base)
}

// WHATWG URLs drop tabs and newlines and cut at "#"; libpq keeps them as data.
const urlSafe = (base: string): string =>
  base.replace(/[\s#]/g, (char) => encodeURIComponent(char))

const authorityPairs = (base: string): Either.Either<Array<Pair>, string> =>
  Either.try({
    try: () => {
      const url = parseUrl(urlSafe(base))
      const fields: ReadonlyArray<readonly [string, string | null | undefined]> = [
        ["host", url.host],
        ["port", url.port],
        ["dbname", url.database === null || url.database === undefined
          ? undefined
          : decodeReserved(url.database)],
        ["user", url.user],
        ["password", url.password]
      ]
      return fields.flatMap(([key, value]) =>
        value === null || value === undefined || value === ""
          ? []
          : [{ key, value, afterSecret: false }]
      )
    },
    catch: () => "invalid connection URI: its host, port or user info cannot be read"
  })

const queryPair = (
  parameter: string,
  afterSecret: boolean,
  show: Show
): Either.Either<Pair, string> => {
  const [rawKey = "", rawValue, ...extra] = parameter.split("=")
  const shown = afterSecret ? `"***"` : show(rawKey)
  if (rawValue === undefined) {
    return Either.left(`missing key/value separator "=" in URI query parameter ${shown}`)
  }
  if (extra.length > 0) {
    return Either.left(`extra key/value separator "=" in URI query parameter ${shown}`)
  }
  return Either.all([decode(rawKey), decode(rawValue)]).pipe(
    Either.map(([key, value]) =>
      key === "ssl" && value === "true"
        ? { key: "sslmode", value: "require", afterSecret }
        : { key, value, afterSecret }
    )
  )
}

const queryPairs = (query: string, show: Show): Either.Either<Array<Pair>, string> => {
  const parameters = query.split("&").filter((parameter) => parameter !== "")
  return Either.all(
    parameters.map((parameter, i) => {
      const previous = parameters[i - 1]?.split("=")[0] ?? ""
      return queryPair(parameter, isSecretKey(previous), show)
    })
  )
}

const uriPairs = (text: string, show: Show): Either.Either<Array<Pair>, string> => {
  const mark = text.indexOf("?")
  const base = mark < 0 ? text : text.slice(0, mark)
  const query = mark < 0 ? "" : text.slice(mark + 1)
  return checkPercents(text).pipe(
    Either.flatMap(() => checkAuthority(base, show)),
    Either.flatMap(authorityPairs),
    Either.flatMap((pairs) =>
      Either.map(queryPairs(query, show), (fromQuery) => [...pairs, ...fromQuery])
    )
  )
}

// Keywords to fields

type Field<A> = Either.Either<A | undefined, string>

const integerPattern = /^[ \t\n\v\f\r]*[+-]?\d+[ \t\n\v\f\r]*$/

const integerField = (key: string, value: string, show: Show): Either.Either<number, string> => {
  const number = Number(value.trim())
  return integerPattern.test(value) && Math.abs(number) <= 2 ** 31 - 1
    ? Either.right(number)
    : Either.left(`invalid integer value ${show(value)} for connection option "${key}"`)
}

const single = (key: string, value: string): Either.Either<string, string> => {
  const what = key === "port" ? "ports" : "hosts"
  return value.includes(",")
    ? Either.left(`multiple ${what} in connection option "${key}" are not supported`)
    : Either.right(value)
}

const portField = (value: string, show: Show): Either.Either<number, string> =>
  single("port", value).pipe(
    Either.flatMap(() => integerField("port", value, show)),
    Either.filterOrLeft(
      (port) => port >= 1 && port <= 65535,
      () => `invalid port number ${show(value)} for connection option "port" (1 to 65535)`
    )
  )

const hostaddrField = (value: string, show: Show): Either.Either<string, string> =>
  single("hostaddr", value).pipe(
    Either.filterOrLeft(
      (address) => isIP(address) !== 0,
      () => `invalid hostaddr value ${show(value)}: not a numeric IP address`
    )
  )

const sslmodeField = (value: string, show: Show): Either.Either<SslMode, string> => {
  const mode = sslModes.find((candidate) => candidate === value)
  return mode === undefined
    ? Either.left(`invalid sslmode value ${show(value)} for connection option "sslmode"`)
    : Either.right(mode)
}

const optional = <A>(
  value: string | undefined,
  read: (value: string) => Either.Either<A, string>
): Field<A> => (value === undefined || value === "" ? Either.right(undefined) : read(value))

const checkKeyword = (pair: Pair, show: Show): Either.Either<Pair, string> => {
  const name = pair.afterSecret ? `"***"` : show(pair.key)
  if (honoured.has(pair.key)) return Either.right(pair)
  if (pair.key === "passfile") {
    return Either.left(
      `connection option "passfile" is not supported: give "password" or set PGPASSWORD`
    )
  }
  return unsupported.has(pair.key)
    ? Either.left(`connection option ${name} is not supported`)
    : Either.left(`invalid connection option ${name}`)
}

const withoutUndefined = <A extends object>(record: A): A =>
  Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined)) as A

const fromPairs = (
  pairs: ReadonlyArray<Pair>,
  show: Show
): Either.Either<Conninfo, string> =>
  Either.all(pairs.map((pair) => checkKeyword(pair, show))).pipe(
    Either.map((checked) => new Map(checked.map((pair) => [pair.key, pair.value]))),
    Either.flatMap((values) =>
      Either.all({
        host: optional(values.get("host"), (value) => single("host", value)),
        hostaddr: optional(values.get("hostaddr"), (value) => hostaddrField(value, show)),
        port: optional(values.get("port"), (value) => portField(value, show)),
        database: optional(values.get("dbname"), Either.right),
        user: optional(values.get("user"), Either.right),
        password: optional(values.get("password"), (value) =>
          Either.right(Redacted.make(value))),
        connectTimeoutSeconds: optional(values.get("connect_timeout"), (value) =>
          integerField("connect_timeout", value, show)),
        applicationName: optional(values.get("application_name"), Either.right),
        options: optional(values.get("options"), Either.right),
        sslmode: optional(values.get("sslmode"), (value) => sslmodeField(value, show))
      })
    ),
    Either.map(withoutUndefined)
  )

/**
 * Parses a connection string in keyword/value or URI form (see the module
 * documentation for the keywords). Fails with a message that names the
 * offending keyword or value but never the password nor the whole string.
 */
export const parse = (text: string): Either.Either<Conninfo, ConninfoError> => {
  const found = secretSpans(text).map((span) => text.slice(span.start, span.end))
  const pairs = uriPrefix.test(text)
    ? uriPairs(text, showing(found))
    : keywordPairs(text, showing(found))
  return pairs.pipe(
    Either.flatMap((pairs) => {
      const secrets = pairs.filter((pair) => isSecretKey(pair.key)).map((pair) => pair.value)
      return fromPairs(pairs, showing([...found, ...secrets]))
    }),
    Either.mapLeft((message) => new ConninfoError({ message }))
  )
}

// To node-postgres

const connectionTimeoutMillis = (seconds: number | undefined): number | undefined =>
  seconds === undefined || seconds <= 0 ? undefined : Math.max(seconds, 2) * 1000

const ssl = (info: Conninfo): ClientConfig["ssl"] => {
  switch (info.sslmode) {
    case "disable":
      return false
    case "require":
      return { rejectUnauthorized: false }
    case "verify-ca":
    case "verify-full":
      // Connecting to hostaddr, the certificate must still match the host name.
      return info.hostaddr !== undefined && info.host !== undefined && isIP(info.host) === 0
        ? { servername: info.host }
        : true
    default:
      return undefined
  }
}

/** The node-postgres client settings for a parsed connection string. */
export const toClientConfig = (info: Conninfo): ClientConfig =>
  withoutUndefined<ClientConfig>({
    user: info.user,
    password: info.password === undefined ? undefined : Redacted.value(info.password),
    host: info.hostaddr ?? info.host,
    port: info.port,
    database: info.database,
    connectionTimeoutMillis: connectionTimeoutMillis(info.connectTimeoutSeconds),
    application_name: info.applicationName,
    options: info.options,
    ssl: ssl(info)
  })

/** A short description for logs, `user@host:port/database`, without the password. */
export const describe = (info: Conninfo): string => {
  const host = info.host ?? info.hostaddr ?? "(default)"
  const user = info.user === undefined ? "" : `${info.user}@`
  const bracketed = host.includes(":") && !host.startsWith("/") ? `[${host}]` : host
  const port = info.port === undefined ? "" : `:${info.port}`
  const database = info.database === undefined ? "" : `/${info.database}`
  return `${user}${bracketed}${port}${database}`
}
